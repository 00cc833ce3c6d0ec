"""Freshness: each pipeline's last complete sync judged against its objective, on SQLite and PostgreSQL.

The real sandbox pipelines sync; `lgsp status` (CLI), `lgsp.freshness.check_and_alert` (the
lgsp_freshness DAG's task, alerting a loopback webhook) and the gateway read what they left. Time
is moved by ageing `lgsp_cursor.synced_at`, the one value the judgement reads.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from airflow_helpers import WebhookSink
from catalog import CatalogError, load_catalog
from catalog.models import FreshnessSpec
from lgsp import runner
from lgsp.cli import app as lgsp_app
from lgsp.freshness import check_and_alert
from warehouse import Warehouse
from warehouse.store import utc


def _wh(lgsp_env: Any) -> Warehouse:
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    wh.create_all()
    return wh


def _status() -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(lgsp_app, ["status", "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def _states(report: dict[str, Any]) -> dict[str, str]:
    return {p["pipeline"]: p["state"] for p in report["pipelines"]}


def _cursor(wh: Warehouse, pipeline: str) -> Any:
    table = wh.system["lgsp_cursor"]
    with wh.engine.connect() as conn:
        return conn.execute(sa.select(table).where(table.c.pipeline == pipeline)).first()


def _age(wh: Warehouse, pipeline: str, hours: float) -> None:
    """Make the pipeline's last complete sync `hours` old."""
    table = wh.system["lgsp_cursor"]
    with wh.transaction() as conn:
        conn.execute(table.update().where(table.c.pipeline == pipeline).values(
            synced_at=datetime.now(timezone.utc) - timedelta(hours=hours)))


def _others_synced_now(wh: Warehouse, but: str) -> None:
    """Every other pipeline as if it had just synced (they are not under test here)."""
    with wh.transaction() as conn:
        for name in load_catalog().pipelines:
            if name != but:
                wh.set_cursor(conn, name, None, f"{name}-test", synced=True)
    assert all(_cursor(wh, n).synced_at is not None for n in load_catalog().pipelines if n != but)


def test_durations_are_seconds_or_a_number_and_a_unit_and_a_bad_one_names_file_and_field(tmp_path: Path) -> None:
    spec = FreshnessSpec(warn_after="90m", error_after="1d")  # type: ignore[arg-type]
    assert (spec.warn_after, spec.error_after) == (5400.0, 86400.0)
    assert FreshnessSpec(warn_after=30, error_after="2.5h").error_after == 9000.0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warn_after must not be longer than error_after"):
        FreshnessSpec(warn_after="2d", error_after="1d")  # type: ignore[arg-type]
    folder = tmp_path / "catalog"
    shutil.copytree(Path(__file__).resolve().parent.parent / "catalog", folder)
    pipelines = folder / "pipelines.yaml"
    pipelines.write_text(pipelines.read_text().replace("{warn_after: 1h, error_after: 4h}",
                                                       "{warn_after: 1 hour, error_after: 4h}"))
    with pytest.raises(CatalogError) as raised:
        load_catalog(folder)
    message = str(raised.value)
    assert "pipelines.yaml" in message and "tthc_dossiers" in message and "freshness" in message
    assert "'1 hour' is not a duration" in message


def test_a_sync_makes_a_pipeline_fresh_a_quiet_rerun_too_and_a_backfill_does_not(lgsp_env: Any) -> None:
    code, report = _status()
    assert code == 1 and set(_states(report).values()) == {"never"} and report["ok"] is False
    runner.run_pipeline("tthc_dossiers")
    wh = _wh(lgsp_env)
    first = _cursor(wh, "tthc_dossiers")
    assert first.synced_at is not None and first.cursor_value is not None
    code, report = _status()
    assert _states(report)["tthc_dossiers"] == "fresh" and code == 1  # the other pipelines never synced
    tthc = next(p for p in report["pipelines"] if p["pipeline"] == "tthc_dossiers")
    assert tthc["last_run"]["status"] == "loaded" and tthc["last_run"]["rows_pulled"] > 0
    assert (tthc["warn_after_s"], tthc["error_after_s"]) == (3600.0, 14400.0)

    result = runner.run_pipeline("tthc_dossiers")  # nothing new at the source: still a complete sync
    assert result["rows_changed"] == 0
    quiet = _cursor(wh, "tthc_dossiers")
    assert utc(quiet.synced_at) > utc(first.synced_at)
    assert (utc(quiet.cursor_value), quiet.batch_id) == (utc(first.cursor_value), first.batch_id)  # cursor kept

    since = datetime.now(timezone.utc) - timedelta(days=3650)
    assert runner.run_pipeline("tthc_dossiers", since=since)["mode"] == "backfill"
    assert utc(_cursor(wh, "tthc_dossiers").synced_at) == utc(quiet.synced_at)

    table = wh.system["lgsp_cursor"]  # a cursor kept from before synced_at was recorded
    with wh.transaction() as conn:
        conn.execute(table.update().values(synced_at=None))
    _, report = _status()
    tthc = next(p for p in report["pipelines"] if p["pipeline"] == "tthc_dossiers")
    batches = wh.system["lgsp_batch"]
    with wh.engine.connect() as conn:  # its latest loaded batch that was not the backfill stands in
        quiet_batch = conn.execute(sa.select(batches.c.finished_at).where(
            batches.c.mode == "incremental").order_by(batches.c.finished_at.desc()).limit(1)).scalar_one()
    assert tthc["state"] == "fresh" and datetime.fromisoformat(tthc["synced_at"]) == utc(quiet_batch)


