"""The disclosure report (`lgsp audit subject ID`, gateway.disclosures): to whom a person's data went through
the gateway. Agencies read through the real gateway over loopback (lookups at the real sandbox, pages,
exports, CKAN, the change feed, scoped and not); the report, made by the real CLI from the audit and the
shared views, names exactly the reads that named the person and those that may have included them.
SQLite and a real PostgreSQL.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import datetime, timedelta
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from gateway.access_requests import AccessRequests
from gateway.agencies import AgencyRegistry
from gateway.api import create_app
from gateway.settings import load_gateway_settings
from lgsp.cli import app as lgsp_app
from test_gateway import gateway_env, loaded_registry, running

PURPOSE = "Xác minh đối tượng hưởng trợ cấp xã hội theo Nghị định 20/2021/NĐ-CP"


@dataclasses.dataclass
class Env:
    base: str
    keys: dict[str, str]
    registry: AgencyRegistry
    subject: dict[str, Any]  # a citizen: personal_id, commune_code, birth_date
    other_commune: str

    def get(self, path: str, agency: str, **params: Any) -> requests.Response:
        return requests.get(self.base + path, params=params, headers={"X-API-Key": self.keys[agency]}, timeout=60)

    def report(self, *more: str) -> dict[str, Any]:
        result = CliRunner().invoke(lgsp_app, ["audit", "subject", self.subject["personal_id"], "--json", *more])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(database_url: str, sandbox_handle: Any, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(sandbox_handle, tmp_path / "home", database_url):
        catalog = load_catalog()
        registry = loaded_registry(database_url, catalog, ["population_citizens"])
        with registry.engine.connect() as conn:
            subject = dict(conn.execute(sa.text("SELECT personal_id, commune_code, birth_date FROM "
                                                "shared_citizen ORDER BY personal_id LIMIT 1")).mappings().one())
            other = conn.execute(sa.text("SELECT min(commune_code) FROM shared_citizen WHERE commune_code <> :c"),
                                 {"c": subject["commune_code"]}).scalar_one()
        keys = {}
        for agency in ("so_y_te", "cong_an", "so_lao_dong", "ubnd_xa", "ubnd_xa_khac", "so_tai_chinh"):
            registry.add_agency(agency, agency)
            keys[agency] = registry.issue_api_key(agency)
        asked = AccessRequests(registry.engine, catalog)
        request_id = asked.submit("so_y_te", "citizen", PURPOSE, personal=["personal_id"],
                                  legal_basis="Nghị định 20/2021/NĐ-CP")["request_id"]
        asked.approve(request_id, by="ttdl")
        asked.close()
        registry.grant("cong_an", "citizen", ["personal_id"])
        registry.grant("so_lao_dong", "citizen")
        registry.grant("ubnd_xa", "citizen", scope={"commune_code": [subject["commune_code"]]})
        registry.grant("ubnd_xa_khac", "citizen", scope={"commune_code": [other]})
        registry.grant("so_tai_chinh", "citizen")
        settings = dataclasses.replace(load_gateway_settings(database_url), principal_cache_s=0.0)
        try:
            with running(create_app(settings, catalog)) as base:
                yield Env(base, keys, registry, subject, other)
        finally:
            registry.engine.dispose()


def test_the_report_names_who_read_the_person_and_who_may_have_and_why(env: Env) -> None:
    pid, commune = env.subject["personal_id"], env.subject["commune_code"]
    assert env.get("/api/v1/datasets/citizen/lookup", "so_y_te", personal_id=pid).status_code == 200
    assert env.get("/api/v1/datasets/citizen/records", "cong_an", personal_id=pid).json()["records"]
    assert env.get("/api/v1/datasets/citizen/records", "cong_an", personal_id="037099999999").json()["records"] == []
    assert env.get("/api/v1/datasets/citizen/records", "so_lao_dong", commune_code=commune).json()["records"]
    assert env.get("/api/v1/datasets/citizen/records", "so_lao_dong", commune_code=env.other_commune).json()["records"]
    for _ in range(2):  # a scoped agency reads all it may, twice: one entry with its two reads
        assert env.get("/api/v1/datasets/citizen/records", "ubnd_xa", limit=1000).json()["records"]
    assert env.get("/api/v1/datasets/citizen/records", "ubnd_xa_khac", limit=1000).json()["records"]
    assert env.get("/api/v1/datasets/citizen/export", "so_tai_chinh", format="csv").status_code == 200
    assert env.get("/api/v1/datasets/citizen/records", "so_tai_chinh", birth_date__gte="2100-01-01").json()[
        "records"] == [], "no row returned: no disclosure"
    later = env.get("/api/v1/datasets/citizen/records", "so_tai_chinh", birth_date__gt=env.subject["birth_date"])
    assert later.json()["records"], "others, born after the person: their record is not among them"
    beyond = requests.post(f"{env.base}/api/3/action/datastore_search", headers={"X-API-Key": env.keys["so_tai_chinh"]},
                           json={"resource_id": "citizen", "offset": 100000}, timeout=60).json()
    assert beyond["success"] and beyond["result"]["records"] == [], "a page past the end returned nothing"

    report = env.report()
    assert [r["personal_id"] for r in report["records"]["citizen"]] == [pid]
    named = [(r["agency_id"], r["action"], r["status"]) for r in report["named"]]
    assert named == [("so_y_te", "lookup_live", 200), ("cong_an", "records", 200)], "exact: the ID's pseudonym"
    may = sorted((m["agency_id"], m["action"], m["reads"]) for m in report["may_have"])
    assert may == [("so_lao_dong", "records", 1), ("so_tai_chinh", "export_csv_done", 1), ("ubnd_xa", "records", 2)]
    assert {m["query"].get("scope", {}).get("commune_code", [None])[0] for m in report["may_have"]} == {None, commune}
    why = {g["agency_id"]: g for g in report["grants"]}
    assert why["so_y_te"]["purpose"] == PURPOSE and why["so_y_te"]["legal_basis"] == "Nghị định 20/2021/NĐ-CP"
    assert why["cong_an"]["request_id"] is None and "ubnd_xa_khac" not in why

    again = env.report()  # the first report is in the audit: the second names it
    assert [r["agency_id"] for r in again["named"]][-1].startswith("province:")
    assert again["named"][-1]["action"] == "subject_report"
    assert env.report("--since", "2999-01-01")["named"] == []


def test_the_report_in_words_and_its_refusals(env: Env) -> None:
    pid = env.subject["personal_id"]
    env.get("/api/v1/datasets/citizen/lookup", "so_y_te", personal_id=pid)
    result = CliRunner().invoke(lgsp_app, ["audit", "subject", pid, "--by", "can_bo_ttdl"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    assert f"{pid}: in citizen (1)" in said and "Reads that named them: 1" in said
    assert "so_y_te citizen lookup_live status 200" in said and f"purpose: {PURPOSE}" in said
    assert "grant: so_y_te on citizen (personal columns in clear: personal_id):" in said
    wrong = CliRunner().invoke(lgsp_app, ["audit", "subject", "12345"])
    assert wrong.exit_code == 1 and "a personal ID (CCCD) is 12 digits" in wrong.output
    bad_date = CliRunner().invoke(lgsp_app, ["audit", "subject", pid, "--since", "yesterday"])
    assert bad_date.exit_code == 1 and "give a date, YYYY-MM-DD" in bad_date.output
    with env.registry.engine.connect() as conn:
        by = conn.execute(sa.text("SELECT DISTINCT agency_id FROM gateway_audit WHERE action = 'subject_report'"))
        assert [r[0] for r in by] == ["province:can_bo_ttdl"], "a refused report is not recorded"


def _reload(monkeypatch: pytest.MonkeyPatch, sandbox: Any, data: Any, variable: str, system: str,
            pipeline: str) -> dict[str, Any]:
    """Run `pipeline` against a sandbox serving `data` (the real services, started again with it)."""
    from lgsp import runner
    from sandbox import start_sandbox

    with start_sandbox(data=data, credentials=sandbox.credentials) as newer:
        monkeypatch.setenv(variable, newer.urls[system])
        return runner.run_pipeline(pipeline)


def test_each_read_is_judged_on_the_record_as_it_was_when_read(env: Env, sandbox_handle: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A resident who moves commune, and a parcel that changes holder: the reads before the change are judged
    on the earlier version (the lake's files and the change log), those after on the new one."""
    from lgsp import runner

    data, pid, commune, other = sandbox_handle.data, env.subject["personal_id"], env.subject["commune_code"], \
        env.other_commune
    runner.run_pipeline("land_parcels")
    env.registry.grant("so_tai_chinh", "land_parcel")
    parcel = next(p for p in data.land_parcels if p["parcel_id"] not in data.land_parcel_defects)
    before = parcel["holder_personal_id"]
    for agency in ("ubnd_xa", "ubnd_xa_khac"):
        assert env.get("/api/v1/datasets/citizen/records", agency, limit=1000).json()["records"]
    assert env.get("/api/v1/datasets/land_parcel/records", "so_tai_chinh", limit=1000).json()["records"]

    later = max(c["updated_at"] for c in data.citizens + data.land_parcels) + timedelta(days=1)
    citizen = next(c for c in data.citizens if c["personal_id"] == pid)
    moved = [{**c, "commune_code": other, "updated_at": later} if c is citizen else c for c in data.citizens]
    assert _reload(monkeypatch, sandbox_handle, dataclasses.replace(data, citizens=moved), "LGSP_POPULATION_WSDL",
                   "population", "population_citizens")["rows_changed"] == 1
    sold = {**parcel, "holder_personal_id": pid, "holder_name": citizen["full_name"], "holder_sex": citizen["sex"],
            "holder_birth_date": citizen["birth_date"], "updated_at": later}
    parcels = [sold if p is parcel else p for p in data.land_parcels]
    assert _reload(monkeypatch, sandbox_handle, dataclasses.replace(data, land_parcels=parcels), "LGSP_LAND_URL",
                   "land", "land_parcels")["rows_changed"] == 1
    for agency in ("ubnd_xa", "ubnd_xa_khac"):
        assert env.get("/api/v1/datasets/citizen/records", agency, limit=1000).json()["records"]
    assert env.get("/api/v1/datasets/land_parcel/records", "so_tai_chinh", limit=1000).json()["records"]

    report = env.report()
    assert [r["commune_code"] for r in report["records"]["citizen"]] == [other]
    assert [r["parcel_id"] for r in report["records"]["land_parcel"]] == [parcel["parcel_id"]]
    (was,) = report["earlier"]["citizen"]
    assert was["values"]["commune_code"] == commune and was["since"] < was["until"]
    may = {(m["agency_id"], m["dataset"]): m for m in report["may_have"]}
    assert {k: m["reads"] for k, m in may.items()} == {
        ("ubnd_xa", "citizen"): 1, ("ubnd_xa_khac", "citizen"): 1, ("so_tai_chinh", "land_parcel"): 1}, \
        "each commune's People's Committee read them once, while they lived there; the parcel after it was theirs"
    assert datetime.fromisoformat(may["ubnd_xa", "citizen"]["last"]) < datetime.fromisoformat(was["until"]) \
        <= datetime.fromisoformat(may["ubnd_xa_khac", "citizen"]["first"])
    assert "earlier" not in report or "land_parcel" not in report["earlier"], "the parcel was theirs only now"

    seller = CliRunner().invoke(lgsp_app, ["audit", "subject", before, "--json"])
    assert seller.exit_code == 0, seller.output
    sold_by = json.loads(seller.stdout.strip().splitlines()[-1])
    assert "land_parcel" not in sold_by["records"], "not theirs now"
    assert [v["values"]["parcel_id"] for v in sold_by["earlier"]["land_parcel"]] == [parcel["parcel_id"]]
    assert [(m["agency_id"], m["dataset"], m["reads"]) for m in sold_by["may_have"]
            if m["dataset"] == "land_parcel"] == [("so_tai_chinh", "land_parcel", 1)], "read while it was theirs"

    words = CliRunner().invoke(lgsp_app, ["audit", "subject", before], env={"COLUMNS": "300"})
    said = " ".join(words.output.split())
    assert words.exit_code == 0, said
    assert "earlier in land_parcel: 1 version(s) no longer held: " in said and parcel["parcel_id"] in said

    # an officer looks at the parcel's history (its holder then and now in clear): both holders see it named
    looked = CliRunner().invoke(lgsp_app, ["record", "land_parcel", parcel["parcel_id"], "--by", "can_bo_ttdl"])
    assert looked.exit_code == 0 and pid in looked.stdout and before in looked.stdout, looked.output
    for person in (before, pid):
        said = CliRunner().invoke(lgsp_app, ["audit", "subject", person, "--json"])
        report = json.loads(said.stdout.splitlines()[-1])
        assert [(r["agency_id"], r["dataset"], r["action"], r["rows_returned"]) for r in report["named"]
                if r["action"].startswith("record_")] == [("province:can_bo_ttdl", "land_parcel", "record_history", 2)]
    notice = tmp_path / "notice.html"
    assert CliRunner().invoke(lgsp_app, ["audit", "subject", pid, "--document", str(notice), "--lang", "en"]
                              ).exit_code == 0
    assert ["the province's data platform (officer: can_bo_ttdl)", load_catalog().datasets["land_parcel"].title,
            "a province officer looked at the record's history (a data check)"] in [
        row[1:4] for row in Notice(notice.read_text(encoding="utf-8")).rows["named"]]
    with env.registry.engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT query FROM gateway_audit WHERE action = 'record_history'")).scalar_one()
    assert parcel["parcel_id"] in logged and pid not in logged and before not in logged, "IDs only as pseudonyms"
    runner.run_pipeline("business_enterprises")
    firm = CliRunner().invoke(lgsp_app, ["record", "enterprise", data.enterprises[0]["tax_code"]])
    assert firm.exit_code == 0, firm.output
    monkeypatch.delenv("LGSP_GATEWAY_PSEUDONYM_KEY")
    unkeyed = CliRunner().invoke(lgsp_app, ["record", "citizen", pid], env={"COLUMNS": "300"})
    assert unkeyed.exit_code == 0 and "not audited: this record holds a person's ID" in unkeyed.output
    with env.registry.engine.connect() as conn:
        audited = conn.execute(sa.text("SELECT count(*) FROM gateway_audit WHERE action LIKE 'record_history%'"))
        assert audited.scalar() == 1, "a firm holds no person's ID; without the key nothing could be audited"



