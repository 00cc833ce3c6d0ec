"""Through faults, kills and retries, the warehouse ends identical to the sources' ground truth.

Real sandbox peers over loopback, the real runner and outbox, SQLite and a real PostgreSQL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from catalog import load_catalog
from tests.test_systems import PULLS, SOURCE_CURSOR, SOURCE_KEY, small_pages_catalog, truth_keys

NORMALISED_NOT_REJECTED = {"summary_not_nfc"}  # a defect lgsp repairs (NFC) rather than quarantines


def warehouse_keys(wh: Any, dataset: Any) -> dict[str, Any]:
    table = wh.core[dataset.name]
    column = dataset.cursor_field or list(dataset.columns)[1]
    with wh.engine.connect() as conn:
        return {"|".join(str(v) for v in r[:-1]): r[-1]
                for r in conn.execute(sa.select(*(table.c[k] for k in dataset.key), table.c[column]))}


def quarantined_keys(wh: Any, dataset: str) -> list[str]:
    q = wh.system["lgsp_quarantine"]
    with wh.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(q.c.record_key).where(q.c.dataset == dataset))]


def assert_identical_to_truth(wh: Any, catalog: Any, handle: Any, pipeline: str) -> None:
    from sandbox.data import record_key

    dataset = catalog.datasets[catalog.pipelines[pipeline].dataset]
    everything, defects = truth_keys(handle, dataset.name)
    rejected = {k for k, kind in handle.data.defects(dataset.name).items() if kind not in NORMALISED_NOT_REJECTED}
    landed = warehouse_keys(wh, dataset)
    quarantined = quarantined_keys(wh, dataset.name)
    assert set(landed) == everything - rejected, f"{pipeline}: landed rows differ from the good rows"
    assert sorted(quarantined) == sorted(rejected), f"{pipeline}: each bad row quarantined exactly once"
    if dataset.cursor_field:
        field, read = SOURCE_CURSOR.get(dataset.name, (dataset.cursor_field, lambda value: value))
        truth = {str(r[SOURCE_KEY[dataset.name]]) if dataset.name in SOURCE_KEY else record_key(dataset.name, r):
                 read(r[field]) for r in handle.data.records(dataset.name)}
        wrong = [k for k, v in landed.items() if v.replace(tzinfo=v.tzinfo or timezone.utc) != truth[k]]
        assert not wrong, f"{pipeline}: stale versions for {wrong[:5]}"


def test_every_pull_pipeline_ends_identical_to_truth_through_20pct_faults(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp import runner

    monkeypatch.setenv("LGSP_TIMEOUT_S", "1.5")  # a busy machine answers slowly: only hangs time out
    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=25))
    sandbox_handle.faults.reset(seed=11)
    sandbox_handle.faults.transient(0.2)
    sandbox_handle.faults.hang_s = 3.0
    try:
        for name in PULLS:
            runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)
        injected = sandbox_handle.faults.injected
        for name in PULLS:  # a second sync of unchanged sources changes nothing
            assert runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)["rows_changed"] == 0
    finally:
        sandbox_handle.faults.clear()
    wh = runner.open_warehouse(catalog, lgsp_env)
    for name in PULLS:
        assert_identical_to_truth(wh, catalog, sandbox_handle, name)
    assert injected >= 10
    assert wh.count("lgsp_message_log") > 0


def _batch(wh: Any, pipeline: str) -> list[Any]:
    table = wh.system["lgsp_batch"]
    with wh.engine.connect() as conn:
        return conn.execute(sa.select(table).where(table.c.pipeline == pipeline).order_by(table.c.started_at)).all()


def test_sync_killed_half_way_resumes_from_its_last_landed_page(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp import runner

    catalog_dir = small_pages_catalog(tmp_path, page_size=10)
    monkeypatch.setenv("LGSP_CATALOG_DIR", str(catalog_dir))
    catalog = load_catalog(catalog_dir)
    wh = runner.open_warehouse(catalog, lgsp_env)
    plan = sandbox_handle.faults["land"]
    plan.latency_s = 0.25  # 31 pages take ~8 s: time to kill it half-way
    code = "from lgsp import runner; runner.run_pipeline('land_parcels')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batches = _batch(wh, "land_parcels") if sa.inspect(wh.engine).has_table("lgsp_batch") else []
            if batches and (batches[-1].pages or 0) >= 8:
                break
            assert proc.poll() is None, "the sync ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        plan.latency_s = 0.0
        if proc.poll() is None:
            proc.kill()
    killed = _batch(wh, "land_parcels")[-1]
    assert killed.status == "extracting" and killed.pages >= 8
    requests_before = plan.requests
    result = runner.run_pipeline("land_parcels", catalog=catalog, settings=lgsp_env)
    assert result["batch_id"] == killed.batch_id, "the killed batch is resumed, not restarted"
    pages_total = killed.pages + (plan.requests - requests_before)
    assert plan.requests - requests_before < pages_total - killed.pages + 2  # only the missing pages (+token)
    assert_identical_to_truth(wh, catalog, sandbox_handle, "land_parcels")
    assert len(_batch(wh, "land_parcels")) == 1


def test_backfill_pulls_a_window_without_moving_the_cursor(lgsp_env: Any, sandbox_handle: Any,
                                                           tmp_path: Path) -> None:
    from lgsp import runner

    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=50))
    start, end = datetime(2025, 8, 1, tzinfo=timezone.utc), datetime(2025, 9, 1, tzinfo=timezone.utc)
    result = runner.run_pipeline("business_enterprises", catalog=catalog, settings=lgsp_env, since=start, until=end)
    truth = [r for r in sandbox_handle.data.records("enterprise") if start <= r["updated_at"] < end]
    assert result["mode"] == "backfill"
    assert result["rows_pulled"] == len(truth) > 0
    wh = runner.open_warehouse(catalog, lgsp_env)
    assert wh.get_cursor("business_enterprises") is None
    runner.run_pipeline("business_enterprises", catalog=catalog, settings=lgsp_env)  # then the normal sync
    assert_identical_to_truth(wh, catalog, sandbox_handle, "business_enterprises")


def test_lookback_rereads_late_updates_without_duplicates(lgsp_env: Any, sandbox_handle: Any,
                                                          tmp_path: Path) -> None:
    from lgsp import runner

    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=100))
    first = runner.run_pipeline("documents", catalog=catalog, settings=lgsp_env)
    second = runner.run_pipeline("documents", catalog=catalog, settings=lgsp_env)
    cursor = datetime.fromisoformat(first["cursor_to"])
    lookback = catalog.pipelines["documents"].lookback_s
    in_window = [r for r in sandbox_handle.data.records("document")
                 if r["updated_at"].timestamp() >= cursor.timestamp() - lookback]
    assert second["rows_pulled"] == len(in_window) > 0, "the look-back window is read again"
    assert second["rows_changed"] == 0
    assert_identical_to_truth(runner.open_warehouse(catalog, lgsp_env), catalog, sandbox_handle, "documents")