def test_status_warns_then_says_stale_and_why_and_exits_1_until_a_sync(lgsp_env: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.backup import create

    runner.run_pipeline("tthc_dossiers")
    wh = _wh(lgsp_env)
    _others_synced_now(wh, but="tthc_dossiers")
    code, report = _status()
    assert [p["problem"].split(":")[0] for p in report["problems"]] == [f"no backup in {lgsp_env.home / 'backups'}"]
    create()
    code, report = _status()
    assert (code, report["ok"], report["problems"]) == (0, True, [])
    assert set(_states(report).values()) == {"fresh"}

    _age(wh, "tthc_dossiers", 2)  # warn after 1h, stale after 4h
    code, report = _status()
    assert code == 0 and _states(report)["tthc_dossiers"] == "warn"
    assert [p["severity"] for p in report["problems"]] == ["warning"]
    assert "last complete sync 2h ago" in report["problems"][0]["problem"]

    sandbox_url = os.environ["LGSP_TTHC_URL"]
    monkeypatch.setenv("LGSP_TTHC_URL", "http://127.0.0.1:9")  # nothing listens: the next run fails
    with pytest.raises(Exception):
        runner.run_pipeline("tthc_dossiers")
    _age(wh, "tthc_dossiers", 5)
    code, report = _status()
    assert code == 1 and _states(report)["tthc_dossiers"] == "stale" and report["ok"] is False
    problems = [p for p in report["problems"] if p.get("pipeline") == "tthc_dossiers"]
    assert [p["severity"] for p in problems] == ["error", "warning"]
    assert "is stale: last complete sync 5h ago (stale after 4h)" in problems[0]["problem"]
    assert "`lgsp run tthc_dossiers`" in problems[0]["problem"]
    assert problems[1]["problem"].startswith("tthc_dossiers: last run failed") and "tthc" in problems[1]["problem"]
    text = CliRunner().invoke(lgsp_app, ["status"], env={"COLUMNS": "200"})
    assert text.exit_code == 1 and "error: tthc_dossiers is stale" in text.stdout

    monkeypatch.setenv("LGSP_TTHC_URL", sandbox_url)  # the peer is back; its breaker closed (as after its reset time)
    from connectors.limits import reset_limits

    reset_limits()
    with wh.transaction() as conn:
        conn.execute(wh.system["lgsp_circuit"].delete())
    runner.run_pipeline("tthc_dossiers")
    code, report = _status()
    assert code == 0 and _states(report)["tthc_dossiers"] == "fresh"


def test_the_check_alerts_once_when_a_pipeline_goes_stale_and_once_when_it_is_fresh_again(
        lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = WebhookSink()
    monkeypatch.setenv("LGSP_ALERT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.lgsp.local:8080")
    try:
        runner.run_pipeline("documents")
        wh = _wh(lgsp_env)
        catalog = load_catalog()
        _others_synced_now(wh, but="documents")
        first = check_and_alert(wh, catalog)
        pipelines = {k: v for k, v in first["states"].items() if not k.startswith(("ref:", "check:"))}
        assert first["alerts"] == [] and set(pipelines.values()) == {"fresh"} and hook.received == []

        _age(wh, "documents", 7)  # stale after 6h
        stale = check_and_alert(wh, catalog)
        assert stale["alerts"] == [{"subject": "documents", "kind": "stale", "sent_to": ["webhook"]}]
        alert = hook.received[-1]
        assert alert["kind"] == "stale" and alert["dag_id"] == "lgsp_documents"
        assert alert["dag_url"] == "http://airflow.lgsp.local:8080/dags/lgsp_documents"
        assert "documents is stale: last complete sync 7h ago" in str(alert["summary"])
        assert "(stale after 6h)" in str(alert["summary"])
        assert check_and_alert(wh, catalog)["alerts"] == [] and len(hook.received) == 1  # once, not every check

        table = wh.system["lgsp_freshness"]
        with wh.engine.connect() as conn:
            kept = conn.execute(sa.select(table).where(table.c.subject == "documents")).one()
        assert kept.state == "stale"

        runner.run_pipeline("documents")
        recovered = check_and_alert(wh, catalog)
        assert recovered["alerts"] == [{"subject": "documents", "kind": "fresh", "sent_to": ["webhook"]}]
        assert hook.received[-1]["kind"] == "fresh" and len(hook.received) == 2
        assert "documents is fresh again" in str(hook.received[-1]["summary"])
    finally:
        hook.stop()


def test_the_gateway_and_the_portal_say_whether_a_dataset_is_up_to_date(lgsp_env: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.api import create_app
    from gateway.service import prepare_database
    from gateway.serving import in_thread
    from gateway.settings import load_gateway_settings

    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "a-test-key-of-32-characters-long")
    runner.run_pipeline("dvcqg_procedures")
    wh, catalog = _wh(lgsp_env), load_catalog()
    prepare_database(lgsp_env.database_url, catalog)
    settings = load_gateway_settings(lgsp_env.database_url)
    with in_thread(create_app(settings, catalog)) as base:
        status = requests.get(f"{base}/api/v1/datasets/procedure", timeout=30).json()["freshness_status"]
        assert status["state"] == "fresh" and status["warn_after_s"] == 108000.0 and status["age_s"] < 600
        page = requests.get(f"{base}/portal/datasets/procedure?lang=en", timeout=30).text
        assert ('<span class="freshness fresh">Yes</span>: synced completely with its source system at least '
                "every 1 day 6 hours") in page
        assert requests.get(f"{base}/api/v1/datasets/citizen", timeout=30).json()["freshness_status"]["state"] == \
            "never"
    _age(wh, "dvcqg_procedures", 80)  # stale after 3 days
    with in_thread(create_app(settings, catalog)) as base:  # a new gateway: the catalog's figures are cached 30 s
        status = requests.get(f"{base}/api/v1/datasets/procedure", timeout=30).json()["freshness_status"]
        assert status["state"] == "stale" and status["age_s"] > 80 * 3600 - 60
        page = requests.get(f"{base}/portal/datasets/procedure", timeout=30).text
        assert ('<span class="freshness stale">Quá hạn</span>: lần đồng bộ đầy đủ gần nhất đã cách đây hơn '
                "3 ngày") in page


def test_the_history_says_what_share_of_the_time_each_pipeline_was_fresh(lgsp_env: Any) -> None:
    wh, catalog = _wh(lgsp_env), load_catalog()
    _others_synced_now(wh, but="")
    t0 = datetime.now(timezone.utc) - timedelta(hours=10)
    table = wh.system["lgsp_cursor"]

    def synced(at: datetime, pipeline: str | None = None) -> None:
        with wh.transaction() as conn:
            where = table.c.pipeline == pipeline if pipeline else sa.true()
            conn.execute(table.update().where(where).values(synced_at=at))

    synced(t0)
    for hours in (0, 1, 3, 7):  # documents: warn after 2h, stale after 6h
        check_and_alert(wh, catalog, now=t0 + timedelta(hours=hours))
    synced(t0 + timedelta(hours=8), "documents")
    check_and_alert(wh, catalog, now=t0 + timedelta(hours=8))
    from lgsp.availability import availability

    [documents] = [r for r in availability(wh, days=10 / 24, now=t0 + timedelta(hours=10))
                   if r["subject"] == "documents"]
    assert documents == {"subject": "documents", "observed_s": 36000.0, "fresh": 0.5, "warn": 0.4, "stale": 0.1,
                         "incidents": 1, "longest_stale_s": 3600.0}
    [later] = [r for r in availability(wh, days=5 / 24, now=t0 + timedelta(hours=10)) if r["subject"] == "documents"]
    assert (later["fresh"], later["warn"], later["stale"], later["incidents"]) == (0.4, 0.4, 0.2, 1)  # from t0+5h

    result = CliRunner().invoke(lgsp_app, ["status", "--history", "--days", "1", "--json"])
    assert result.exit_code == 0, result.output
    shares = {r["subject"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])["subjects"]}
    assert abs(shares["documents"]["stale"] - 0.1) < 0.01 and shares["documents"]["incidents"] == 1
    assert "feed:government_report" in shares  # the feeds' deadlines too
    shown = CliRunner().invoke(lgsp_app, ["status", "--history"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "Freshness over the last 30 days" in shown.stdout and "documents" in shown.stdout
