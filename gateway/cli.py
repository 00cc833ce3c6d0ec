"""`lgsp serve`, `lgsp mirror`, `lgsp agencies|webhooks|audit ...` (registered on the `lgsp` app by `register`).

    lgsp serve [--port 8090] [--workers 2]          the gateway (uvicorn), after preparing the database
    lgsp mirror enterprise --gateway URL --into DB   an agency's copy kept by the change feed (gateway.mirror)
    lgsp agencies add so_y_te "Sở Y tế"              register an agency (--rate requests/s)
    lgsp agencies key so_y_te                        issue an API key (shown once, stored hashed)
    lgsp agencies client so_y_te                     an OAuth2 client (client credentials), secret shown once
    lgsp agencies grant so_y_te citizen --personal personal_id   grant a dataset (and personal columns in clear)
    lgsp agencies grant ubnd_xa_hoa_lu citizen --scope commune_code=14455   only some rows (a commune's)
    lgsp agencies communes --dataset citizen --keys  every commune's People's Committee, granted its own rows
    lgsp agencies revoke so_y_te citizen             withdraw a grant
    lgsp agencies revoke-credential CREDENTIAL_ID    revoke a key or client
    lgsp agencies disable AGENCY --note WHY          refuse all its credentials (grants kept); `enable` undoes it
    lgsp agencies list                               agencies, credentials (ids only), grants
    lgsp agencies show so_y_te [--json]              one agency whole: grants, requests, webhooks, reads, events
    lgsp agencies requests [--status all]            access requests agencies filed (POST /api/v1/access-requests)
    lgsp agencies approve REQUEST [--until DATE]     approve one: its grant made at once (as asked, or narrower)
    lgsp agencies deny REQUEST --note WHY            deny one, saying why
    lgsp webhooks add so_xay_dung enterprise URL     tell an agency's endpoint when a dataset changes (secret once)
    lgsp webhooks access so_y_te URL                 tell it of its requests decided and grants changed or ending
    lgsp webhooks list | dispatch | ping | deliveries | retry | rotate | remove
    lgsp audit verify                                walk the hash chain; non-zero exit if broken
    lgsp audit list [--agency so_y_te]               the latest reads
    lgsp audit subject 037203001234                  to whom a person's data went (a data subject's request)
    lgsp audit usage [--since 30d] [--agency so_y_te]   how much each agency read, per dataset
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from catalog import CatalogError, load_catalog
from lgsp.settings import operator

console = Console(highlight=False, emoji=False)
# so `lgsp agencies key X > file` captures only the key
notes = Console(highlight=False, stderr=True, emoji=False)
agencies_app = typer.Typer(help="Agencies of the sharing gateway: API keys, OAuth2 clients, grants.",
                           no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhooks: agencies' endpoints told when a shared dataset they read changed, or of "
                                "their requests decided and grants changed.",
                            no_args_is_help=True)
audit_app = typer.Typer(help="The gateway's audit of every read (hash-chained).", no_args_is_help=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _registry() -> tuple[object, object]:
    """The registry on the warehouse database (gateway tables created if missing)."""
    from gateway.agencies import AgencyRegistry
    from gateway.service import _write_engine
    from gateway.tables import create_gateway_tables
    from lgsp.settings import load_settings

    try:
        catalog = load_catalog()
    except CatalogError as exc:
        _fail(str(exc))
    engine = _write_engine(load_settings().database_url)
    create_gateway_tables(engine)
    return AgencyRegistry(engine, catalog), engine


def _run(action: object) -> None:
    from gateway.agencies import RegistryError

    try:
        action()  # type: ignore[operator]
    except RegistryError as exc:
        _fail(str(exc))


def serve(host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8090, help="port (Airflow's UI takes 8080)"),
          workers: int = typer.Option(1, min=1, max=16, help="uvicorn worker processes"),
          log_level: str = typer.Option("info", help="info logs one line per request (no personal data)")) -> None:
    """Serve the sharing gateway (REST + CKAN API; OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from gateway.service import prepare_database
    from gateway.settings import GatewayConfigError, load_gateway_settings
    from lgsp.settings import redact_url

    try:
        settings = load_gateway_settings()
        views = prepare_database(settings.database_url, load_catalog())
    except (GatewayConfigError, CatalogError) as exc:
        _fail(str(exc))
    console.print(f"shared views ready on {redact_url(settings.database_url)}: {', '.join(views)}")
    console.print(f"gateway on http://{host}:{port} (OpenAPI /openapi.json, CKAN /api/3/action/)")
    from gateway.metrics import prepare_folder
    from lgsp.settings import load_settings

    prepare_folder(load_settings().home)  # the workers' counters, summed by whichever answers GET /metrics
    if settings.metrics_token is None:
        console.print("metrics off (GET /metrics): set LGSP_METRICS_TOKEN to let Prometheus scrape them")
    options = {"factory": True, "host": host, "port": port, "workers": workers, "access_log": False,
               "server_header": False, "log_level": log_level, "log_config": _log_config(log_level)}
    if port and hasattr(socket, "SO_REUSEPORT"):  # under uvicorn's supervisor, one worker too: SIGHUP reloads
        from gateway.serving import ListenError, pid_file, serve_reuse_port

        console.print(f"reload without downtime (after editing the catalog, or a migration): kill -HUP {os.getpid()} "
                      f"(also in {pid_file()})")
        try:
            serve_reuse_port(uvicorn.Config("gateway.api:create_app", **options))  # type: ignore[arg-type]
        except ListenError as exc:
            _fail(str(exc))
    else:
        uvicorn.run("gateway.api:create_app", **options)  # type: ignore[arg-type]


def _log_config(level: str) -> dict[str, object]:
    """uvicorn's logging, plus the gateway's one line per request (no query strings: they may hold IDs)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
                    "lgsp.gateway": {"handlers": ["stderr"], "level": level.upper(), "propagate": False}},
    }


@agencies_app.command("add")
def agencies_add(agency_id: str = typer.Argument(..., help="e.g. so_y_te"),
                 name: str = typer.Argument(..., help="e.g. 'Sở Y tế (Department of Health)'"),
                 rate: float = typer.Option(None, min=0.1, help="requests/s (default LGSP_GATEWAY_RATE_PER_S)")) -> None:
    """Register an agency."""
    registry, _ = _registry()
    _run(lambda: registry.add_agency(agency_id, name, rate))  # type: ignore[attr-defined]
    console.print(f"agency {agency_id} registered; next: lgsp agencies key {agency_id}")


@agencies_app.command("communes")
def agencies_communes(dataset: list[str] = typer.Option(..., "--dataset", help="a shared dataset with a commune_code "
                                                                               "column to grant (repeatable)"),
                      province: int = typer.Option(37, help="the province's 2025 code (37: Ninh Binh, 129 communes)"),
                      keys: bool = typer.Option(False, "--keys", help="issue an API key to each commune's agency "
                                                                      "without one: CSV on stdout, shown once"),
                      ) -> None:
    """Register every commune's People's Committee as an agency (ubnd_<codename>), each granted the datasets
    scoped to its own commune. Idempotent: what is there is kept."""
    registry, _ = _registry()
    done: list[list[dict[str, object]]] = []
    _run(lambda: done.append(registry.onboard_communes(province, dataset, keys)))  # type: ignore[attr-defined]
    made = done[0]
    registered = sum(1 for e in made if e["registered"])
    granted = sum(len(e["granted"]) for e in made)  # type: ignore[arg-type]
    notes.print(f"{len(made)} communes of province {province}: {registered} agencies registered, {granted} grants "
                f"made ({', '.join(dataset)}, each scoped to its commune), the rest kept as they were")
    issued = [e for e in made if e["api_key"]]
    if issued:
        notes.print(f"{len(issued)} API keys (shown once; only their hashes are stored): agency_id,name,commune_code,"
                    "api_key")
        for e in issued:
            print(f"{e['agency_id']},\"{e['name']}\",{e['commune_code']},{e['api_key']}")


@agencies_app.command("key")
def agencies_key(agency_id: str) -> None:
    """Issue an API key (printed once; only its hash is stored)."""
    registry, _ = _registry()
    holder: list[str] = []
    _run(lambda: holder.append(registry.issue_api_key(agency_id)))  # type: ignore[attr-defined]
    notes.print("API key (shown once, send as X-API-Key):")
    print(holder[0])


@agencies_app.command("client")
def agencies_client(agency_id: str) -> None:
    """Register an OAuth2 client (client credentials grant at POST /oauth/token); the secret is printed once."""
    registry, _ = _registry()
    holder: list[tuple[str, str]] = []
    _run(lambda: holder.append(registry.add_oauth_client(agency_id)))  # type: ignore[attr-defined]
    notes.print("client_id, then client_secret (shown once):")
    print(holder[0][0])
    print(holder[0][1])


@agencies_app.command("grant")
def agencies_grant(agency_id: str, dataset: str,
                   personal: list[str] = typer.Option([], help="a personal column to see in clear (repeatable)"),
                   until: str = typer.Option(None, help="the grant ends then: a date (the end of that day, Vietnam "
                                                        "time) or an ISO time; default: until revoked"),
                   scope: list[str] = typer.Option([], help="only the rows whose COLUMN holds one of the values: "
                                                            "COLUMN=V1,V2 (repeatable; e.g. commune_code=14455)"),
                   daily_rows: int = typer.Option(None, help="the rows a day its purpose needs: reading more in 24 "
                                                             "hours is flagged (lgsp status, an alert)"),
                   ) -> None:
    """Grant a dataset to an agency (personal columns masked unless listed with --personal; every row unless
    limited with --scope)."""
    from gateway.agencies import parse_scope

    registry, _ = _registry()
    ends = _until(until)
    made: list[dict[tuple[str, str], float]] = []
    _run(lambda: made.append(registry.grant(agency_id, dataset, personal, ends,  # type: ignore[attr-defined]
                                            scope=parse_scope(scope), daily_rows=daily_rows)))
    for (name, column), seconds in made[0].items():
        console.print(f"indexed {name} by {column} for reads of its scoped grants ({seconds:.1f}s)")
    rows = _rows_said(scope)
    covered = ""
    if scope:
        count, unknown = registry.scope_coverage(dataset, parse_scope(scope))  # type: ignore[attr-defined]
        covered = "" if count is None else f": {count:,} row(s) now"
        for column, values in unknown.items():
            target = registry.catalog.datasets[dataset].columns[column].references.to  # type: ignore[attr-defined]
            notes.print(f"[yellow]warning:[/] {column} {', '.join(map(str, values))}: no {target} has it (a typo? "
                        "the grant reads no row with it until one does)")
    console.print(f"{agency_id} may read {dataset}" + (f" ({rows}){covered}" if rows else "")
                  + (f", with {', '.join(personal)} in clear" if personal else "")
                  + (f", until {ends.isoformat(timespec='minutes')}" if ends else "")
                  + (f", about {daily_rows:,} rows a day" if daily_rows else ""))


def _rows_said(scope: dict[str, list[object]] | list[str] | None) -> str:
    """`only rows with commune_code in 14455, 14458` for a scope (parsed or as typed); empty for every row."""
    from gateway.agencies import parse_scope

    parsed = parse_scope(scope) if isinstance(scope, list) else scope or {}
    if not parsed:
        return ""
    return "only rows with " + " and ".join(f"{c} in {', '.join(map(str, v))}" for c, v in parsed.items())


def _until(text: str | None) -> object:
    from gateway.access_requests import end_of

    try:
        return end_of(text)
    except ValueError as exc:
        _fail(f"--until: {exc}")
    return None


def _access_requests() -> object:
    from gateway.access_requests import AccessRequests

    _, engine = _registry()
    return AccessRequests(engine, load_catalog())  # type: ignore[arg-type]


def _decide(action: object) -> dict[str, object]:
    from gateway.access_requests import RequestError, UnknownRequest
    from gateway.agencies import RegistryError

    try:
        return action()  # type: ignore[operator,no-any-return]
    except (RequestError, UnknownRequest, RegistryError) as exc:
        _fail(str(exc))
    return {}


@agencies_app.command("requests")
def agencies_requests(status: str = typer.Option("pending", help="pending, approved, denied, withdrawn or all"),
                      agency: str = typer.Option(None, help="only this agency's")) -> None:
    """Access requests agencies filed (POST /api/v1/access-requests): what, why, until when, and the decision."""
    from gateway.access_requests import STATUSES

    if status != "all" and status not in STATUSES:
        _fail(f"--status must be one of {', '.join(STATUSES)} or all")
    asked = _access_requests()
    try:
        found = asked.listing(agency, None if status == "all" else status)  # type: ignore[attr-defined]
    finally:
        asked.close()  # type: ignore[attr-defined]
    if not found:
        console.print(f"no {'' if status == 'all' else status + ' '}access request")
        return
    for r in found:  # one block per request: a purpose is a sentence, a table would cut it
        state = r["status"] + (f" {r['decided_at']:%Y-%m-%d %H:%M} UTC by {r['decided_by']}" if r["decided_at"]
                               else f" since {r['requested_at']:%Y-%m-%d %H:%M} UTC")
        console.print(f"[bold]{r['request_id']}[/]  {r['agency_id']} -> {r['dataset']}  ({state})")
        until = f"{r['until']:%Y-%m-%d %H:%M} UTC" if r["until"] else "no end"
        console.print(f"  personal columns in clear: {', '.join(r['personal']) or 'none'}; until {until}; "
                      f"rows: {_rows_said(r['scope']) or 'all'}"
                      + (f"; about {r['daily_rows']:,} rows a day" if r["daily_rows"] else ""))
        console.print(f"  purpose: {r['purpose']}")
        if r["legal_basis"]:
            console.print(f"  legal basis: {r['legal_basis']}")
        if r["status"] == "approved":
            ends = f"{r['granted_until']:%Y-%m-%d %H:%M} UTC" if r["granted_until"] else "revoked"
            console.print(f"  granted: {', '.join(r['granted_personal'] or []) or 'no personal column'} in clear, "
                          f"rows: {_rows_said(r['granted_scope']) or 'all'}, until {ends}")
        if r["note"]:
            console.print(f"  note: {r['note']}")


@agencies_app.command("approve")
def agencies_approve(request_id: str,
                     personal: list[str] = typer.Option(None, help="grant only these of the personal columns asked "
                                                                   "(repeatable; default: all asked)"),
                     masked: bool = typer.Option(False, "--masked", help="grant none of the personal columns asked "
                                                                        "in clear (they stay protected)"),
                     until: str = typer.Option(None, help="end the grant earlier than asked (a date or ISO time)"),
                     scope: list[str] = typer.Option([], help="grant only these of the rows asked: COLUMN=V1,V2 "
                                                              "(repeatable; default: the rows asked)"),
                     note: str = typer.Option(None, help="a note the agency reads"),
                     daily_rows: int = typer.Option(None, help="the rows a day its purpose needs: reading more in "
                                                               "24 hours is flagged (default: as the agency said)"),
                     by: str = typer.Option(None, help="who decides (default $LGSP_OPERATOR or $USER)")) -> None:
    """Approve an access request: its grant is made in the same transaction (as asked, or narrower)."""
    from gateway.agencies import parse_scope

    ends = _until(until)
    asked = _access_requests()
    try:
        narrowed = [] if masked else personal or None
        done = _decide(lambda: asked.approve(request_id, operator(by), narrowed, ends, note,  # type: ignore
                                             parse_scope(scope) if scope else None, daily_rows))
    finally:
        asked.close()  # type: ignore[attr-defined]
    clear = ", ".join(done["granted_personal"]) or "none"  # type: ignore[arg-type]
    rows = _rows_said(done["granted_scope"])  # type: ignore[arg-type]
    ending = f"{done['granted_until']:%Y-%m-%d %H:%M} UTC" if done["granted_until"] else "revoked"
    console.print(f"{request_id} approved: {done['agency_id']} may read {done['dataset']} (personal columns in "
                  f"clear: {clear}{'; ' + rows if rows else ''}) until {ending}"
                  + (f", about {done['daily_rows'] if daily_rows is None else daily_rows:,} rows a day"
                     if (done["daily_rows"] if daily_rows is None else daily_rows) else ""))


@agencies_app.command("deny")
def agencies_deny(request_id: str, note: str = typer.Option(..., help="why (the agency reads it)"),
                  by: str = typer.Option(None, help="who decides (default $LGSP_OPERATOR or $USER)")) -> None:
    """Deny an access request, saying why."""
    asked = _access_requests()
    try:
        _decide(lambda: asked.deny(request_id, operator(by), note))  # type: ignore[attr-defined]
    finally:
        asked.close()  # type: ignore[attr-defined]
    console.print(f"{request_id} denied")


@agencies_app.command("revoke")
def agencies_revoke(agency_id: str, dataset: str) -> None:
    """Withdraw a grant."""
    registry, _ = _registry()
    _run(lambda: registry.revoke(agency_id, dataset))  # type: ignore[attr-defined]
    console.print(f"{agency_id} may no longer read {dataset}")


def _audited(registry: object, agency_id: str, action: str, query: dict[str, object]) -> None:
    """A province's decision on an agency as a row of the gateway's hash-chained audit (dataset "*")."""
    from gateway.audit import AuditEntry, AuditLog

    audit = AuditLog(registry.engine)  # type: ignore[attr-defined]
    try:
        audit.record(AuditEntry(agency_id=agency_id, dataset="*", action=action, query=query, rows_returned=None,
                                status=200))
    finally:
        audit.close()


@agencies_app.command("disable")
def agencies_disable(agency_id: str = typer.Argument(..., help="e.g. ubnd_huyen_gia_vien"),
                     note: str = typer.Option(..., help="why, e.g. 'district level abolished on 2025-07-01'"),
                     by: str = typer.Option(None, help="who decides (default $LGSP_OPERATOR or $USER)")) -> None:
    """Disable an agency: none of its keys, clients or tokens is honoured and its webhooks are paused; its grants
    and keys are kept for `enable`."""
    registry, _ = _registry()
    _run(lambda: registry.disable(agency_id, note))  # type: ignore[attr-defined]
    _audited(registry, agency_id, "agency_disabled", {"note": " ".join(note.split()), "by": operator(by)})
    console.print(f"agency {agency_id} disabled: its credentials are refused (a running gateway within its "
                  "principal cache, 5 s); lgsp agencies enable gives back what it had")


@agencies_app.command("enable")
def agencies_enable(agency_id: str,
                    by: str = typer.Option(None, help="who decides (default $LGSP_OPERATOR or $USER)")) -> None:
    """Enable a disabled agency again: its credentials not revoked and its grants work again."""
    registry, _ = _registry()
    _run(lambda: registry.enable(agency_id))  # type: ignore[attr-defined]
    _audited(registry, agency_id, "agency_enabled", {"by": operator(by)})
    console.print(f"agency {agency_id} enabled")


@agencies_app.command("revoke-credential")
def agencies_revoke_credential(credential_id: str) -> None:
    """Revoke an API key or OAuth2 client (and its tokens)."""
    registry, _ = _registry()
    _run(lambda: registry.revoke_credential(credential_id))  # type: ignore[attr-defined]
    console.print(f"credential {credential_id} revoked")


@agencies_app.command("list")
def agencies_list() -> None:
    """Agencies, their credentials (ids and kinds, never secrets) and grants."""
    registry, _ = _registry()
    table = Table("agency", "name", "rate/s", "credentials", "grants (personal columns in clear; rows; until)")
    for agency in registry.agencies():  # type: ignore[attr-defined]
        ends, scopes = agency["grant_expiry"], agency["grant_scope"]
        grants = ", ".join(f"{d}{' [' + ', '.join(p) + ']' if p else ''}"
                           + (f" ({_rows_said(scopes[d])})" if d in scopes else "")
                           + (f" until {ends[d]:%Y-%m-%d %H:%M}" if d in ends else "")
                           for d, p in agency["grants"].items())
        if agency["expired_grants"]:
            grants += "\nexpired: " + ", ".join(agency["expired_grants"])
        name = agency["name"] + (f"\nDISABLED since {_when(agency['disabled_at'])} UTC: {agency['disabled_note']}"
                                 if agency["disabled_at"] else "")
        table.add_row(agency["agency_id"], name, str(agency["rate_per_s"] or "default"),
                      "\n".join(agency["credentials"]), grants)
    console.print(table)


@agencies_app.command("show")
def agencies_show(agency_id: str = typer.Argument(..., help="e.g. so_y_te"),
                  as_json: bool = typer.Option(False, "--json", help="everything as one JSON line")) -> None:
    """One agency, whole: state, credentials, grants, access requests, webhooks, what it read in the last 30 days
    and the latest events it was told of (why can it not read X? what does it hold?)."""
    import json as json_lib
    from datetime import datetime, timezone

    from gateway import events
    from gateway.access_requests import AccessRequests
    from gateway.usage import DEFAULT_WINDOW, usage
    from gateway.webhooks import Webhooks

    registry, engine = _registry()
    found = [a for a in registry.agencies() if a["agency_id"] == agency_id]  # type: ignore[attr-defined]
    if not found:
        _fail(f"no agency '{agency_id}' (lgsp agencies list)")
    catalog = registry.catalog  # type: ignore[attr-defined]
    since = datetime.now(timezone.utc) - DEFAULT_WINDOW
    asked = AccessRequests(engine, catalog)  # type: ignore[arg-type]
    profile = {"agency": found[0], "grants": registry.grants_of(agency_id),  # type: ignore[attr-defined]
               "requests": asked.listing(agency_id)[:10],
               "webhooks": Webhooks(engine, catalog, b"").listing(agency_id),  # type: ignore[arg-type]
               "usage_since": since, "usage": usage(engine, since, None, agency_id),  # type: ignore[arg-type]
               "events": events.latest(engine, agency_id, 10)}  # type: ignore[arg-type]
    if as_json:
        print(json_lib.dumps(profile, default=str, ensure_ascii=False))
        return
    agency = profile["agency"]
    state = (f"[red]DISABLED since {_when(agency['disabled_at'])} UTC: {agency['disabled_note']}[/]"
             if agency["disabled_at"] else "[green]enabled[/]")
    console.print(f"[bold]{agency_id}[/] {agency['name']}: {state}; rate {agency['rate_per_s'] or 'default'}/s; "
                  f"registered {_when(agency['created_at'])} UTC", soft_wrap=True)
    console.print("credentials: " + (", ".join(agency["credentials"]) or "none (lgsp agencies key " + agency_id + ")"),
                  soft_wrap=True)
    for grant in profile["grants"]:
        console.print(f"grant {grant['dataset']}: in clear {', '.join(grant['personal']) or 'no personal column'}"
                      + (f"; {_rows_said(grant['scope'])}" if grant["scope"] else "; every row")
                      + (f"; until {_when(grant['expires_at'])} UTC" if grant["expires_at"] else "")
                      + (f"; about {grant['daily_rows']:,} rows a day" if grant["daily_rows"] else "")
                      + (f"; request {grant['request_id']}" if grant["request_id"] else ""), soft_wrap=True)
    if agency["expired_grants"]:
        console.print("expired grants: " + ", ".join(f"{d} ({_when(t)} UTC)"
                                                     for d, t in agency["expired_grants"].items()), soft_wrap=True)
    if not profile["grants"]:
        console.print("no live grant: it reads open datasets only")
    for request in profile["requests"]:
        console.print(f"request {request['request_id']} {request['dataset']}: {request['status']}, filed "
                      f"{_when(request['requested_at'])} UTC" + (f"; {request['note']}" if request["note"] else ""),
                      soft_wrap=True)
    for hook in profile["webhooks"]:
        told = "its access events" if hook["events"] == "access" else hook["dataset"]
        console.print(f"webhook {hook['webhook_id']} ({told}) at {hook['url']}: {hook['state']}, "
                      f"{hook['pending_changes']} pending" + (f"; {hook['last_error']}" if hook["last_error"] else ""),
                      soft_wrap=True)
    for row in profile["usage"]:
        console.print(f"read {row['dataset']} (30 days): {row['requests']:,} requests, {row['refused']:,} refused, "
                      f"{row['rows']:,} rows, last {_when(row['last'])} UTC", soft_wrap=True)
    if not profile["usage"]:
        console.print("read nothing through the gateway in the last 30 days")
    for event in profile["events"]:
        console.print(f"told {event['timestamp']}: {event['type']} {events.said(event)}", soft_wrap=True)


def _webhooks() -> object:
    from gateway.settings import GatewayConfigError
    from gateway.webhooks import from_environment

    try:
        return from_environment()
    except (GatewayConfigError, CatalogError) as exc:
        _fail(str(exc))


def _hooks_run(action: object) -> object:
    from gateway.webhooks import WebhookError

    try:
        return action()  # type: ignore[operator]
    except WebhookError as exc:
        _fail(str(exc))


@webhooks_app.command("add")
def webhooks_add(agency_id: str = typer.Argument(..., help="a registered agency, e.g. so_xay_dung"),
                 dataset: str = typer.Argument(..., help="a shared dataset the agency is granted, e.g. enterprise"),
                 url: str = typer.Argument(..., help="the agency's endpoint, e.g. https://so-xay-dung.example/hook"),
                 allow_http: bool = typer.Option(False, help="allow plain http to a host that is not loopback")) -> None:
    """Tell an agency's endpoint when a dataset changes; prints the signing secret once (stdout)."""
    from gateway.webhooks import shown_url

    hooks = _webhooks()
    webhook_id, secret = _hooks_run(lambda: hooks.add(agency_id, dataset, url, allow_http))  # type: ignore
    notes.print(f"webhook {webhook_id}: {agency_id} is told at {shown_url(url)} when {dataset} changes (from now on); "
                "its signing secret (shown once, Standard Webhooks):")
    print(secret)


@webhooks_app.command("access")
def webhooks_access(agency_id: str = typer.Argument(..., help="a registered agency, e.g. so_y_te"),
                    url: str = typer.Argument(..., help="the agency's endpoint, e.g. https://so-y-te.example/hook"),
                    allow_http: bool = typer.Option(False, help="allow plain http to a host that is not loopback")
                    ) -> None:
    """Tell an agency's endpoint of its access events: its requests decided, its grants made, changed, revoked or
    ending; prints the signing secret once (stdout)."""
    from gateway.events import ACCESS
    from gateway.webhooks import shown_url

    hooks = _webhooks()
    webhook_id, secret = _hooks_run(lambda: hooks.add(agency_id, "*", url, allow_http,  # type: ignore
                                                      events=ACCESS))
    notes.print(f"webhook {webhook_id}: {agency_id} is told at {shown_url(url)} of its requests decided and its "
                "grants made, changed, revoked, ending or ended (from now on); its signing secret (shown once, "
                "Standard Webhooks):")
    print(secret)


@webhooks_app.command("list")
def webhooks_list() -> None:
    """Webhooks, their state and the changes their endpoints have not acknowledged (never secrets)."""
    table = Table("webhook", "agency", "dataset", "endpoint", "by", "state", "told up to", "pending",
                  "last delivered", "next attempt", "last error")
    for hook in _webhooks().listing():  # type: ignore[attr-defined]
        told = "its access events" if hook["events"] == "access" else hook["dataset"]
        table.add_row(hook["webhook_id"], hook["agency_id"], told, hook["url"], hook["created_by"],
                      hook["state"],
                      str(hook["delivered_change"]), str(hook["pending_changes"]), _when(hook["delivered_at"]),
                      _when(hook["next_attempt_at"]), hook["last_error"] or "")
    console.print(table)


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else ""


@webhooks_app.command("dispatch")
def webhooks_dispatch(on_airflow: bool = typer.Option(False, help="run the DAG lgsp_notify now")) -> None:
    """Send each due webhook the changes its endpoint has not acknowledged; exit 1 if one died doing so."""
    if on_airflow:
        from lgsp.cli import _airflow_run

        try:
            return _airflow_run(["lgsp_notify"], task_retries=False)
        except Exception as exc:  # noqa: BLE001 - DagRunFailed names the task and where its log is
            _fail(f"{type(exc).__name__}: {exc}")
    hooks = _webhooks()
    done = hooks.dispatch()  # type: ignore[attr-defined]
    table = Table("webhook", "agency", "dataset", "changes / events", "outcome", "status", "ms", "error / next attempt")
    for d in done:
        table.add_row(d.webhook_id, d.agency_id, "its access events" if d.dataset == "*" else d.dataset,
                      f"{d.first_change}-{d.last_change}", d.outcome,
                      str(d.status or ""), str(d.duration_ms),
                      f"{d.error}; next at {_when(d.next_attempt_at)} UTC" if d.next_attempt_at else d.error or "")
    console.print(table if done else "nothing to send: every endpoint has been told of every change")
    dead = [d.webhook_id for d in done if d.outcome in ("dead", "gone")]
    if dead:
        _fail(f"webhook(s) {', '.join(dead)} stopped: fix the endpoint, then lgsp webhooks retry")


@webhooks_app.command("ping")
def webhooks_ping(webhook_id: str) -> None:
    """Send a signed `webhook.ping` event now (to check the endpoint and its secret); exit 1 if it failed."""
    hooks = _webhooks()
    done = _hooks_run(lambda: hooks.ping(webhook_id))  # type: ignore[attr-defined]
    if done.outcome != "delivered":  # type: ignore[attr-defined]
        _fail(f"ping of {webhook_id} failed: {done.error}")  # type: ignore[attr-defined]
    console.print(f"ping of {webhook_id}: {done.url} answered {done.status} in {done.duration_ms} ms")  # type: ignore


@webhooks_app.command("deliveries")
def webhooks_deliveries(webhook: str = typer.Option(None, help="only this webhook"),
                        limit: int = typer.Option(20, min=1, max=10_000)) -> None:
    """The latest attempts: when, which changes, the endpoint's answer."""
    table = Table("when (UTC)", "webhook", "webhook-id", "changes", "outcome", "status", "ms", "error")
    for row in _webhooks().deliveries(webhook, limit):  # type: ignore[attr-defined]
        table.add_row(_when(row["attempted_at"]), row["webhook_id"], row["message_id"],
                      f"{row['first_change']}-{row['last_change']}", row["outcome"], str(row["status"] or ""),
                      str(row["duration_ms"]), row["error"] or "")
    console.print(table)


@webhooks_app.command("retry")
def webhooks_retry(webhook_id: str = typer.Argument(None, help="one webhook (default: every dead one)")) -> None:
    """Revive a dead webhook (out of attempts, or its endpoint answered 410): tried at the next dispatch."""
    hooks = _webhooks()
    revived = _hooks_run(lambda: hooks.retry(webhook_id))  # type: ignore[attr-defined]
    console.print(f"revived: {', '.join(revived)}" if revived else "no dead webhook")  # type: ignore[arg-type]


@webhooks_app.command("rotate")
def webhooks_rotate(webhook_id: str) -> None:
    """A new signing secret (stdout, shown once); the old one also signs for 24 hours."""
    hooks = _webhooks()
    secret = _hooks_run(lambda: hooks.rotate(webhook_id))  # type: ignore[attr-defined]
    notes.print(f"webhook {webhook_id}: new signing secret (shown once; the old one also signs for 24 hours):")
    print(secret)


@webhooks_app.command("remove")
def webhooks_remove(webhook_id: str) -> None:
    """Stop telling the endpoint (its deliveries are kept)."""
    hooks = _webhooks()
    _hooks_run(lambda: hooks.remove(webhook_id))  # type: ignore[attr-defined]
    console.print(f"webhook {webhook_id} removed")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit's hash chains: exit 1 and name the rows if any was edited or deleted."""
    from gateway.audit import verify

    _, engine = _registry()
    report = verify(engine)  # type: ignore[arg-type]
    if not report.intact:
        for problem in report.problems:
            console.print(f"[red]broken:[/] {problem}")
        _fail(f"the audit chain is broken ({len(report.problems)} problem(s) in {report.rows} rows)")
    heads = "; ".join(f"chain {n} head seq {seq} hash {h}" for n, (seq, h) in sorted(report.heads.items()))
    console.print(f"audit intact: {report.rows} rows in {len(report.heads)} chain(s); {heads or 'no rows'}"
                  " (keep the heads elsewhere to detect deletion of the newest rows)")


@audit_app.command("list")
def audit_list(agency: str = typer.Option(None, help="only this agency"),
               limit: int = typer.Option(30, min=1, max=10_000)) -> None:
    """The latest reads: who, what, how many rows, status."""
    from gateway.audit import entries

    _, engine = _registry()
    table = Table("seq", "when (UTC)", "agency", "dataset", "action", "rows", "status")
    for row in entries(engine, limit, agency):  # type: ignore[arg-type]
        table.add_row(str(row["seq"]), f"{row['recorded_at']:%Y-%m-%d %H:%M:%S}", row["agency_id"], row["dataset"],
                      row["action"], "" if row["rows_returned"] is None else str(row["rows_returned"]),
                      str(row["status"]))
    console.print(table)


@audit_app.command("usage")
def audit_usage(since: str = typer.Option("30d", help="from: a date (YYYY-MM-DD, Vietnam time), a time, or a "
                                                      "duration back from now (30d, 12h)"),
                until: str = typer.Option(None, help="to (not included): a date, a time or a duration back"),
                agency: str = typer.Option(None, help="only this agency's reads"),
                as_json: bool = typer.Option(False, "--json", help="the figures as one JSON line")) -> None:
    """How much each agency read, per dataset, from the audit: requests (by kind), refused, rows sent, last read."""
    import json as json_lib

    from gateway.usage import moment, usage

    try:
        start, end = moment(since), moment(until)
    except ValueError as exc:
        _fail(str(exc))
    _, engine = _registry()
    rows = usage(engine, start, end, agency)  # type: ignore[arg-type]
    if as_json:
        print(json_lib.dumps({"since": start, "until": end, "usage": rows}, default=str, ensure_ascii=False))
        return
    window = f"{_when(start)} UTC to {_when(end) + ' UTC' if end else 'now'}"
    table = Table("agency", "dataset", "requests", "by kind", "refused", "rows sent", "last read (UTC)",
                  title=f"Reads through the gateway, {window} (lgsp audit usage)")
    for row in rows:
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(row["by_kind"].items(), key=lambda kv: -kv[1]))
        table.add_row(row["agency_id"], row["dataset"], f"{row['requests']:,}", kinds,
                      f"[red]{row['refused']:,}[/]" if row["refused"] else "0", f"{row['rows']:,}", _when(row["last"]))
    console.print(table if rows else f"no read through the gateway {window}")
    if rows:
        console.print(f"{sum(r['requests'] for r in rows):,} requests by {len({r['agency_id'] for r in rows})} "
                      f"agencies on {len({r['dataset'] for r in rows})} datasets, {sum(r['rows'] for r in rows):,} "
                      f"rows sent; {sum(r['refused'] for r in rows):,} refused")


