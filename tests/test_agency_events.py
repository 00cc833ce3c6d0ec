"""An agency told of its own access (gateway.events), on SQLite and on a real PostgreSQL: its requests decided, its
grants made, changed, revoked or ending, read from the real gateway (`GET /api/v1/events`) and sent to a real
endpoint on loopback by an access webhook, signed as Standard Webhooks sign (verified with the spec's library),
in order, again after a failure, never two for one decision.

The province decides with the real CLI; the `lgsp_notify` DAG's task (`scheduled_dispatch`) tells of the
grants ending soon and sends.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

import pgserver
from catalog import load_catalog
from gateway import events, tables
from gateway.api import create_app
from gateway.events import ACCESS
from gateway.models import AgencyEventList
from gateway.settings import load_gateway_settings
from gateway.webhooks import Webhooks, scheduled_dispatch
from lgsp.cli import app as lgsp_app
from test_access_requests import PURPOSE
from test_access_requests import Env as RequestEnv
from test_gateway import KEY, gateway_env, loaded_registry, running
from test_gateway_webhooks import Endpoint, WebhookRows, endpoint  # noqa: F401 - the fixture: an agency's endpoint on loopback

PUBLIC = "https://lgsp.ninhbinh.example"


@dataclasses.dataclass
class Env(RequestEnv, WebhookRows):
    hooks: Webhooks = None  # type: ignore[assignment]

    def agency(self, agency_id: str) -> None:
        """A new agency of one test (the module's database is shared), with a key."""
        self.registry.add_agency(agency_id, agency_id)
        self.keys[agency_id] = self.registry.issue_api_key(agency_id)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(lgsp_app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    home = tmp_path_factory.mktemp(f"events-{request.param}")
    admin = request.getfixturevalue("pg_admin_url") if request.param == "postgresql" else ""
    url = pgserver.create_database(admin) if admin else f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url, LGSP_GATEWAY_PUBLIC_URL=PUBLIC):
        catalog = load_catalog()
        registry = loaded_registry(url, catalog, ["population_citizens"])
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0,
                                       webhook_hosts=("*.so-y-te.example",))
        hooks = Webhooks(registry.engine, catalog, KEY.encode(), PUBLIC, max_attempts=3, timeout_s=(2.0, 2.0))
        try:
            with running(create_app(settings, catalog)) as base:
                yield Env(base, url, {}, registry, hooks)
        finally:
            registry.engine.dispose()
    if admin:
        pgserver.drop_database(admin, url)


def _told(secret: str, receiver: Endpoint, since: int = 0) -> list[dict[str, Any]]:
    """What the endpoint received from the `since`-th request on, each checked by Standard Webhooks' library."""
    return [Webhook(secret).verify(r["body"], r["headers"]) for r in receiver.received[since:]]


