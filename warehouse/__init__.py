"""Warehouse: the Parquet lake (landing + raw) and the relational store (core, mart)."""
from warehouse.lake import Lake, to_json
from warehouse.store import Warehouse, make_engine, utc

__all__ = ["Lake", "Warehouse", "make_engine", "to_json", "utc"]
