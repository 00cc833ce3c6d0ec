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

The pages are in Vietnamese by default, or in English: `?lang=vi|en` when given, else the first of
the two the request's Accept-Language prefers, else Vietnamese (`Locale`). Links carry `lang=` only
when the language differs from the one Accept-Language alone would give, so a page's links keep its
language and a shared address follows its reader's browser. Every word is in gateway/portal_text.py.
"""
from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from gateway.agencies import Principal
from gateway.audit import AuditUnavailable
from gateway.portal_text import MESSAGES
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
LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"
WORD = re.compile(r"\w+")


def preferred_language(accept_language: str) -> str:
    """The first of vi and en an Accept-Language header prefers (by q, then by order); vi when it names neither."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")):
        tag, *params = item.split(";")
        weight = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        language = tag.strip().lower().split("-")[0]
        if language in LANGUAGES and weight > 0:  # q=0: not acceptable (and NaN is not > 0)
            ranked.append((-weight, position, language))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


def when(moment: datetime | None, lang: str = DEFAULT_LANGUAGE, now: datetime | None = None) -> str:
    """`2025-09-01 08:00 UTC (3 ngày trước)` (en: `(3 days ago)`); `chưa cập nhật lần nào` for None."""
    text = MESSAGES[lang]
    if moment is None:
        return text["not_loaded"]
    moment = moment.astimezone(timezone.utc)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - moment).total_seconds()))
    ago = text["just_now"]
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            ago = text[f"{unit}_ago_1" if count == 1 else f"{unit}_ago"].format(count=count)
            break
    return text["moment"].format(moment=f"{moment:%Y-%m-%d %H:%M}", ago=ago)


@dataclasses.dataclass(frozen=True)
class Locale:
    """A page's language, and how its links keep it.

    `preferred` is what the request's Accept-Language alone gives: a link carries `lang=` only when the
    page's language differs from it. `path` and `query` (without `lang`) are the page's own address.
    """

    lang: str
    preferred: str
    path: str
    query: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, request: Request) -> "Locale":
        preferred = preferred_language(request.headers.get("accept-language", ""))
        asked = request.query_params.get("lang", "")
        query = tuple((k, v) for k, v in request.query_params.multi_items() if k != "lang")
        return cls(asked if asked in LANGUAGES else preferred, preferred, request.url.path, query)

    @property
    def other(self) -> str:
        return "en" if self.lang == "vi" else "vi"

    def say(self, key: str, **values: Any) -> Markup:
        """The message `key` in the page's language, its `{placeholders}` filled in with escaped `values`."""
        return Markup(MESSAGES[self.lang][key]).format(**values)

    def href(self, path: str, params: tuple[tuple[str, str], ...] = (), lang: str | None = None) -> str:
        """`path?params`, with `lang=` when the language (the page's by default) is not the preferred one."""
        lang = lang or self.lang
        query = params + ((("lang", lang),) if lang != self.preferred else ())
        return quote(path) + (f"?{urlencode(query)}" if query else "")

    def link(self, path: str, **params: str) -> str:
        """A link to another page of the portal, in this page's language."""
        return self.href(path, tuple(params.items()))

    @property
    def switch(self) -> str:
        """This page (path and query) in the other language."""
        return self.href(self.path, self.query, self.other)

    def text(self, info: dict[str, Any], field: str) -> str:
        """A dataset's or a column's `title` or `description` in the page's language (Vietnamese: the English
        one when none)."""
        return (info[f"{field}_vi"] or info[field]) if self.lang == "vi" else info[field]

    def in_english(self, info: dict[str, Any], field: str) -> bool:
        """Whether `text(info, field)` is the English fallback on a Vietnamese page (to be marked `lang="en"`)."""
        return self.lang == "vi" and not info[f"{field}_vi"] and bool(info[field])

    def when(self, moment: datetime | None) -> str:
        return when(moment, self.lang)

    def duration(self, seconds: float) -> str:
        """`1 ngày 6 giờ` (en: `1 day 6 hours`): days, hours and minutes, the two largest that are not 0."""
        text, rest, parts = MESSAGES[self.lang], int(seconds), []
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if rest >= size:
                count, rest = divmod(rest, size)
                parts.append(text[f"{unit}_n_1" if count == 1 else f"{unit}_n"].format(count=count))
        return " ".join(parts[:2]) or text["minute_n"].format(count=0)

    def percent(self, share: float | None) -> str:
        """`99,0%` in Vietnamese, `99.0%` in English; `–` for a share lgsp cannot judge."""
        return "–" if share is None else f"{share:.1%}".replace(".", "," if self.lang == "vi" else ".")

    def number(self, count: int) -> str:
        """`12,345` in English, `12.345` in Vietnamese."""
        return f"{count:,}".replace(",", "." if self.lang == "vi" else ",")


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
    environment.filters["shown"] = shown
    return environment


PAGES = _environment()