def test_an_agency_is_told_of_its_requests_decided_and_its_grants_made_changed_and_revoked(
        env: Env, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    env.agency("so_y_te")
    env.agency("so_tai_chinh")
    webhook_id, secret = env.hooks.add("so_y_te", "*", f"{base}/access", events=ACCESS)
    commune = env.scalar("SELECT commune_code FROM core_citizen ORDER BY personal_id LIMIT 1")
    until = (date.today() + timedelta(days=90)).isoformat()
    asked = env.call("POST", "/api/v1/access-requests", json={
        "dataset": "citizen", "purpose": PURPOSE, "personal": ["personal_id", "address"], "until": until,
        "scope": {"commune_code": [commune]}})
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["request_id"]
    assert env.hooks.dispatch() == [] and receiver.received == [], "filing tells the agency nothing: it knows"
    wider, said = _cli("agencies", "approve", request_id, "--personal", "full_name")
    assert wider == 1 and "were not asked for" in said
    assert env.hooks.dispatch() == [], "a refused approval decided nothing, and tells of nothing"

    code, said = _cli("agencies", "approve", request_id, "--personal", "personal_id", "--note", "chỉ cột CCCD")
    assert code == 0, said
    done = env.hooks.dispatch()
    assert [(d.webhook_id, d.outcome, d.status) for d in done] == [(webhook_id, "delivered", 204)]
    told = _told(secret, receiver)
    assert [e["type"] for e in told] == ["access_request.decided", "grant.changed"]
    decided, granted = (e["data"] for e in told)
    assert granted["event"] == decided["event"] + 1
    assert [r["headers"]["webhook-id"] for r in receiver.received] == \
        [f"{webhook_id}_e{decided['event']}", f"{webhook_id}_e{granted['event']}"]
    assert {k: v for k, v in decided.items() if k not in ("event", "until")} == {
        "dataset": "citizen", "request_id": request_id, "status": "approved", "note": "chỉ cột CCCD",
        "personal": ["personal_id"], "scope": {"commune_code": [commune]},
        "request": f"{PUBLIC}/api/v1/access-requests/{request_id}"}
    assert decided["until"].startswith((date.today() + timedelta(days=90)).isoformat())  # 00:00 +07 the day after
    assert {k: v for k, v in granted.items() if k != "event"} == {
        "dataset": "citizen", "change": "granted", "personal": ["personal_id"], "scope": {"commune_code": [commune]},
        "expires_at": decided["until"], "request_id": request_id, "grants": f"{PUBLIC}/api/v1/grants"}
    assert env.call("GET", "/api/v1/grants").json()["grants"][0]["scope"] == {"commune_code": [commune]}

    listed = env.call("GET", "/api/v1/events").json()  # the same, asked for, after the key made before the webhook
    issued = {"event": listed["events"][0]["data"]["event"], "credential": env.keys["so_y_te"].split("_")[1],
              "kind": "api_key"}
    assert [e["data"] for e in listed["events"]] == [issued, decided, granted]
    assert (listed["next_after"], listed["more"]) == (granted["event"], False)
    assert [e["type"] for e in listed["events"]] == ["credential.issued", "access_request.decided", "grant.changed"]
    first = env.call("GET", "/api/v1/events", params={"limit": 1, "after": issued["event"]}).json()
    assert [e["data"] for e in first["events"]] == [decided] and first["more"] is True
    rest = env.call("GET", "/api/v1/events", params={"after": first["next_after"]}).json()
    assert [e["data"] for e in rest["events"]] == [granted]
    nothing = env.call("GET", "/api/v1/events", params={"after": granted["event"]}).json()
    assert nothing == {"events": [], "next_after": granted["event"], "more": False}
    assert [e["type"] for e in env.call("GET", "/api/v1/events", agency="so_tai_chinh").json()["events"]] == [
        "credential.issued"], "its own events only"
    assert env.call("GET", "/api/v1/events", agency=None).status_code == 401
    assert env.call("GET", "/api/v1/events", params={"after": -1}).status_code == 400

    other = env.call("POST", "/api/v1/access-requests", json={"dataset": "land_parcel", "purpose": PURPOSE,
                                                               "personal": ["holder_name"]}).json()["request_id"]
    assert _cli("agencies", "deny", other, "--note", "Không đủ căn cứ pháp lý")[0] == 0
    code, said = _cli("agencies", "grant", "so_y_te", "citizen", "--personal", "personal_id")  # all rows now
    assert code == 0, said
    assert _cli("agencies", "grant", "so_y_te", "citizen", "--personal", "personal_id")[0] == 0  # the same again
    assert _cli("agencies", "revoke", "so_y_te", "citizen")[0] == 0
    done = env.hooks.dispatch()
    assert [(d.outcome, d.first_change, d.last_change) for d in done] == \
        [("delivered", granted["event"] + 1, granted["event"] + 3)], "three events: the same grant again is none"
    denied, widened, revoked = (e["data"] for e in _told(secret, receiver, 2))
    assert (denied["status"], denied["dataset"], denied["note"], denied["personal"]) == \
        ("denied", "land_parcel", "Không đủ căn cứ pháp lý", None)
    assert (widened["change"], widened["scope"], widened["expires_at"], widened["request_id"]) == \
        ("changed", None, None, None)
    assert revoked == {"event": granted["event"] + 3, "dataset": "citizen", "change": "revoked", "by": "province",
                       "grants": f"{PUBLIC}/api/v1/grants"}
    assert not any(re.search(rb"\d{12}", r["body"]) for r in receiver.received), "no personal ID in an event"
    assert env.hooks.dispatch() == [] and len(receiver.received) == 5
    listed = {h["webhook_id"]: h for h in env.hooks.listing("so_y_te")}[webhook_id]
    assert (listed["events"], listed["dataset"], listed["pending_changes"], listed["delivered_change"]) == \
        ("access", "*", 0, revoked["event"])
    env.hooks.remove(webhook_id)


def test_an_endpoint_that_fails_is_sent_the_same_event_again_and_none_is_skipped(
        env: Env, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    env.agency("so_tu_phap")
    webhook_id, secret = env.hooks.add("so_tu_phap", "*", f"{base}/tp", events=ACCESS)
    env.registry.grant("so_tu_phap", "citizen")
    env.registry.grant("so_tu_phap", "citizen", ["personal_id"])
    env.registry.revoke("so_tu_phap", "citizen")
    receiver.answer(204, 500, path="/tp")
    [failed] = env.hooks.dispatch()
    assert failed.outcome == "failed" and failed.status == 500 and failed.next_attempt_at is not None
    assert len(receiver.received) == 2, "the events after the failed one wait: sent in order"
    first = _told(secret, receiver)[0]["data"]["event"]
    hook = env.hook(webhook_id)
    assert (hook.delivered_seq, hook.attempts, hook.claimed_until) == (first, 1, None)
    assert env.hooks.dispatch() == [], "not due before its retry delay"
    env.due_now(webhook_id)
    receiver.answer(204, 503, path="/tp")  # the retried event taken, the next one refused
    [again] = env.hooks.dispatch()
    assert (again.outcome, again.first_change, again.last_change) == ("failed", first + 1, first + 2)
    assert env.hook(webhook_id).attempts == 1, "one failure since the last success, not two in a row"
    env.due_now(webhook_id)
    [done] = env.hooks.dispatch()
    assert (done.outcome, done.first_change, done.last_change) == ("delivered", first + 2, first + 2)
    ids = [r["headers"]["webhook-id"] for r in receiver.received]
    assert ids == [f"{webhook_id}_e{n}" for n in (first, first + 1, first + 1, first + 2, first + 2)]
    assert receiver.received[1]["body"] == receiver.received[2]["body"], "a retry sends the same event"
    assert [e["data"]["change"] for e in _told(secret, receiver)] == \
        ["granted", "changed", "changed", "revoked", "revoked"]
    assert [d["outcome"] for d in env.hooks.deliveries(webhook_id)] == ["delivered", "failed", "delivered", "failed",
                                                                        "delivered"]

    with env.registry.engine.begin() as conn:  # a disabled agency is told nothing while it is
        conn.execute(tables.agency.update().where(tables.agency.c.agency_id == "so_tu_phap")
                     .values(disabled_at=datetime.now(timezone.utc)))
    env.registry.grant("so_tu_phap", "citizen")
    [paused] = env.hooks.dispatch()
    assert paused.outcome == "paused" and "disabled" in (paused.error or "") and len(receiver.received) == 5
    with env.registry.engine.begin() as conn:
        conn.execute(tables.agency.update().where(tables.agency.c.agency_id == "so_tu_phap").values(disabled_at=None))
    receiver.answer(410, path="/tp")
    [gone] = env.hooks.dispatch()
    assert gone.outcome == "gone" and env.hook(webhook_id).dead_at is not None
    assert env.hooks.retry(webhook_id) == [webhook_id]
    assert [d.outcome for d in env.hooks.dispatch()] == ["delivered"]
    assert _told(secret, receiver)[-1]["data"]["change"] == "granted" and len(receiver.received) == 7
    env.hooks.remove(webhook_id)


def test_a_grant_ending_soon_is_told_once_and_again_when_it_is_extended(
        env: Env, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    env.agency("so_noi_vu")
    webhook_id, secret = env.hooks.add("so_noi_vu", "*", f"{base}/nv", events=ACCESS)
    now = datetime.now(timezone.utc)
    env.registry.grant("so_noi_vu", "citizen", expires_at=now + timedelta(days=3))
    env.registry.grant("so_noi_vu", "land_parcel", expires_at=now + timedelta(days=60))

    summary = scheduled_dispatch()  # the lgsp_notify DAG's task, as Airflow runs it
    mine = [g for g in summary["grants_told"] if g["agency_id"] == "so_noi_vu"]
    assert [(g["dataset"], g["ends_in_days"]) for g in mine] == [("citizen", 3.0)], "land_parcel ends in 60 days"
    assert [(d["webhook_id"], d["outcome"]) for d in summary["deliveries"] if d["agency_id"] == "so_noi_vu"] == \
        [(webhook_id, "delivered")]
    told = _told(secret, receiver)
    assert [(e["type"], e["data"]["dataset"]) for e in told] == \
        [("grant.changed", "citizen"), ("grant.changed", "land_parcel"), ("grant.ending", "citizen")]
    ending = told[-1]["data"]
    assert ending["expires_at"] == told[0]["data"]["expires_at"] and ending["ask"] == f"{PUBLIC}/api/v1/access-requests"

    again = scheduled_dispatch()
    assert not [g for g in again["grants_told"] if g["agency_id"] == "so_noi_vu"] and len(receiver.received) == 3

    env.registry.grant("so_noi_vu", "citizen", expires_at=now + timedelta(days=10))  # extended, still ending soon
    later = scheduled_dispatch()
    assert [g["dataset"] for g in later["grants_told"] if g["agency_id"] == "so_noi_vu"] == ["citizen"]
    assert [(e["type"], e["data"].get("change")) for e in _told(secret, receiver, 3)] == \
        [("grant.changed", "changed"), ("grant.ending", None)]
    with env.registry.engine.connect() as conn:
        assert events.newest(conn, "so_noi_vu") == _told(secret, receiver)[-1]["data"]["event"]

    with env.registry.engine.begin() as conn:  # an hour ago it ended (as time passes: no event of its own)
        conn.execute(tables.grant.update().where(tables.grant.c.agency_id == "so_noi_vu",
                                                 tables.grant.c.dataset == "citizen")
                     .values(expires_at=now - timedelta(hours=1)))
    ended = scheduled_dispatch()
    assert [(g["type"], g["dataset"]) for g in ended["grants_told"] if g["agency_id"] == "so_noi_vu"] == \
        [("grant.ended", "citizen")]
    last = _told(secret, receiver)[-1]
    assert last["type"] == "grant.ended" and "ends_in_days" not in last["data"] and len(receiver.received) == 6
    assert not [g for g in scheduled_dispatch()["grants_told"] if g["agency_id"] == "so_noi_vu"], "once"
    listed = AgencyEventList.model_validate(env.call("GET", "/api/v1/events", "so_noi_vu").json())  # as documented
    assert [e.type for e in listed.events][-2:] == ["grant.ending", "grant.ended"]
    env.hooks.remove(webhook_id)


def test_an_agency_registers_its_own_access_webhook_and_the_cli_prints_the_secret_once(
        env: Env, endpoint: tuple[Endpoint, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import console

    receiver, base = endpoint
    monkeypatch.setattr(console, "_width", 400)  # the listing's table unwrapped, as on a wide terminal
    env.agency("so_ke_hoach")  # no grant at all: it may still be told of its requests
    hook = {"url": "https://hooks.so-y-te.example/lgsp", "events": "access"}
    made = env.call("POST", "/api/v1/webhooks", "so_ke_hoach", json=hook)
    assert made.status_code == 201, made.text
    assert made.json()["dataset"] == "*" and made.json()["secret"].startswith("whsec_")
    [listed] = env.call("GET", "/api/v1/webhooks", "so_ke_hoach").json()["webhooks"]
    assert (listed["events"], listed["dataset"], listed["state"]) == ("access", "*", "ok")
    twice = env.call("POST", "/api/v1/webhooks", "so_ke_hoach", json=hook)
    assert twice.status_code == 400 and "already has webhook" in twice.text and "access events" in twice.text
    named = env.call("POST", "/api/v1/webhooks", "so_ke_hoach", json={**hook, "dataset": "citizen"})
    assert named.status_code == 400 and "send no dataset" in named.text
    bare = env.call("POST", "/api/v1/webhooks", "so_ke_hoach", json={"url": hook["url"]})
    assert bare.status_code == 400 and "name the dataset" in bare.text
    odd = env.call("POST", "/api/v1/webhooks", "so_ke_hoach", json={**hook, "events": "everything"})
    assert odd.status_code == 400 and "events" in odd.text
    assert env.call("DELETE", f"/api/v1/webhooks/{listed['webhook_id']}", "so_ke_hoach").status_code == 200
    spec = env.call("GET", "/openapi.json", None).json()
    assert "/api/v1/events" in spec["paths"]
    assert spec["components"]["schemas"]["WebhookRequest"]["properties"]["events"]["enum"] == \
        ["dataset.changed", "access"]

    result = CliRunner().invoke(lgsp_app, ["webhooks", "access", "so_ke_hoach", f"{base}/kh"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_") and result.stdout.strip() == secret, "the secret alone on stdout"
    webhook_id = re.search(r"webhook (wh_[0-9a-f]+)", result.stderr).group(1)  # type: ignore[union-attr]
    code, said = _cli("webhooks", "list")
    assert code == 0 and webhook_id in said and "its access events" in said and secret not in said
    code, said = _cli("webhooks", "ping", webhook_id)
    assert code == 0 and "answered 204" in said, said
    ping = _told(secret, receiver)[-1]
    assert ping["type"] == "webhook.ping" and ping["data"]["events"] == "access"
    assert ping["data"]["feed"] == f"{PUBLIC}/api/v1/events"
    bad = CliRunner().invoke(lgsp_app, ["webhooks", "access", "nobody", f"{base}/kh"])
    assert bad.exit_code == 1 and "no agency 'nobody'" in " ".join(bad.output.split())
    env.hooks.remove(webhook_id)


def test_an_event_table_is_made_for_an_old_gateway_and_a_bad_kind_is_refused(env: Env, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        tables.create_gateway_tables(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE gateway_agency_event")
        tables.create_gateway_tables(engine)
        assert sa.inspect(engine).has_table("gateway_agency_event")
    finally:
        engine.dispose()
    from gateway.webhooks import WebhookError

    with pytest.raises(WebhookError, match="not 'everything'"):
        env.hooks.add("so_y_te", "*", "https://hooks.so-y-te.example/x", events="everything")


def test_an_agency_gives_up_a_grant_it_no_longer_needs(env: Env) -> None:
    env.agency("so_van_hoa")
    env.registry.grant("so_van_hoa", "citizen")
    cached = dataclasses.replace(load_gateway_settings(env.url), principal_cache_s=300.0)  # as a gateway keeps them
    with running(create_app(cached, load_catalog())) as base:
        key = {"X-API-Key": env.keys["so_van_hoa"]}
        assert requests.get(f"{base}/api/v1/datasets/citizen/records", headers=key, timeout=30).status_code == 200
        gave = requests.delete(f"{base}/api/v1/grants/citizen", headers=key, timeout=30)
        assert gave.status_code == 200 and gave.json() == {"dataset": "citizen", "outcome": "relinquished"}
        assert requests.get(f"{base}/api/v1/datasets/citizen/records", headers=key, timeout=30).status_code == 403, \
            "at once, though the gateway had its grants cached"
    assert env.call("GET", "/api/v1/grants", "so_van_hoa").json() == {"grants": []}
    again = env.call("DELETE", "/api/v1/grants/citizen", "so_van_hoa")
    assert again.status_code == 404 and "holds no grant on 'citizen'" in again.text
    assert env.call("DELETE", "/api/v1/grants/citizen", None).status_code == 401
    told = env.call("GET", "/api/v1/events", "so_van_hoa").json()["events"]
    assert [(e["type"], e["data"].get("change"), e["data"].get("by")) for e in told] == [
        ("credential.issued", None, None), ("grant.changed", "granted", None), ("grant.changed", "revoked", "agency")]
    assert env.scalar("SELECT count(*) FROM gateway_audit WHERE agency_id = 'so_van_hoa' "
                      "AND action = 'grant_relinquished'") == 1


def test_the_notify_dag_upgrades_a_webhook_table_from_before_access_events(database_url: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.service import _write_engine
    from warehouse import Warehouse

    for name, value in {"LGSP_HOME": str(tmp_path), "LGSP_DATABASE_URL": database_url,
                        "LGSP_GATEWAY_PSEUDONYM_KEY": KEY}.items():
        monkeypatch.setenv(name, value)
    Warehouse(database_url, load_catalog()).create_all()
    engine = _write_engine(database_url)
    try:
        tables.create_gateway_tables(engine)
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:  # as the gateway's tables were before this session: no events anywhere
            conn.exec_driver_sql("ALTER TABLE gateway_webhook DROP COLUMN events")
            conn.exec_driver_sql("DROP TABLE gateway_agency_event")
            conn.execute(tables.agency.insert().values(agency_id="so_y_te", name="x", created_at=now))
            conn.execute(tables.grant.insert().values(agency_id="so_y_te", dataset="citizen", personal_columns="[]",
                                                      granted_at=now, expires_at=now + timedelta(days=2)))
            conn.exec_driver_sql("INSERT INTO gateway_webhook (webhook_id, agency_id, dataset, url, nonce, created_at, "
                                 "delivered_seq, attempts) VALUES ('wh_old', 'so_y_te', 'citizen', "
                                 "'https://a.example/', 'n', CURRENT_TIMESTAMP, 0, 0)")
        summary = scheduled_dispatch()  # the lgsp_notify DAG's task on the new code, before any gateway restart
        assert summary["deliveries"] == [] and [g["dataset"] for g in summary["grants_told"]] == ["citizen"]
        with engine.connect() as conn:
            assert conn.execute(sa.select(tables.webhook.c.events)).scalar_one() == "dataset.changed"
            assert conn.execute(sa.select(tables.agency_event.c.type)).scalar_one() == "grant.ending"
    finally:
        engine.dispose()


def test_an_agency_is_told_of_keys_made_and_revoked_in_its_name_and_why_it_was_disabled(
        env: Env, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    env.agency("so_cong_thuong")
    webhook_id, secret = env.hooks.add("so_cong_thuong", "*", f"{base}/nv", events=ACCESS)
    code, said = _cli("agencies", "key", "so_cong_thuong")
    assert code == 0, said
    second = re.search(r"lgsp_([0-9a-f]{12})_", said)
    assert second is not None
    code, said = _cli("agencies", "client", "so_cong_thuong")
    assert code == 0, said
    client = re.search(r"\b([0-9a-f]{12})\b", said)
    assert client is not None
    assert _cli("agencies", "revoke-credential", second.group(1))[0] == 0
    assert _cli("agencies", "revoke-credential", second.group(1))[0] == 1, "revoked already: no second event"
    assert [d.outcome for d in env.hooks.dispatch()] == ["delivered"]
    told = _told(secret, receiver)
    assert [(e["type"], e["data"]["credential"], e["data"]["kind"]) for e in told] == [
        ("credential.issued", second.group(1), "api_key"), ("credential.issued", client.group(1), "oauth_client"),
        ("credential.revoked", second.group(1), "api_key")]
    assert not any(env.keys["so_cong_thuong"].split("_", 2)[2] in r["body"].decode() for r in receiver.received)

    code, said = _cli("agencies", "disable", "so_cong_thuong", "--note", "Khóa bị lộ, đang thay khóa mới")
    assert code == 0, said
    assert env.call("GET", "/api/v1/events", "so_cong_thuong").status_code == 401, "a disabled agency reads nothing"
    [paused] = env.hooks.dispatch()
    assert paused.outcome == "paused" and len(receiver.received) == 3, "nor is it told anything"
    assert _cli("agencies", "enable", "so_cong_thuong")[0] == 0
    assert [d.outcome for d in env.hooks.dispatch()] == ["delivered"]
    disabled, enabled = _told(secret, receiver, 3)
    assert (disabled["type"], disabled["data"]["note"]) == ("agency.disabled", "Khóa bị lộ, đang thay khóa mới")
    assert (enabled["type"], enabled["data"]["disabled_since"]) == ("agency.enabled", disabled["data"]["since"])
    assert enabled["data"]["event"] == disabled["data"]["event"] + 1
    listed = env.call("GET", "/api/v1/events", "so_cong_thuong")
    assert listed.status_code == 200
    page = AgencyEventList.model_validate(listed.json())  # every type in the OpenAPI model
    assert [e.type for e in page.events] == ["credential.issued", "credential.issued", "credential.issued",
                                             "credential.revoked", "agency.disabled", "agency.enabled"]
    code, shown = _cli("agencies", "show", "so_cong_thuong")
    assert code == 0 and "agency.disabled (Khóa bị lộ, đang thay khóa mới)" in shown
    assert f"credential.revoked {second.group(1)} (api_key)" in shown
    env.hooks.remove(webhook_id)


def test_an_agency_is_told_when_the_columns_of_a_dataset_it_is_granted_change(
        env: Env, endpoint: tuple[Endpoint, str], tmp_path: Path) -> None:  # noqa: F811 - the fixture
    import shutil

    import yaml

    from airflow_helpers import REPO
    from gateway.service import prepare_database

    receiver, base = endpoint
    for agency in ("so_giao_duc", "so_du_lich"):
        env.agency(agency)
    webhook_id, secret = env.hooks.add("so_giao_duc", "*", f"{base}/gd", events=ACCESS)
    env.registry.grant("so_giao_duc", "citizen")
    env.registry.grant("so_du_lich", "enterprise")
    assert scheduled_dispatch()["schemas_told"] == [], "the shipped catalog's columns: recorded, nobody told"
    info = env.call("GET", "/api/v1/datasets/citizen", "so_giao_duc").json()  # a reader without webhooks polls it
    assert info["schema_version"] == events.version(events.contract(load_catalog(), "citizen"))
    assert datetime.fromisoformat(info["schema_since"]) <= datetime.now(timezone.utc)
    start, first = len(receiver.received), {a: _newest(env, a) for a in ("so_giao_duc", "so_du_lich")}

    folder = tmp_path / "catalog"  # a catalog deployed with citizen's columns changed as agencies read them
    shutil.copytree(REPO / "catalog", folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    sharing = yaml.safe_load((folder / "sharing.yaml").read_text())
    citizen = sharing["sharing"]["citizen"]
    citizen["columns"].remove("address")
    citizen["personal"].pop("address")
    citizen["personal"]["full_name"] = "withhold"
    citizen["filterable"].remove("birth_date")
    (folder / "sharing.yaml").write_text(yaml.safe_dump(sharing, allow_unicode=True))
    changed = load_catalog(folder)
    try:
        prepare_database(env.url, changed)  # `lgsp serve` starting on it
        prepare_database(env.url, changed)  # and again: told once
        told = events.after(env.registry.engine, "so_giao_duc", first["so_giao_duc"], public_url=PUBLIC)
        assert [e["type"] for e in told] == ["dataset.schema_changed"]
        data = told[0]["data"]
        assert (data["dataset"], data["added"], data["removed"]) == ("citizen", [], ["address"])
        assert data["changed"] == [{"name": "full_name", "from": {"personal": "mask"}, "to": {"personal": "withhold"}},
                                   {"name": "birth_date", "from": {"filterable": True}, "to": {"filterable": False}}]
        assert data["schema"] == "https://lgsp.ninhbinh.example/api/v1/datasets/citizen" and data["since"]
        assert events.version(events.contract(changed, "citizen")) != info["schema_version"]
        assert events.said(told[0]) == "citizen (columns -address; ~full_name, birth_date)"
        assert _newest(env, "so_du_lich") == first["so_du_lich"], "enterprise did not change: not told"

        summary = scheduled_dispatch()  # the lgsp_notify DAG on the shipped catalog: the columns back as they were
        mine = [s for s in summary["schemas_told"] if s["agency_id"] in ("so_giao_duc", "so_du_lich")]
        assert [(s["agency_id"], s["dataset"]) for s in mine] == [("so_giao_duc", "citizen")]
        assert {s["dataset"] for s in summary["schemas_told"]} == {"citizen"}, "every agency granted it, only them"
        back = mine[0]
        assert [c["name"] for c in back["added"]] == ["address"] and back["removed"] == []
        assert back["added"][0] == {"name": "address", "type": "string", "required": False, "key": False,
                                    "personal": "withhold", "filterable": False, "references": None}
        sent = _told(secret, receiver, start)  # both sent to the agency's access webhook, signed, in order
        assert [(e["type"], e["data"]["removed"]) for e in sent] == [("dataset.schema_changed", ["address"]),
                                                                    ("dataset.schema_changed", [])]
        listed = AgencyEventList.model_validate(env.call("GET", "/api/v1/events", "so_giao_duc").json())
        assert [e.type for e in listed.events][-2:] == ["dataset.schema_changed"] * 2
        assert scheduled_dispatch()["schemas_told"] == []
    finally:
        prepare_database(env.url, load_catalog())  # the shared views as the module's gateway serves them
        env.hooks.remove(webhook_id)
    assert _newest(env, "so_giao_duc") == sent[-1]["data"]["event"], "nothing more to tell"


def _newest(env: Env, agency: str) -> int:
    with env.registry.engine.connect() as conn:
        return events.newest(conn, agency)
