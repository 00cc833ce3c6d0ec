"""The demo's agency: told by a webhook when `enterprise` changed, then its copy kept by the change feed.

Before the pipelines, `lgsp demo` registers `so_xay_dung` (Department of Construction) with a grant on
`enterprise` and a webhook at an endpoint the demo serves (a loopback HTTP server in a thread, checking
each notification's signature as the agency would): `DemoAgency`. The agency also asks for
`land_parcel` (an access request, as through `POST /api/v1/access-requests`), which the province
approves; a second webhook of the agency, for its access events, is told of the decision and the
grant. The pipelines' run ends with the `lgsp_notify` DAG, which tells the endpoint what changed and
what was decided. Then the demo serves the gateway in its own process (uvicorn in a thread, real HTTP
on loopback) and runs `lgsp mirror`'s code into
`var/agency/so_xay_dung.db`. While the gateway is served, a commune's People's Committee
(`ubnd_xa_demo`, granted `citizen` scoped to the commune with the most residents) reads its residents
through it: `CommuneRead`, with the disclosure report of one of its residents (`lgsp audit subject`).

No secret is written anywhere: the agency gets a fresh API key and a fresh webhook each demo (the
earlier ones revoked and removed), and the gateway uses `LGSP_GATEWAY_PSEUDONYM_KEY` when the
environment has it; otherwise a key for this demo only (in this process's environment while the demo
runs), so the copy's saved token (sealed under another key) is refused and the copy is read afresh.
With the variable set, every demo after the first applies only what changed.
"""
from __future__ import annotations

import hmac
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.models import Catalog
from gateway.mirror import Mirror, MirrorError, MirrorRun
from gateway.settings import KEY_VARIABLE
from lgsp.settings import Settings

AGENCY = "so_xay_dung"
AGENCY_NAME = "Sở Xây dựng (demo agency)"
DATASET = "enterprise"
ASKED = "land_parcel"  # the dataset the demo agency asks for (an access request), approved by the province
COMMUNE_AGENCY = "ubnd_xa_demo"


def _agency_key(database_url: str, catalog: Catalog, agency: str = AGENCY, name: str = AGENCY_NAME,
                dataset: str = DATASET, scope: dict[str, list[Any]] | None = None) -> str:
    """The demo agency registered and granted `dataset` (its rows in `scope`), with a new API key (its earlier keys
    revoked)."""
    from gateway.agencies import AgencyRegistry
    from gateway.service import _write_engine

    registry = AgencyRegistry(_write_engine(database_url), catalog)
    try:
        known = {a["agency_id"]: a for a in registry.agencies()}
        if agency not in known:
            registry.add_agency(agency, name)
        for credential in known.get(agency, {}).get("credentials", []):
            if "revoked" not in credential:
                registry.revoke_credential(credential.split(" ", 1)[0])
        registry.grant(agency, dataset, [], scope=scope)
        return registry.issue_api_key(agency)
    finally:
        registry.engine.dispose()


@dataclass
class CommuneRead:
    """What the demo's commune agency read through the gateway: its commune's citizens of all the province's."""

    agency: str
    commune: str
    read: int
    province: int
    beyond: int  # records it got of another commune (0, or the scope leaks)
    resident: str = ""  # one of the commune's residents, masked, whose disclosure report the demo makes
    named: int = 0  # reads that named the resident
    may_have: list[str] = field(default_factory=list)  # agencies whose reads may have included the resident
    notice: str = ""  # the printable notice of that report (lgsp audit subject ID --document FILE)


