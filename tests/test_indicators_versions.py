"""Recomputing is idempotent, late data recomputes only the months it touches, a changed definition needs a
new version and the old version's values stay readable; the DAG is scheduled on the datasets it reads."""
from __future__ import annotations

import dataclasses
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from catalog import load_catalog
from catalog.loader import CATALOG_DIR
from indicators import (IndicatorVersionError, compute_indicator, compute_touched, months_touched,
                        read_indicator)
from lgsp import runner
from tests.test_indicators import expected_cells
from warehouse import Warehouse

VN = timezone(timedelta(hours=7))


def _computed_at(wh: Warehouse, name: str) -> dict[tuple, Any]:
    return {(r["unit_level"], r["unit_code"], r["period"]): r["computed_at"]
            for r in read_indicator(wh, name, period_type=None)}


def _late_dossiers(truth: Any) -> tuple[list[dict[str, Any]], set[str]]:
    """The served dossiers with one paper dossier of July switched to online, and the months that touches."""
    late = datetime(2025, 11, 20, 9, 0, tzinfo=VN)
    target = next(d for d in truth.dossiers if d["dossier_id"] not in truth.dossier_defects
                  and d["channel"] == "paper" and d["received_at"].month == 7)
    changed = {**target, "channel": "online", "updated_at": late}
    return [changed if d is target else d for d in truth.dossiers], {"2025-07"}


def test_recompute_is_idempotent_and_late_data_touches_only_its_months(
        lgsp_env: Any, sandbox_handle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import start_sandbox

    catalog = load_catalog()
    spec = catalog.indicators["online_submission_rate"]
    runner.run_pipeline("dvcqg_procedures")  # the procedures' levels (units: procedure_level), loaded an hour ago
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, catalog)
    procedures = wh.core["procedure"]
    with wh.engine.begin() as conn:
        conn.execute(procedures.update().values(_loaded_at=datetime.now(timezone.utc) - timedelta(hours=1)))
    assert compute_indicator(wh, spec) > 0
    before = _computed_at(wh, spec.name)
    assert compute_indicator(wh, spec) == 0, "a recompute with nothing new writes nothing"
    assert _computed_at(wh, spec.name) == before, "not even computed_at changes"

    dossiers, months = _late_dossiers(sandbox_handle.data)
    newer_truth = dataclasses.replace(sandbox_handle.data, dossiers=dossiers)
    with start_sandbox(data=newer_truth, api_key="test-key-not-secret") as newer:
        for name, value in newer.env().items():
            monkeypatch.setenv(name, value)
        assert runner.run_pipeline("tthc_dossiers")["rows_changed"] == 1
    assert months_touched(wh, spec) == {"2025-07", "2025-08", "2025-09", "2025-10"}  # all loaded minutes ago
    monkeypatch.setattr("indicators.compute.LATE_LOOKBACK", timedelta(0))
    assert months_touched(wh, spec) == months, "only the late row's month"
    result = compute_touched(wh, spec)
    after = _computed_at(wh, spec.name)
    rewritten = {cell for cell, at in after.items() if at != before.get(cell)}
    assert result["written"] == len(rewritten) > 0
    assert {period for _, _, period in rewritten} == {"2025-07", "2025-Q3", "2025"}
    mart = {(r["unit_level"], r["unit_code"], r["period"]): (r["numerator"], r["denominator"])
            for r in read_indicator(wh, spec.name, period_type=None)}
    assert mart == expected_cells(newer_truth, spec.name)
    assert compute_touched(wh, spec)["written"] == 0

    with wh.engine.begin() as conn:  # the catalogue changed: a procedure's level moves any month's dossiers
        conn.execute(procedures.update().values(_loaded_at=datetime.now(timezone.utc)))
    assert months_touched(wh, spec) is None


def _catalog_copy(tmp_path: Path, change: dict[str, Any]) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = target / "indicators.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["indicators"]["online_submission_rate"].update(change)
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return target


def test_a_changed_definition_needs_a_new_version_and_old_values_stay_readable(
        lgsp_env: Any, tmp_path: Path) -> None:
    catalog = load_catalog()
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, catalog)
    compute_indicator(wh, catalog.indicators["online_submission_rate"])
    v1 = read_indicator(wh, "online_submission_rate", unit_level="province")

    redefined = {"denominator": {"channel": ["online", "paper"]}}  # same name, different definition
    unbumped = load_catalog(_catalog_copy(tmp_path / "a", redefined))
    with pytest.raises(IndicatorVersionError, match=r"online_submission_rate.*version 1.*Bump its version.*to 2"):
        compute_indicator(wh, unbumped.indicators["online_submission_rate"])

    bumped = load_catalog(_catalog_copy(tmp_path / "b", {**redefined, "version": 2}))
    compute_indicator(wh, bumped.indicators["online_submission_rate"])
    latest = read_indicator(wh, "online_submission_rate", unit_level="province")
    assert {r["version"] for r in latest} == {2}
    assert read_indicator(wh, "online_submission_rate", version=1, unit_level="province") == v1
    definitions = wh.system["mart_indicator_definition"]
    with wh.engine.connect() as conn:
        versions = conn.execute(sa.select(definitions.c.version).where(
            definitions.c.indicator == "online_submission_rate").order_by(definitions.c.version)).scalars().all()
    assert versions == [1, 2]


