"""Indicators: service-quality rates computed from the core tables into the mart, published and ranked.

compute (mart values), definitions (versions), query (the SQL), periods (local-time periods),
ranking (composite scores), open_data (CSV, Parquet, JSON exports), dashboard (static HTML),
cli (`lgsp indicators ...`).
"""
from indicators.compute import (PROVINCE_CODE, compute_indicator, compute_range, compute_touched, months_touched,
                                read_indicator)
from indicators.definitions import IndicatorVersionError
from indicators.query import local_month

__all__ = ["PROVINCE_CODE", "IndicatorVersionError", "compute_indicator", "compute_range", "compute_touched",
           "local_month", "months_touched", "read_indicator"]
