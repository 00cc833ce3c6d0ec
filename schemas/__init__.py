"""Schemas: one dataset definition (catalog/datasets.yaml) -> Arrow schema, typed batches, SQL tables."""
from schemas.arrow import SchemaError, TypedBatch, arrow_schema, coerce, coerce_arrow, json_schema, to_arrow
from schemas.sql import LINEAGE_COLUMNS, core_table

__all__ = ["LINEAGE_COLUMNS", "SchemaError", "TypedBatch", "arrow_schema", "coerce", "coerce_arrow", "json_schema", "core_table", "to_arrow"]
