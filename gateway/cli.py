"""`lgsp serve`, `lgsp mirror`, `lgsp agencies ...` and `lgsp audit ...` (registered on the `lgsp` app by `register`).

    lgsp serve [--port 8090] [--workers 2]          the gateway (uvicorn), after preparing the database
    lgsp mirror enterprise --gateway URL --into DB   an agency's copy kept by the change feed (gateway.mirror)
    lgsp agencies add so_y_te "Sở Y tế"              register an agency (--rate requests/s)
    lgsp agencies key so_y_te                        issue an API key (shown once, stored hashed)
    lgsp agencies client so_y_te                     an OAuth2 client (client credentials), secret shown once
    lgsp agencies grant so_y_te citizen --personal personal_id   grant a dataset (and personal columns in clear)
    lgsp agencies revoke so_y_te citizen             withdraw a grant
    lgsp agencies revoke-credential CREDENTIAL_ID    revoke a key or client
    lgsp agencies list                               agencies, credentials (ids only), grants
    lgsp audit verify                                walk the hash chain; non-zero exit if broken
    lgsp audit list [--agency so_y_te]               the latest reads
"""
from __future__ import annotations

import socket

import typer
from rich.console import Console
from rich.table import Table

from catalog import CatalogError, load_catalog

console = Console(highlight=False)
notes = Console(highlight=False, stderr=True)  # so `lgsp agencies key X > file` captures only the key
agencies_app = typer.Typer(help="Agencies of the sharing gateway: API keys, OAuth2 clients, grants.",
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
    options = {"factory": True, "host": host, "port": port, "workers": workers, "access_log": False,
               "server_header": False, "log_level": log_level, "log_config": _log_config(log_level)}
    if workers > 1 and port and hasattr(socket, "SO_REUSEPORT"):
        from gateway.serving import ListenError, serve_reuse_port

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
                   personal: list[str] = typer.Option([], help="a personal column to see in clear (repeatable)")) -> None:
    """Grant a dataset to an agency (personal columns masked unless listed with --personal)."""
    registry, _ = _registry()
    _run(lambda: registry.grant(agency_id, dataset, personal))  # type: ignore[attr-defined]
    console.print(f"{agency_id} may read {dataset}" + (f", with {', '.join(personal)} in clear" if personal else ""))


@agencies_app.command("revoke")
def agencies_revoke(agency_id: str, dataset: str) -> None:
    """Withdraw a grant."""
    registry, _ = _registry()
    _run(lambda: registry.revoke(agency_id, dataset))  # type: ignore[attr-defined]
    console.print(f"{agency_id} may no longer read {dataset}")


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
    table = Table("agency", "name", "rate/s", "credentials", "grants (personal columns in clear)")
    for agency in registry.agencies():  # type: ignore[attr-defined]
        grants = ", ".join(f"{d}{' [' + ', '.join(p) + ']' if p else ''}" for d, p in agency["grants"].items())
        table.add_row(agency["agency_id"], agency["name"], str(agency["rate_per_s"] or "default"),
                      "\n".join(agency["credentials"]), grants)
    console.print(table)


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
    console.print(f"{dataset} -> {run.table} in {redact_url(into)}: {what}, {run.upserts} upserted, {run.deletes} "
                  f"deleted in {run.pages} page(s){f', {run.retries} retried' if run.retries else ''}; "
                  f"{run.rows} rows; token saved" + "".join(f"; {note}" for note in run.notes))


def register(app: typer.Typer) -> None:
    """Add `serve`, `mirror`, `agencies` and `audit` to the `lgsp` command line."""
    app.command("serve")(serve)
    app.command("mirror")(mirror)
    app.add_typer(agencies_app, name="agencies")
    app.add_typer(audit_app, name="audit")
