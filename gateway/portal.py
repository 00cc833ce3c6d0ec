"""The provincial data portal: HTML pages a person browses over the shared datasets.

    GET /                          redirects to /portal
    GET /portal?q=...              the catalog: each shared dataset's title, description, owner, licence, access,
                                   when it was last loaded, its record count, a link to its page (q: search)
    GET /portal/datasets/{name}    one dataset: the data dictionary, how to get it (REST, CKAN, change feed, CSV,
                                   with curl examples) and, for an open dataset only, its first 20 records
    GET /portal/static/portal.css  the stylesheet

A page is read as an anonymous reader would read the API: rate-limited per client address, and a
preview is a records read of the gateway (`Gateway.audited` and `Reader.page`), audited as
`portal_preview`. A restricted dataset's page reads no record. The figures come from the API's
catalog (`DatasetCatalog.describe`). Every value is escaped (Jinja2, autoescape); the pages carry
no script, and a Content-Security-Policy that allows none.
"""
from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.agencies import Principal
from gateway.audit import AuditUnavailable
from gateway.records import QueryTimeout, RecordQuery
from gateway.service import Gateway

TEMPLATES = Path(__file__).parent / "templates"
PREVIEW_ROWS = 20
MAX_QUERY = 100
PREVIEW_ACTION = "portal_preview"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
POLICIES = {"mask": "masked (only the last characters shown, e.g. *********234)",
            "pseudonym": "pseudonymised (ps_ and a keyed hash: the same person, the same pseudonym)",
            "withhold": "withheld (empty)"}
HEADINGS = {404: "Not found", 429: "Too many requests", 503: "Unavailable for a moment"}


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """`2025-09-01 08:00 UTC (3 days ago)`; `not loaded yet` for None."""
    if moment is None:
        return "not loaded yet"
    moment = moment.astimezone(timezone.utc)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{moment:%Y-%m-%d %H:%M} UTC ({count} {unit}{'s' if count > 1 else ''} ago)"
    return f"{moment:%Y-%m-%d %H:%M} UTC (just now)"


def shown(value: Any) -> str:
    """A record's value as a cell shows it (null: empty; true or false; a timestamp in ISO 8601, UTC)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):  # naive: UTC, as the API's JSON says
        moment = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return moment.isoformat().replace("+00:00", "Z")
    return str(value)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["when"] = when
    environment.filters["shown"] = shown
    return environment


PAGES = _environment()


def folded(text: str) -> str:
    """`text` lower-cased without accents, so `ho so` finds `hồ sơ` (and `đ` is `d`)."""
    decomposed = unicodedata.normalize("NFD", text.casefold().replace("đ", "d"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def matches(info: dict[str, Any], q: str) -> bool:
    """Whether every word of `q` is in the dataset's name, title or description."""
    haystack = folded(" ".join((info["name"], info["title"], info["description"])))
    return all(word in haystack for word in folded(q).split())


def render_page(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Response:
    """A rendered page with the portal's security headers."""
    body = PAGES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def error_page(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The HTML answer to a refused or failed portal request: the status and what to do, nothing internal."""
    heading = HEADINGS.get(status, "Bad request" if status < 500 else "Something went wrong")
    return render_page("error.html", status, headers, heading=heading, message=message)


def is_portal(request: Request) -> bool:
    return request.url.path == "/" or request.url.path == "/portal" or request.url.path.startswith("/portal/")


def _visitor(request: Request, gateway: Gateway) -> Principal:
    """The page's reader: anonymous (a browser sends no key), rate-limited per client address."""
    principal = gateway.authenticate(None, request.client.host if request.client else "unknown")
    request.state.agency = principal.label
    return principal


def _base_url(request: Request, gateway: Gateway) -> str:
    return (gateway.settings.public_url or str(request.base_url)).rstrip("/")


def access_routes(info: dict[str, Any], base: str) -> list[dict[str, str]]:
    """Where and how to read the dataset: label, URL and a curl command ($KEY for a restricted one, never a key)."""
    name = info["name"]
    key = "" if info["access"] == "open" else '-H "X-API-Key: $KEY" '
    routes = [("Records (REST API, in pages; filters and sort: /docs)",
               f"/api/v1/datasets/{name}/records?limit=100", ""),
              ("CKAN package_show", f"/api/3/action/package_show?id={name}", ""),
              ("All records as CSV", f"/api/v1/datasets/{name}/export?format=csv", f"-o {name}.csv ")]
    if info["changes"]:
        routes.insert(2, ("Change feed (what changed since a token)", info["changes"], ""))
    shown_routes = []
    for label, path, output in routes:
        auth = "" if "package_show" in path else key
        shown_routes.append({"label": label, "url": base + path, "curl": f"curl -s {auth}{output}'{base}{path}'"})
    return shown_routes


def preview(gateway: Gateway, principal: Principal, name: str) -> list[dict[str, Any]] | None:
    """The first records of an open dataset, read and audited as the records route reads them.

    None when they cannot be shown now (the query ran too long, or the read could not be audited).
    """
    try:
        with gateway.audited(principal, name, PREVIEW_ACTION, RecordQuery()) as outcome:
            records, _ = gateway.reader.page(name, outcome["granted"], RecordQuery(), PREVIEW_ROWS)
            outcome["rows"] = len(records)
    except (QueryTimeout, AuditUnavailable):
        return None
    return records


def _catalog_page(request: Request, gateway: Gateway) -> Response:
    _visitor(request, gateway)
    q = request.query_params.get("q", "").strip()[:MAX_QUERY]
    described = [gateway.datasets.describe(name) for name in gateway.datasets.names()]
    listed = [info for info in described if matches(info, q)] if q else described
    return render_page("catalog.html", datasets=listed, total=len(described), q=q, max_query=MAX_QUERY)


def _dataset_page(request: Request, gateway: Gateway, name: str) -> Response:
    principal = _visitor(request, gateway)
    shared = gateway.shared(name)  # UnknownDataset: the 404 page
    info = gateway.datasets.describe(name)
    records = preview(gateway, principal, name) if shared.access == "open" else []
    return render_page("dataset.html", d=info, links=access_routes(info, _base_url(request, gateway)),
                       csv_path=f"/api/v1/datasets/{name}/export?format=csv", preview=records,
                       preview_rows=PREVIEW_ROWS, policies=POLICIES)


def portal_routes(app: FastAPI, gateway: Gateway) -> None:
    """The portal's pages, kept out of the OpenAPI document (they are for people, not programs)."""
    stylesheet = (TEMPLATES / "portal.css").read_bytes()

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/portal", status_code=302)

    @app.get("/portal", include_in_schema=False)
    def catalog_page(request: Request) -> Response:
        return _catalog_page(request, gateway)

    @app.get("/portal/datasets/{name}", include_in_schema=False)
    def dataset_page(request: Request, name: str) -> Response:
        return _dataset_page(request, gateway, name)

    @app.get("/portal/static/portal.css", include_in_schema=False)
    def portal_css() -> Response:
        return Response(stylesheet, media_type="text/css; charset=utf-8", headers={
            "X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"})
