"""The data portal's HTML pages, on SQLite and PostgreSQL, over real HTTP on loopback.

The warehouse is loaded by the real pipelines from the sandbox (citizens: restricted, with personal
data; dossiers: open); the gateway (uvicorn in a thread) serves the portal. The pages are parsed
and held against the database: the catalog lists exactly the shared datasets, an open dataset's
preview is its first records and is audited, a restricted dataset's page holds none of its values,
a `<script>` in a description is text, unknown datasets get a 404 page; headless Chromium renders
the catalog under the page's own Content-Security-Policy.
"""
from __future__ import annotations

import dataclasses
import html
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

import pgserver
from catalog import load_catalog
from catalog.models import Catalog
from gateway.api import create_app
from gateway.audit import verify
from gateway.portal import PREVIEW_ROWS, when
from gateway.service import _write_engine
from gateway.settings import load_gateway_settings
from test_dashboard import chromium
from test_gateway import gateway_env, loaded_registry, running

HOSTILE = 'Procedures <script>alert("portal")</script> & <b>bold</b>'


@dataclasses.dataclass
class Portal:
    """A running gateway with its portal: base URL, database URL, catalog, an agency's key."""

    base: str
    url: str
    catalog: Catalog
    key: str

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base + path, timeout=30, allow_redirects=False, **kwargs)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        engine = _write_engine(self.url)
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(sa.text(sql)).mappings()]
        finally:
            engine.dispose()


def hostile_catalog() -> Catalog:
    """The project's catalog, with markup in the description of `procedure` (an open dataset)."""
    catalog = load_catalog()
    procedure = catalog.sharing["procedure"].model_copy(update={"description": HOSTILE})
    return catalog.model_copy(update={"sharing": {**catalog.sharing, "procedure": procedure}})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def portal(request: pytest.FixtureRequest, sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Portal]:
    home = tmp_path_factory.mktemp(f"portal-{request.param}")
    admin = request.getfixturevalue("pg_admin_url") if request.param == "postgresql" else ""
    url = pgserver.create_database(admin) if admin else f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url):
        catalog = hostile_catalog()
        registry = loaded_registry(url, catalog, ("population_citizens", "tthc_dossiers"))
        registry.add_agency("so_y_te", "Sở Y tế")
        key = registry.issue_api_key("so_y_te")
        registry.grant("so_y_te", "citizen", ["personal_id", "full_name", "address"])
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0,
                                       anonymous_rate_per_s=100_000.0)
        try:
            with running(create_app(settings, catalog)) as base:
                yield Portal(base, url, catalog, key)
        finally:
            registry.engine.dispose()
    if admin:
        pgserver.drop_database(admin, url)


