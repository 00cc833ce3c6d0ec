"""Open-data exports: CSV, Parquet and JSON hold exactly the mart's rows, with the definitions alongside,
readable by the usual tools (csv, pyarrow, DuckDB) and described by a datapackage.json."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from indicators import compute_indicator
from indicators.open_data import VALUE_COLUMNS, export_open_data
from lgsp import runner
from warehouse import Warehouse


def _mart(wh: Warehouse) -> dict[tuple, tuple[int, int]]:
    mart = wh.system["mart_indicator_value"]
    with wh.engine.connect() as conn:
        return {(r.indicator, r.version, r.unit_level, r.unit_code, r.period): (r.numerator, r.denominator)
                for r in conn.execute(sa.select(mart))}


def _key(row: dict[str, Any]) -> tuple:
    return (row["indicator"], int(row["version"]), row["unit_level"], row["unit_code"], row["period"])


def test_exports_hold_the_mart_and_the_definitions(lgsp_env: Any, tmp_path: Path) -> None:
    catalog = load_catalog()
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, catalog)
    for spec in catalog.indicators.values():
        compute_indicator(wh, spec)
    mart = _mart(wh)
    paths = export_open_data(wh, catalog, tmp_path / "open", note="synthetic")

    with paths["csv"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == VALUE_COLUMNS
    assert {_key(r): (int(r["numerator"]), int(r["denominator"])) for r in rows} == mart
    assert any(r["unit_name"] == "Xã Gia Viễn" for r in rows), "communes carry their official names"

    table = pq.read_table(paths["parquet"])
    assert table.num_rows == len(mart)
    parquet_definitions = json.loads(table.schema.metadata[b"lgsp:definitions"])
    assert {d["indicator"] for d in parquet_definitions} == set(catalog.indicators)
    path = str(paths["parquet"]).replace("'", "''")
    total = duckdb.sql(f"SELECT sum(denominator) FROM read_parquet('{path}') WHERE unit_level = 'province' "
                       "AND period_type = 'month' AND indicator = 'online_submission_rate'").fetchall()
    assert total[0][0] == wh.count("core_dossier")

    document = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert {_key(v): (v["numerator"], v["denominator"]) for v in document["values"]} == mart
    definitions = {d["indicator"]: d for d in json.loads(paths["definitions"].read_text(encoding="utf-8"))}
    on_time = definitions["on_time_settlement_rate"]
    assert on_time["definition"]["numerator"] == {"settlement": ["early", "on_time"]}
    assert on_time["name_vi"].startswith("Tỷ lệ hồ sơ giải quyết") and len(on_time["definition_sha256"]) == 64

    package = json.loads(paths["datapackage"].read_text(encoding="utf-8"))
    assert package["description"] == "synthetic"
    for resource in package["resources"]:
        assert (paths["datapackage"].parent / resource["path"]).is_file()
    fields = [f["name"] for f in package["resources"][0]["schema"]["fields"]]
    assert fields == list(VALUE_COLUMNS)


def test_lgsp_indicators_export_writes_under_lgsp_home(lgsp_env: Any) -> None:
    from lgsp.cli import app

    runner.run_pipeline("documents")
    result = CliRunner().invoke(app, ["indicators", "compute", "signed_document_rate"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["indicators", "export"])
    assert result.exit_code == 0, result.output
    folder = lgsp_env.home / "open_data"
    assert (folder / "indicator_values.parquet").is_file() and str(folder) in result.output.replace("\n", "")
    result = CliRunner().invoke(app, ["indicators", "list", "nope"])
    assert result.exit_code == 1 and "no indicator named 'nope'" in result.output