@audit_app.command("subject")
def audit_subject(personal_id: str = typer.Argument(..., help="the person's 12-digit personal ID (CCCD)"),
                  since: str = typer.Option(None, help="only reads from this date (YYYY-MM-DD, UTC) on"),
                  as_json: bool = typer.Option(False, "--json", help="the report as one JSON line"),
                  document: Path = typer.Option(None, help="also write it as a printable HTML notice to hand to "
                                                           "the person (FILE.html)"),
                  lang: str = typer.Option("vi", help="the notice's language: vi or en"),
                  by: str = typer.Option(None, help="who asks (default $LGSP_OPERATOR or $USER); audited")) -> None:
    """To whom this person's data was provided: the reads that named them, those that may have included their
    records, and each agency's grant and purpose (a data subject's request). Audited itself."""
    import json as json_lib
    from datetime import date, datetime, time, timezone

    from gateway.disclosures import DisclosureError, disclosures, record_report, records_shown
    from gateway.settings import GatewayConfigError, load_gateway_settings
    from lgsp.settings import load_settings
    from warehouse.lake import Lake

    registry, engine = _registry()
    try:
        key = load_gateway_settings().pseudonym_key
        start = None if since is None else datetime.combine(date.fromisoformat(since), time(), timezone.utc)
        report = disclosures(engine, registry.catalog, key, personal_id, start,  # type: ignore[arg-type,attr-defined]
                             Lake(load_settings().lake_root))
    except (GatewayConfigError, DisclosureError) as exc:
        _fail(str(exc))
    except ValueError:
        _fail(f"--since {since!r}: give a date, YYYY-MM-DD")
    if lang not in ("vi", "en"):
        _fail(f"--lang {lang!r}: a notice is written in vi or en")
    catalog = registry.catalog  # type: ignore[attr-defined]
    record_report(engine, catalog, key, personal_id, operator(by), records_shown(report))  # type: ignore[arg-type]
    if document is not None:
        _write_notice(document, report, catalog, engine, operator(by), lang)
    if as_json:
        print(json_lib.dumps(report, default=str, ensure_ascii=False))
        return
    held = ", ".join(f"{name} ({len(rows)})" for name, rows in report["records"].items()) or "no shared dataset now"
    console.print(f"[bold]{personal_id}[/]: in {held}")
    for name, versions in report["earlier"].items():
        console.print(f"  earlier in {name}: {len(versions)} version(s) no longer held: " + "; ".join(
            f"{_span_said(v['since'], v['until'])} {_values_said(v['values'], report['records'].get(name))}"
            for v in versions))
    for name, held in report["held"].items():
        console.print(f"  held, no agency may read it: {name} ({len(held)}): " + "; ".join(
            " ".join(f"{k} {v}" for k, v in h["key"].items()) + f" as {', '.join(h['as'])}" for h in held))
    for name, rows in report["quarantined"].items():
        console.print(f"  quarantined (rejected by lgsp's checks, kept until the source corrects it; no agency may "
                      f"read it): {name} ({len(rows)}): " + "; ".join(
                          f"{q['record_key']} {q['rule']} ({q['status']}, `lgsp quarantine show "
                          f"{q['quarantine_id'][:12]}`)" for q in rows))
    for name, day in report["known_since"].items():
        console.print(f"  {name}: the lake's files begin on {day}, after its first change (removed by hand, or "
                      "an older lake restored): each record's oldest version known is taken as held from the beginning")
    console.print(f"Reads that named them: {len(report['named'])}")
    for r in report["named"]:
        console.print(f"  {r['recorded_at']:%Y-%m-%d %H:%M:%S} UTC  {r['agency_id']}  {', '.join(r['datasets'])}  "
                      f"{r['action']}  "
                      f"status {r['status']}" + (f", {r['rows_returned']} row(s)" if r["rows_returned"] else ""))
    console.print(f"Reads that may have included their records: {len(report['may_have'])}")
    for m in report["may_have"]:
        asked = ", ".join(f"{c} {op} {v}" for c, op, v in m["query"].get("filters") or []) or "every record"
        scope = m["query"].get("scope")
        console.print(f"  {m['agency_id']}  {m['dataset']}  {m['action']}: {m['reads']} read(s), {m['rows']} row(s), "
                      f"{m['first']:%Y-%m-%d} to {m['last']:%Y-%m-%d}; asked {asked}"
                      + (f"; its rows: {_rows_said(scope)}" if scope else ""))
    for g in report["grants"]:
        why = (f"purpose: {g['purpose']}" + (f"; legal basis: {g['legal_basis']}" if g["legal_basis"] else "")
               + f" (request {g['request_id']})") if g["request_id"] else "granted by hand (no access request)"
        sees = ", ".join(g["personal"]) or "none"
        console.print(f"  grant: {g['agency_id']} on {g['dataset']} (personal columns in clear: {sees}"
                      + (f"; {_rows_said(g['scope'])}" if g["scope"] else "") + f"): {why}")


