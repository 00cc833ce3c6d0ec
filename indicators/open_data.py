"""Open-data exports of the indicator mart: CSV, Parquet and JSON, with the definitions alongside.

`export_open_data(wh, catalog, folder)` writes, atomically (a temporary file renamed):

    indicator_values.csv        one row per indicator, version, unit and period (UTF-8, header)
    indicator_values.parquet    the same rows; the definitions in the schema metadata (`lgsp:definitions`)
    indicator_values.json       {"definitions": [...], "values": [...]}
    indicator_definitions.json  every indicator version ever computed: names, numerator, denominator, units
    datapackage.json            a Frictionless Data Package describing the files and their columns

Example value row::

    {"indicator": "online_submission_rate", "version": 1, "unit_level": "commune", "unit_code": "14464",
     "unit_name": "Xã Gia Viễn", "period": "2025-08", "period_type": "month", "measure": "rate",
     "numerator": 31, "denominator": 40, "value": 0.775, "computed_at": "2025-11-01T02:00:00+00:00"}
"""
from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from catalog import Catalog
from indicators.definitions import stored_definitions
from indicators.ranking import unit_names
from warehouse import Warehouse

VALUE_COLUMNS = ("indicator", "version", "unit_level", "unit_code", "unit_name", "period", "period_type", "measure",
                 "numerator", "denominator", "value", "computed_at")
_ARROW_TYPES = {"version": pa.int32(), "numerator": pa.int64(), "denominator": pa.int64(), "value": pa.float64()}


def indicator_definitions(wh: Warehouse, catalog: Catalog) -> list[dict[str, Any]]:
    """Every computed indicator version with its definition; the catalog's text for the current one."""
    out = []
    for stored in stored_definitions(wh):
        spec = catalog.indicators.get(stored["indicator"])
        current = spec is not None and spec.version == stored["version"]
        out.append({"indicator": stored["indicator"], "version": stored["version"], "current": current,
                    "name_vi": stored["name_vi"], "name_en": stored["name_en"],
                    "description": spec.description if current and spec else "",
                    "value_unit": spec.value_unit if current and spec else None,
                    "lower_is_better": spec.lower_is_better if current and spec else None,
                    "definition": stored["definition"], "definition_sha256": stored["definition_hash"],
                    "registered_at": stored["registered_at"].isoformat() if stored["registered_at"] else None})
    return out


def indicator_values(wh: Warehouse) -> list[dict[str, Any]]:
    """Every mart row (all versions), with the unit's name, computed_at as ISO 8601 UTC."""
    mart = wh.system["mart_indicator_value"]
    with wh.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(mart).order_by(
            mart.c.indicator, mart.c.version, mart.c.period_type, mart.c.period, mart.c.unit_level,
            mart.c.unit_code)).mappings()]
    names = {level: unit_names(wh, level) for level in {r["unit_level"] for r in rows}}
    for row in rows:
        row["unit_name"] = names[row["unit_level"]].get(row["unit_code"], "")
        at = row["computed_at"]
        row["computed_at"] = (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).isoformat()
    return [{c: row[c] for c in VALUE_COLUMNS} for row in rows]


def _atomic_write(path: Path, write: Any) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, values: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VALUE_COLUMNS)
        writer.writeheader()
        writer.writerows(values)


def _write_parquet(path: Path, values: list[dict[str, Any]], definitions: list[dict[str, Any]]) -> None:
    fields = [pa.field(c, _ARROW_TYPES.get(c, pa.string())) for c in VALUE_COLUMNS]
    schema = pa.schema(fields, metadata={"lgsp:definitions": json.dumps(definitions, ensure_ascii=False)})
    table = pa.Table.from_pylist(values, schema=schema)
    pq.write_table(table, path)


def _json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False, indent=1, default=str), encoding="utf-8")


def _data_package(catalog: Catalog, note: str | None) -> dict[str, Any]:
    """A Frictionless Data Package descriptor: the resources and their columns, described from datasets.yaml."""
    columns = catalog.datasets["indicator_value"].columns
    kinds = {"integer": "integer", "float": "number", "timestamp": "datetime"}
    fields = [{"name": c, "type": kinds.get(columns[c].type, "string") if c in columns else "string",
               "description": columns[c].description if c in columns else "Name of the unit"} for c in VALUE_COLUMNS]
    resource = {"path": "indicator_values.csv", "format": "csv", "mediatype": "text/csv", "encoding": "utf-8",
                "schema": {"fields": fields,
                           "primaryKey": ["indicator", "version", "unit_level", "unit_code", "period"]}}
    return {"name": "lgsp-indicators-37", "title": "Service-quality indicators, province 37 (Ninh Bình)",
            "description": note or "Indicator values computed by lgsp from the provincial warehouse.",
            "created": datetime.now(timezone.utc).isoformat(),
            "resources": [resource,
                          {"path": "indicator_values.parquet", "format": "parquet", "schema": resource["schema"]},
                          {"path": "indicator_values.json", "format": "json"},
                          {"path": "indicator_definitions.json", "format": "json",
                           "description": "Definitions of every indicator version: numerator, denominator, units"}]}


def export_open_data(wh: Warehouse, catalog: Catalog, folder: Path, note: str | None = None) -> dict[str, Path]:
    """Write the five files into `folder` (created if missing); returns {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    definitions, values = indicator_definitions(wh, catalog), indicator_values(wh)
    document = {"title": "Service-quality indicators, province 37", "note": note,
                "definitions": definitions, "values": values}
    return {
        "csv": _atomic_write(folder / "indicator_values.csv", lambda p: _write_csv(p, values)),
        "parquet": _atomic_write(folder / "indicator_values.parquet",
                                 lambda p: _write_parquet(p, values, definitions)),
        "json": _atomic_write(folder / "indicator_values.json", lambda p: _json(p, document)),
        "definitions": _atomic_write(folder / "indicator_definitions.json", lambda p: _json(p, definitions)),
        "datapackage": _atomic_write(folder / "datapackage.json", lambda p: _json(p, _data_package(catalog, note))),
    }
