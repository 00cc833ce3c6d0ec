"""lgsp under the real Airflow scheduler: `lgsp airflow start`, a run triggered through the REST API, pools,
Assets, a late alert from a DeadlineAlert, and OpenLineage events for every task."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_helpers import REPO, WebhookSink, airflow_stack, leftover_processes, lgsp_env

pytestmark = pytest.mark.airflow


def _catalog_with_tight_deadline(tmp_path: Path) -> Path:
    """A copy of the catalog where a dossier run is late 1 second after it is queued."""
    folder = tmp_path / "catalog"
    shutil.copytree(REPO / "catalog", folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    pipelines = folder / "pipelines.yaml"
    text = pipelines.read_text()
    assert "    late_after_s: 1800\n" in text
    pipelines.write_text(text.replace("    late_after_s: 1800\n", "    late_after_s: 1\n", 1))
    return folder


def test_pipeline_triggered_through_the_rest_api_runs_under_the_scheduler(tmp_path: Path,
                                                                          sandbox_handle: Any) -> None:
    from catalog import load_catalog

    sandbox_handle.faults.clear()
    hook = WebhookSink()
    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env(), LGSP_ALERT_WEBHOOK_URL=hook.url,
                   LGSP_CATALOG_DIR=str(_catalog_with_tight_deadline(tmp_path)))
    try:
        with airflow_stack(env, home) as api:
            health = api.request("GET", "/monitor/health")
            assert {k: v["status"] for k, v in health.items()} == {
                "metadatabase": "healthy", "scheduler": "healthy", "triggerer": "healthy", "dag_processor": "healthy"}
            run_id = api.trigger("lgsp_tthc_dossiers")
            assert api.wait_for_run("lgsp_tthc_dossiers", run_id, timeout=240) == "success"
            tasks = {t["task_id"]: t for t in api.task_instances("lgsp_tthc_dossiers", run_id)}
            pools = {p["name"]: p["slots"] for p in api.request("GET", "/pools")["pools"]}
            events = api.request("GET", "/assets/events", params={"source_dag_id": "lgsp_tthc_dossiers"})
            deadline = time.monotonic() + 60  # the late alert comes from the triggerer, asynchronously
            while not [a for a in hook.received if a["run_id"] == run_id] and time.monotonic() < deadline:
                time.sleep(2)
    finally:
        hook.stop()
    assert leftover_processes(str(home)) == []  # every component stopped

    assert {k: t["state"] for k, t in tasks.items()} == {"extract": "success", "validate": "success",
                                                         "load": "success"}
    assert tasks["extract"]["pool"] == "lgsp_tthc" and tasks["extract"]["hostname"]
    catalog = load_catalog()
    assert all(pools[f"lgsp_{name}"] == s.limits.max_concurrency for name, s in catalog.systems.items())

    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        landed = conn.execute(sa.text("select count(*) from core_dossier")).scalar()
    truth = sandbox_handle.data
    assert landed == len(truth.dossiers) - len(truth.dossier_defects)

    # unpausing also lets the scheduler start the latest scheduled interval: look at our run's events only
    ours = [e for e in events["asset_events"] if e["source_run_id"] == run_id]
    assert [e["uri"] for e in ours] == ["lgsp://warehouse/core/dossier"]  # the load task updated the Asset, once

    late = [a for a in hook.received if a["kind"] == "late" and a["run_id"] == run_id]
    assert late and late[0]["dag_id"] == "lgsp_tthc_dossiers" and "not finished 1s after" in late[0]["summary"]
    quoted = run_id.replace(":", "%3A").replace("+", "%2B")
    assert late[0]["run_url"].endswith(f"/dags/lgsp_tthc_dossiers/runs/{quoted}")

    events_file = home / "airflow" / "openlineage" / "events.jsonl"
    lineage = [json.loads(line) for line in events_file.read_text().splitlines()]
    seen = {(e["job"]["name"], e["eventType"]) for e in lineage}
    for task in ("extract", "validate", "load"):
        assert (f"lgsp_tthc_dossiers.{task}", "START") in seen and (f"lgsp_tthc_dossiers.{task}", "COMPLETE") in seen
    assert {e["job"]["namespace"] for e in lineage} == {"lgsp"}