def commune_read(base: str, database_url: str, catalog: Catalog) -> CommuneRead | None:
    """`ubnd_xa_demo` granted `citizen` scoped to the commune with the most residents reads every record it may
    through the gateway at `base` (real HTTP); None when no citizen is loaded."""
    import requests
    import sqlalchemy as sa

    from gateway.service import _write_engine

    engine = _write_engine(database_url)
    try:
        with engine.connect() as conn:
            top = conn.execute(sa.text("SELECT commune_code FROM shared_citizen GROUP BY commune_code "
                                       "ORDER BY count(*) DESC, commune_code LIMIT 1")).first()
            province = int(conn.execute(sa.text("SELECT count(*) FROM shared_citizen")).scalar_one())
    finally:
        engine.dispose()
    if top is None:
        return None
    commune = str(top[0])
    key = _agency_key(database_url, catalog, COMMUNE_AGENCY, f"UBND xã {commune} (demo agency)", "citizen",
                      {"commune_code": [commune]})
    records: list[dict[str, Any]] = []
    cursor = None
    with requests.Session() as session:
        session.headers["X-API-Key"] = key
        while True:
            answer = session.get(f"{base}/api/v1/datasets/citizen/records", timeout=60,
                                 params={"limit": 1000, "fields": "personal_id,commune_code",
                                         **({"cursor": cursor} if cursor else {})})
            answer.raise_for_status()
            records += answer.json()["records"]
            cursor = answer.json()["next_cursor"]
            if cursor is None:
                break
    read = CommuneRead(COMMUNE_AGENCY, commune, len(records), province,
                       sum(1 for r in records if r["commune_code"] != commune))
    return _disclosed(read, database_url, catalog)


def _disclosed(read: CommuneRead, database_url: str, catalog: Catalog) -> CommuneRead:
    """`read` with the disclosure report of one of the commune's residents (`lgsp audit subject`), made and
    audited as the province makes it."""
    import sqlalchemy as sa

    from gateway.disclosure_document import write_notice
    from gateway.disclosures import disclosures, record_report, records_shown
    from gateway.policy import mask
    from gateway.service import _write_engine
    from gateway.settings import load_gateway_settings
    from lgsp.settings import load_settings
    from warehouse.lake import Lake

    engine = _write_engine(database_url)
    try:
        with engine.connect() as conn:
            resident = conn.execute(sa.text("SELECT min(personal_id) FROM shared_citizen WHERE commune_code = :c"),
                                    {"c": read.commune}).scalar_one()
        key = load_gateway_settings(database_url).pseudonym_key
        report = disclosures(engine, catalog, key, resident, lake=Lake(load_settings().lake_root))
        record_report(engine, catalog, key, resident, "demo", records_shown(report))
        notice = write_notice(load_settings().home / "notices" / "disclosure-demo.html", report, catalog, engine,
                              "demo")
    finally:
        engine.dispose()
    read.resident, read.named = str(mask(resident, b"")), len(report["named"])
    read.may_have = sorted({m["agency_id"] for m in report["may_have"]})
    read.notice = str(notice)
    return read


def _ask_and_approve(engine: Any, catalog: Catalog, hooks: Any, url: str) -> tuple[str, str]:
    """The demo agency is told of its access by a webhook at `url`, asks for `land_parcel` as an agency asks
    through the gateway, and the province approves it: the two events (`access_request.decided`,
    `grant.changed`) wait for the `lgsp_notify` run. The request's id, and the webhook's secret.

    Rerunnable: what an earlier demo left (its grant, a pending request) is taken back first, before the
    webhook is added (from then on it is told)."""
    from datetime import datetime, timedelta, timezone

    from gateway.access_requests import AccessRequests
    from gateway.agencies import AgencyRegistry, RegistryError
    from gateway.events import ACCESS

    asked = AccessRequests(engine, catalog)
    try:
        for pending in asked.listing(AGENCY, "pending"):
            asked.withdraw(pending["request_id"], AGENCY)
        try:
            AgencyRegistry(engine, catalog).revoke(AGENCY, ASKED)
        except RegistryError:
            pass  # the first demo: no grant yet
        secret = hooks.add(AGENCY, "*", url, events=ACCESS)[1]
        request = asked.submit(AGENCY, ASKED, "Kiểm tra giấy phép xây dựng theo thửa đất (demo lgsp)",
                               until=datetime.now(timezone.utc) + timedelta(days=90))
        asked.approve(request["request_id"], by="demo", note="demo: approved as asked")
        return str(request["request_id"]), secret
    finally:
        asked.close()


@dataclass
class Told:
    """What the demo agency's endpoint got: the `data` of each notification whose signature checked out."""

    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0  # notifications whose signature did not check out (none, unless something is wrong)
    access: list[dict[str, Any]] = field(default_factory=list)  # its access webhook's events: {type, data}
    request_id: str = ""  # the access request the demo agency filed, and the province approved