def test_an_officers_read_of_a_dataset_no_agency_is_shared_names_each_person_it_showed(env: Env, sandbox_handle: Any,
                                                                                       tmp_path: Path) -> None:
    """civil_status_event is not shared: no agency reads it, but `lgsp record` of a marriage shows both spouses'
    IDs in clear, so both their reports name that read."""
    from lgsp import runner

    runner.run_pipeline("civil_status_events")
    data = sandbox_handle.data
    bad = data.defects("civil_status_event")
    marriage = next(e for e in data.civil_status_events
                    if e["event_type"] == "marriage" and e["spouse_personal_id"] and e["event_id"] not in bad)
    spouses = (marriage["personal_id"], marriage["spouse_personal_id"])
    looked = CliRunner().invoke(lgsp_app, ["record", "civil_status_event", marriage["event_id"], "--by", "can_bo_ht",
                                           "--json"])
    assert looked.exit_code == 0 and all(p in looked.stdout for p in spouses), looked.output
    assert "civil_status_event" not in load_catalog().sharing
    for person in spouses:
        said = CliRunner().invoke(lgsp_app, ["audit", "subject", person, "--json"])
        assert said.exit_code == 0, said.output
        report = json.loads(said.stdout.splitlines()[-1])
        assert [(r["agency_id"], r["dataset"], r["action"], r["status"]) for r in report["named"]] == [
            ("province:can_bo_ht", "civil_status_event", "record_history", 200)]
        assert "civil_status_event" not in report["records"], "what agencies may read is the shared datasets"
    notice = tmp_path / "notice.html"
    assert CliRunner().invoke(lgsp_app, ["audit", "subject", spouses[1], "--document", str(notice)]).exit_code == 0
    title = load_catalog().datasets["civil_status_event"].title_vi  # not shared: the dataset's own Vietnamese title
    from gateway.disclosure_document import TEXT

    looked = TEXT["vi"]["kind_record_history"]  # the reports above looked in civil_status_event too: named as well
    assert [["Nền tảng dữ liệu của tỉnh (cán bộ: can_bo_ht)", title, looked]] == [
        row[1:4] for row in Notice(notice.read_text(encoding="utf-8")).rows["named"] if row[2] == title
        and row[3] == looked]


