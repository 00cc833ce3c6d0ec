"""End to end through the runner: sandbox -> connectors -> quality -> lake + store -> indicator.

Runs on the embedded default (SQLite) and on a real PostgreSQL. Compares the
warehouse with the sandbox's ground truth, row by row.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pyarrow.dataset as pads
import pytest
import sqlalchemy as sa

from catalog import load_catalog
from indicators import compute_indicator, read_indicator
from lgsp import runner
from quality import QualityError
from warehouse import Warehouse, utc

CITIZEN_RULES = {"cccd_length": "cccd:personal_id", "cccd_century_sex": "cccd:personal_id",
                 "commune_unknown": "commune_code:commune_code", "phone_format": "phone_vn:phone"}
DOSSIER_RULES = {"due_before_received": "ordered:received_at,due_at", "channel_unknown": "enum:channel",
                 "commune_unknown": "commune_code:commune_code",
                 "finished_before_received": "ordered:received_at,finished_at,returned_at"}
VN = timezone(timedelta(hours=7))


def _rows(wh: Warehouse, table: str) -> list[dict[str, Any]]:
    with wh.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(wh.table(table))).mappings()]


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value).astimezone(timezone.utc)
    return value


def test_both_pipelines_land_ground_truth_and_quarantine_defects(lgsp_env: Any, sandbox_handle: Any) -> None:
    catalog = load_catalog()
    results = {name: runner.run_pipeline(name) for name in ("population_citizens", "tthc_dossiers")}
    wh = Warehouse(lgsp_env.database_url, catalog)
    truth = sandbox_handle.data
    cases = [("population_citizens", "citizen", "personal_id", truth.citizens, truth.citizen_defects, CITIZEN_RULES),
             ("tthc_dossiers", "dossier", "dossier_id", truth.dossiers, truth.dossier_defects, DOSSIER_RULES)]
    quarantine = _rows(wh, "lgsp_quarantine")
    for pipeline, dataset, key, records, defects, rules in cases:
        result = results[pipeline]
        good = {r[key]: r for r in records if r[key] not in defects}
        assert result["rows_pulled"] == len(records)
        assert result["rows_landed"] + result["rows_quarantined"] + result["rows_superseded"] == len(records)
        assert result["rows_quarantined"] == len(defects) > 0
        landed = {r[key]: r for r in _rows(wh, f"core_{dataset}")}
        assert set(landed) == set(good)
        for k, row in landed.items():
            for column, value in good[k].items():
                assert _norm(row[column]) == _norm(value), (dataset, k, column)
            assert row["_batch_id"] == result["batch_id"]
            assert row["_source_system"] == catalog.pipeline(pipeline).source.system
            assert row["_loaded_at"] is not None
        rejected = {q["record_key"]: q for q in quarantine if q["dataset"] == dataset}
        assert set(rejected) == set(defects)
        for k, kind in defects.items():
            assert rejected[k]["rule"] == rules[kind], (k, kind, rejected[k]["reason"])
            assert rejected[k]["reason"] and k in rejected[k]["payload"]
        lake = pads.dataset(lgsp_env.lake_root / "raw" / dataset, format="parquet", partitioning="hive")
        assert lake.count_rows() == len(good)
    with wh.engine.connect() as conn:
        batches = conn.execute(sa.select(wh.table("lgsp_batch"))).mappings().all()
        expectations = conn.execute(sa.select(wh.table("lgsp_expectation_result"))).mappings().all()
    assert {b["status"] for b in batches} == {"loaded"}
    assert expectations and all(e["success"] for e in expectations)


def test_rerun_changes_nothing(lgsp_env: Any) -> None:
    catalog = load_catalog()
    wh = Warehouse(lgsp_env.database_url, catalog)
    first = {name: runner.run_pipeline(name) for name in catalog.pipelines}
    counts = {t: wh.count(t) for t in ("core_citizen", "core_dossier", "lgsp_quarantine")}
    snapshot = sorted((r["personal_id"], r["_batch_id"], r["_row_hash"]) for r in _rows(wh, "core_citizen"))
    for name in catalog.pipelines:
        again = runner.run_pipeline(name)
        assert again["rows_changed"] == 0, name
        if catalog.datasets[catalog.pipelines[name].dataset].cursor_field:  # incremental: only the
            assert again["rows_pulled"] < first[name]["rows_pulled"] / 4, name  # watermark + look-back
    full = runner.run_pipeline("population_citizens", full_refresh=True)
    assert full["rows_changed"] == 0 and full["rows_pulled"] > 500
    assert {t: wh.count(t) for t in counts} == counts
    assert sorted((r["personal_id"], r["_batch_id"], r["_row_hash"]) for r in _rows(wh, "core_citizen")) == snapshot


def test_a_change_in_the_source_is_merged_on_its_key(lgsp_env: Any, sandbox_handle: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import start_sandbox

    runner.run_pipeline("population_citizens")
    data = sandbox_handle.data
    moved = next(c for c in data.citizens if c["personal_id"] not in data.citizen_defects)
    changed = {**moved, "commune_code": "14464", "address": "Thôn Mới",
               "updated_at": datetime(2025, 11, 5, 8, 0, tzinfo=timezone.utc)}
    citizens = [changed if c is moved else c for c in data.citizens]
    with start_sandbox(data=dataclasses.replace(data, citizens=citizens)) as newer:
        monkeypatch.setenv("LGSP_POPULATION_WSDL", newer.population_wsdl)
        result = runner.run_pipeline("population_citizens")
    assert result["rows_pulled"] < 10 and result["rows_changed"] == 1  # the change + rows at the old watermark
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    row = next(r for r in _rows(wh, "core_citizen") if r["personal_id"] == moved["personal_id"])
    assert (row["commune_code"], row["address"], row["_batch_id"]) == ("14464", "Thôn Mới", result["batch_id"])
    assert wh.count("core_citizen") == len(data.citizens) - len(data.citizen_defects)


def test_indicator_matches_an_independent_computation(lgsp_env: Any, sandbox_handle: Any) -> None:
    catalog = load_catalog()
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, catalog)
    spec = catalog.indicators["online_submission_rate"]
    compute_indicator(wh, spec)
    compute_indicator(wh, spec)  # recomputing is idempotent
    truth = sandbox_handle.data
    num: Counter[tuple[str, str]] = Counter()
    den: Counter[tuple[str, str]] = Counter()
    for d in truth.dossiers:
        if d["dossier_id"] in truth.dossier_defects:
            continue
        cell = (d["commune_code"], d["received_at"].astimezone(VN).strftime("%Y-%m"))
        den[cell] += 1
        num[cell] += d["channel"] == "online"
    mart = {(r["unit_code"], r["period"]): r for r in read_indicator(wh, spec.name, unit_level="commune")}
    province = {r["period"]: r for r in read_indicator(wh, spec.name, unit_level="province")}
    assert set(mart) == set(den)
    for period, row in province.items():
        cells = [c for c in den if c[1] == period]
        assert (row["numerator"], row["denominator"]) == (sum(num[c] for c in cells), sum(den[c] for c in cells))
    for cell, row in mart.items():
        assert (row["numerator"], row["denominator"]) == (num[cell], den[cell]), cell
        assert row["value"] == pytest.approx(num[cell] / den[cell])
    assert len({u for u, _ in mart}) == 129


def test_failing_dataset_expectation_fails_loudly_and_keeps_rows(lgsp_env: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import start_sandbox

    with start_sandbox(seed=11, citizens=200, dossiers=10, defect_rate=0.5) as bad:
        monkeypatch.setenv("LGSP_POPULATION_WSDL", bad.population_wsdl)
        with pytest.raises(QualityError, match=r"dataset citizen, batch .*expect_column_values_to_be_in_set"):
            runner.run_pipeline("population_citizens")
        defects = len(bad.data.citizen_defects)
    catalog = load_catalog()
    wh = Warehouse(lgsp_env.database_url, catalog)
    assert wh.count("core_citizen") == 0
    assert wh.count("lgsp_quarantine") == defects == 100
    assert wh.get_cursor("population_citizens") is None  # not advanced: a rerun pulls the batch again
    with wh.engine.connect() as conn:
        status, message = conn.execute(sa.select(wh.table("lgsp_batch").c.status,
                                                 wh.table("lgsp_batch").c.message)).one()
    assert status == "failed" and "expectation" in message


def test_missing_required_field_rejects_the_batch(lgsp_env: Any) -> None:
    from schemas import SchemaError, coerce

    dataset = load_catalog().datasets["dossier"]
    with pytest.raises(SchemaError, match=r"dossier: required field\(s\) \['received_at'\]"):
        coerce([{"dossier_id": "x", "procedure_code": "1", "commune_code": "14464", "due_at": None,
                 "status": "received", "channel": "paper", "updated_at": date(2025, 8, 1).isoformat()}], dataset)


def test_batch_ids_made_in_one_second_sort_in_the_order_they_were_made() -> None:
    ids = [runner.new_batch_id("population_citizens") for _ in range(200)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids  # ids (and the lake's batch files) sort by when they were made
    assert re.fullmatch(r"population_citizens-\d{8}T\d{12}-[0-9a-f]{8}", ids[0])
