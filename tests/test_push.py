"""Push through the outbox: nothing lost, nothing doubled, dead letters kept and re-sent.

The receivers are the sandbox's DVCQG portal (REST, session login, Idempotency-Key)
and the government reporting system (SOAP, WS-Security); faults include lost
acknowledgements (the receiver applied the message, the client never heard).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from catalog import load_catalog
from tests.test_systems import small_pages_catalog


def _outbox_status(wh: Any, feed: str) -> dict[str, int]:
    table = wh.system["lgsp_outbox"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.status, sa.func.count()).where(table.c.feed == feed)
                            .group_by(table.c.status)).all()
    return {r[0]: int(r[1]) for r in rows}


def _dossiers_loaded(settings: Any, tmp_path: Path) -> Any:
    from lgsp import runner

    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=300))
    runner.run_pipeline("tthc_dossiers", catalog=catalog, settings=settings)
    return catalog, runner.open_warehouse(catalog, settings)


def test_dossiers_reach_dvcqg_exactly_once_through_20pct_faults(lgsp_env: Any, sandbox_handle: Any,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp import outbox

    catalog, wh = _dossiers_loaded(lgsp_env, tmp_path)
    portal = sandbox_handle.dvcqg
    monkeypatch.setenv("LGSP_TIMEOUT_S", "1.5")  # a busy machine answers slowly: only hangs time out
    plan = sandbox_handle.faults["dvcqg"]
    plan.reset(seed=21)
    plan.transient(0.2)
    plan.hang_s = 3.0
    try:
        sync = outbox.push(wh, catalog, "dvcqg_dossier_sync")
        progress = outbox.push(wh, catalog, "dvcqg_dossier_progress")
        again = outbox.push(wh, catalog, "dvcqg_dossier_sync")  # nothing new to send
    finally:
        plan.clear()
    with wh.engine.connect() as conn:
        landed = {r[0] for r in conn.execute(sa.select(wh.core["dossier"].c.dossier_id))}
    assert plan.injected_by_kind.get("reset", 0) + plan.injected_by_kind.get("timeout", 0) > 0
    assert sync["acked"] == sync["queued"] > 0 and again == {"queued": 0, "acked": 0, "failed": 0, "dead": 0}
    assert progress["acked"] == progress["queued"] > 0
    assert set(portal.dossiers) == landed, "every landed dossier reached the portal"
    assert all(n == 1 for n in portal.apply_counts.values()), "and none was applied twice (idempotency keys)"
    assert _outbox_status(wh, "dvcqg_dossier_sync") == {"acked": sync["queued"]}


def test_indicator_reports_reach_the_government_system_exactly_once(lgsp_env: Any, sandbox_handle: Any,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from indicators import compute_indicator
    from lgsp import outbox

    catalog, wh = _dossiers_loaded(lgsp_env, tmp_path)
    compute_indicator(wh, catalog.indicators["online_submission_rate"])  # all of them: tests/test_indicators_push.py
    inbox = sandbox_handle.reporting_inbox
    monkeypatch.setenv("LGSP_TIMEOUT_S", "1.5")  # a busy machine answers slowly: only hangs time out
    plan = sandbox_handle.faults["reporting"]
    plan.reset(seed=4)
    plan.transient(0.3)
    plan.hang_s = 3.0
    try:
        result = outbox.push(wh, catalog, "government_report")
    finally:
        plan.clear()
    mart = wh.system["mart_indicator_value"]
    with wh.engine.connect() as conn:
        expected = {(r.indicator, r.unit_code, r.period) for r in
                    conn.execute(sa.select(mart).where(mart.c.unit_level == "province", mart.c.period_type == "month"))}
    received = {(r["indicator_code"], r["unit_code"], r["period"]) for r in inbox.reports.values()}
    assert result["acked"] == result["queued"] == len(expected) > 0
    assert expected <= received
    assert all(n == 1 for n in inbox.apply_counts.values()), "no report applied twice"
    assert plan.injected > 0


def test_a_dead_peer_opens_the_circuit_then_dead_letters_are_retried(lgsp_env: Any, sandbox_handle: Any,
                                                                     tmp_path: Path) -> None:
    from connectors import CircuitOpen
    from connectors.limits import reset_limits
    from lgsp import outbox
    from lgsp.exchanges import circuit_states

    catalog_dir = small_pages_catalog(tmp_path, page_size=300)
    feeds = yaml.safe_load((catalog_dir / "feeds.yaml").read_text(encoding="utf-8"))
    feeds["feeds"]["dvcqg_dossier_sync"]["max_attempts"] = 1
    (catalog_dir / "feeds.yaml").write_text(yaml.safe_dump(feeds, allow_unicode=True), encoding="utf-8")
    systems = yaml.safe_load((catalog_dir / "systems.yaml").read_text(encoding="utf-8"))
    systems["systems"]["dvcqg"]["retry"] = {"attempts": 2, "backoff_s": 0.01, "max_backoff_s": 0.02}
    systems["systems"]["dvcqg"]["limits"] = {"breaker_failures": 5, "breaker_reset_s": 300}
    (catalog_dir / "systems.yaml").write_text(yaml.safe_dump(systems, allow_unicode=True), encoding="utf-8")
    catalog = load_catalog(catalog_dir)
    from lgsp import runner

    runner.run_pipeline("tthc_dossiers", catalog=catalog, settings=lgsp_env)
    wh = runner.open_warehouse(catalog, lgsp_env)
    plan = sandbox_handle.faults["dvcqg"]
    plan.error_rate = 1.0
    try:
        with pytest.raises(CircuitOpen, match="circuit open"):
            outbox.push(wh, catalog, "dvcqg_dossier_sync")
        assert _outbox_status(wh, "dvcqg_dossier_sync").get("dead") == 2  # 2 x 2 attempts, then the 5th opens it
        assert [c["state"] for c in circuit_states(wh) if c["system"] == "dvcqg"] == ["open"]
        reset_limits()  # a new process (the next Airflow task) remembers the open circuit from the warehouse
        seen = plan.requests
        with pytest.raises(CircuitOpen):
            outbox.dispatch(wh, catalog, catalog.feeds["dvcqg_dossier_sync"])
        assert plan.requests == seen, "an open circuit sends nothing"
    finally:
        plan.clear()
    with wh.transaction() as conn:  # the operator saw the peer recover (or waited breaker_reset_s)
        conn.execute(wh.system["lgsp_circuit"].delete())
    reset_limits()
    assert outbox.requeue(wh, feed="dvcqg_dossier_sync") == 2
    counts = outbox.dispatch(wh, catalog, catalog.feeds["dvcqg_dossier_sync"])
    assert counts["dead"] == 0 and _outbox_status(wh, "dvcqg_dossier_sync") == {"acked": counts["acked"]}


def test_message_log_records_every_exchange_and_never_a_secret(lgsp_env: Any, sandbox_handle: Any,
                                                               tmp_path: Path) -> None:
    from lgsp import outbox, runner

    catalog_dir = small_pages_catalog(tmp_path, page_size=300)
    systems = yaml.safe_load((catalog_dir / "systems.yaml").read_text(encoding="utf-8"))
    systems["systems"]["dvcqg"]["message_log"] = {"bodies": True}
    (catalog_dir / "systems.yaml").write_text(yaml.safe_dump(systems, allow_unicode=True), encoding="utf-8")
    catalog = load_catalog(catalog_dir)
    runner.run_pipeline("tthc_dossiers", catalog=catalog, settings=lgsp_env)
    runner.run_pipeline("dvcqg_procedures", catalog=catalog, settings=lgsp_env)
    wh = runner.open_warehouse(catalog, lgsp_env)
    outbox.push(wh, catalog, "dvcqg_dossier_sync")
    table = wh.system["lgsp_message_log"]
    with wh.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    by_system = {r["system"] for r in rows}
    assert {"tthc", "dvcqg"} <= by_system
    assert all(len(r["request_sha256"]) == 64 and len(r["response_sha256"]) == 64 for r in rows)
    assert all(r["client"] == "lgsp" and r["duration_ms"] >= 0 for r in rows)
    logged = "\n".join(str(v) for r in rows for v in r.values())
    for secret in sandbox_handle.env().values():
        if "sbx-" in secret or secret == "test-key-not-secret":
            assert secret not in logged
    bodies = [r["request_body"] for r in rows if r["system"] == "dvcqg" and r["request_body"]]
    assert any("DongBoHoSoMC" in b for b in bodies), "bodies are kept when the system asks for it"
    some_id = next(iter(sandbox_handle.data.records("dossier")))["dossier_id"]
    assert any(some_id in b for b in bodies)
    assert not any('"password": "sbx-' in b for b in bodies)
    tthc = [r for r in rows if r["system"] == "tthc"]
    assert tthc and all(r["request_body"] is None for r in tthc), "no bodies unless configured"