def test_the_report_lists_what_lgsp_holds_of_the_person_that_no_agency_may_read(env: Env, sandbox_handle: Any,
                                                                                 tmp_path: Path) -> None:
    """civil_status_event is not shared, but lgsp holds it: each event naming the person is in the report (its
    key, as the registered person or as the spouse), and so is a row lgsp's checks rejected (its rule; open, then
    closed: still held); the text, the notice and the audit say so."""
    from lgsp import runner

    runner.run_pipeline("civil_status_events")
    data = sandbox_handle.data
    bad = data.defects("civil_status_event")
    events = sorted(data.civil_status_events, key=lambda e: e["event_id"])
    marriage = next(e for e in events if e["event_type"] == "marriage" and e["spouse_personal_id"]
                    and e["event_id"] not in bad)
    spouse = marriage["spouse_personal_id"]
    expected = [{"key": {"event_id": e["event_id"]},
                 "as": [c for c in ("personal_id", "spouse_personal_id") if e[c] == spouse]}
                for e in events if spouse in (e["personal_id"], e["spouse_personal_id"]) and e["event_id"] not in bad]
    said = CliRunner().invoke(lgsp_app, ["audit", "subject", spouse, "--json", "--by", "can_bo_tn"])
    assert said.exit_code == 0, said.output
    report = json.loads(said.stdout.splitlines()[-1])
    assert {"key": {"event_id": marriage["event_id"]}, "as": ["spouse_personal_id"]} in expected
    assert report["held"] == {"civil_status_event": expected}
    assert "civil_status_event" not in report["records"] and report["named"] == []

    rules = {"event_type_unknown": "enum:event_type", "commune_unknown": "commune_code:commune_code"}
    rejected = next(e for e in events if bad.get(e["event_id"]) in rules)  # its personal ID is still valid
    rule = rules[bad[rejected["event_id"]]]
    person = rejected["personal_id"]

    def quarantined() -> list[tuple[str, str, str, str]]:
        result = CliRunner().invoke(lgsp_app, ["audit", "subject", person, "--json"])
        assert result.exit_code == 0, result.output
        found = json.loads(result.stdout.splitlines()[-1])
        assert rejected["event_id"] not in [h["key"]["event_id"] for h in found["held"].get("civil_status_event", [])]
        rows = found["quarantined"]["civil_status_event"]
        assert all(q["record_key"] in bad for q in rows), "only rows naming the person"
        return [(q["record_key"], q["rule"], q["status"], q["quarantine_id"]) for q in rows
                if q["record_key"] == rejected["event_id"]]

    ((key, said_rule, status, qid),) = quarantined()
    assert (key, said_rule, status) == (rejected["event_id"], rule, "open")
    assert CliRunner().invoke(lgsp_app, ["quarantine", "close", qid]).exit_code == 0
    assert quarantined() == [(rejected["event_id"], rule, "closed", qid)], "closed: dealt with, still held"

    text = CliRunner().invoke(lgsp_app, ["audit", "subject", spouse], env={"COLUMNS": "300"})
    assert (f"held, no agency may read it: civil_status_event ({len(expected)}): "
            in " ".join(text.output.split())), text.output
    assert f"event_id {marriage['event_id']} as spouse_personal_id" in " ".join(text.output.split())
    notice = tmp_path / "notice.html"
    assert CliRunner().invoke(lgsp_app, ["audit", "subject", spouse, "--document", str(notice)]).exit_code == 0
    catalog = load_catalog()
    columns = catalog.datasets["civil_status_event"].columns
    as_said = [columns[c].description_vi for c in dict.fromkeys(c for h in expected for c in h["as"])]
    kept = Notice(notice.read_text(encoding="utf-8")).rows["kept"]
    assert kept == [["Sự kiện hộ tịch (khai sinh, kết hôn, khai tử)", f"{len(expected)} bản ghi", *as_said]]
    with env.registry.engine.connect() as conn:
        looked = {r[0] for r in conn.execute(sa.text(
            "SELECT dataset FROM gateway_audit WHERE action = 'subject_report' AND agency_id = 'province:can_bo_tn'"))}
    assert looked == {"citizen", "land_parcel", "civil_status_event", "household_member", "civil_servant"}, \
        "audited where it looked"
    last = CliRunner().invoke(lgsp_app, ["audit", "subject", spouse, "--json"])
    reports = [(r["agency_id"], r["dataset"], r["datasets"]) for r in json.loads(last.stdout.splitlines()[-1])["named"]
               if r["action"] == "subject_report" and r["agency_id"] == "province:can_bo_tn"]
    every = ["citizen", "land_parcel", "household_member", "civil_status_event", "civil_servant"]
    assert reports == [("province:can_bo_tn", "*", every)], "an earlier report is one entry, whatever it looked in"