def folded(text: str) -> str:
    """`text` lower-cased without accents, so `ho so` finds `hồ sơ` (and `đ` is `d`)."""
    decomposed = unicodedata.normalize("NFD", text.casefold().replace("đ", "d"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def matches(info: dict[str, Any], q: str) -> bool:
    """Whether every word of `q` is a word of the dataset's name, title or description, English or Vietnamese.

    Whole words (a Vietnamese word is a syllable: `ho` finds `hồ`, not `thông`). A word typed without accents
    finds every accented form (`ho so` finds `hồ sơ` and `hộ`, `sở`); one typed with them finds that word only,
    as Vietnamese search does (`hồ sơ`, a dossier, does not find `hộ`, a household, nor `cơ sở`).
    """
    texts = (info["name"], info["name"].replace("_", " "), info["title"], info["description"],
             info["title_vi"] or "", info["description_vi"] or "")
    text = " ".join(texts)
    exact = set(WORD.findall(unicodedata.normalize("NFC", text.casefold())))
    loose = set(WORD.findall(folded(text)))
    words = WORD.findall(unicodedata.normalize("NFC", q.casefold()))
    return all(word in loose if folded(word) == word else word in exact for word in words)


def render_page(locale: Locale, template: str, status: int = 200, headers: dict[str, str] | None = None,
                **context: Any) -> Response:
    """A page rendered in `locale`'s language, with the portal's security headers; it varies by language."""
    body = PAGES.get_template(template).render(ui=locale, _=locale.say, **context)
    return HTMLResponse(body, status_code=status, headers={
        **SECURITY_HEADERS, "Content-Language": locale.lang, "Vary": "Accept-Language", **(headers or {})})


def error_page(request: Request, status: int, headers: dict[str, str] | None = None) -> Response:
    """The HTML answer to a refused or failed portal request: the status and what to do, nothing internal."""
    locale = Locale.of(request)
    kind = status if f"error_{status}" in MESSAGES[locale.lang] else (400 if status < 500 else 500)
    message = locale.say(f"explain_{kind}", seconds=(headers or {}).get("Retry-After", "1"))
    return render_page(locale, "error.html", status, headers, heading=locale.say(f"error_{kind}"), message=message)


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
    """Where and how to read the dataset: label (a message), URL and a curl command ($KEY for a restricted one,
    never a key)."""
    name = info["name"]
    key = "" if info["access"] == "open" else '-H "X-API-Key: $KEY" '
    routes = [("route_records", f"/api/v1/datasets/{name}/records?limit=100", ""),
              ("route_ckan", f"/api/3/action/package_show?id={name}", ""),
              ("route_csv", f"/api/v1/datasets/{name}/export?format=csv", f"-o {name}.csv ")]
    if info["changes"]:
        routes.insert(2, ("route_changes", info["changes"], ""))
    shown_routes = []
    for label, path, output in routes:
        auth = "" if "package_show" in path else key
        shown_routes.append({"label": label, "url": base + path, "curl": f"curl -s {auth}{output}'{base}{path}'"})
    return shown_routes


def request_curl(info: dict[str, Any], base: str) -> str:
    """How an agency asks for a restricted dataset (POST /api/v1/access-requests; gateway.access_requests)."""
    personal = [c["name"] for c in info["schema"] if c["personal"]][:1]
    asked: dict[str, Any] = {"dataset": info["name"], "purpose": "...", "legal_basis": "...", "personal": personal,
                             "until": "YYYY-MM-DD"}
    if any(c["name"] == "commune_code" and not c["personal"] for c in info["schema"]):
        asked["scope"] = {"commune_code": ["..."]}  # a commune's agency asks for its own rows only
    body = json.dumps(asked, ensure_ascii=False)
    return (f"curl -s -X POST -H \"X-API-Key: $KEY\" -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}' '{base}/api/v1/access-requests'")


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
    return render_page(Locale.of(request), "catalog.html", datasets=listed, total=len(described), q=q,
                       max_query=MAX_QUERY)


def _dataset_page(request: Request, gateway: Gateway, name: str) -> Response:
    principal = _visitor(request, gateway)
    shared = gateway.shared(name)  # UnknownDataset: the 404 page
    info = gateway.datasets.describe(name)
    records = preview(gateway, principal, name) if shared.access == "open" else []
    base = _base_url(request, gateway)
    return render_page(Locale.of(request), "dataset.html", d=info, links=access_routes(info, base),
                       request_curl=request_curl(info, base),
                       csv_path=f"/api/v1/datasets/{name}/export?format=csv", preview=records,
                       preview_rows=PREVIEW_ROWS)


def portal_routes(app: FastAPI, gateway: Gateway) -> None:
    """The portal's pages, kept out of the OpenAPI document (they are for people, not programs)."""
    stylesheet = (TEMPLATES / "portal.css").read_bytes()

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return RedirectResponse(Locale.of(request).link("/portal"), status_code=302,
                                headers={"Vary": "Accept-Language"})

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