def _write_notice(path: Path, report: dict[str, Any], catalog: Any, engine: Any, by: str, lang: str) -> None:
    """The report as the printable notice (gateway.disclosure_document), written atomically to `path`."""
    from gateway.disclosure_document import write_notice

    try:
        write_notice(path, report, catalog, engine, by, lang)
    except OSError as exc:
        _fail(f"--document {path}: cannot write it: {exc.strerror or exc}")
    notes.print(f"notice for the person ({lang}): {path}")


def _span_said(since: Any, until: Any) -> str:
    start = "the beginning" if since is None else f"{since:%Y-%m-%d %H:%M}"
    return f"{start} to {until:%Y-%m-%d %H:%M} UTC:"


def _values_said(values: dict[str, Any], now: list[dict[str, Any]] | None) -> str:
    """A version's values that differ from its record now (all of them when the record is gone)."""
    current = now[0] if now and len(now) == 1 else {}
    shown = {c: v for c, v in values.items() if v is not None and current.get(c) != v}
    return ", ".join(f"{c} {v}" for c, v in shown.items()) or "as now"


def mirror(dataset: str = typer.Argument(..., help="a shared dataset, e.g. enterprise"),
           gateway: str = typer.Option(..., help="the gateway's address, e.g. https://lgsp.ninhbinh.gov.vn"),
           into: str = typer.Option(..., help="the agency's database: sqlite:///copy.db or postgresql://..."),
           table: str = typer.Option(None, help="the table to keep (default: the dataset's name)"),
           limit: int = typer.Option(1000, min=1, max=1000, help="changes per request"),
           max_pages: int = typer.Option(None, min=1, help="stop after this many pages (the next run goes on)"),
           resync: bool = typer.Option(False, help="empty the table and read the whole dataset again")) -> None:
    """Keep an agency's copy of a shared dataset in sync through the gateway's change feed.

    The API key comes from LGSP_GATEWAY_API_KEY (an open dataset needs none). The first run reads
    every record; later runs apply what changed since the last. Each page is committed with its
    token: a run stopped at any point loses nothing, and the next goes on from there.
    """
    import os

    import sqlalchemy as sa

    from gateway.mirror import Mirror, MirrorError
    from lgsp.settings import redact_url

    copy = Mirror(gateway, dataset, into, os.environ.get("LGSP_GATEWAY_API_KEY"), table=table, limit=limit)
    try:
        if resync:
            copy.resync()
        run = copy.run(max_pages)
    except MirrorError as exc:
        _fail(str(exc))
    except sa.exc.SQLAlchemyError as exc:
        _fail(f"the agency's database at {redact_url(into)} failed: {type(exc).__name__}: "
              f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}")
    finally:
        copy.close()
    what = "snapshot" if run.snapshot else "changes"
    dropped = f", {run.dropped} left the grant's rows" if run.dropped else ""
    console.print(f"{dataset} -> {run.table} in {redact_url(into)}: {what}, {run.upserts} upserted, {run.deletes} "
                  f"deleted{dropped} in {run.pages} page(s){f', {run.retries} retried' if run.retries else ''}; "
                  f"{run.rows} rows; token saved" + "".join(f"; {note}" for note in run.notes))


def register(app: typer.Typer) -> None:
    """Add `serve`, `mirror`, `agencies`, `webhooks` and `audit` to the `lgsp` command line."""
    app.command("serve")(serve)
    app.command("mirror")(mirror)
    app.add_typer(agencies_app, name="agencies")
    app.add_typer(webhooks_app, name="webhooks")
    app.add_typer(audit_app, name="audit")