class Notice(HTMLParser):
    """A notice's headings and, per section, its table rows (each a list of cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.headings: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._section, self._cells, self._text = "", [], None  # type: ignore[var-annotated]
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
        elif tag == "tr":
            self._cells = []
        elif tag in ("td", "h1", "h2"):
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "h1", "h2") and self._text is not None:
            text = " ".join("".join(self._text).split())
            (self._cells if tag == "td" else self.headings).append(text)
            self._text = None
        elif tag == "tr" and self._cells:
            self.rows.setdefault(self._section, []).append(self._cells)


def test_the_notice_handed_to_the_person_in_vietnamese_or_english(env: Env, tmp_path: Path) -> None:
    """`--document`: a printable page saying the report in words (Vietnamese by default), the person's ID masked,
    every agency's purpose and legal basis; Chromium renders it."""
    from gateway.disclosure_document import TEXT
    from test_dashboard import chromium

    pid, commune = env.subject["personal_id"], env.subject["commune_code"]
    assert env.get("/api/v1/datasets/citizen/lookup", "so_y_te", personal_id=pid).status_code == 200
    assert env.get("/api/v1/datasets/citizen/records", "ubnd_xa", limit=1000).json()["records"]
    assert env.get("/api/v1/datasets/citizen/records", "ubnd_xa_khac", limit=1000).json()["records"]
    written = {}
    for lang in ("vi", "en"):
        path = tmp_path / f"notice-{lang}.html"
        result = CliRunner().invoke(lgsp_app, ["audit", "subject", pid, "--document", str(path), "--lang", lang,
                                               "--by", "can_bo_mot_cua"])
        assert result.exit_code == 0, result.output
        written[lang] = path.read_text(encoding="utf-8")
    page = Notice(written["vi"])
    assert page.headings[:2] == [TEXT["vi"]["title"], TEXT["vi"]["held_heading"]]
    assert pid not in written["vi"] and f"*********{pid[-3:]}" in written["vi"] and "can_bo_mot_cua" in written["vi"]
    assert page.rows["held"] == [["Công dân (Cơ sở dữ liệu quốc gia về dân cư)", "1 bản ghi", ""]]
    (named,) = page.rows["named"]
    assert named[1:] == ["so_y_te", "Công dân (Cơ sở dữ liệu quốc gia về dân cư)",
                         "tra cứu trực tiếp tại hệ thống nguồn", "đã cung cấp 1 bản ghi"]
    (may,) = page.rows["may"]
    assert may[0] == "ubnd_xa" and may[2:4] == ["đọc danh sách bản ghi", "1"]
    assert may[-1] == f"chỉ các bản ghi có commune_code thuộc {commune}", "the reads of another commune are not in it"
    why = {row[0]: row for row in page.rows["why"]}
    assert why["so_y_te"][2:4] == [PURPOSE, "Nghị định 20/2021/NĐ-CP"]
    assert why["ubnd_xa"][2] == TEXT["vi"]["granted_by_hand"] and set(why) == {"so_y_te", "ubnd_xa"}
    assert Notice(written["en"]).headings[:2] == [TEXT["en"]["title"], TEXT["en"]["held_heading"]]
    assert "script" not in page.tags
    bad = CliRunner().invoke(lgsp_app, ["audit", "subject", pid, "--document", str(tmp_path / "x.html"),
                                        "--lang", "fr"])
    assert bad.exit_code == 1 and "vi or en" in bad.output and not (tmp_path / "x.html").exists()

    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (tmp_path / "notice-vi.html").as_uri()]
    shown = Notice(subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout)
    assert shown.headings == page.headings and shown.rows == page.rows


def test_the_notice_escapes_what_agencies_wrote() -> None:
    from datetime import timezone

    from gateway.disclosure_document import render

    hostile = '<script>alert("x")</script> & <b>'
    at = datetime(2026, 3, 1, 1, 30, tzinfo=timezone.utc)
    report = {"personal_id": "037203001234", "since": None, "records": {"citizen": [{}]}, "earlier": {},
              "named": [], "may_have": [], "grants": [
                  {"agency_id": "so_x", "dataset": "citizen", "purpose": hostile, "legal_basis": hostile,
                   "granted_at": at, "expires_at": None, "request_id": "req_1"}]}
    page = render(report, load_catalog(), {"so_x": hostile}, by=hostile, now=at)
    assert "<script>" not in page and "&lt;script&gt;" in page
    why = Notice(page).rows["why"]
    assert why == [[hostile, "Công dân (Cơ sở dữ liệu quốc gia về dân cư)", hostile, hostile,
                    "08:30 01/03/2026 (theo đề nghị req_1)"]], "Vietnam time, UTC+7"
    with pytest.raises(ValueError, match="vi or en"):
        render(report, load_catalog(), {}, by="x", lang="fr")
