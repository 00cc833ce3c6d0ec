"""Indicators: rates computed from the core tables into the mart layer."""
from indicators.compute import compute_indicator, indicator_query, local_month, read_indicator

__all__ = ["compute_indicator", "indicator_query", "local_month", "read_indicator"]
