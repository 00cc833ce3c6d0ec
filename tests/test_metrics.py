"""Metrics for Prometheus: the platform's state as `lgsp status` reports it (lgsp.metrics: `lgsp metrics`, the
textfile, GET /metrics) and the gateway's own counters summed over `lgsp serve`'s worker processes
(gateway.metrics), through a reload; on SQLite and a real PostgreSQL, with the real sandbox and pipelines.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from airflow_helpers import REPO
from catalog import load_catalog
from gateway.api import create_app
from gateway.serving import in_thread
from gateway.settings import GatewayConfigError, load_gateway_settings
from lgsp import runner
from lgsp.cli import app as lgsp_app
from lgsp.metrics import PlatformCollector, text
from lgsp.status import status_report
from test_freshness import _age, _wh
from test_gateway_reload import _catalog, lgsp_serve
from test_write_modes import batch, firms, write
from warehouse import Warehouse

TOKEN = "a-metrics-token-of-32-characters"


def samples(body: str | bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed by prometheus_client's own parser (a malformed text fails here)."""
    found = {}
    for family in text_string_to_metric_families(body.decode() if isinstance(body, bytes) else body):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls)


def test_the_platforms_metrics_say_what_lgsp_status_says(lgsp_env: Any, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from lgsp.backup import create
    from lgsp.freshness import check_and_alert

    runner.run_pipeline("tthc_dossiers")
    wh = _wh(lgsp_env)
    catalog = load_catalog()
    found, report = samples(text(wh, catalog)), status_report(wh, catalog)
    assert value(found, "lgsp_status_up") == 1 and value(found, "lgsp_status_ok") == 0  # others never synced
    for severity in ("error", "warning"):
        assert value(found, "lgsp_status_problems", severity=severity) == sum(
            1 for p in report["problems"] if p["severity"] == severity)
    for p in report["pipelines"]:  # each pipeline's state, one-hot, as status judged it
        states = {s: value(found, "lgsp_pipeline_freshness", pipeline=p["pipeline"], state=s)
                  for s in ("fresh", "warn", "stale", "never", "unchecked")}
        assert states == {s: (1.0 if s == p["state"] else 0.0) for s in states}, p["pipeline"]
        assert value(found, "lgsp_dataset_open_quarantine_rows", pipeline=p["pipeline"],
                     dataset=p["dataset"]) == p["open_quarantine"]
    tthc = next(p for p in report["pipelines"] if p["pipeline"] == "tthc_dossiers")
    assert tthc["state"] == "fresh" and tthc["last_run"]["rows_pulled"] > 0
    synced = value(found, "lgsp_pipeline_last_complete_sync_timestamp_seconds", pipeline="tthc_dossiers")
    assert synced == datetime.fromisoformat(tthc["synced_at"]).timestamp()
    assert value(found, "lgsp_pipeline_stale_after_seconds", pipeline="tthc_dossiers") == 14400
    assert value(found, "lgsp_pipeline_last_run_status", pipeline="tthc_dossiers", state="loaded") == 1
    assert value(found, "lgsp_pipeline_last_run_rows", pipeline="tthc_dossiers", kind="pulled") == \
        tthc["last_run"]["rows_pulled"]
    assert value(found, "lgsp_pipeline_last_complete_sync_timestamp_seconds", pipeline="land_parcels") is None
    assert value(found, "lgsp_system_circuit", system="tthc", state="closed") == 1
    assert value(found, "lgsp_backups") == 0 and value(found, "lgsp_backup_last_timestamp_seconds") is None
    for feed in report["feeds"]:
        assert value(found, "lgsp_feed_messages", feed=feed["feed"], status="dead") == feed["dead"]
    for ref in report["references"]:
        assert value(found, "lgsp_reference_orphan_rows", reference=ref["reference"],
                     severity=ref["severity"]) == ref["orphans"]
    assert report["group_checks"]
    for check in report["group_checks"]:
        assert value(found, "lgsp_group_check_breaking_groups", check=check["check"],
                     severity=check["severity"]) == check["breaking"]

    _age(wh, "tthc_dossiers", 5)  # stale after 4h; a run that fails; a backup; the quality scores recorded
    sandbox_url = os.environ["LGSP_TTHC_URL"]
    monkeypatch.setenv("LGSP_TTHC_URL", "http://127.0.0.1:9")
    with pytest.raises(Exception):
        runner.run_pipeline("tthc_dossiers")
    monkeypatch.setenv("LGSP_TTHC_URL", sandbox_url)
    backup = create()
    check_and_alert(wh, catalog)
    found = samples(text(wh, catalog))
    assert value(found, "lgsp_pipeline_freshness", pipeline="tthc_dossiers", state="stale") == 1
    assert value(found, "lgsp_pipeline_last_run_status", pipeline="tthc_dossiers", state="failed") == 1
    age = time.time() - value(found, "lgsp_pipeline_last_complete_sync_timestamp_seconds", pipeline="tthc_dossiers")
    assert age > value(found, "lgsp_pipeline_stale_after_seconds", pipeline="tthc_dossiers")  # the alert's rule
    assert value(found, "lgsp_backups") == 1
    assert value(found, "lgsp_backup_last_timestamp_seconds") == backup.created_at.timestamp()
    assert value(found, "lgsp_pipeline_runs_24h", pipeline="tthc_dossiers", status="loaded") == 1
    assert value(found, "lgsp_pipeline_runs_24h", pipeline="tthc_dossiers", status="failed") == 1  # the one after
    assert value(found, "lgsp_pipeline_rows_24h", pipeline="tthc_dossiers", kind="pulled") == \
        tthc["last_run"]["rows_pulled"]
    scored = {dict(ls)["dimension"]: v for (n, ls), v in found.items()
              if n == "lgsp_quality_score" and dict(ls)["dataset"] == "dossier"}
    assert set(scored) == {"overall", "validity", "timeliness", "consistency"}  # accuracy: no drift check yet
    assert scored["timeliness"] == 0.0 and scored["overall"] == min(scored.values())  # stale: the weakest

    cli = CliRunner()
    printed = cli.invoke(lgsp_app, ["metrics"])
    assert printed.exit_code == 0, printed.output
    assert value(samples(printed.stdout), "lgsp_pipeline_freshness", pipeline="tthc_dossiers", state="stale") == 1
    target = tmp_path / "textfile" / "lgsp.prom"
    refused = cli.invoke(lgsp_app, ["metrics", "--textfile", str(target)], env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and f"folder {target.parent} does not exist" in "".join(refused.output.split("\n"))
    target.parent.mkdir()
    refused = cli.invoke(lgsp_app, ["metrics", "--textfile", str(target.with_suffix(".txt"))],
                         env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and "only files ending in .prom" in " ".join(refused.output.split())
    written = cli.invoke(lgsp_app, ["metrics", "--textfile", str(target)])
    assert written.exit_code == 0, written.output
    assert value(samples(target.read_text()), "lgsp_backups") == 1
    assert [p.name for p in target.parent.iterdir()] == ["lgsp.prom"]  # no temporary file left


def test_the_scanned_parts_are_kept_longer_than_the_rest(lgsp_env: Any) -> None:
    runner.run_pipeline("tthc_dossiers")
    wh, catalog = _wh(lgsp_env), load_catalog()
    kept = PlatformCollector(lambda: wh, catalog, cache_s=0.0, scan_s=3600.0)
    fresh = PlatformCollector(lambda: wh, catalog, cache_s=0.0, scan_s=0.0)
    cached = PlatformCollector(lambda: wh, catalog, cache_s=3600.0, scan_s=0.0)

    def collect(collector: PlatformCollector) -> dict[str, float]:
        found = {m.name: m for m in collector.collect()}
        state = next(s.value for s in found["lgsp_pipeline_freshness"].samples
                     if s.labels == {"pipeline": "tthc_dossiers", "state": "stale"})
        return {"stale": state, "scanned": found["lgsp_status_scanned_timestamp_seconds"].samples[0].value}

    first = [collect(c) for c in (kept, fresh, cached)]
    assert all(f["stale"] == 0 for f in first)
    time.sleep(0.05)
    _age(wh, "tthc_dossiers", 5)
    kept_now, fresh_now, cached_now = (collect(c) for c in (kept, fresh, cached))
    assert kept_now["stale"] == 1 and kept_now["scanned"] == first[0]["scanned"]  # the scan kept, the rest read
    assert fresh_now["stale"] == 1 and fresh_now["scanned"] > first[1]["scanned"]
    assert cached_now == first[2]  # the whole answer kept


def test_a_store_that_does_not_answer_is_said_and_the_scrape_stands(tmp_path: Path) -> None:
    catalog = load_catalog()
    down = PlatformCollector(lambda: Warehouse("postgresql://lgsp@127.0.0.1:9/nothing", catalog), catalog,
                             cache_s=0.0, scan_s=0.0)
    found = {m.name: m for m in down.collect()}
    assert found["lgsp_status_up"].samples[0].value == 0
    assert set(found) == {"lgsp_status_up", "lgsp_status_collect_seconds"}


@pytest.fixture
def gateway_home(tmp_path: Path, sandbox_env: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LGSP_DATABASE_URL", url)
    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "test-pseudonym-key-not-a-secret")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from gateway.service import prepare_database

    runner.run_pipeline("tthc_dossiers")
    prepare_database(url, load_catalog())
    yield url


def test_metrics_want_the_token_and_are_off_without_one(gateway_home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with in_thread(create_app(load_gateway_settings(gateway_home))) as base:
        off = requests.get(f"{base}/metrics", timeout=30)
        assert off.status_code == 403 and "LGSP_METRICS_TOKEN" in off.json()["error"]["message"]
    monkeypatch.setenv("LGSP_METRICS_TOKEN", "short")
    with pytest.raises(GatewayConfigError, match="LGSP_METRICS_TOKEN must be at least 16 characters"):
        load_gateway_settings(gateway_home)
    monkeypatch.setenv("LGSP_METRICS_TOKEN", TOKEN)
    monkeypatch.setenv("LGSP_METRICS_CACHE_S", "soon")
    with pytest.raises(GatewayConfigError, match="LGSP_METRICS_CACHE_S='soon': give a number of 0 or more"):
        load_gateway_settings(gateway_home)
    monkeypatch.delenv("LGSP_METRICS_CACHE_S")
    settings = load_gateway_settings(gateway_home)
    assert TOKEN not in repr(settings)
    with in_thread(create_app(settings)) as base:
        for headers in ({}, {"Authorization": "Bearer not-the-token-at-all-no"}, {"Authorization": f"Basic {TOKEN}"}):
            refused = requests.get(f"{base}/metrics", headers=headers, timeout=30)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        before = samples(requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                                      timeout=30).text)
        page = requests.get(f"{base}/api/v1/datasets/dossier/records", params={"limit": 7}, timeout=30)
        assert page.status_code == 200 and len(page.json()["records"]) == 7
        assert requests.get(f"{base}/api/v1/datasets/no_such/records", timeout=30).status_code == 404
        answer = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        after = samples(answer.text)
    route = "/api/v1/datasets/dossier/records"
    assert total(after, "lgsp_gateway_requests_total", route=route, status="200") - \
        total(before, "lgsp_gateway_requests_total", route=route, status="200") == 1
    assert total(after, "lgsp_gateway_rows_sent_total", dataset="dossier") - \
        total(before, "lgsp_gateway_rows_sent_total", dataset="dossier") == 7
    assert total(after, "lgsp_gateway_reads_total", dataset="dossier", action="records", status="200") - \
        total(before, "lgsp_gateway_reads_total", dataset="dossier", action="records", status="200") == 1
    assert total(after, "lgsp_gateway_request_duration_seconds_count", route=route) - \
        total(before, "lgsp_gateway_request_duration_seconds_count", route=route) == 1
    routes = {dict(ls)["route"] for (n, ls) in after if n == "lgsp_gateway_requests_total"}
    assert not any("no_such" in r for r in routes), routes  # a caller's path never becomes a label
    assert total(after, "lgsp_gateway_requests_total", status="404") >= 1
    assert value(after, "lgsp_status_up") == 1
    assert value(after, "lgsp_pipeline_freshness", pipeline="tthc_dossiers", state="fresh") == 1

    exposed = {n for (n, _) in after} | {f.name for f in text_string_to_metric_families(answer.text)}
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "lgsp-alerts.yml").read_text())["groups"][0]["rules"]
    named = {name for rule in rules for name in re.findall(r"\b(lgsp_[a-z0-9_]+)", rule["expr"])}
    assert len(rules) >= 15 and named and named <= exposed, named - exposed  # each alert rule names real metrics
    board = json.loads((REPO / "deploy" / "grafana" / "lgsp-overview.json").read_text())
    graphed = {name for panel in board["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(lgsp_[a-z0-9_]+)", target["expr"])}
    assert len(board["panels"]) >= 12 and graphed and graphed <= exposed, graphed - exposed  # and each panel


@pytest.mark.postgres
def test_lgsp_serve_sums_its_workers_counts_through_a_reload(pg_url: str, tmp_path: Path) -> None:
    folder, home = tmp_path / "catalog", tmp_path / "home"
    _catalog(folder, "integer")
    env = {**os.environ, "LGSP_HOME": str(home), "LGSP_DATABASE_URL": pg_url, "LGSP_CATALOG_DIR": str(folder),
           "LGSP_GATEWAY_PSEUDONYM_KEY": "a-test-key-of-32-characters-long", "PYTHONPATH": str(REPO),
           "LGSP_METRICS_TOKEN": TOKEN, "LGSP_GATEWAY_ANONYMOUS_RATE_PER_S": "100000", "NO_COLOR": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    catalog = load_catalog(folder)
    wh = Warehouse(pg_url, catalog)
    wh.create_all()
    write(wh, catalog.datasets["firm"], batch(firms(), "b1"))
    wh.engine.dispose()
    stale = home / "run" / "metrics"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"left by an earlier gateway")  # emptied when lgsp serve starts
    scrape = {"Authorization": f"Bearer {TOKEN}"}

    def workers() -> set[int]:
        return {int(p.name.split("_")[-1].split(".")[0]) for p in stale.glob("*.db")}

    def counts(base: str) -> tuple[float, float, float]:
        found = samples(requests.get(f"{base}/metrics", headers=scrape, timeout=30).text)
        return (total(found, "lgsp_gateway_requests_total", route="/api/v1/datasets/firm/records", status="200"),
                total(found, "lgsp_gateway_rows_sent_total", dataset="firm"),
                total(found, "lgsp_gateway_requests_total", route="unmatched"))

    with lgsp_serve(env, tmp_path / "gateway.log") as (_, base):
        assert not (stale / "counter_1.db").exists()
        sent, deadline = 0, time.monotonic() + 60
        while sent < 40 or len(workers()) < 2:  # a new connection each: the kernel spreads them over the workers
            answer = requests.get(f"{base}/api/v1/datasets/firm/records", params={"limit": 3}, timeout=30)
            assert answer.status_code == 200 and len(answer.json()["records"]) == 3
            sent += 1  # on a busy machine one worker may take every connection until the other is up
            assert time.monotonic() < deadline, f"one worker answered all {sent} reads"
        for n in range(25):  # paths no route has: one label, however many paths
            assert requests.get(f"{base}/probe/{n}/x{n}", timeout=30).status_code == 404
        assert len(workers()) == 2, "both workers answered and counted"
        seen = {counts(base) for _ in range(10)}  # whichever worker answers: the same sums
        assert seen == {(float(sent), 3.0 * sent, 25.0)}, seen

        pid = int((home / "gateway.pid").read_text().split()[0])
        old = workers()
        os.kill(pid, signal.SIGHUP)  # the workers replaced one by one: their counts stay
        deadline = time.monotonic() + 60
        while not (workers() - old and len(workers() - old) == 2):
            requests.get(f"{base}/health", timeout=30)
            assert time.monotonic() < deadline, "the workers were not replaced"
            time.sleep(0.2)
        for _ in range(10):
            assert requests.get(f"{base}/api/v1/datasets/firm/records", params={"limit": 2}, timeout=30).ok
        assert {counts(base) for _ in range(6)} == {(sent + 10.0, 3.0 * sent + 20.0, 25.0)}
        found = samples(requests.get(f"{base}/metrics", headers=scrape, timeout=30).text)
        assert value(found, "lgsp_status_up") == 1 and total(found, "lgsp_pipeline_info") == len(catalog.pipelines)


def test_a_pipelines_last_runs_are_found_by_an_index_made_on_an_older_store_too(database_url: str) -> None:
    """`lgsp status` and every scrape ask each pipeline's latest batch and the last day's: lgsp_batch keeps every
    batch, so both go through its indexes, which create_all makes on a store an older lgsp made without them."""
    from datetime import timedelta, timezone

    import sqlalchemy as sa

    from lgsp.status import _last_runs

    catalog = load_catalog()
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    with wh.transaction() as conn:  # a store from before the indexes
        for name in ("ix_lgsp_batch_pipeline_started", "ix_lgsp_batch_started"):
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("DELETE FROM lgsp_schema_state")  # as an older lgsp's check left it: another fingerprint
    wh.engine.dispose()
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    table, now = wh.system["lgsp_batch"], datetime.now(timezone.utc)
    pipelines = list(catalog.pipelines)[:3]
    rows = [{"batch_id": f"b{i}", "pipeline": pipelines[i % 2], "dataset": "d", "source_system": "s",
             "status": ("failed", "loaded")[i % 3 > 0], "started_at": now - timedelta(minutes=15 * (400 - i)),
             "rows_pulled": i, "rows_landed": i, "rows_quarantined": 0, "rows_superseded": 0, "rows_changed": 0}
            for i in range(400)]
    with wh.transaction() as conn:
        conn.execute(table.insert(), rows)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE lgsp_batch")
        else:
            conn.exec_driver_sql("ANALYZE")
    statements: list[tuple[str, Any]] = []

    @sa.event.listens_for(wh.engine, "before_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM lgsp_batch" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, parameters))

    with wh.engine.connect() as conn:
        runs = _last_runs(conn, wh.system, pipelines)
    assert set(runs) == set(pipelines[:2]), "a pipeline never run has no last run"
    for number, pipeline in ((399, pipelines[1]), (398, pipelines[0])):
        assert runs[pipeline]["batch_id"] == f"b{number}" and runs[pipeline]["rows_pulled"] == number
    found = samples(text(wh, catalog))
    # a batch every 30 minutes (b305..b399, the odd ones): 48 in the last day, each third failed
    assert value(found, "lgsp_pipeline_runs_24h", pipeline=pipelines[1], status="loaded") == 32
    assert value(found, "lgsp_pipeline_runs_24h", pipeline=pipelines[1], status="failed") == 16
    explain = "EXPLAIN " if wh.dialect == "postgresql" else "EXPLAIN QUERY PLAN "
    plans = []
    for statement, parameters in statements[:1] + [s for s in statements if "count(" in s[0]][:1]:
        with wh.engine.connect() as conn:
            if wh.dialect == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # 400 rows: the planner may prefer a scan
            plans.append(" ".join(str(r) for r in conn.exec_driver_sql(explain + statement, parameters).all()))
    assert len(plans) == 2 and all("ix_lgsp_batch_" in plan and "SCAN lgsp_batch" not in plan
                                   and "Seq Scan" not in plan for plan in plans), plans
    wh.engine.dispose()