def test_a_bad_indicator_definition_names_the_file_and_field(tmp_path: Path) -> None:
    from catalog import CatalogError

    with pytest.raises(CatalogError, match=r"indicators.yaml: indicators.online_submission_rate: column 'chanel'"):
        load_catalog(_catalog_copy(tmp_path, {"numerator": {"chanel": "online"}}))
    units = {"commune": "commune_code", "agency": "receiving_agency_code"}
    wrong = {  # a unit read through a reference: each mistake named
        "units.procedure_level.via: column 'procedure_name' of 'dossier' names no other dataset's record":
            {"units": {**units, "procedure_level": {"via": "procedure_name", "column": "level"}}},
        "units.procedure_level.column: 'cap' is not in dataset 'procedure'":
            {"units": {**units, "procedure_level": {"via": "procedure_code", "column": "cap"}}},
        "units.procedure_level: it reads dataset 'procedure', whose changes move its units: say so, "
        "reads: [dossier, procedure]":
            {"units": {**units, "procedure_level": {"via": "procedure_code", "column": "level"}}, "reads": []},
    }
    for n, (said, change) in enumerate(wrong.items()):
        with pytest.raises(CatalogError) as refused:
            load_catalog(_catalog_copy(tmp_path / str(n), change))
        assert f"indicators.online_submission_rate.{said}" in str(refused.value), str(refused.value)


def test_the_indicators_dag_is_scheduled_on_the_datasets_it_reads() -> None:
    from lgsp.dag_factory import indicators_dag

    from airflow.sdk import AssetAny

    dag = indicators_dag(load_catalog())
    condition = dag.timetable.asset_condition
    assert isinstance(condition, AssetAny), condition  # any of them, not only once all have changed
    uris = {asset.uri for asset in condition.objects}
    assert uris == {f"lgsp://warehouse/core/{d}" for d in ("dossier", "document", "procedure", "land_parcel")}
    assert dag.timetable.timetable.expression == "5 0 * * *"  # and daily: a new month's state on its first day
    assert {t.task_id for t in dag.tasks} == {f"compute_{n}" for n in load_catalog().indicators}


def test_a_unit_level_added_keeps_the_version_and_counts_every_period_with_it(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path) -> None:
    """Adding a breakdown (here the procedure and the procedure's level, read through the dossier's
    reference to the DVCQG catalogue) changes no value computed: the version stays, every period is counted
    again with the new levels. Taking a level away would lose values: refused."""
    from indicators import definitions

    runner.run_pipeline("dvcqg_procedures")
    runner.run_pipeline("tthc_dossiers")
    narrow = load_catalog(_catalog_copy(tmp_path / "narrow", {"units": {"commune": "commune_code",
                                                                         "agency": "receiving_agency_code"}}))
    wh = Warehouse(lgsp_env.database_url, narrow)
    assert compute_indicator(wh, narrow.indicators["online_submission_rate"]) > 0
    communes = read_indicator(wh, "online_submission_rate", unit_level="commune", period_type=None)
    assert {r["unit_level"] for r in read_indicator(wh, "online_submission_rate", period_type=None)} == {
        "province", "commune", "agency"}

    catalog = load_catalog()  # as shipped: + procedure, procedure_level
    spec = catalog.indicators["online_submission_rate"]
    wide = Warehouse(lgsp_env.database_url, catalog)
    assert definitions.widened(wide, spec)
    result = compute_touched(wide, spec)
    assert result["months"] == "all" and result["written"] > 0, result
    mart = {(r["unit_level"], r["unit_code"], r["period"]): (r["numerator"], r["denominator"])
            for r in read_indicator(wide, spec.name, period_type=None)}
    assert mart == expected_cells(sandbox_handle.data, spec.name)
    assert {level for level, _, _ in mart} == {"province", "commune", "agency", "procedure", "procedure_level"}
    assert {r["version"] for r in read_indicator(wide, spec.name, period_type=None)} == {1}
    assert read_indicator(wide, spec.name, unit_level="commune", period_type=None) == communes  # left alone
    assert not definitions.widened(wide, spec) and compute_touched(wide, spec)["written"] == 0
    stored = {d["indicator"]: d for d in definitions.stored_definitions(wide)}[spec.name]
    assert stored["definition"]["units"]["procedure_level"] == {"via": "procedure_code", "column": "level"}

    with pytest.raises(IndicatorVersionError, match="Bump its version"):  # a level taken away
        compute_indicator(wh, narrow.indicators["online_submission_rate"])