class Page(HTMLParser):
    """What a test needs of a page: start tags, headings, the catalog's entries, the preview's cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[tuple[str, str]] = []
        self.entries: dict[str, dict[str, str]] = {}  # catalog: dataset -> title, description, {dt: dd}
        self.preview: list[list[str]] = []
        self._text: list[str] | None = None
        self._entry: str | None = None
        self._term = ""
        self._in_preview: bool | str = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "li" and "dataset" in (attributes.get("class") or ""):
            self._entry = str(attributes["id"]).removeprefix("dataset-")
            self.entries[self._entry] = {}
        if tag == "table":
            self._in_preview = "preview" in (attributes.get("class") or "")
        if tag == "tbody" and self._in_preview:
            self._in_preview = "body"
        if tag == "tr" and self._in_preview == "body":
            self.preview.append([])
        if tag in ("h1", "h2", "h3", "h4", "p", "dt", "dd", "td"):
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._text or []).strip()
        if tag in ("h1", "h2", "h3", "h4"):
            self.headings.append((tag, text))
        if tag in ("h2", "p") and self._entry:
            self.entries[self._entry]["title" if tag == "h2" else "description"] = text
        if tag == "dt":
            self._term = text
        elif tag == "dd" and self._entry:
            self.entries[self._entry][self._term] = text
        elif tag == "td" and self._in_preview == "body":
            self.preview[-1].append(text)
        elif tag == "li":
            self._entry = None
        elif tag == "table":
            self._in_preview = False
        if tag in ("h1", "h2", "h3", "h4", "p", "dt", "dd", "td"):
            self._text = None


def _preview_audits(portal: Portal, dataset: str) -> list[dict[str, Any]]:
    return portal.rows(f"SELECT agency_id, status, rows_returned FROM gateway_audit "
                       f"WHERE action = 'portal_preview' AND dataset = '{dataset}'")


def test_the_catalog_lists_exactly_the_shared_datasets_with_owner_access_and_freshness(portal: Portal) -> None:
    home = portal.get("/")
    assert home.status_code == 302 and home.headers["location"] == "/portal"
    response = portal.get("/portal")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = Page(response.text)
    assert set(page.entries) == set(portal.catalog.sharing)
    links = {str(a["href"]) for tag, a in page.tags
             if tag == "a" and str(a.get("href")).startswith("/portal/datasets/")}
    assert links == {f"/portal/datasets/{name}" for name in portal.catalog.sharing}
    api = {d["name"]: d for d in requests.get(portal.base + "/api/v1/datasets", timeout=30).json()["datasets"]}
    for name, shared in portal.catalog.sharing.items():
        entry = page.entries[name]
        assert (entry["title"], entry["description"]) == (portal.catalog.datasets[name].title, shared.description)
        assert (entry["Owner"], entry["Licence"]) == (shared.owner, shared.licence)
        assert entry["Access"].startswith("Open" if shared.access == "open" else "Restricted: needs a grant")
        assert entry["Records"] == f"{api[name]['row_count']:,}"
        freshness = api[name]["freshness"]
        assert entry["Last loaded"].split(" (")[0] == (
            "not loaded yet" if freshness is None else when(datetime.fromisoformat(freshness)).split(" (")[0])
    loaded = portal.rows("SELECT max(finished_at) AS at FROM lgsp_batch "
                         "WHERE dataset = 'citizen' AND status = 'loaded'")
    at = loaded[0]["at"]
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at
    assert page.entries["citizen"]["Last loaded"].startswith(f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")
    assert page.entries["admin_unit"]["Last loaded"] == "not loaded yet"


def test_the_search_filters_by_name_and_description_accents_or_not(portal: Portal) -> None:
    for q in ("hồ sơ", "HO SO", "dossiers transparency"):
        assert set(Page(portal.get("/portal", params={"q": q}).text).entries) == {"dossier"}, q
    assert set(Page(portal.get("/portal", params={"q": "citizen"}).text).entries) == {"citizen"}
    nothing = portal.get("/portal", params={"q": "no such thing at all"})
    assert nothing.status_code == 200 and Page(nothing.text).entries == {}
    assert "No dataset matches" in nothing.text


def test_an_open_dataset_previews_its_first_records_as_stored_and_the_read_is_audited(portal: Portal) -> None:
    before = len(_preview_audits(portal, "dossier"))
    response = portal.get("/portal/datasets/dossier")
    assert response.status_code == 200
    page = Page(response.text)
    columns = list(portal.catalog.sharing["dossier"].columns)
    stored = portal.rows(f"SELECT {', '.join(columns)} FROM shared_dossier ORDER BY dossier_id LIMIT {PREVIEW_ROWS}")
    assert len(stored) == PREVIEW_ROWS and len(page.preview) == PREVIEW_ROWS
    for cells, row in zip(page.preview, stored):
        shown = dict(zip(columns, cells))
        for column in ("dossier_id", "procedure_code", "procedure_name", "commune_code", "status", "channel"):
            assert shown[column] == (row[column] or ""), column
        assert _instant(shown["received_at"]) == _instant(row["received_at"])
    assert "/api/v1/datasets/dossier/export?format=csv" in {a.get("href") for tag, a in page.tags if tag == "a"}
    audits = _preview_audits(portal, "dossier")
    assert len(audits) == before + 1
    assert audits[-1] == {"agency_id": "anonymous", "status": 200, "rows_returned": PREVIEW_ROWS}
    assert verify(_write_engine(portal.url)).intact
    csv = requests.get(portal.base + "/api/v1/datasets/dossier/export", params={"format": "csv"}, timeout=30)
    assert csv.status_code == 200 and stored[0]["dossier_id"] in csv.text  # the download link works without a key


def _instant(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def test_a_restricted_dataset_page_shows_no_record_even_to_a_granted_agency(portal: Portal) -> None:
    citizens = portal.rows("SELECT personal_id, full_name FROM shared_citizen")
    assert len(citizens) > 100
    before = len(_preview_audits(portal, "citizen"))
    for headers in ({}, {"X-API-Key": portal.key}):  # the portal reads as anonymous, whatever a request sends
        response = portal.get("/portal/datasets/citizen", headers=headers)
        assert response.status_code == 200
        text = html.unescape(response.text)
        leaked = [v for c in citizens for v in (c["personal_id"], c["full_name"]) if v and v in text]
        assert leaked == []
        assert not re.search(r"ps_[0-9a-f]{32}", text) and Page(response.text).preview == []  # no pseudonym
        assert "How to ask for a grant" in text and portal.catalog.sharing["citizen"].owner in text
        assert 'curl -s -H "X-API-Key: $KEY"' in text and not re.search(r"lgsp_[0-9a-f]{12}_", text)
    assert len(_preview_audits(portal, "citizen")) == before  # nothing was read
    dictionary = Page(portal.get("/portal/datasets/citizen").text)
    assert ("h2", "Data dictionary") in dictionary.headings
    assert "yes: pseudonymised" in html.unescape(portal.get("/portal/datasets/citizen").text)


def test_markup_in_a_description_is_shown_as_text(portal: Portal) -> None:
    for path in ("/portal", "/portal/datasets/procedure"):
        response = portal.get(path)
        assert "<script" not in response.text.lower() and "<b>" not in response.text
        assert "&lt;script&gt;alert(" in response.text and HOSTILE in html.unescape(response.text)
        assert not [tag for tag, _ in Page(response.text).tags if tag in ("script", "b")]


def test_an_unknown_or_unshared_dataset_gets_a_404_page_without_internals(portal: Portal) -> None:
    for name in ("no_such_dataset", "civil_servant", "<script>alert(1)</script>"):  # civil_servant: not shared
        response = portal.get(f"/portal/datasets/{name}")
        assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert ("h1", "Not found") in Page(response.text).headings
        assert "<script>" not in response.text
        assert not any(word in response.text for word in ("Traceback", "sqlalchemy", "SELECT", "File \""))
    assert portal.get("/portal/nowhere").status_code == 404
    assert portal.get("/api/v1/datasets/no_such_dataset").json()["error"]["status"] == 404  # the API stays JSON


def test_pages_carry_a_strict_policy_no_script_or_inline_style_and_ordered_headings(portal: Portal) -> None:
    for path in ("/portal", "/portal/datasets/dossier", "/portal/datasets/citizen", "/portal?q=x"):
        response = portal.get(path)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "style-src 'self'" in policy and "unsafe" not in policy
        assert "script-src" not in policy  # no script at all: default-src 'none' applies
        assert response.headers["x-content-type-options"] == "nosniff"
        page = Page(response.text)
        assert not [t for t, a in page.tags if t in ("script", "style") or "style" in a or
                    any(k.startswith("on") for k in a)]
        assert ("html", {"lang": "en"}) in page.tags
        levels = [int(tag[1]) for tag, _ in page.headings]
        assert levels[0] == 1 and levels.count(1) == 1
        assert all(b <= a + 1 for a, b in zip(levels, levels[1:])), levels
    css = portal.get("/portal/static/portal.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "@media print" in css.text and "@media (max-width" in css.text
    paths = requests.get(portal.base + "/openapi.json", timeout=30).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/portal")]


def test_the_portal_keeps_within_the_anonymous_rate_limit(portal: Portal) -> None:
    settings = dataclasses.replace(load_gateway_settings(portal.url), anonymous_rate_per_s=1.0)
    with running(create_app(settings, portal.catalog)) as base:
        statuses = [requests.get(base + "/portal/datasets/dossier", timeout=30) for _ in range(8)]
    refused = [r for r in statuses if r.status_code == 429]
    assert refused and statuses[0].status_code == 200  # a burst of 5 (at least), then refused
    assert refused[0].headers["content-type"].startswith("text/html") and int(refused[0].headers["retry-after"]) >= 1
    assert ("h1", "Too many requests") in Page(refused[0].text).headings


def test_chromium_renders_the_catalog_under_its_policy(portal: Portal, tmp_path: Path) -> None:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               "--window-size=390,844", "--dump-dom", portal.base + "/portal"]
    browser = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    dom = Page(browser.stdout)
    titles = {text for tag, text in dom.headings if tag == "h2"}
    assert titles == {portal.catalog.datasets[name].title for name in portal.catalog.sharing}
    assert HOSTILE in html.unescape(browser.stdout) and not [t for t, _ in dom.tags if t == "script"]
    assert "Content Security Policy" not in browser.stderr  # the stylesheet loads under the page's own policy
