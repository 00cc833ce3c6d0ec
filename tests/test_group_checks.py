"""Rules across rows (`group_checks` in catalog/datasets.yaml, lgsp.group_checks): every household has exactly one
current head. No row breaks it alone, so nothing is quarantined for it: the households that break it (the spouse
recorded as head too, or the head's row quarantined) are found in the warehouse, pending within the grace,
then broken (`lgsp checks` exits 1, `lgsp status` says it, the freshness check alerts once, the consistency
score counts it), listed row by row for the registry; when the registry corrects them, the next incremental sync
brings the correction and the check holds again; a member recorded under another head breaks the second rule (the
members of a household name one head: distinct values). The real sandbox registry over loopback (SOAP,
WS-Security), the real runner and CLI; SQLite and a real PostgreSQL.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from catalog import load_catalog
from catalog.models import GroupCheckSpec
from lgsp.cli import app as lgsp_app

PIPELINE = "civil_status_household_members"
CHECK, NAMED = "household_member.one_head", "household_member.one_head_named"
FIXES = {  # how the registry corrects a row the sandbox sent broken (sandbox.households._apply_defect)
    "left_before_joined": lambda row, truth: {"left_on": None, "leave_reason": None},
    "relation_unknown": lambda row, truth: {"relation": "head"},
    "commune_unknown": lambda row, truth: {"commune_code": next(
        r["commune_code"] for r in truth if r["household_id"] == row["household_id"] and r is not row)},
}


def _breaking(rows: list[dict[str, Any]], defects: dict[str, str]) -> tuple[int, dict[str, int]]:
    """From the registry's ground truth, independently: the households with a current member among the rows lgsp
    lands (not the defective ones), and those whose current heads are not exactly one (household -> heads)."""
    from sandbox.households import household_key

    heads: dict[str, int] = defaultdict(int)
    for row in rows:
        if household_key(row) not in defects and row["left_on"] is None:
            heads[row["household_id"]] += row["relation"] == "head"
    return len(heads), {h: n for h, n in heads.items() if n != 1}


def _described(url: str) -> dict[str, Any]:
    """What the gateway's catalog and portal say of the household dataset's rules across rows."""
    import dataclasses

    import requests

    from gateway.api import create_app
    from gateway.service import prepare_database
    from gateway.settings import load_gateway_settings
    from test_gateway import running

    catalog = load_catalog()
    prepare_database(url, catalog)
    settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0)
    with running(create_app(settings, catalog)) as base:
        described = requests.get(f"{base}/api/v1/datasets/household_member", timeout=60)
        page = requests.get(f"{base}/portal/datasets/household_member", params={"lang": "en"}, timeout=60)
        page_vi = requests.get(f"{base}/portal/datasets/household_member", timeout=60)
    assert described.status_code == page.status_code == page_vi.status_code == 200, (described.text, page.text)
    return {"api": described.json()["group_checks"], "page": " ".join(page.text.split()),
            "page_vi": " ".join(page_vi.text.split())}


def _checks(*args: str, check: str = CHECK) -> tuple[int, dict[str, Any]]:
    said = CliRunner().invoke(lgsp_app, ["checks", "--json", *args])
    results = json.loads(said.stdout.splitlines()[-1])["group_checks"]
    return said.exit_code, next(r for r in results if r["check"] == check)


def test_a_household_without_exactly_one_head_is_reported_then_holds_again_once_the_registry_corrects_it(
        database_url: str, tmp_path: Path) -> None:
    from lgsp import runner
    from lgsp.freshness import check_and_alert
    from sandbox import DATASET_KEYS, start_sandbox
    from sandbox.households import household_key, two_heads
    from test_gateway import gateway_env

    sandbox = start_sandbox(seed=23, citizens=5, dossiers=5,
                            sizes=dict.fromkeys(DATASET_KEYS, 0) | {"procedure": 30, "household_member": 600})
    try:
        with gateway_env(sandbox, tmp_path / "home", database_url):
            truth, defects = sandbox.data.household_members, sandbox.data.household_member_defects
            groups, expected = _breaking(truth, defects)
            doubled = {h for h, n in expected.items() if n == 2}
            assert doubled and all(two_heads(h) for h in doubled) and expected.keys() - doubled, expected
            first = runner.run_pipeline(PIPELINE)
            assert first["rows_quarantined"] == len(defects), first  # each row is valid: none quarantined for it

            code, result = _checks("--examples", "1000")
            assert code == 0 and result["state"] == "pending", result  # just written: within the 2 h grace
            assert (result["groups"], result["breaking"], result["breaking_past_grace"]) == (groups, len(expected), 0)
            assert {e["group"]["household_id"]: e["counted"] for e in result["examples"]} == expected
            heads_named: dict[str, set[str]] = defaultdict(set)  # independently: the heads each one's members name
            for row in truth:
                if household_key(row) not in defects and row["left_on"] is None:
                    heads_named[row["household_id"]].add(row["head_personal_id"])
            _, named = _checks(check=NAMED)
            assert (named["groups"], named["breaking"]) == (groups, sum(len(h) > 1 for h in heads_named.values()))
            assert result["rule"] == ("rows with relation = head per household_id, among rows with left_on null: "
                                      "exactly 1")

            wh = runner.open_warehouse(load_catalog())
            table = wh.core["household_member"]
            with wh.engine.begin() as conn:  # three hours on: nothing came to complete any of them
                conn.execute(table.update().values(_loaded_at=datetime.now(timezone.utc) - timedelta(hours=3)))
            said = CliRunner().invoke(lgsp_app, ["checks"], env={"COLUMNS": "300"})
            assert said.exit_code == 1, said.output
            text = " ".join(said.output.split())
            assert f"broken: {CHECK}" in text and f"{len(expected)} of {groups} groups break it" in text
            assert "ask " in text and "`lgsp checks --dataset household_member --groups` lists the rows" in text
            status = json.loads(CliRunner().invoke(lgsp_app, ["status", "--json"]).stdout.splitlines()[-1])
            assert [p["severity"] for p in status["problems"] if p.get("check") == CHECK] == ["warning"]
            alerted = [a for a in check_and_alert(wh, load_catalog())["alerts"] if a["subject"] == f"check:{CHECK}"]
            assert [a["kind"] for a in alerted] == ["broken_group_check"]
            assert not [a for a in check_and_alert(wh, load_catalog())["alerts"] if a["subject"] == f"check:{CHECK}"]
            quality = CliRunner().invoke(lgsp_app, ["quality", "household_member", "--json"])
            card = json.loads(quality.stdout.splitlines()[-1])["scorecards"][0]["consistency"]
            assert (card["groups"], card["breaking_groups"]) == (2 * groups, len(expected))  # both checks' groups
            assert card["score"] <= round(1 - len(expected) / groups, 4)

            shown = _described(database_url)  # agencies see how many households hold it (counts only)
            assert shown["api"][0] == {"check": "one_head", "description": result["description"],
                                       "description_vi": "Mỗi hộ có đúng một chủ hộ trong số các thành viên hiện tại",
                                       "rule": result["rule"], "state": "broken", "groups": groups,
                                       "breaking": len(expected), "breaking_past_grace": len(expected)}
            assert [(c["check"], c["state"], c["groups"]) for c in shown["api"][1:]] == [
                ("one_head_named", "ok", groups)]
            assert f"exactly one current head (chủ hộ) among its current members: {groups - len(expected)} of " \
                   f"{groups} groups hold it" in shown["page"]
            assert f"Mỗi hộ có đúng một chủ hộ trong số các thành viên hiện tại: {groups - len(expected)}/{groups} " \
                   "nhóm đạt" in shown["page_vi"]

            listed = CliRunner().invoke(lgsp_app, ["checks", "--dataset", "household_member", "--groups"])
            assert listed.exit_code == 0, listed.output
            rows = list(csv.DictReader(io.StringIO(listed.stdout)))
            assert {r["household_id"] for r in rows} == set(expected)
            assert all(r["check"] == CHECK and r["left_on"] == "" for r in rows)
            heads = defaultdict(int)
            for r in rows:
                heads[r["household_id"]] += r["relation"] == "head"
            assert heads == expected

            for household in doubled:  # the registry corrects the spouses recorded as heads ...
                spouse = next(r for r in truth if r["household_id"] == household and r["relation"] == "head"
                              and r["personal_id"] != r["head_personal_id"])
                sandbox.households.correct((household, spouse["personal_id"]), relation="spouse")
            again = runner.run_pipeline(PIPELINE)
            assert again["rows_changed"] == len(doubled), again
            code, result = _checks("--examples", "1000")
            assert {e["group"]["household_id"] for e in result["examples"]} == expected.keys() - doubled
            assert result["breaking"] == len(expected) - len(doubled) and code == 1  # the others stay broken

            headless = expected.keys() - doubled  # ... and the heads' rows it sent broken, which wait in quarantine
            for household in headless:
                head = next(r for r in truth if r["household_id"] == household and r["personal_id"] ==
                            r["head_personal_id"] and household_key(r) in defects)
                kind = defects[household_key(head)]
                assert kind in FIXES, kind
                sandbox.households.correct((household, head["personal_id"]), **FIXES[kind](head, truth))
            last = runner.run_pipeline(PIPELINE)
            assert last["rows_changed"] == len(headless) and last["rows_quarantined"] == 0, last
            code, result = _checks()
            assert code == 0 and (result["state"], result["breaking"]) == ("ok", 0), result
            alerted = [a for a in check_and_alert(wh, load_catalog())["alerts"] if a["subject"] == f"check:{CHECK}"]
            assert [a["kind"] for a in alerted] == ["group_check_ok"]

            # the registry records a member under another head: the members of that household name two heads
            member = next(r for r in truth if r["left_on"] is None and r["relation"] == "child"
                          and household_key(r) not in defects)
            other = next(r["head_personal_id"] for r in truth if r["head_personal_id"] != member["head_personal_id"])
            sandbox.households.correct((member["household_id"], member["personal_id"]), head_personal_id=other)
            assert runner.run_pipeline(PIPELINE)["rows_changed"] == 1
            code, named = _checks(check=NAMED)
            assert code == 0 and (named["state"], named["breaking"]) == ("pending", 1), named  # within its grace
            assert named["examples"] == [{"group": {"household_id": member["household_id"]}, "counted": 2,
                                          "written_at": named["examples"][0]["written_at"]}]
            assert named["rule"] == ("distinct head_personal_id per household_id, among rows with left_on null: "
                                     "at most 1")
            assert _checks()[1]["state"] == "ok"  # one head still: the member is not one
    finally:
        sandbox.stop()


def test_a_group_check_says_what_it_needs() -> None:
    with pytest.raises(ValidationError, match="needs 'min', 'max' or both"):
        GroupCheckSpec(group_by=["household_id"])
    with pytest.raises(ValidationError, match=r"min \(2\) is more than max \(1\)"):
        GroupCheckSpec(group_by=["household_id"], min=2, max=1)
    assert GroupCheckSpec(group_by=["a"], max=1, grace="2h").grace == 7200.0
    catalog = load_catalog()
    document = catalog.datasets["household_member"].model_dump()
    document["group_checks"] = {"one_head": {**document["group_checks"]["one_head"], "count": {"role": "head"}}}
    with pytest.raises(ValidationError, match="group_checks.one_head: 'role' is not a declared column"):
        type(catalog.datasets["household_member"])(**document)


def test_a_dataset_without_group_checks_says_so(lgsp_env: Any) -> None:
    said = CliRunner().invoke(lgsp_app, ["checks", "--dataset", "citizen"])
    assert said.exit_code == 0 and "citizen declares no `group_checks`" in said.output
    said = CliRunner().invoke(lgsp_app, ["checks", "--dataset", "citizen", "--groups"])
    assert said.exit_code != 0 and "household_member" in said.output


def test_the_rows_of_a_group_whose_key_is_null_are_listed_too(database_url: str) -> None:
    """GROUP BY makes one group of the rows whose key is null; when it breaks the rule, `breaking_rows` lists
    its rows like any other group's (SQLite and PostgreSQL: `IS NOT DISTINCT FROM`)."""
    import sqlalchemy as sa

    from lgsp.group_checks import breaking_rows, check, group_checks
    from lgsp.runner import _with_lineage
    from schemas.arrow import coerce, to_arrow
    from types import SimpleNamespace

    from warehouse import Warehouse

    catalog = load_catalog()
    land = catalog.datasets["land_parcel"]
    document = land.model_dump()
    document["group_checks"] = {"one_parcel_each": {"group_by": ["holder_personal_id"], "max": 1}}
    catalog.datasets["land_parcel"] = type(land)(**document)
    parcels = [{"parcel_id": f"14455-1-{n}", "commune_code": "14455", "map_sheet": 1, "parcel_no": n, "area_m2": 90.5,
                "land_use": "ODT", "holder_personal_id": holder, "updated_at": "2026-12-01T00:00:00Z"}
               for n, holder in enumerate([None, None, "037203001234", "037203001235", "037203001235"], 1)]
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    table = to_arrow(coerce(parcels, land).frame, land)
    with wh.transaction() as conn:
        wh.write_chunks(conn, land, [_with_lineage(table, SimpleNamespace(system=SimpleNamespace(name="land")), "b-1")])
    (group_check,) = group_checks(catalog, "land_parcel")
    with wh.engine.connect() as conn:
        result = check(conn, wh.metadata.tables, catalog, group_check, datetime.now(timezone.utc))
        rows = list(breaking_rows(conn, wh.metadata.tables, catalog, group_check))
        assert conn.execute(sa.select(sa.func.count()).select_from(wh.core["land_parcel"])).scalar() == 5
    assert (result["groups"], result["breaking"]) == (3, 2), result
    assert sorted(r["parcel_id"] for r in rows) == ["14455-1-1", "14455-1-2", "14455-1-4", "14455-1-5"], rows