class DemoAgency:
    """The demo agency for the length of a demo: registered and granted `enterprise`, with a webhook at an
    endpoint served here; the gateway's key in this process's environment (the demo's own if none is set)."""

    commune: CommuneRead | None = None  # set by `agency_copy`, while it serves the gateway

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from gateway.service import _write_engine
        from gateway.tables import create_gateway_tables
        from gateway.webhooks import Webhooks
        from warehouse import Warehouse

        self.ephemeral = not os.environ.get(KEY_VARIABLE)
        if self.ephemeral:
            os.environ[KEY_VARIABLE] = secrets.token_urlsafe(32)
        self.told = Told()
        warehouse = Warehouse(settings.database_url, catalog)
        warehouse.create_all()  # a first demo: the change log exists before the webhook is added
        warehouse.engine.dispose()
        engine = _write_engine(settings.database_url)
        create_gateway_tables(engine)
        self.key = _agency_key(settings.database_url, catalog)
        quiet = type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *_: None})
        self._server = make_server("127.0.0.1", 0, self._endpoint, handler_class=quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="lgsp-demo-agency-endpoint")
        self._thread.start()
        hooks = Webhooks(engine, catalog, os.environ[KEY_VARIABLE].encode())
        endpoint = f"http://127.0.0.1:{self._server.server_port}"
        try:
            for old in hooks.listing(AGENCY):
                hooks.remove(old["webhook_id"])
            self._secrets = {"/lgsp-hook": hooks.add(AGENCY, DATASET, f"{endpoint}/lgsp-hook")[1]}
            if ASKED in catalog.sharing:
                self.told.request_id, self._secrets["/lgsp-events"] = _ask_and_approve(
                    engine, catalog, hooks, f"{endpoint}/lgsp-events")
        finally:
            engine.dispose()

    def _endpoint(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """The agency's side: check the signature (Standard Webhooks), keep the event."""
        import orjson

        from gateway.webhooks import sign

        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        message_id, stamp = environ.get("HTTP_WEBHOOK_ID", ""), environ.get("HTTP_WEBHOOK_TIMESTAMP", "0")
        secret = self._secrets.get(environ.get("PATH_INFO", ""), "whsec_")
        expected = sign(secret, message_id, int(stamp) if stamp.isdigit() else 0, body)
        signatures = environ.get("HTTP_WEBHOOK_SIGNATURE", "").split()
        if any(hmac.compare_digest(expected, given) for given in signatures):
            event = orjson.loads(body)
            if environ["PATH_INFO"] == "/lgsp-events":
                self.told.access.append({"type": event["type"], "data": event["data"]})
            else:
                self.told.events.append(event["data"])
            start_response("204 No Content", [])
        else:
            self.told.refused += 1
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
        return [b""]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.ephemeral:
            os.environ.pop(KEY_VARIABLE, None)


def agency_copy(settings: Settings, catalog: Catalog, agency: DemoAgency) -> tuple[MirrorRun, Path]:
    """Serve the gateway, bring the demo agency's copy of `enterprise` up to date; what it did, and where. The
    commune agency reads its residents meanwhile (`agency.commune`)."""
    from gateway.api import create_app
    from gateway.service import prepare_database
    from gateway.serving import in_thread
    from gateway.settings import load_gateway_settings

    gateway_settings, ephemeral = load_gateway_settings(settings.database_url), agency.ephemeral
    prepare_database(settings.database_url, catalog)
    key = agency.key
    target = settings.home / "agency" / f"{AGENCY}.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    with in_thread(create_app(gateway_settings, catalog)) as base:
        agency.commune = commune_read(base, settings.database_url, catalog)
        copy = Mirror(base, DATASET, f"sqlite:///{target}", key, gateway_name=f"lgsp demo gateway ({settings.home})")
        try:
            try:
                run = copy.run()
            except MirrorError as exc:  # a token sealed under another key, or of a warehouse made anew
                if "--resync" not in str(exc):
                    raise
                copy.resync()
                run = copy.run()
                run.notes.append("read afresh: the saved token was not this gateway's"
                                 + (f" (set {KEY_VARIABLE} to keep the copy incremental)" if ephemeral else ""))
            return run, target
        finally:
            copy.close()
