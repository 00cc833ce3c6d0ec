"""Retention (`lgsp lake prune`): the landed pages of loaded batches and GX's older results go; no row does.

Runs real pipelines against the sandbox, on SQLite and on a real PostgreSQL.
"""
from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from lgsp import runner
from lgsp.retention import prune
from quality import expectations
from warehouse import Lake, Warehouse
from warehouse.lake import PAGES_PRUNED

PIPELINE = "population_citizens"


def _batches(wh: Warehouse) -> dict[str, str]:
    batch = wh.table("lgsp_batch")
    with wh.engine.connect() as conn:
        return dict(conn.execute(sa.select(batch.c.batch_id, batch.c.status).where(batch.c.pipeline == PIPELINE)).all())


def _lake_rows(settings: Any) -> int:
    return pads.dataset(settings.lake_root / "raw" / "citizen", format="parquet", partitioning="hive").count_rows()


def _state(wh: Warehouse, settings: Any) -> tuple[Any, ...]:
    """Every row lgsp keeps of the data: the core table, quarantine, expectation outcomes, the Parquet lake."""
    with wh.engine.connect() as conn:
        core = sorted(conn.execute(sa.select(wh.table("core_citizen").c.personal_id,
                                             wh.table("core_citizen").c._row_hash)).all())
    return (core, wh.count("lgsp_quarantine"), wh.count("lgsp_expectation_result"), _lake_rows(settings))


