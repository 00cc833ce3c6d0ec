"""Household membership (thành viên hộ gia đình) from the civil-status registry: the sandbox's SOAP service
(`ListHouseholdMembers`, WS-Security), the shipped pipeline `civil_status_household_members` run by the real
runner into SQLite and a real PostgreSQL, keyed by the pair (household_id, personal_id); what it must show:
every membership lands once or is quarantined under its rule, a person who moved is in both households, a rerun
(incremental or full) changes nothing, `lgsp record` finds a membership by its two-part key, a commune reads
through the gateway only its own households, and a person's disclosure report names every household row naming
them (as a member and as the head) and the reads that may have included them.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from gateway.service import prepare_database
from lgsp.cli import app as lgsp_app

PIPELINE, DATASET = "civil_status_household_members", "household_member"
RULES = {"relation_unknown": "enum:relation", "cccd_invalid": "cccd:personal_id",
         "commune_unknown": "commune_code:commune_code", "left_before_joined": "ordered:birth_date,joined_on,left_on"}


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "households-test-pseudonym-key")  # the report keys its IDs


def _rows(engine: sa.Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params).all())


def _report(person: str) -> dict[str, Any]:
    said = CliRunner().invoke(lgsp_app, ["audit", "subject", person, "--json"])
    assert said.exit_code == 0, said.output
    return json.loads(said.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_household_members_land_by_their_pair_key_and_a_persons_report_names_each(lgsp_env: Any,
                                                                                  sandbox_handle: Any) -> None:
    from lgsp import runner
    from sandbox.data import record_key

    truth, bad = sandbox_handle.data.household_members, sandbox_handle.data.household_member_defects
    assert Counter(bad.values()) == Counter({kind: 1 for kind in RULES}), "one of each kind at 1%"
    first = runner.run_pipeline(PIPELINE)
    assert (first["rows_pulled"], first["rows_quarantined"]) == (len(truth), len(bad)), first
    wh = runner.open_warehouse(load_catalog(), lgsp_env)
    landed = _rows(wh.engine, "SELECT household_id, personal_id, relation, left_on, leave_reason FROM "
                              "core_household_member")
    good = [r for r in truth if record_key(DATASET, r) not in bad]
    assert sorted(f"{r[0]}|{r[1]}" for r in landed) == sorted(record_key(DATASET, r) for r in good)
    rejected = _rows(wh.engine, "SELECT record_key, rule FROM lgsp_quarantine WHERE dataset = :d", d=DATASET)
    assert sorted(rejected) == sorted((key, RULES[kind]) for key, kind in bad.items())

    moved = next(r for r in good if r["leave_reason"] == "moved")  # left one household to head another
    homes = _rows(wh.engine, "SELECT household_id, relation, left_on FROM core_household_member WHERE "
                             "personal_id = :p ORDER BY joined_on", p=moved["personal_id"])
    assert [(h[0], h[1]) for h in homes][0] == (moved["household_id"], "child") and len(homes) == 2
    assert homes[1][1] == "head" and str(homes[0][2]) == str(moved["left_on"])

    again = runner.run_pipeline(PIPELINE)
    full = runner.run_pipeline(PIPELINE, full_refresh=True)
    last = max(r["updated_at"] for r in truth)  # the incremental run reads back the pipeline's lookback (1 h)
    assert again["rows_pulled"] == sum(r["updated_at"] >= last - timedelta(hours=1) for r in truth) < 10
    assert full["rows_pulled"] == len(truth)
    assert sorted(_rows(wh.engine, "SELECT household_id, personal_id, relation, left_on, leave_reason FROM "
                                   "core_household_member")) == sorted(landed), "a rerun changes nothing"
    assert len(_rows(wh.engine, "SELECT record_key FROM lgsp_quarantine WHERE dataset = :d", d=DATASET)) == len(bad)

    shown = CliRunner().invoke(lgsp_app, ["record", DATASET, moved["household_id"], moved["personal_id"], "--json"])
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.stdout.splitlines()[-1])
    assert found["now"]["leave_reason"] == "moved" and found["now"]["relation"] == "child", found

    head = moved["head_personal_id"]  # the moved child's first household: its head's report lists every member
    household = sorted((r for r in good if r["household_id"] == moved["household_id"]), key=lambda r: r["personal_id"])
    report = _report(head)
    assert report["records"] == {}, "before the shared view is published, nothing is shared (and nothing fails)"
    prepare_database(lgsp_env.database_url, load_catalog())  # the shared views (the gateway's start does it)
    report = _report(head)
    assert sorted((r["household_id"], r["personal_id"], r["relation"]) for r in report["records"][DATASET]
                  if r["household_id"] == moved["household_id"]) == [
        (r["household_id"], r["personal_id"], r["relation"]) for r in household], "as head, every member"
    assert DATASET not in report["held"], "the shared view has both personal-ID columns"
    mover = _report(moved["personal_id"])
    assert sorted(r["household_id"] for r in mover["records"][DATASET]) == sorted(h[0] for h in homes)


def test_a_commune_reads_its_households_and_the_heads_report_says_so(database_url: str, sandbox_handle: Any,
                                                                     tmp_path: Path) -> None:
    """household_member is shared (restricted): a commune's People's Committee granted it scoped to its commune
    reads through the real gateway only that commune's memberships, personal IDs as pseudonyms; the report of a
    head of a household there names that read, the report of a head elsewhere does not."""
    from gateway.api import create_app
    from gateway.settings import load_gateway_settings
    from sandbox.data import record_key
    from test_gateway import gateway_env, loaded_registry, running

    with gateway_env(sandbox_handle, tmp_path / "home", database_url):
        catalog = load_catalog()
        registry = loaded_registry(database_url, catalog, [PIPELINE])
        good = [r for r in sandbox_handle.data.household_members
                if record_key(DATASET, r) not in sandbox_handle.data.household_member_defects]
        communes = Counter(r["commune_code"] for r in good)
        ours, other = [c for c, _ in communes.most_common(2)]
        registry.add_agency("ubnd_xa", "UBND xã")
        key = registry.issue_api_key("ubnd_xa")
        registry.grant("ubnd_xa", DATASET, scope={"commune_code": [ours]})
        settings = dataclasses.replace(load_gateway_settings(database_url), principal_cache_s=0.0)
        try:
            with running(create_app(settings, catalog)) as base:
                read = requests.get(f"{base}/api/v1/datasets/{DATASET}/records", params={"limit": 1000},
                                    headers={"X-API-Key": key}, timeout=60)
                other_read = requests.get(f"{base}/api/v1/datasets/{DATASET}/records", timeout=60,
                                          params={"commune_code": other}, headers={"X-API-Key": key})
        finally:
            registry.engine.dispose()
        assert read.status_code == 200, read.text
        rows = read.json()["records"]
        assert sorted((r["household_id"], r["relation"]) for r in rows) == sorted(
            (r["household_id"], r["relation"]) for r in good if r["commune_code"] == ours)
        assert all(r["personal_id"].startswith("ps_") and r["head_personal_id"].startswith("ps_") for r in rows)
        assert other_read.status_code == 200 and other_read.json()["records"] == [], "another commune: nothing"
        here = next(r["head_personal_id"] for r in good if r["commune_code"] == ours and r["relation"] == "head")
        there = next(r["head_personal_id"] for r in good if r["commune_code"] == other and r["relation"] == "head")
        may = [(m["agency_id"], m["dataset"]) for m in _report(here)["may_have"]]
        assert may == [("ubnd_xa", DATASET)], may
        assert [m for m in _report(there)["may_have"] if m["dataset"] == DATASET] == [], "outside its scope"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_newborn_is_held_as_the_birth_and_as_the_household_it_joined(lgsp_env: Any, sandbox_handle: Any) -> None:
    """The registry records a birth and the child's joining a household; lgsp holds both, and the child's report
    says so: the birth as held (no agency may read it), the membership among the shared records."""
    from lgsp import runner

    data = sandbox_handle.data
    runner.run_pipeline("civil_status_events")
    runner.run_pipeline(PIPELINE)
    prepare_database(lgsp_env.database_url, load_catalog())
    members = {r["personal_id"]: r for r in data.household_members}
    birth = next(e for e in sorted(data.civil_status_events, key=lambda e: e["event_id"])
                 if e["event_type"] == "birth" and e["personal_id"] in members
                 and e["event_id"] not in data.civil_status_event_defects)
    joined = members[birth["personal_id"]]
    report = _report(birth["personal_id"])
    assert report["held"]["civil_status_event"] == [{"key": {"event_id": birth["event_id"]}, "as": ["personal_id"]}]
    assert [(r["household_id"], r["relation"], r["joined_on"]) for r in report["records"][DATASET]] == [
        (joined["household_id"], "child", joined["joined_on"].isoformat())]
    assert (joined["joined_on"], joined["commune_code"]) == (birth["registered_on"], birth["commune_code"])
