"""The consolidation end to end: the three legacy systems over loopback HTTP -> merger_* tables on SQLite and PostgreSQL."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from consolidation.mapping import commune_table
from consolidation.pipeline import run_merger
from consolidation.tables import merger_tables
from sandbox.legacy import LegacyHandle, start_legacy_sandbox
from sandbox.legacy_data import LEGACY_SYSTEMS
from warehouse.store import make_engine

CONSOLIDATED = ("merger_citizen", "merger_enterprise", "merger_dossier")


@pytest.fixture(scope="module")
def legacy() -> Iterator[LegacyHandle]:
    handle = start_legacy_sandbox(seed=11, citizens=300, enterprises=100, dossiers=300)
    yield handle
    handle.stop()


@pytest.fixture
def legacy_env(legacy: LegacyHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LegacyHandle:
    from connectors.limits import reset_limits

    for name, value in legacy.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LGSP_HOME", str(tmp_path))
    legacy.faults.clear()
    reset_limits()
    return legacy


def _read(url: str) -> dict[str, list[dict[str, object]]]:
    engine = make_engine(url)
    tables = merger_tables(sa.MetaData())
    with engine.connect() as conn:
        rows = {name: [dict(r._mapping) for r in conn.execute(sa.select(t))] for name, t in tables.items()}
    engine.dispose()
    return rows


def test_counts_balance_and_result_matches_ground_truth(legacy_env: LegacyHandle, database_url: str,
                                                        tmp_path: Path) -> None:
    outcome = run_merger(database_url, str(tmp_path / "lake"))
    stored = _read(database_url)
    truth = legacy_env.data.truth
    # records in = consolidated + in review, for every legacy system and kind, as stored in the warehouse
    recon = stored["merger_reconciliation"]
    assert {r["legacy_system"] for r in recon} == set(LEGACY_SYSTEMS)
    for row in recon:
        served = len(legacy_env.data.records[row["legacy_system"]][row["entity"]])  # type: ignore[index]
        assert row["records_in"] == served
        assert row["records_in"] == row["consolidated"] + row["in_review"] and row["balanced"]
    # every record ends in exactly one consolidated record's lineage or in review
    home: dict[str, str] = {}
    for name in CONSOLIDATED:
        for row in stored[name]:
            for ref in json.loads(str(row["sources"])):
                assert ref not in home, f"{ref} in two consolidated records"
                home[ref] = str(row["consolidated_id"])
    reviewed = {f"{r['legacy_system']}:{r['record_key']}": r["reason_code"] for r in stored["merger_review"]}
    assert not home.keys() & reviewed.keys()
    assert len(home) + len(reviewed) == legacy_env.data.count()
    # the planted review cases, and nothing else, are in review with their reason
    assert reviewed == {f"{s}:{key}": reason for (s, _, key), reason in truth.review.items()}
    # the records of one entity share one consolidated record, and no consolidated record mixes entities
    by_entity: dict[str, set[str]] = defaultdict(set)
    by_record: dict[str, set[str]] = defaultdict(set)
    for (system, _, key), entity in truth.entity_of.items():
        by_entity[entity].add(home[f"{system}:{key}"])
        by_record[home[f"{system}:{key}"]].add(entity)
    assert all(len(ids) == 1 for ids in by_entity.values())
    assert all(len(entities) == 1 for entities in by_record.values())
    assert sum(1 for ids in by_entity.values() if ids) == sum(len(stored[n]) for n in CONSOLIDATED)
    # the new province's communes in the result are exactly the official ones
    communes = {str(r["commune_code"]) for n in CONSOLIDATED for r in stored[n]}
    assert communes == set(commune_table().new_communes) and len(communes) == 129
    assert outcome.totals()["merged"] > 0 and outcome.totals()["in_review"] == len(truth.review)


def test_decisions_say_which_source_won_and_why(legacy_env: LegacyHandle, database_url: str, tmp_path: Path) -> None:
    run_merger(database_url, str(tmp_path / "lake"))
    stored = _read(database_url)
    decisions = stored["merger_decision"]
    rules = {(d["entity"], d["field"], d["rule"]) for d in decisions}
    assert {("citizen", "full_name", "best_written_form"), ("citizen", "address", "latest_update"),
            ("citizen", "birth_date", "cccd_consistent"), ("enterprise", "status", "latest_update"),
            ("citizen", "_match", "personal_id"), ("citizen", "_match", "name_birth"),
            ("enterprise", "_match", "tax_code")} <= rules
    citizens = {r["consolidated_id"]: r for r in stored["merger_citizen"]}
    for decision in decisions:
        assert decision["why"] and decision["winning_source"]
        assert decision["winning_source"] in str(citizens.get(decision["consolidated_id"], {}).get("sources", "")) \
            or decision["entity"] != "citizen"
        if decision["field"] == "address" and decision["entity"] == "citizen":
            assert citizens[decision["consolidated_id"]]["address"] == decision["winning_value"]
            assert json.loads(str(decision["losing_values"]))
    merged = [r for r in stored["merger_citizen"] if int(r["source_count"]) > 1]  # type: ignore[call-overload]
    assert merged and all(r["full_name"] == r["full_name"].strip() and not r["full_name"].isupper()  # type: ignore[union-attr]
                          for r in merged)
    typo = [d for d in decisions if d["field"] == "birth_date"]
    assert typo and all(d["rule"] == "cccd_consistent" for d in typo)


def test_rerun_changes_nothing(legacy_env: LegacyHandle, database_url: str, tmp_path: Path) -> None:
    first = run_merger(database_url, str(tmp_path / "lake"))
    before = _read(database_url)
    second = run_merger(database_url, str(tmp_path / "lake"))
    assert first.changed_rows() > 0 and second.changed_rows() == 0
    assert _read(database_url) == before


def test_pull_survives_faults_and_refuses_a_wrong_key(legacy_env: LegacyHandle, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    for system in LEGACY_SYSTEMS:
        legacy_env.faults[system].error_rate = 0.2
        legacy_env.faults[system].throttle_rate = 0.1
    outcome = run_merger(url, str(tmp_path / "lake"))
    assert sum(legacy_env.faults[s].injected for s in LEGACY_SYSTEMS) > 0
    assert outcome.totals()["records_in"] == legacy_env.data.count()
    assert all(r["balanced"] for r in outcome.reconciliation)
    engine = make_engine(url)
    with engine.connect() as conn:
        logged = dict(conn.execute(sa.text("SELECT status, count(*) FROM lgsp_message_log "
                                           "WHERE system LIKE 'legacy_%' GROUP BY status")).all())
    engine.dispose()
    assert logged["ok"] >= 9 and logged.get("http_error", 0) > 0  # 9 listings at least, and the 503/429 answers
    answer = requests.get(legacy_env.urls["legacy_ha_nam"] + "/api/citizens", timeout=5,
                          headers={"X-API-Key": "wrong"})
    assert answer.status_code == 401
    legacy_env.faults.clear()
    monkeypatch.setenv("LGSP_LEGACY_HA_NAM_API_KEY", "wrong")
    from connectors import ConnectorError

    with pytest.raises(ConnectorError, match="legacy_ha_nam"):
        run_merger(url, str(tmp_path / "lake"))


def test_cli_run_writes_the_report(legacy_env: LegacyHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.cli import app

    monkeypatch.setenv("LGSP_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    result = CliRunner().invoke(app, ["merger", "run"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "reports" / "merger.html"
    assert f"report: {report}" in result.output.replace("\n", "")
    html = report.read_text(encoding="utf-8")
    assert "balanced for every system" in html and "129 communes in the consolidated records" in html
    assert "missing: none" in html and "Xã Gia Tân" in html  # a split old commune listed with its reason
    again = CliRunner().invoke(app, ["merger", "report", "--output", str(tmp_path / "r.html")])
    assert again.exit_code == 0 and (tmp_path / "r.html").exists()
    monkeypatch.setenv("LGSP_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    empty = CliRunner().invoke(app, ["merger", "report"])
    assert empty.exit_code == 1 and "lgsp merger run" in empty.output