def test_prune_deletes_loaded_batches_pages_and_old_results_and_keeps_every_row(
        lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(expectations, "DOCS_INDEX_RUNS", 1)  # the index lists the newest run only
    wh, lake = Warehouse(lgsp_env.database_url, load_catalog()), Lake(lgsp_env.lake_root)
    first = runner.run_pipeline(PIPELINE)
    second = runner.run_pipeline(PIPELINE, full_refresh=True)
    assert first["rows_quarantined"] > 0 and second["rows_pulled"] > 500
    unloaded = runner.extract(runner.context(PIPELINE))["batch_id"]  # pulled, never validated nor loaded
    statuses = _batches(wh)
    loaded = sorted(b for b, status in statuses.items() if status == "loaded")
    assert len(loaded) == 2 and statuses[unloaded] == "extracted"
    pages = {b: lake.page_paths(PIPELINE, b) for b in statuses}
    assert all(pages.values())
    before = _state(wh, lgsp_env)
    gx = lgsp_env.home / "gx"
    results = sorted((gx / "validations").rglob("*.json"))
    docs_pages = sorted((gx / "data_docs" / "validations").rglob("*.html"))
    assert len(results) == len(docs_pages) == 2

    # nothing is old enough yet
    assert prune(timedelta(days=1)).pages == 0
    later = datetime.now(timezone.utc) + timedelta(days=31)
    dry = prune(timedelta(days=30), dry_run=True, now=later)
    assert (dry.batches, dry.pages, dry.results, dry.result_pages) == (2, sum(len(pages[b]) for b in loaded), 1, 1)
    assert dry.page_bytes == sum(p.stat().st_size for b in loaded for p in pages[b])
    assert all(p.exists() for ps in pages.values() for p in ps)
    assert sorted((gx / "validations").rglob("*.json")) == results

    done = prune(timedelta(days=30), now=later)
    assert (done.batches, done.pages, done.page_bytes, done.results, done.result_pages) == (
        dry.batches, dry.pages, dry.page_bytes, dry.results, dry.result_pages)
    for batch_id in loaded:
        assert lake.page_paths(PIPELINE, batch_id) == []
        manifest = lake.read_manifest(PIPELINE, batch_id)
        assert manifest[PAGES_PRUNED]["pages"] == len(pages[batch_id]) and manifest["rows_pulled"] > 0
    assert lake.page_paths(PIPELINE, unloaded) == pages[unloaded]  # a batch not loaded keeps its pages
    assert _state(wh, lgsp_env) == before  # no row of the data went anywhere
    # the newest run (the one the index lists) kept its result and page; the older one went, folders too
    assert sorted((gx / "validations").rglob("*.json")) == [r for r in results if second["batch_id"] in str(r)]
    left = sorted((gx / "data_docs" / "validations").rglob("*.html"))
    assert len(left) == 1 and second["batch_id"] in str(left[0])
    assert not any(first["batch_id"] in str(p) for p in gx.rglob("*"))
    index = (gx / "data_docs" / "index.html").read_text(encoding="utf-8")
    for link in re.findall(r'href="(validations/[^"]+\.html)"', index):
        assert (gx / "data_docs" / link).is_file(), link

    assert prune(timedelta(days=30), now=later).pages == 0  # pruning again finds nothing
    with pytest.raises(FileNotFoundError, match=r"deleted on .* by `lgsp lake prune`.*run the pipeline"):
        runner.validate(runner.context(PIPELINE), loaded[0])
    assert _batches(wh)[loaded[0]] == "loaded"  # the refusal did not mark the batch failed
    # the pipeline goes on: the unloaded batch is resumed, then an incremental; every row still once
    runner.run_pipeline(PIPELINE)
    again = runner.run_pipeline(PIPELINE)
    assert again["rows_changed"] == 0
    assert _state(wh, lgsp_env)[0] == before[0]


def test_cli_lake_prune_keeps_the_pages_of_a_failed_batch(lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.cli import app
    from quality import QualityError
    from sandbox import start_sandbox

    good = os.environ["LGSP_POPULATION_WSDL"]
    with start_sandbox(seed=11, citizens=200, dossiers=10, defect_rate=0.5) as bad:
        monkeypatch.setenv("LGSP_POPULATION_WSDL", bad.population_wsdl)
        with pytest.raises(QualityError):
            runner.run_pipeline(PIPELINE)
    monkeypatch.setenv("LGSP_POPULATION_WSDL", good)
    runner.run_pipeline(PIPELINE)
    wh, lake = Warehouse(lgsp_env.database_url, load_catalog()), Lake(lgsp_env.lake_root)
    failed = [b for b, status in _batches(wh).items() if status == "failed"]
    assert len(failed) == 1 and sorted(_batches(wh).values()) == ["failed", "loaded"]
    kept = lake.page_paths(PIPELINE, failed[0])
    assert kept
    cli = CliRunner()
    negative = cli.invoke(app, ["lake", "prune", "--older-than-days", "-1"])
    assert negative.exit_code == 1 and "must not be negative" in negative.output
    dry = cli.invoke(app, ["lake", "prune", "--older-than-days", "0", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    said = " ".join(dry.output.split())  # the console wraps long lines
    assert re.search(r"would delete [1-9]\d* landed page\(s\) of 1 loaded batch\(es\)", said), said
    assert list(Path(lgsp_env.lake_root, "landing", PIPELINE).rglob("page-*"))
    wet = cli.invoke(app, ["lake", "prune", "--older-than-days", "0"])
    said = " ".join(wet.output.split())
    assert wet.exit_code == 0 and re.search(r"\bdeleted [1-9]\d* landed page\(s\) of 1 loaded", said), said
    assert list(Path(lgsp_env.lake_root, "landing", PIPELINE).rglob("page-*")) == kept  # the failed batch's only


def test_retention_days_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.retention import DEFAULT_RETENTION_DAYS, retention_days

    monkeypatch.delenv("LGSP_RETENTION_DAYS", raising=False)
    assert retention_days() == DEFAULT_RETENTION_DAYS == 90
    for text, days in (("7", 7.0), (" 0.5 ", 0.5), ("0", 0.0), ("off", None), ("OFF", None)):
        monkeypatch.setenv("LGSP_RETENTION_DAYS", text)
        assert retention_days() == days, text
    for text in ("abc", "-1", "nan"):
        monkeypatch.setenv("LGSP_RETENTION_DAYS", text)
        with pytest.raises(ValueError, match=r"LGSP_RETENTION_DAYS=.* is not a number of days .* or 'off'"):
            retention_days()


def test_maintain_compacts_the_lake_then_prunes_and_keeps_every_row(lgsp_env: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.cli import app
    from lgsp.retention import maintain

    wh, lake = Warehouse(lgsp_env.database_url, load_catalog()), Lake(lgsp_env.lake_root)
    runner.run_pipeline(PIPELINE)
    runner.run_pipeline(PIPELINE, full_refresh=True)  # a second Parquet file in today's partition
    before = _state(wh, lgsp_env)
    files = sorted((lgsp_env.lake_root / "raw" / "citizen").rglob("*.parquet"))
    assert len(files) == 2

    monkeypatch.setenv("LGSP_RETENTION_DAYS", "off")
    kept = maintain(compact_min_age=timedelta(0))
    assert kept["pruned"] is None and kept["retention_days"] is None
    assert [(c["dataset"], c["files_before"], c["files_after"]) for c in kept["compacted"]] == [("citizen", 2, 1)]
    assert len(list((lgsp_env.lake_root / "raw" / "citizen").rglob("*.parquet"))) == 1
    assert list(Path(lgsp_env.lake_root, "landing", PIPELINE).rglob("page-*"))  # retention off: pages stay
    assert _state(wh, lgsp_env) == before

    monkeypatch.setenv("LGSP_RETENTION_DAYS", "0")
    done = maintain(compact_min_age=timedelta(0))
    assert done["compacted"] == [] and done["retention_days"] == 0
    assert done["pruned"]["batches"] == 2 and done["pruned"]["pages"] > 0
    assert not list(Path(lgsp_env.lake_root, "landing", PIPELINE).rglob("page-*"))
    assert _state(wh, lgsp_env) == before

    monkeypatch.setenv("LGSP_RETENTION_DAYS", "a month")
    bad = CliRunner().invoke(app, ["lake", "maintain", "--inline"])
    said = " ".join(bad.output.split())
    assert bad.exit_code == 1 and "LGSP_RETENTION_DAYS='a month' is not a number of days" in said, said
    assert _state(wh, lgsp_env) == before
