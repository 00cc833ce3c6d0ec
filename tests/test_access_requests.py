"""Access requests (gateway.access_requests): an agency asks through the real gateway, the province decides
with the real CLI, the grant works at once and ends when it should. SQLite and PostgreSQL."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from gateway.access_requests import end_of
from gateway.agencies import AgencyRegistry
from gateway.api import create_app
from gateway.audit import verify
from gateway.service import _write_engine
from gateway.settings import load_gateway_settings
from gateway.tables import create_gateway_tables
from lgsp.cli import app as lgsp_app
from test_gateway import gateway_env, loaded_registry, running

PURPOSE = "Đối chiếu thẻ bảo hiểm y tế với dữ liệu dân cư của tỉnh (kế hoạch 12/KH-SYT)"


@dataclasses.dataclass
class Env:
    base: str
    url: str
    keys: dict[str, str]
    registry: AgencyRegistry

    def call(self, method: str, path: str, agency: str | None = "so_y_te", **kwargs: Any) -> requests.Response:
        headers = {"X-API-Key": self.keys[agency]} if agency else {}
        return requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def ask(self, agency: str = "so_y_te", **body: Any) -> requests.Response:
        return self.call("POST", "/api/v1/access-requests", agency, json={"dataset": "citizen", "purpose": PURPOSE,
                                                                          **body})

    def records(self, agency: str = "so_y_te") -> requests.Response:
        return self.call("GET", "/api/v1/datasets/citizen/records", agency, params={"limit": 3})

    def scalar(self, sql: str) -> Any:
        with self.registry.engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()


@dataclasses.dataclass
class Said:
    exit_code: int
    output: str  # the console's lines joined: a message is checked whatever the terminal's width


def _cli(*args: str) -> Said:
    result = CliRunner().invoke(lgsp_app, list(args))
    return Said(result.exit_code, " ".join(result.output.split()))


@pytest.fixture
def env(database_url: str, sandbox_handle: Any, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(sandbox_handle, tmp_path / "home", database_url):
        catalog = load_catalog()
        registry = loaded_registry(database_url, catalog, ["population_citizens"])
        keys = {}
        for agency in ("so_y_te", "so_tai_chinh"):
            registry.add_agency(agency, agency)
            keys[agency] = registry.issue_api_key(agency)
        settings = dataclasses.replace(load_gateway_settings(database_url), principal_cache_s=0.0)
        try:
            with running(create_app(settings, catalog)) as base:
                yield Env(base, database_url, keys, registry)
        finally:
            registry.engine.dispose()


def test_an_agency_asks_the_province_approves_narrower_and_the_grant_works_at_once(env: Env) -> None:
    assert env.records().status_code == 403
    until = (date.today() + timedelta(days=90)).isoformat()
    asked = env.ask(personal=["personal_id", "address"], until=until, legal_basis="Luật Dữ liệu 2024, điều 18",
                    daily_rows=800)
    assert asked.status_code == 201, asked.text
    body = asked.json()
    assert body["daily_rows"] == 800, "how much its purpose needs, as the agency said"
    request_id = body["request_id"]
    assert asked.headers["location"] == f"/api/v1/access-requests/{request_id}"
    assert (body["status"], body["personal"], body["granted_personal"]) == ("pending", ["address", "personal_id"], None)
    assert body["until"].startswith((date.today() + timedelta(days=90)).isoformat())  # 00:00 +07 the day after
    assert "agency_id" not in body and "decided_by" not in body
    again = env.ask()
    assert again.status_code == 400 and f"request {request_id} for 'citizen' is still pending" in again.text
    assert env.records().status_code == 403, "asking is not having"

    listed = _cli("agencies", "requests")
    assert listed.exit_code == 0 and request_id in listed.output and "so_y_te" in listed.output
    wider = _cli("agencies", "approve", request_id, "--personal", "full_name")
    assert wider.exit_code == 1 and "['full_name'] were not asked for" in wider.output
    later = _cli("agencies", "approve", request_id, "--until", (date.today() + timedelta(days=200)).isoformat())
    assert later.exit_code == 1 and "is later than asked" in later.output
    shorter = (date.today() + timedelta(days=30)).isoformat()
    approved = _cli("agencies", "approve", request_id, "--personal", "personal_id", "--until", shorter,
                    "--by", "ttdl_ninh_binh", "--note", "chỉ cột CCCD", "--daily-rows", "300")
    assert approved.exit_code == 0, approved.output
    assert [g["daily_rows"] for g in env.call("GET", "/api/v1/grants").json()["grants"]] == [300], \
        "the province's figure, not the agency's"
    assert f"{request_id} approved: so_y_te may read citizen (personal columns in clear: personal_id)" in \
        approved.output

    followed = env.call("GET", f"/api/v1/access-requests/{request_id}").json()
    assert (followed["status"], followed["granted_personal"], followed["note"]) == \
        ("approved", ["personal_id"], "chỉ cột CCCD")
    assert datetime.fromisoformat(followed["granted_until"]) == end_of(shorter)
    page = env.records()
    assert page.status_code == 200 and len(page.json()["records"]) == 3
    record = page.json()["records"][0]
    assert len(record["personal_id"]) == 12 and record["personal_id"].isdigit(), "granted in clear"
    assert record["address"] != env.scalar(f"SELECT address FROM core_citizen WHERE personal_id = "
                                           f"'{record['personal_id']}'"), "address not granted: still protected"
    assert env.scalar("SELECT request_id FROM gateway_grant WHERE agency_id = 'so_y_te'") == request_id
    twice = _cli("agencies", "deny", request_id, "--note", "too late now")
    assert twice.exit_code == 1 and f"request {request_id} is approved already" in twice.output

    assert env.call("GET", f"/api/v1/access-requests/{request_id}", agency="so_tai_chinh").status_code == 404
    assert env.call("GET", "/api/v1/access-requests", agency="so_tai_chinh").json() == {"requests": []}
    assert env.call("GET", "/api/v1/access-requests", agency=None).status_code == 401
    actions = env.scalar("SELECT count(*) FROM gateway_audit WHERE dataset = 'citizen' AND agency_id = 'so_y_te' "
                         "AND action IN ('access_request', 'access_approved')")
    assert int(actions) == 2 and verify(_write_engine(env.url)).intact

    agency = next(a for a in env.registry.agencies() if a["agency_id"] == "so_y_te")
    assert agency["grants"] == {"citizen": ["personal_id"]} and agency["grant_expiry"] == {"citizen": end_of(shorter)}
    assert _cli("agencies", "list").exit_code == 0


def test_a_grant_ends_when_it_says_and_a_denial_or_withdrawal_grants_nothing(env: Env) -> None:
    asked = env.ask(agency="so_tai_chinh").json()["request_id"]
    short = _cli("agencies", "deny", asked, "--note", "no")
    assert short.exit_code == 1 and "say why" in short.output
    denied = _cli("agencies", "deny", asked, "--note", "Mục đích không thuộc phạm vi chia sẻ của Sở Tài chính")
    assert denied.exit_code == 0
    seen = env.call("GET", f"/api/v1/access-requests/{asked}", agency="so_tai_chinh").json()
    assert (seen["status"], seen["note"]) == ("denied", "Mục đích không thuộc phạm vi chia sẻ của Sở Tài chính")
    assert env.records("so_tai_chinh").status_code == 403

    again = env.ask(agency="so_tai_chinh").json()["request_id"]
    withdrawn = env.call("DELETE", f"/api/v1/access-requests/{again}", agency="so_tai_chinh")
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert env.call("DELETE", f"/api/v1/access-requests/{again}", agency="so_tai_chinh").status_code == 400
    assert _cli("agencies", "approve", again).exit_code == 1
    assert env.records("so_tai_chinh").status_code == 403

    granted = _cli("agencies", "grant", "so_y_te", "citizen", "--until",
                   (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat())
    assert granted.exit_code == 0 and env.records().status_code == 200
    with env.registry.engine.begin() as conn:  # an hour later
        conn.execute(sa.text("UPDATE gateway_grant SET expires_at = :at WHERE agency_id = 'so_y_te'"),
                     {"at": datetime.now(timezone.utc) - timedelta(seconds=1)})
    expired = env.records()
    assert expired.status_code == 403, "an expired grant reads nothing"
    agency = next(a for a in env.registry.agencies() if a["agency_id"] == "so_y_te")
    assert agency["grants"] == {} and list(agency["expired_grants"]) == ["citizen"]
    renewed = env.ask(personal=["personal_id"], until=(date.today() + timedelta(days=10)).isoformat())
    assert renewed.status_code == 201, "an expired grant can be asked for again"
    masked = _cli("agencies", "approve", renewed.json()["request_id"], "--masked")
    assert masked.exit_code == 0 and "(personal columns in clear: none)" in masked.output
    record = env.records().json()["records"][0]
    assert record["personal_id"].startswith("ps_"), "granted without personal_id in clear: pseudonymised"
    past = _cli("agencies", "grant", "so_y_te", "citizen", "--until", "2020-01-01")
    assert past.exit_code == 1 and "in the past" in past.output


@pytest.mark.parametrize("body, message", [
    ({"dataset": "passport"}, "'passport' is not a shared dataset"),
    ({"personal": ["full_name_x"]}, "['full_name_x'] are not personal columns of 'citizen'"),
    ({"purpose": "test"}, "purpose: String should have at least 20 characters"),
    ({"until": "2020-01-01"}, "is in the past"),
    ({"until": "soon"}, "until.date: Input should be a valid date or datetime"),
    ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ({"dataset": "procedure"}, "'procedure' is open: anyone reads it without a grant"),
    ({"daily_rows": 0}, "daily_rows: Input should be greater than or equal to 1"),
])
def test_a_bad_request_says_what_is_wrong(env: Env, body: dict[str, Any], message: str) -> None:
    answer = env.ask(**body)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
    assert env.scalar("SELECT count(*) FROM gateway_access_request") == 0


def test_status_counts_pending_requests_and_old_grant_tables_are_upgraded(env: Env, tmp_path: Path) -> None:
    env.ask()
    result = CliRunner().invoke(lgsp_app, ["status", "--json"])
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["access_requests"]["pending"] == 1
    assert any("1 access request(s) of agencies wait for a decision" in p["problem"] for p in report["problems"])
    env.registry.grant("so_tai_chinh", "citizen", expires_at=datetime.now(timezone.utc) + timedelta(days=3))
    env.registry.grant("so_y_te", "citizen", expires_at=datetime.now(timezone.utc) + timedelta(days=30))
    report = json.loads(CliRunner().invoke(lgsp_app, ["status", "--json"]).stdout.strip().splitlines()[-1])
    ending = report["access_requests"]["ending"]
    assert [(g["agency_id"], g["dataset"]) for g in ending] == [("so_tai_chinh", "citizen")]
    assert any(p["problem"].startswith("so_tai_chinh's grant on citizen ends in 2d 23h") for p in report["problems"])

    old = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with old.begin() as conn:  # the grant table as it was before grants could end
        conn.execute(sa.text("CREATE TABLE gateway_grant (agency_id TEXT NOT NULL, dataset TEXT NOT NULL, "
                             "personal_columns TEXT NOT NULL, granted_at DATETIME NOT NULL, "
                             "PRIMARY KEY (agency_id, dataset))"))
        conn.execute(sa.text("INSERT INTO gateway_grant VALUES ('so_y_te', 'citizen', '[]', '2026-01-01 00:00:00')"))
        conn.execute(sa.text(  # the request table as it was before a request could ask for some rows only
            "CREATE TABLE gateway_access_request (request_id TEXT PRIMARY KEY, agency_id TEXT NOT NULL, "
            "dataset TEXT NOT NULL, personal_columns TEXT NOT NULL, purpose TEXT NOT NULL, legal_basis TEXT, "
            "until DATETIME, status TEXT NOT NULL, requested_at DATETIME NOT NULL, decided_at DATETIME, "
            "decided_by TEXT, note TEXT, granted_columns TEXT, granted_until DATETIME, notified_at DATETIME)"))
    create_gateway_tables(old)
    with old.connect() as conn:
        assert conn.execute(sa.text("SELECT expires_at, request_id, row_scope, daily_rows FROM gateway_grant")
                            ).one() == (None, None, None, None)
        assert conn.execute(sa.text("SELECT count(row_scope) + count(granted_scope) + count(daily_rows) "
                                    "FROM gateway_access_request")).scalar() == 0
    registry = AgencyRegistry(old, load_catalog())
    registry.add_agency("so_y_te", "Sở Y tế")
    assert registry.agencies()[0]["grants"] == {"citizen": []}, "an old grant lasts until revoked"
    assert registry.agencies()[0]["grant_scope"] == {}, "and covers every row"


def test_control_characters_are_refused_not_stored(env: Env) -> None:
    answer = env.ask(purpose=PURPOSE + "\x00")
    assert answer.status_code == 400 and "purpose holds control characters" in answer.text
    answer = env.ask(legal_basis="Luật\x1b[31m")
    assert answer.status_code == 400 and "legal_basis holds control characters" in answer.text
    assert env.call("GET", "/api/v1/access-requests/req_%00").status_code == 400
    assert env.call("GET", "/api/v1/access-requests/req_000000000000").status_code == 404


def test_the_freshness_check_tells_the_province_of_each_new_request_once(env: Env,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_helpers import WebhookSink
    from lgsp.freshness import check_and_alert
    from warehouse import Warehouse

    hook = WebhookSink()
    monkeypatch.setenv("LGSP_ALERT_WEBHOOK_URL", hook.url)
    try:
        request_id = env.ask(personal=["personal_id"], until="2099-12-31").json()["request_id"]
        wh, catalog = Warehouse(env.url, load_catalog()), load_catalog()
        first = check_and_alert(wh, catalog)
        assert {"subject": f"request:{request_id}", "kind": "access_request"} in first["alerts"]
        told = [a for a in hook.received if a["kind"] == "access_request"]
        assert len(told) == 1 and told[0]["owner"] == catalog.sharing["citizen"].owner
        assert (f"so_y_te asks for citizen (personal_id in clear, until 2099-12-31 17:00 UTC): {PURPOSE}; decide: "
                f"`lgsp agencies approve {request_id}`") in str(told[0]["summary"])
        again = check_and_alert(wh, catalog)
        assert not [a for a in again["alerts"] if a["kind"] == "access_request"] and \
            len([a for a in hook.received if a["kind"] == "access_request"]) == 1, "told once"
    finally:
        hook.stop()


def test_two_deciders_at_once_one_decision_wins_and_the_grant_matches_it(env: Env) -> None:
    import threading

    from gateway.access_requests import AccessRequests, RequestError

    request_id = env.ask(personal=["personal_id"]).json()["request_id"]
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def decide(who: str) -> None:
        asked = AccessRequests(_write_engine(env.url), load_catalog())
        barrier.wait()
        try:
            if who == "approver":
                asked.approve(request_id, by=who)
            else:
                asked.deny(request_id, by=who, note="Không đủ căn cứ pháp lý")
            outcomes[who] = "won"
        except RequestError as exc:
            outcomes[who] = str(exc)
        finally:
            asked.close()
            asked.engine.dispose()

    threads = [threading.Thread(target=decide, args=(who,)) for who in ("approver", "denier")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [who for who, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 2 and len(winners) == 1, outcomes
    loser = next(outcome for who, outcome in outcomes.items() if who not in winners)
    assert f"request {request_id}" in loser and ("already" in loser or "meanwhile" in loser), loser
    status = env.call("GET", f"/api/v1/access-requests/{request_id}").json()["status"]
    granted = env.scalar("SELECT count(*) FROM gateway_grant WHERE agency_id = 'so_y_te'")
    assert (status, int(granted)) == (("approved", 1) if winners == ["approver"] else ("denied", 0))
    told = env.scalar("SELECT count(*) FROM gateway_agency_event WHERE type = 'access_request.decided' "
                      f"AND data LIKE '%{request_id}%'")
    assert int(told) == 1, "the agency is told of the decision that won, and of no other"
    assert f'"status":"{status}"' in env.scalar("SELECT data FROM gateway_agency_event WHERE data LIKE "
                                                f"'%{request_id}%'")


def test_requests_filed_at_the_same_moment_leave_one_pending(env: Env) -> None:
    import threading

    answers: list[requests.Response] = []
    barrier = threading.Barrier(4)

    def file() -> None:
        barrier.wait()
        answers.append(env.ask())

    threads = [threading.Thread(target=file) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(a.status_code for a in answers) == [201, 400, 400, 400], [a.text for a in answers]
    assert all("pending" in a.json()["error"]["message"] for a in answers if a.status_code == 400)
    assert env.scalar("SELECT count(*) FROM gateway_access_request WHERE status = 'pending'") == 1


def test_a_disabled_agency_is_refused_everywhere_and_enabled_it_has_what_it_had(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import console

    monkeypatch.setattr(console, "_width", 400)  # `agencies list`'s table unwrapped, as on a wide terminal
    env.registry.grant("so_tai_chinh", "citizen", ["personal_id"])
    client_id, client_secret = env.registry.add_oauth_client("so_tai_chinh")
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    token = requests.post(env.base + "/oauth/token", data=form, timeout=30).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert env.records("so_tai_chinh").status_code == 200
    assert _cli("agencies", "disable", "so_tai_chinh", "--note", "x").output.endswith(
        "say why the agency is disabled (--note): the next operator reads it")

    note = "Sở sáp nhập từ 01/7/2025, khóa truy cập cũ"
    said = _cli("agencies", "disable", "so_tai_chinh", "--note", note, "--by", "ttdl_ninh_binh")
    assert said.exit_code == 0 and "agency so_tai_chinh disabled" in said.output, said.output
    refused = env.records("so_tai_chinh")
    assert refused.status_code == 401 and "or its agency disabled" in refused.text, "its key, at once (cache 0 s)"
    assert requests.get(env.base + "/api/v1/datasets/citizen/records", headers=bearer, timeout=30).status_code == 401
    assert requests.post(env.base + "/oauth/token", data=form, timeout=30).status_code == 401, "no new token"
    assert env.call("GET", "/api/v1/grants", agency="so_tai_chinh").status_code == 401
    assert env.ask(agency="so_tai_chinh").status_code == 401, "nor may it ask"
    assert env.records().status_code == 403, "another agency is untouched (no grant, a valid key)"
    again = _cli("agencies", "disable", "so_tai_chinh", "--note", note)
    assert again.exit_code == 1 and "agency 'so_tai_chinh' is disabled already (since" in again.output
    listed = _cli("agencies", "list")
    assert "DISABLED since" in listed.output and "khóa truy cập cũ" in listed.output
    assert env.scalar("SELECT query FROM gateway_audit WHERE action = 'agency_disabled' "
                      "AND agency_id = 'so_tai_chinh'") == orjson.dumps({"by": "ttdl_ninh_binh", "note": note},
                                                                        option=orjson.OPT_SORT_KEYS).decode()

    assert _cli("agencies", "enable", "so_tai_chinh").exit_code == 0
    page = env.records("so_tai_chinh")
    assert page.status_code == 200, page.text
    assert all(len(r["personal_id"]) == 12 for r in page.json()["records"]), "its grant as it was: IDs in clear"
    assert requests.post(env.base + "/oauth/token", data=form, timeout=30).status_code == 200
    assert requests.get(env.base + "/api/v1/datasets/citizen/records", headers=bearer, timeout=30).status_code \
        == 401, "the tokens of before are gone for good"
    twice = _cli("agencies", "enable", "so_tai_chinh")
    assert twice.exit_code == 1 and "is not disabled" in twice.output
    assert "no agency 'nobody'" in _cli("agencies", "disable", "nobody", "--note", note).output
    assert int(env.scalar("SELECT count(*) FROM gateway_audit WHERE action IN ('agency_disabled', "
                          "'agency_enabled')")) == 2 and verify(_write_engine(env.url)).intact
