"""Webhooks, on SQLite and on a real PostgreSQL: an agency's endpoint is told when a shared dataset it reads
changed, signed as Standard Webhooks sign (verified with the spec's own library), once per change however
many dispatchers run, again later when it failed, never when the agency lost its grant.

The warehouse is loaded by the real pipelines from the real sandbox services; the endpoints are real HTTP
servers on loopback (a WSGI app that records what it gets and answers as the test scripts it); the gateway
is uvicorn in a thread, so an agency told of a change reads it from the real change feed.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import pgserver
from airflow_helpers import lgsp_env, run
from gateway import tables
from gateway.api import create_app
from gateway.settings import load_gateway_settings
from gateway.webhooks import WebhookError, Webhooks, retry_delay, shown_url
from lgsp import runner
from lgsp.status import status_report
from loopback import serving
from test_gateway import KEY, gateway_env, loaded_registry, running
from test_gateway_changes import Env, Mirror, _changed_snapshot, _load, firm, firm_catalog
from warehouse import Warehouse


class Endpoint:
    """An agency's endpoint: records each request; answers with the next (status, delay, headers) scripted for
    its path (or for any path), else 204."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.script: dict[str | None, list[tuple[int, float, dict[str, str]]]] = {}
        self.lock = threading.Lock()

    def answer(self, *statuses: int, path: str | None = None, delay: float = 0.0, **headers: str) -> None:
        self.script.setdefault(path, []).extend((s, delay, headers) for s in statuses)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with self.lock:
            queue = self.script.get(environ["PATH_INFO"]) or self.script.get(None) or []
            status, delay, headers = queue.pop(0) if queue else (204, 0.0, {})
            self.received.append({"path": environ["PATH_INFO"], "query": environ.get("QUERY_STRING", ""),
                                  "body": body, "headers": {k[5:].lower().replace("_", "-"): v for k, v
                                                            in environ.items() if k.startswith("HTTP_")}})
        time.sleep(delay)
        start_response(f"{status} X", [("Content-Type", "text/plain"), *headers.items()])
        return [b"boom: the case system is down" if status >= 500 else b""]

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r["body"]) for r in self.received]


class WebhookRows:
    """A test environment's look at its webhooks' rows (`self.hooks`: the Webhooks under test)."""

    hooks: Webhooks

    def hook(self, webhook_id: str) -> Any:
        with self.hooks.engine.connect() as conn:
            return conn.execute(sa.select(tables.webhook).where(tables.webhook.c.webhook_id == webhook_id)).one()

    def due_now(self, webhook_id: str) -> None:
        """As if its retry delay had passed."""
        with self.hooks.engine.begin() as conn:
            conn.execute(tables.webhook.update().where(tables.webhook.c.webhook_id == webhook_id)
                         .values(next_attempt_at=datetime.now(timezone.utc) - timedelta(seconds=1)))


@dataclasses.dataclass
class HookEnv(Env, WebhookRows):
    hooks: Webhooks = None  # type: ignore[assignment]

    def change_enterprises(self, monkeypatch: pytest.MonkeyPatch) -> set[str]:
        """Five enterprises suspended at a second sandbox, loaded by the real pipeline: their tax codes."""
        from sandbox import start_sandbox

        changed, _, suspended = _changed_snapshot(self.sandbox.data)
        with start_sandbox(data=changed, api_key="test-key-not-secret") as newer:
            with monkeypatch.context() as patch:
                for name, value in newer.env().items():
                    patch.setenv(name, value)
                runner.run_pipeline("business_enterprises", catalog=self.catalog)
        return suspended

    def load_firms(self, batch: str, records: list[dict[str, Any]]) -> None:
        _load(Warehouse(self.url, self.catalog), self.catalog.datasets["firm"], batch, records)



@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[HookEnv]:
    home = tmp_path_factory.mktemp(f"webhooks-{request.param}")
    admin = request.getfixturevalue("pg_admin_url") if request.param == "postgresql" else ""
    url = pgserver.create_database(admin) if admin else f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url):
        catalog = firm_catalog()
        registry = loaded_registry(url, catalog, ("business_enterprises",))
        keys = {}
        for agency, grants in (("so_xay_dung", ("enterprise", "firm")), ("so_y_te", ("firm",))):
            registry.add_agency(agency, agency, 100_000.0)
            keys[agency] = registry.issue_api_key(agency)
            for dataset in grants:
                registry.grant(agency, dataset)
        hooks = Webhooks(registry.engine, catalog, KEY.encode(), "https://lgsp.ninhbinh.example",
                         max_attempts=3, timeout_s=(2.0, 0.5))
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0,
                                       webhook_hosts=("*.so-xay-dung.example", "cases.example"))
        with running(create_app(settings, catalog)) as base:
            yield HookEnv(url, keys, base, catalog, sandbox_handle, hooks)
        registry.engine.dispose()
    if admin:
        pgserver.drop_database(admin, url)


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    receiver = Endpoint()
    with serving(receiver) as base:
        yield receiver, base


def _verified(secret: str, request: dict[str, Any]) -> dict[str, Any]:
    return Webhook(secret).verify(request["body"], request["headers"])  # type: ignore[no-any-return]


def test_an_endpoint_is_told_once_per_change_signed_and_reads_the_change_from_the_feed(
        env: HookEnv, endpoint: tuple[Endpoint, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver, base = endpoint
    caplog.set_level(logging.INFO)  # what a deployment logs (urllib3's DEBUG lines show request lines)
    caplog.set_level(logging.DEBUG, logger="lgsp")
    copy = Mirror(env, "enterprise", agency="so_xay_dung", limit=1000)
    copy.poll()  # the agency's copy, before it is told of anything
    webhook_id, secret = env.hooks.add("so_xay_dung", "enterprise", f"{base}/lgsp-hook?token=abc")
    assert secret.startswith("whsec_") and webhook_id.startswith("wh_")
    assert env.hooks.dispatch() == [] and receiver.received == [], "told of changes from now on only"

    suspended = env.change_enterprises(monkeypatch)
    done = env.hooks.dispatch()
    assert [(d.webhook_id, d.outcome, d.status) for d in done] == [(webhook_id, "delivered", 204)]
    assert done[0].url == f"{base}/lgsp-hook?..." and "abc" not in repr(done)
    [request] = receiver.received
    assert request["path"] == "/lgsp-hook" and request["query"] == "token=abc"
    event = _verified(secret, request)  # the spec's own library accepts the signature
    with pytest.raises(WebhookVerificationError):  # and would refuse a body changed on the way
        Webhook(secret).verify(request["body"].replace(b"enterprise", b"enterprisE"), request["headers"])
    with pytest.raises(WebhookVerificationError):  # or another endpoint's secret
        Webhook(env.hooks.add("so_y_te", "firm", f"{base}/other")[1]).verify(request["body"], request["headers"])
    assert request["headers"]["webhook-id"] == f"{webhook_id}_{done[0].last_change}"
    assert event["type"] == "dataset.changed"
    data = event["data"]
    newest = int(env.scalar("SELECT max(change_seq) FROM lgsp_change WHERE dataset = 'enterprise'"))
    assert (data["dataset"], data["changes"], data["last_change"]) == ("enterprise", 1, newest)
    assert data["rows_changed"] == int(env.scalar(
        f"SELECT rows_changed FROM lgsp_change WHERE change_seq = {newest}")) > 0
    assert data["feed"] == "https://lgsp.ninhbinh.example/api/v1/datasets/enterprise/changes"
    assert not any(code.encode() in request["body"] for code in suspended), "no record in a notification"

    got = copy.poll()  # told, the agency reads the feed: exactly the suspended enterprises
    assert sorted(c["record"]["tax_code"] for c in got) == sorted(suspended)
    assert env.hooks.dispatch() == [] and len(receiver.received) == 1, "nothing new: nothing sent"

    for n in range(3):  # three loads, one notification for them all
        env.load_firms(f"told-{n}", [firm(900 + n, day=n)])
    done = env.hooks.dispatch()
    assert [(d.dataset, d.outcome) for d in done] == [("firm", "delivered")], "enterprise: nothing new"
    assert [(e["data"]["dataset"], e["data"]["changes"], e["data"]["rows_changed"])
            for e in receiver.events()[1:]] == [("firm", 3, 3)]
    listed = {h["webhook_id"]: h for h in env.hooks.listing()}
    assert listed[webhook_id]["state"] == "ok" and listed[webhook_id]["pending_changes"] == 0
    assert listed[webhook_id]["url"].endswith("/lgsp-hook?...")
    assert secret not in caplog.text and "token=abc" not in caplog.text
    assert [d["outcome"] for d in env.hooks.deliveries(webhook_id)] == ["delivered"]
    env.hooks.remove(webhook_id)
    for hook in env.hooks.listing():
        env.hooks.remove(hook["webhook_id"])


def _status(env: HookEnv, webhook_id: str) -> list[dict[str, Any]]:
    """What `lgsp status` says of the webhook."""
    wh = Warehouse(env.url, env.catalog)
    try:
        return [p for p in status_report(wh, env.catalog)["problems"] if p.get("webhook") == webhook_id]
    finally:
        wh.engine.dispose()


def test_a_failing_endpoint_is_tried_again_with_the_same_id_then_dies_and_is_revived(
        env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    webhook_id, secret = env.hooks.add("so_y_te", "firm", f"{base}/hook")
    env.load_firms("fail-1", [firm(910)])
    receiver.answer(500)
    [failed] = env.hooks.dispatch()
    assert (failed.outcome, failed.status) == ("failed", 500)
    assert failed.error == f"{base}/hook answered 500: boom: the case system is down"
    wait = failed.next_attempt_at - datetime.now(timezone.utc)  # type: ignore[operator]
    assert timedelta(seconds=25) < wait <= retry_delay(1) == timedelta(seconds=30)
    assert env.hooks.dispatch() == [] and len(receiver.received) == 1, "not due yet"

    env.due_now(webhook_id)
    receiver.answer(204, delay=1.5)  # answers after the read timeout (0.5 s)
    [slow] = env.hooks.dispatch()
    assert (slow.outcome, slow.status) == ("failed", None)
    assert "did not answer within 2 s to connect / 0.5 s to answer" in str(slow.error)
    assert env.hook(webhook_id).next_attempt_at is not None and env.hook(webhook_id).attempts == 2
    [failing] = _status(env, webhook_id)
    assert failing["severity"] == "warning" and "failed 2 time(s) in a row, tried again at" in failing["problem"]

    env.due_now(webhook_id)
    receiver.answer(503)
    [dead] = env.hooks.dispatch()
    assert dead.outcome == "dead" and f"dead after 3 failures in a row (lgsp webhooks retry {webhook_id})" in str(
        dead.error)
    ids = {r["headers"]["webhook-id"] for r in receiver.received}
    assert ids == {f"{webhook_id}_{failed.last_change}"}, "a retry of the same changes keeps its id"
    env.due_now(webhook_id)
    assert env.hooks.dispatch() == [] and len(receiver.received) == 3, "a dead webhook is not tried"
    assert {h["webhook_id"]: h["state"] for h in env.hooks.listing()}[webhook_id] == "dead"
    said = _status(env, webhook_id)  # `lgsp status` says so, and what to do
    assert [p["severity"] for p in said] == ["error"] and "so_y_te (firm) is dead since" in said[0]["problem"]
    assert f"`lgsp webhooks retry {webhook_id}`" in said[0]["problem"] and "answered 503" in said[0]["problem"]

    env.load_firms("fail-2", [firm(911)])  # the backlog grows while it is dead
    assert env.hooks.retry() == [webhook_id]
    [revived] = env.hooks.dispatch()
    assert (revived.outcome, revived.first_change, revived.last_change) == (
        "delivered", failed.first_change, failed.last_change + 1)
    assert _verified(secret, receiver.received[-1])["data"]["changes"] == 2
    assert [d["outcome"] for d in env.hooks.deliveries(webhook_id)] == ["delivered", "dead", "failed", "failed"]
    hook = env.hook(webhook_id)
    assert (hook.attempts, hook.dead_at, hook.next_attempt_at, hook.delivered_seq) == (
        0, None, None, revived.last_change)
    assert _status(env, webhook_id) == [], "delivered again: nothing to say"
    env.hooks.remove(webhook_id)


def test_gone_and_redirects_stop_or_fail_a_webhook_and_an_unreachable_one_says_where(
        env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    gone, _ = env.hooks.add("so_y_te", "firm", f"{base}/gone")
    moved, _ = env.hooks.add("so_xay_dung", "firm", f"{base}/moved")
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    unreachable, _ = env.hooks.add("so_xay_dung", "firm", nowhere)
    env.load_firms("gone-1", [firm(920)])
    receiver.answer(410, path="/gone")
    receiver.answer(302, path="/moved", Location="https://elsewhere.example/new?secret=1")
    done = {d.webhook_id: d for d in env.hooks.dispatch()}
    assert done[gone].outcome == "gone" and "410 Gone" in str(done[gone].error)
    assert done[moved].outcome == "failed" and done[moved].status == 302
    assert "a redirect to https://elsewhere.example/new?... (not followed)" in str(done[moved].error)
    assert sorted(r["path"] for r in receiver.received) == ["/gone", "/moved"], "the redirect was not followed"
    assert done[unreachable].outcome == "failed" and done[unreachable].status is None
    assert str(done[unreachable].error).startswith(f"could not reach {nowhere}: "), done[unreachable].error
    assert "refused" in str(done[unreachable].error).lower()
    states = {h["webhook_id"]: h["state"] for h in env.hooks.listing()}
    assert (states[gone], states[moved], states[unreachable]) == ("dead", "failing", "failing")
    for webhook_id in (gone, moved, unreachable):
        env.hooks.remove(webhook_id)


def test_a_webhook_is_paused_while_its_agency_may_not_read_the_dataset(
        env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    from gateway.agencies import AgencyRegistry

    receiver, base = endpoint
    registry = AgencyRegistry(env.hooks.engine, env.catalog)
    webhook_id, _ = env.hooks.add("so_y_te", "firm", f"{base}/hook")
    registry.revoke("so_y_te", "firm")
    env.load_firms("paused-1", [firm(930)])
    [paused] = env.hooks.dispatch()
    assert paused.outcome == "paused" and receiver.received == [], "nothing sent to an agency without the grant"
    assert "paused: 'firm' may not be read by agency 'so_y_te' (no grant" in str(paused.error)
    assert env.hook(webhook_id).attempts == 0 and env.hook(webhook_id).dead_at is None, "not a failure"
    registry.grant("so_y_te", "firm")
    unshared = copy.copy(env.hooks)  # the same webhooks, with firm taken out of sharing.yaml
    unshared.catalog = env.catalog.model_copy(update={"sharing": {
        n: s for n, s in env.catalog.sharing.items() if n != "firm"}})
    [withdrawn] = unshared.dispatch()
    assert withdrawn.outcome == "paused" and "'firm' is no longer shared" in str(withdrawn.error)
    assert receiver.received == []
    [told] = env.hooks.dispatch()
    assert told.outcome == "delivered" and len(receiver.received) == 1
    env.hooks.remove(webhook_id)


def test_a_grant_on_some_rows_is_told_of_those_rows_only(env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    """A commune's committee granted its own rows is not told of (nor counted) the province's other changes; a
    record leaving its rows is told as `reconcile` with the rows it covers, as its change feed's last page says."""
    from gateway.agencies import AgencyRegistry

    receiver, base = endpoint
    registry = AgencyRegistry(env.hooks.engine, env.catalog)
    registry.add_agency("ubnd_xa_scoped", "UBND xã (firms closing)", 100_000.0)
    registry.grant("ubnd_xa_scoped", "firm", scope={"status": ["closing"]})
    env.keys["ubnd_xa_scoped"] = registry.issue_api_key("ubnd_xa_scoped")
    webhook_id, secret = env.hooks.add("ubnd_xa_scoped", "firm", f"{base}/scoped")
    newest = "SELECT max(change_seq) FROM lgsp_change WHERE dataset = 'firm'"

    def told() -> dict[str, Any]:
        [delivery] = env.hooks.dispatch()
        assert delivery.outcome == "delivered"
        return _verified(secret, receiver.received[-1])["data"]  # type: ignore[no-any-return]

    env.load_firms("scoped-1", [firm(960, status="closing"), firm(961)])
    data = told()  # counted within its rows; 961 is beyond them now, and may have been within before: reconcile
    assert (data["rows_changed"], data["reconcile"], data["scope_rows"]) == (1, True, 1)

    env.load_firms("scoped-2", [firm(962), firm(963, status="dissolved")])  # beyond its rows, as many rows in them
    assert env.hooks.dispatch() == [] and len(receiver.received) == 1, "nothing of its rows changed: not told"
    assert env.hook(webhook_id).delivered_seq == int(env.scalar(newest)), "and not told of it later either"

    env.load_firms("scoped-3", [firm(964, status="closing")])
    env.load_firms("scoped-4", [firm(965)])
    data = told()
    assert (data["changes"], data["rows_changed"], data["scope_rows"]) == (2, 1, 2)

    env.load_firms("scoped-5", [firm(960, status="dissolved")])  # leaves its rows: nothing within changed, one less
    data = told()
    assert (data["rows_changed"], data["reconcile"], data["scope_rows"]) == (0, True, 1)
    assert len(receiver.received) == 3
    copy = Mirror(env, "firm", agency="ubnd_xa_scoped", limit=1000)
    copy.poll()
    assert sorted(code for (code,) in copy.rows) == ["F0964"], "its feed holds what it was told it covers"

    registry.grant("ubnd_xa_scoped", "firm", scope={"status": ["closing", "dissolved"]})  # other rows now
    assert env.hook(webhook_id).scope_rows is None, "its count of the old rows says nothing of the new"
    env.load_firms("scoped-6", [firm(966)])
    data = told()  # the first change after the grant's rows changed is told
    assert (data["rows_changed"], data["scope_rows"]) == (0, int(env.scalar(
        "SELECT count(*) FROM shared_firm WHERE status IN ('closing', 'dissolved')")))
    env.hooks.remove(webhook_id)
    registry.revoke("ubnd_xa_scoped", "firm")


def test_two_dispatchers_at_once_send_each_notification_once(env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    """Each dispatcher claims a webhook before sending it: with two at once (two Airflow workers, a cron job
    beside the DAG) the endpoint still gets one POST. Without the claim it gets two."""
    receiver, base = endpoint
    webhook_id, _ = env.hooks.add("so_y_te", "firm", f"{base}/hook")
    env.load_firms("twice-1", [firm(940)])
    receiver.answer(204, delay=0.5)  # the first POST is still being answered when the second dispatcher looks
    other = Webhooks(env.hooks.engine, env.catalog, KEY.encode())
    results: list[Any] = []
    threads = [threading.Thread(target=lambda h=h: results.append(h.dispatch())) for h in (env.hooks, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(len(r) for r in results) == [0, 1] and len(receiver.received) == 1
    assert env.hook(webhook_id).claimed_until is None, "released after sending"
    env.hooks.remove(webhook_id)


def test_adding_a_webhook_checks_agency_grant_dataset_and_address_and_rotation_keeps_the_old_secret_a_day(
        env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    refusals = {
        ("nobody", "firm", f"{base}/h"): "no agency 'nobody': register it first",
        ("so_y_te", "enterprise", f"{base}/h"): "agency 'so_y_te' has no grant on 'enterprise'",
        ("so_y_te", "core_firm", f"{base}/h"): "'core_firm' is not shared",
        ("so_y_te", "firm_log", f"{base}/h"): "'firm_log' has no change feed: it is an append log",
        ("so_y_te", "firm", "http://agency.example/h?key=1"): "'http://agency.example/h?...' must use https",
        ("so_y_te", "firm", "ftp://agency.example/h"): "must be an http(s) address",
        ("so_y_te", "firm", "https://agency.example:99999/h"): "cannot be parsed",
    }
    for (agency, dataset, url), words in refusals.items():
        with pytest.raises(WebhookError, match=re.escape(words)):
            env.hooks.add(agency, dataset, url)
    env.hooks.add("so_y_te", "firm", "http://10.0.0.7/h", allow_http=True)  # the province's own network
    webhook_id, old = env.hooks.add("so_y_te", "firm", f"{base}/h")
    with pytest.raises(WebhookError, match="already has webhook"):
        env.hooks.add("so_y_te", "firm", f"{base}/h")
    new = env.hooks.rotate(webhook_id)
    assert new != old and new.startswith("whsec_")
    env.load_firms("rotate-1", [firm(950)])
    [told] = [d for d in env.hooks.dispatch() if d.webhook_id == webhook_id]
    assert told.outcome == "delivered"
    request = receiver.received[-1]
    assert len(request["headers"]["webhook-signature"].split()) == 2
    _verified(old, request), _verified(new, request)  # during the grace both verify
    with env.hooks.engine.begin() as conn:  # a day later
        conn.execute(tables.webhook.update().where(tables.webhook.c.webhook_id == webhook_id)
                     .values(previous_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
    env.load_firms("rotate-2", [firm(951)])
    env.hooks.dispatch()
    request = receiver.received[-1]
    _verified(new, request)
    with pytest.raises(WebhookVerificationError):
        _verified(old, request)
    with pytest.raises(WebhookError, match="no webhook 'wh_nope'"):
        env.hooks.rotate("wh_nope")
    for hook in env.hooks.listing():
        env.hooks.remove(hook["webhook_id"])
    assert env.hooks.listing() == []
    assert shown_url("https://u:p@agency.example:8443/h?t=1") == "https://agency.example:8443/h?..."


def test_the_cli_prints_the_secret_once_and_never_again(tmp_path: Path, sandbox_handle: Any) -> None:
    """`lgsp webhooks ...` as an operator runs it: add (the secret alone on stdout), list, dispatch, deliveries,
    retry, rotate, remove; the endpoint's query (it may hold a token) is never printed."""
    receiver = Endpoint()
    home = tmp_path / "home"
    environment = lgsp_env(home, **sandbox_handle.env(), LGSP_GATEWAY_PSEUDONYM_KEY=KEY, COLUMNS="400")

    def lgsp(*args: str, code: int = 0) -> Any:
        proc = run(["lgsp", *args], environment)
        assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    with serving(receiver) as base:
        lgsp("agencies", "add", "so_xay_dung", "Sở Xây dựng")
        refused = lgsp("webhooks", "add", "so_xay_dung", "dossier", f"{base}/hook?token=abc", code=1)
        assert "agency 'so_xay_dung' has no grant on 'dossier'" in " ".join(refused.stdout.split())
        lgsp("agencies", "grant", "so_xay_dung", "dossier")
        added = lgsp("webhooks", "add", "so_xay_dung", "dossier", f"{base}/hook?token=abc")  # before any load
        secret = added.stdout.strip()
        assert secret.startswith("whsec_") and "\n" not in secret and "shown once" in added.stderr
        assert "nothing to send" in lgsp("webhooks", "dispatch").stdout
        webhook_id = re.search(r"wh_[0-9a-f]{12}", lgsp("webhooks", "list").stdout).group(0)  # type: ignore[union-attr]
        assert f"ping of {webhook_id}: {base}/hook?... answered 204" in lgsp("webhooks", "ping", webhook_id).stdout
        receiver.answer(401)
        refused_ping = lgsp("webhooks", "ping", webhook_id, code=1).stdout
        assert f"ping of {webhook_id} failed: {base}/hook?... answered 401" in " ".join(refused_ping.split())
        lgsp("run", "tthc_dossiers", "--inline")
        receiver.answer(503)
        failed = lgsp("webhooks", "dispatch").stdout
        assert "failed" in failed and "503" in failed and "next at" in failed
        shown = lgsp("webhooks", "list").stdout
        assert "failing" in shown and "/hook?..." in shown
        assert "no dead webhook" in lgsp("webhooks", "retry", webhook_id).stdout  # failing, not dead
        rotated = lgsp("webhooks", "rotate", webhook_id).stdout.strip()
        deliveries = lgsp("webhooks", "deliveries").stdout
        assert "failed" in deliveries and "503" in deliveries and f"{webhook_id}_1" in deliveries
        assert f"{webhook_id}_ping_" in deliveries
        pruned = lgsp("lake", "prune", "--older-than-days", "0").stdout
        assert "3 webhook delivery record(s)" in " ".join(pruned.split()), pruned
        assert "failed" not in lgsp("webhooks", "deliveries").stdout
        lgsp("webhooks", "remove", webhook_id)
        assert webhook_id not in lgsp("webhooks", "list").stdout
        printed = added.stderr + refused.stdout + failed + shown + deliveries
        assert "token=abc" not in printed and secret not in printed and rotated not in printed
    assert rotated.startswith("whsec_") and rotated != secret
    events = [Webhook(secret).verify(r["body"], r["headers"]) for r in receiver.received]
    assert [e["type"] for e in events] == ["webhook.ping", "webhook.ping", "dataset.changed"]
    assert events[2]["data"]["dataset"] == "dossier" and events[2]["data"]["changes"] == 1


def test_lgsp_notify_runs_on_every_shared_dataset_that_has_a_feed() -> None:
    from gateway.changes import feed_problem
    from lgsp.dag_factory import followed_datasets

    catalog = firm_catalog()
    followed = followed_datasets(catalog)
    assert followed == sorted(n for n in catalog.sharing if feed_problem(catalog, n) is None)
    assert {"firm", "indicator_value", "citizen"} <= set(followed) and "firm_log" not in followed


def test_an_agency_sees_its_own_webhooks_pings_one_and_revives_a_dead_one_over_the_api(
        env: HookEnv, endpoint: tuple[Endpoint, str]) -> None:
    receiver, base = endpoint
    mine, secret = env.hooks.add("so_xay_dung", "firm", f"{base}/mine?token=abc")
    theirs, _ = env.hooks.add("so_y_te", "firm", f"{base}/theirs")
    listed = env.get("/api/v1/webhooks", "so_xay_dung")
    assert listed.status_code == 200, listed.text
    [hook] = listed.json()["webhooks"]
    assert (hook["webhook_id"], hook["dataset"], hook["url"], hook["state"]) == (mine, "firm", f"{base}/mine?...", "ok")
    assert "token=abc" not in listed.text and "whsec_" not in listed.text
    assert env.get("/api/v1/webhooks", None).status_code == 401
    assert requests_post(env, f"/api/v1/webhooks/{theirs}/ping", "so_xay_dung").status_code == 404, "not its own"

    pinged = requests_post(env, f"/api/v1/webhooks/{mine}/ping", "so_xay_dung")
    assert pinged.status_code == 200 and pinged.json()["outcome"] == "delivered" and pinged.json()["status"] == 204
    assert _verified(secret, receiver.received[-1])["type"] == "webhook.ping"
    refused = requests_post(env, f"/api/v1/webhooks/{mine}/retry", "so_xay_dung")
    assert refused.status_code == 409 and "not dead" in refused.json()["error"]["message"]

    env.load_firms("api-1", [firm(960)])
    receiver.answer(410, path="/mine")
    assert {d.webhook_id: d.outcome for d in env.hooks.dispatch()}[mine] == "gone"
    [hook] = env.get("/api/v1/webhooks", "so_xay_dung").json()["webhooks"]
    assert hook["state"] == "dead" and "410 Gone" in hook["last_error"] and hook["pending_changes"] == 1
    revived = requests_post(env, f"/api/v1/webhooks/{mine}/retry", "so_xay_dung")
    assert revived.status_code == 200 and revived.json()["outcome"] == "revived"
    assert {d.webhook_id: d.outcome for d in env.hooks.dispatch()}[mine] == "delivered"
    attempts = env.get(f"/api/v1/webhooks/{mine}/deliveries", "so_xay_dung", limit=10)
    assert attempts.status_code == 200, attempts.text
    assert [(a["outcome"], a["status"]) for a in attempts.json()["deliveries"]] == [
        ("delivered", 204), ("gone", 410), ("delivered", 204)], "newest first: the revived one, the 410, the ping"
    assert env.get(f"/api/v1/webhooks/{theirs}/deliveries", "so_xay_dung").status_code == 404
    paths = env.get("/openapi.json", None).json()["paths"]
    assert {"/api/v1/webhooks", "/api/v1/webhooks/{webhook_id}/ping", "/api/v1/webhooks/{webhook_id}/retry",
            "/api/v1/webhooks/{webhook_id}/deliveries"} <= set(paths)
    for webhook_id in (mine, theirs):
        env.hooks.remove(webhook_id)


def requests_post(env: HookEnv, path: str, agency: str) -> Any:
    import requests

    return requests.post(f"{env.base}{path}", headers={"X-API-Key": env.keys[agency]}, timeout=60)


def test_an_endpoint_trickling_its_answer_is_cut_off_at_the_deadline(env: HookEnv) -> None:
    """Each byte comes within the read timeout, so no timeout fires; the deadline on the whole exchange does."""
    def trickle(environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("500 X", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            for _ in range(50):
                yield b"x"  # wsgiref sends each piece as it comes
                time.sleep(0.2)
        return body()

    hooks = Webhooks(env.hooks.engine, env.catalog, KEY.encode(), timeout_s=(2.0, 1.0), deadline_s=1.5)
    with serving(trickle) as base:
        webhook_id, _ = hooks.add("so_y_te", "firm", f"{base}/slow")
        env.load_firms("trickle-1", [firm(970)])
        started = time.monotonic()
        [cut] = hooks.dispatch()
        took = time.monotonic() - started
    assert cut.outcome == "failed" and cut.status is None and took < 4, (cut, took)
    assert f"{base}/slow did not finish answering within 1.5 s" in str(cut.error)
    hook = env.hook(webhook_id)
    assert hook.claimed_until is None and hook.attempts == 1 and hook.next_attempt_at is not None
    hooks.remove(webhook_id)


def test_an_endpoint_whose_error_body_stalls_is_told_by_its_status(env: HookEnv) -> None:
    """The status came, then the body stopped past the read timeout: the attempt says the status (no thread dies
    with an unhandled read timeout, and it is not mistaken for an endpoint that never answered)."""
    def stall(environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("503 Busy", [("Content-Type", "text/plain"), ("Content-Length", "100")])

        def body() -> Iterator[bytes]:
            yield b"b"
            time.sleep(2.5)
            yield b"x" * 99
        return body()

    hooks = Webhooks(env.hooks.engine, env.catalog, KEY.encode(), timeout_s=(2.0, 0.5), deadline_s=2.0)
    with serving(stall) as base:
        webhook_id, _ = hooks.add("so_y_te", "firm", f"{base}/stall")
        env.load_firms("stall-1", [firm(971)])
        [attempt] = hooks.dispatch()
    assert (attempt.outcome, attempt.status) == ("failed", 503), attempt
    assert f"{base}/stall answered 503: (its body could not be read: ReadTimeoutError)" in str(attempt.error)
    hooks.remove(webhook_id)


def test_an_agency_registers_its_own_webhook_only_at_a_host_the_province_allows(env: HookEnv) -> None:
    import requests

    def call(method: str, path: str, agency: str | None = "so_xay_dung", **body: Any) -> Any:
        headers = {"X-API-Key": env.keys[agency]} if agency else {}
        return requests.request(method, f"{env.base}{path}", json=body or None, headers=headers, timeout=60)

    made = call("POST", "/api/v1/webhooks", dataset="firm", url="https://cases.so-xay-dung.example/hook?t=1")
    assert made.status_code == 201, made.text
    mine = made.json()
    assert mine["secret"].startswith("whsec_") and mine["url"] == "https://cases.so-xay-dung.example/hook?..."
    assert made.headers["cache-control"] == "no-store"
    [listed] = call("GET", "/api/v1/webhooks").json()["webhooks"]
    assert (listed["webhook_id"], listed["created_by"], listed["state"]) == (mine["webhook_id"], "agency", "ok")
    refusals = {  # url -> (status, words)
        "http://cases.so-xay-dung.example/hook": (403, "https addresses on *.so-xay-dung.example, cases.example only"),
        "https://so-xay-dung.example/hook": (403, "only"),  # *.domain is the hosts under it, not the domain
        "https://cases.so-xay-dung.example@evil.example/hook": (403, "'https://evil.example/hook'"),
        "https://127.0.0.1/hook": (403, "only"),
        "https://cases.example/hook?t=1": (201, ""),
    }
    for url, (status, words) in refusals.items():
        answer = call("POST", "/api/v1/webhooks", dataset="firm", url=url)
        assert answer.status_code == status and words in answer.text, (url, answer.text)
    again = call("POST", "/api/v1/webhooks", dataset="firm", url="https://cases.so-xay-dung.example/hook?t=1")
    assert again.status_code == 400 and "already has webhook" in again.text
    granted = call("POST", "/api/v1/webhooks", "so_y_te", dataset="enterprise", url="https://cases.example/h")
    assert granted.status_code == 403 and "no grant on 'enterprise'" in granted.text
    assert call("POST", "/api/v1/webhooks", None, dataset="firm", url="https://cases.example/h").status_code == 401
    assert call("POST", "/api/v1/webhooks", dataset="firm", url="https://cases.example/h", extra=1).status_code == 400

    rotated = call("POST", f"/api/v1/webhooks/{mine['webhook_id']}/rotate")
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (mine["secret"], "")
    env.load_firms("self-1", [firm(980)])  # the dispatcher treats it like any other: here, a host that does not exist
    outcomes = {d.webhook_id: d for d in env.hooks.dispatch()}
    assert outcomes[mine["webhook_id"]].outcome == "failed"
    assert "could not reach https://cases.so-xay-dung.example/hook?...: " in str(outcomes[mine["webhook_id"]].error)
    assert call("DELETE", f"/api/v1/webhooks/{mine['webhook_id']}").json()["outcome"] == "removed"
    assert call("DELETE", f"/api/v1/webhooks/{mine['webhook_id']}").status_code == 404
    for n in range(19):  # 20 registered by the agency at most (one is left: cases.example/hook)
        assert call("POST", "/api/v1/webhooks", dataset="firm", url=f"https://cases.example/h{n}").status_code == 201
    over = call("POST", "/api/v1/webhooks", dataset="firm", url="https://cases.example/h99")
    assert over.status_code == 400 and "already has 20 webhooks it registered" in over.text
    env.hooks.add("so_xay_dung", "firm", "https://cases.example/province")  # the province's are not counted
    for hook in env.hooks.listing():
        env.hooks.remove(hook["webhook_id"])

    closed = dataclasses.replace(load_gateway_settings(env.url), principal_cache_s=0.0)  # no hosts: closed
    with running(create_app(closed, env.catalog)) as base:
        shut = requests.post(f"{base}/api/v1/webhooks", json={"dataset": "firm", "url": "https://cases.example/h"},
                             headers={"X-API-Key": env.keys["so_xay_dung"]}, timeout=60)
    assert shut.status_code == 403 and "has not opened webhook registration" in shut.text


def test_a_webhook_table_from_before_agencies_registered_their_own_gains_created_by(database_url: str) -> None:
    """... and `events`: its webhooks tell of their dataset's changes, as they did; and `scope_rows` (unknown: the
    next change is told)."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        tables.create_gateway_tables(engine)
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:
            conn.execute(tables.agency.insert().values(agency_id="so_y_te", name="x", created_at=now))
            conn.exec_driver_sql("ALTER TABLE gateway_webhook DROP COLUMN created_by")
            conn.exec_driver_sql("ALTER TABLE gateway_webhook DROP COLUMN events")
            conn.exec_driver_sql("ALTER TABLE gateway_webhook DROP COLUMN scope_rows")
            conn.exec_driver_sql("INSERT INTO gateway_webhook (webhook_id, agency_id, dataset, url, nonce, created_at, "
                                 "delivered_seq, attempts) VALUES ('wh_old', 'so_y_te', 'firm', 'https://a.example/', "
                                 "'n', CURRENT_TIMESTAMP, 0, 0)")
        tables.create_gateway_tables(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.select(tables.webhook.c.created_by, tables.webhook.c.events,
                                          tables.webhook.c.scope_rows)).one() == ("province", "dataset.changed", None)
    finally:
        engine.dispose()
