"""The data portal's HTML pages, on SQLite and PostgreSQL, over real HTTP on loopback.

The warehouse is loaded by the real pipelines from the sandbox (citizens: restricted, with personal
data; dossiers: open); the gateway (uvicorn in a thread) serves the portal. The pages are parsed
and held against the database: the catalog lists exactly the shared datasets, an open dataset's
preview is its first records and is audited, a restricted dataset's page holds none of its values,
a `<script>` in a description is text, unknown datasets get a 404 page; headless Chromium renders
the catalog under the page's own Content-Security-Policy. The pages are in Vietnamese unless `?lang=en`
or the browser's Accept-Language asks for English; their links keep the language.
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
from gateway.portal import PREVIEW_ROWS, preferred_language, when
from gateway.portal_text import MESSAGES
from gateway.service import _write_engine
from gateway.settings import load_gateway_settings
from test_dashboard import chromium
from test_gateway import gateway_env, loaded_registry, running

HOSTILE = 'Procedures <script>alert("portal")</script> & <b>bold</b>'
ENGLISH = {"Accept-Language": "en-US,en;q=0.9"}
LABELS = {"vi": {"owner": "Đơn vị quản lý", "licence": "Giấy phép", "access": "Quyền truy cập",
                 "records": "Số bản ghi", "loaded": "Cập nhật lần cuối", "restricted": "Hạn chế: cần được cấp quyền",
                 "open": "Mở", "heading": "Bộ dữ liệu dùng chung", "not_loaded": "chưa cập nhật lần nào"},
          "en": {"owner": "Owner", "licence": "Licence", "access": "Access", "records": "Records",
                 "loaded": "Last loaded", "restricted": "Restricted: needs a grant", "open": "Open",
                 "heading": "Shared datasets", "not_loaded": "not loaded yet"}}


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
    """The project's catalog, with markup in the description of `procedure` (an open dataset), which has
    no Vietnamese description, nor has its column `agency`: the Vietnamese pages show the English ones."""
    catalog = load_catalog()
    procedure = catalog.sharing["procedure"].model_copy(update={"description": HOSTILE, "description_vi": ""})
    columns = catalog.datasets["procedure"].columns
    agency = columns["agency"].model_copy(update={"description_vi": ""})
    dataset = catalog.datasets["procedure"].model_copy(update={"columns": {**columns, "agency": agency}})
    return catalog.model_copy(update={"sharing": {**catalog.sharing, "procedure": procedure},
                                      "datasets": {**catalog.datasets, "procedure": dataset}})


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
    """What a test needs of a page: start tags, headings, the catalog's entries, the preview's cells, the data
    dictionary's rows (each cell's text and `lang`)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[tuple[str, str]] = []
        self.entries: dict[str, dict[str, str]] = {}  # catalog: dataset -> title, description, {dt: dd}
        self.preview: list[list[str]] = []
        self.dictionary: list[list[tuple[str, str | None]]] = []
        self._in_dictionary: bool | str = False
        self._lang: str | None = None
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
            self._in_dictionary = not self._in_preview
        if tag == "tbody" and self._in_preview:
            self._in_preview = "body"
        if tag == "tbody" and self._in_dictionary:
            self._in_dictionary = "body"
        if tag == "tr" and self._in_preview == "body":
            self.preview.append([])
        if tag == "tr" and self._in_dictionary == "body":
            self.dictionary.append([])
        if tag in ("h1", "h2", "h3", "h4", "p", "dt", "dd", "td", "th"):
            self._text = []
            self._lang = attributes.get("lang")

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
        elif tag in ("th", "td") and self._in_dictionary == "body":
            self.dictionary[-1].append((text, self._lang))
        elif tag == "li":
            self._entry = None
        elif tag == "table":
            self._in_preview = self._in_dictionary = False
        if tag in ("h1", "h2", "h3", "h4", "p", "dt", "dd", "td", "th"):
            self._text = None


def _preview_audits(portal: Portal, dataset: str) -> list[dict[str, Any]]:
    return portal.rows(f"SELECT agency_id, status, rows_returned FROM gateway_audit "
                       f"WHERE action = 'portal_preview' AND dataset = '{dataset}'")


@pytest.mark.parametrize("lang, headers", [("vi", {}), ("en", ENGLISH)])
def test_the_catalog_lists_exactly_the_shared_datasets_with_owner_access_and_freshness(
        portal: Portal, lang: str, headers: dict[str, str]) -> None:
    home = portal.get("/", headers=headers)
    assert home.status_code == 302 and home.headers["location"] == "/portal"
    response = portal.get("/portal", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page, label = Page(response.text), LABELS[lang]
    assert ("html", {"lang": lang}) in page.tags and ("h1", label["heading"]) in page.headings
    assert set(page.entries) == set(portal.catalog.sharing)
    links = {str(a["href"]) for tag, a in page.tags
             if tag == "a" and str(a.get("href")).startswith("/portal/datasets/")}
    assert links == {f"/portal/datasets/{name}" for name in portal.catalog.sharing}
    api = {d["name"]: d for d in requests.get(portal.base + "/api/v1/datasets", timeout=30).json()["datasets"]}
    for name, shared in portal.catalog.sharing.items():
        entry, title = page.entries[name], portal.catalog.datasets[name].title
        assert (entry["title"], entry["description"]) == (
            (shared.title_vi or title, shared.description_vi or shared.description) if lang == "vi"
            else (title, shared.description))
        assert (api[name]["title_vi"], api[name]["description_vi"]) == (shared.title_vi, shared.description_vi or None)
        assert (entry[label["owner"]], entry[label["licence"]]) == (shared.owner, shared.licence)
        assert entry[label["access"]].startswith(label["open" if shared.access == "open" else "restricted"])
        count = f"{api[name]['row_count']:,}"
        assert entry[label["records"]] == (count.replace(",", ".") if lang == "vi" else count)
        freshness = api[name]["freshness"]
        assert entry[label["loaded"]].split(" (")[0] == (label["not_loaded"] if freshness is None else
                                                         when(datetime.fromisoformat(freshness)).split(" (")[0])
    assert page.entries["dossier"]["title"] == ("Hồ sơ thủ tục hành chính" if lang == "vi"
                                                else "Administrative-procedure dossier (hồ sơ TTHC)")
    loaded = portal.rows("SELECT max(finished_at) AS at FROM lgsp_batch "
                         "WHERE dataset = 'citizen' AND status = 'loaded'")
    at = loaded[0]["at"]
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at
    assert page.entries["citizen"][label["loaded"]].startswith(f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")
    assert page.entries["citizen"][label["loaded"]].endswith((" trước)", "(vừa xong)") if lang == "vi"
                                                             else (" ago)", "(just now)"))
    assert page.entries["admin_unit"][label["loaded"]] == label["not_loaded"]


def test_the_search_filters_by_name_and_description_in_both_languages_accents_or_not(portal: Portal) -> None:
    def found(q: str, **params: str) -> set[str]:
        return set(Page(portal.get("/portal", params={"q": q, **params}).text).entries)

    for q in ("minh bạch", "minh bach", "MINH BACH thoi gian", "dossiers transparency", "giai quyet minh"):
        for lang in ("vi", "en"):  # whatever the page's language, both languages' text is searched
            assert found(q, lang=lang) == {"dossier"}, (q, lang)
    # a Vietnamese word is a syllable: `so` is not found in `cơ sở`'s `co`; typed with its accents, `hồ sơ` (a
    # dossier) is that word only: not `hộ` (a household) nor `sở`; without them, it is every one of those
    assert found("hồ sơ") == found("Hồ Sơ") == {"dossier", "indicator_value"}  # indicator_value: rates of dossiers
    assert found("HO SO") == found("ho so") == {"dossier", "indicator_value", "household_member"}
    assert found("hộ gia đình") == found("ho gia dinh") == {"household_member"}
    assert found("dan cu") == found("citizen") == found("công dân") == {"citizen"}
    assert found("land parcel") == found("land_parcel") == found("thua dat") == {"land_parcel"}
    nothing = portal.get("/portal", params={"q": "no such thing at all"})
    assert nothing.status_code == 200 and Page(nothing.text).entries == {}
    assert "Không có bộ dữ liệu nào phù hợp" in nothing.text
    english = portal.get("/portal", params={"q": "no such thing at all"}, headers=ENGLISH)
    assert "No dataset matches" in english.text
    total = len(portal.catalog.sharing)
    assert f"Tìm thấy 1 trên {total} bộ dữ liệu khớp với <q>minh bach</q>." in portal.get(
        "/portal", params={"q": "minh bach"}).text


@pytest.mark.parametrize("lang, headers", [("vi", {}), ("en", ENGLISH)])
def test_the_data_dictionary_describes_each_column_in_the_page_language(
        portal: Portal, lang: str, headers: dict[str, str]) -> None:
    for name in ("citizen", "dossier", "procedure"):
        columns, shared = portal.catalog.datasets[name].columns, portal.catalog.sharing[name]
        page = Page(portal.get(f"/portal/datasets/{name}", headers=headers).text)
        assert [row[0][0].split()[0] for row in page.dictionary] == shared.columns
        described = {column: row[2] for column, row in zip(shared.columns, page.dictionary)}
        for column in shared.columns:  # Vietnamese when the catalog has it, else the English one, marked so
            english = (columns[column].description, "en" if lang == "vi" else None)
            assert described[column] == ((columns[column].description_vi, None)
                                         if lang == "vi" and columns[column].description_vi else english)
    citizen = Page(portal.get("/portal/datasets/citizen", headers=headers).text).dictionary
    assert citizen[0][2] == (("Số định danh cá nhân 12 chữ số (số căn cước công dân, CCCD)", None) if lang == "vi"
                             else ("12-digit personal ID (CCCD)", None))
    procedure = Page(portal.get("/portal/datasets/procedure", headers=headers).text)
    agency = portal.catalog.sharing["procedure"].columns.index("agency")
    assert procedure.dictionary[agency][2] == ("CoQuanThucHien", "en" if lang == "vi" else None)  # no Vietnamese
    assert procedure.dictionary[0][2] == (("Mã thủ tục hành chính (MaTTHC)", None) if lang == "vi"
                                          else ("MaTTHC", None))
    assert (("p", {"lang": "en"}) in procedure.tags) == (lang == "vi")  # nor has the dataset's own description


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
        assert "Cách đề nghị cấp quyền" in text and portal.catalog.sharing["citizen"].owner in text
        assert 'curl -s -H "X-API-Key: $KEY"' in text and not re.search(r"lgsp_[0-9a-f]{12}_", text)
        assert '"scope": {"commune_code": ["..."]}' in text, "a commune's agency may ask for its rows only"
    assert len(_preview_audits(portal, "citizen")) == before  # nothing was read
    dictionary = Page(portal.get("/portal/datasets/citizen").text)
    assert ("h2", "Từ điển dữ liệu") in dictionary.headings and ("h2", "Cách lấy dữ liệu") in dictionary.headings
    assert "có: thay bằng bí danh" in html.unescape(portal.get("/portal/datasets/citizen").text)
    english = portal.get("/portal/datasets/citizen", params={"lang": "en"})
    assert ("h2", "Data dictionary") in Page(english.text).headings and "How to ask for a grant" in english.text
    assert "yes: pseudonymised" in html.unescape(english.text)


def test_markup_in_a_description_is_shown_as_text(portal: Portal) -> None:
    for path in ("/portal", "/portal/datasets/procedure", "/portal?lang=en", "/portal/datasets/procedure?lang=en",
                 "/portal?q=%3Cscript%3E"):
        response = portal.get(path)
        assert "<script" not in response.text.lower() and "<b>" not in response.text
        assert "&lt;script&gt;" in response.text and HOSTILE in html.unescape(response.text)
        assert not [tag for tag, _ in Page(response.text).tags if tag in ("script", "b")]


def test_an_unknown_or_unshared_dataset_gets_a_404_page_without_internals(portal: Portal) -> None:
    for name in ("no_such_dataset", "civil_servant", "<script>alert(1)</script>"):  # civil_servant: not shared
        for headers, heading, lang in (({}, "Không tìm thấy", "vi"), (ENGLISH, "Not found", "en")):
            response = portal.get(f"/portal/datasets/{name}", headers=headers)
            assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
            assert response.headers["content-security-policy"].startswith("default-src 'none'")
            assert (response.headers["content-language"], response.headers["vary"]) == (lang, "Accept-Language")
            page = Page(response.text)
            assert ("h1", heading) in page.headings and ("html", {"lang": lang}) in page.tags
            assert "<script>" not in response.text
            assert not any(word in response.text for word in ("Traceback", "sqlalchemy", "SELECT", "File \""))
    english = portal.get("/portal/nowhere", params={"lang": "en"})
    assert english.status_code == 404 and ("h1", "Not found") in Page(english.text).headings
    assert ("a", {"class": "language", "href": "/portal/nowhere", "hreflang": "vi", "lang": "vi"}) in Page(
        english.text).tags
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
        assert ("html", {"lang": "vi"}) in page.tags
        assert (response.headers["content-language"], response.headers["vary"]) == ("vi", "Accept-Language")
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
    refused: dict[str, requests.Response] = {}
    with running(create_app(settings, portal.catalog)) as base:
        first = requests.get(base + "/portal/datasets/dossier", timeout=30)
        for attempt in range(40):  # in turn Vietnamese and English, until both were refused
            lang = ("vi", "en")[attempt % 2]
            response = requests.get(base + "/portal/datasets/dossier", params={"lang": lang}, timeout=30)
            if response.status_code == 429:
                refused.setdefault(lang, response)
            if len(refused) == 2:
                break
    assert first.status_code == 200 and set(refused) == {"vi", "en"}  # a burst of 5 (at least), then refused
    for lang, heading, wait in (("vi", "Quá nhiều yêu cầu", "Vui lòng đợi {} giây"),
                                ("en", "Too many requests", "Please wait {} seconds")):
        response = refused[lang]
        assert response.headers["content-type"].startswith("text/html") and int(response.headers["retry-after"]) >= 1
        assert ("h1", heading) in Page(response.text).headings and response.headers["content-language"] == lang
        assert wait.format(response.headers["retry-after"]) in response.text


def test_chromium_renders_the_catalog_under_its_policy(portal: Portal, tmp_path: Path) -> None:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               "--window-size=390,844", "--accept-lang=vi", "--dump-dom", portal.base + "/portal"]
    browser = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    dom = Page(browser.stdout)
    titles = {text for tag, text in dom.headings if tag == "h2"}
    assert titles == {portal.catalog.sharing[name].title_vi for name in portal.catalog.sharing}
    assert ("html", {"lang": "vi"}) in dom.tags
    assert HOSTILE in html.unescape(browser.stdout) and not [t for t, _ in dom.tags if t == "script"]
    assert "Content Security Policy" not in browser.stderr  # the stylesheet loads under the page's own policy


def test_the_language_is_lang_else_accept_language_else_vietnamese() -> None:
    assert preferred_language("") == "vi"
    assert preferred_language("en-US,en;q=0.9") == "en"
    assert preferred_language("fr-FR, fr;q=0.9, en;q=0.5, vi;q=0.8") == "vi"  # by weight, not by order
    assert preferred_language("vi;q=0, en-GB;q=0.1") == "en"  # q=0: not acceptable
    assert preferred_language("en;q=0.5, vi;q=0.5") == "en"  # a tie: the first named
    assert preferred_language("de, *;q=0.5") == "vi"
    assert preferred_language("en;q=nonsense, VI") == "vi"
    assert set(MESSAGES["vi"]) == set(MESSAGES["en"])
    moment = datetime(2025, 9, 1, 8, 0, tzinfo=timezone.utc)
    later = datetime(2025, 9, 4, 9, 0, tzinfo=timezone.utc)
    assert when(moment, "vi", later) == "2025-09-01 08:00 UTC (3 ngày trước)"
    assert when(moment, "en", later) == "2025-09-01 08:00 UTC (3 days ago)"
    assert when(moment, "en", datetime(2025, 9, 1, 9, 30, tzinfo=timezone.utc)) == "2025-09-01 08:00 UTC (1 hour ago)"
    assert when(moment, "vi", moment) == "2025-09-01 08:00 UTC (vừa xong)"
    assert when(None) == "chưa cập nhật lần nào" and when(None, "en") == "not loaded yet"


def _language(page: Page) -> str:
    return next(str(a["lang"]) for tag, a in page.tags if tag == "html")


def _switch(page: Page) -> str:
    return next(str(a["href"]) for tag, a in page.tags if tag == "a" and a.get("class") == "language")


def _portal_links(page: Page) -> list[str]:
    return [str(a["href"]) for tag, a in page.tags if tag == "a" and str(a.get("href")).startswith("/portal")
            and a.get("class") != "language"]


@pytest.mark.parametrize("query, headers, lang, switch, suffix", [
    ("", {}, "vi", "?lang=en", ""),
    ("?lang=en", {}, "en", "", "?lang=en"),
    ("", ENGLISH, "en", "?lang=vi", ""),
    ("?lang=vi", ENGLISH, "vi", "", "?lang=vi"),
    ("?lang=en", {"Accept-Language": "vi-VN,vi;q=0.9"}, "en", "", "?lang=en"),
    ("?lang=xx", ENGLISH, "en", "?lang=vi", ""),  # an unknown lang is ignored
])
def test_a_page_switches_language_in_place_and_its_links_keep_the_language(
        portal: Portal, query: str, headers: dict[str, str], lang: str, switch: str, suffix: str) -> None:
    for path in ("/portal", "/portal/datasets/dossier", "/portal/datasets/citizen"):
        response = portal.get(path + query, headers=headers)
        page = Page(response.text)
        assert (_language(page), response.headers["content-language"]) == (lang, lang), path
        assert response.headers["vary"] == "Accept-Language"
        assert _switch(page) == path + switch  # the same page, in the other language
        other = portal.get(_switch(page), headers=headers)
        assert _language(Page(other.text)) == ("en" if lang == "vi" else "vi")
        links = _portal_links(page)
        assert links and all(link.endswith(suffix) and ("lang=" in link) == bool(suffix) for link in links)
        for link in {link for link in links if link.startswith("/portal/datasets/")}:
            assert _language(Page(portal.get(link, headers=headers).text)) == lang  # a followed link keeps it
    searched = Page(portal.get("/portal" + (query + "&" if query else "?") + "q=ho+so", headers=headers).text)
    assert _switch(searched) == "/portal?q=ho+so" + switch.replace("?", "&")  # the query is kept
    hidden = [a for tag, a in searched.tags if tag == "input" and a.get("name") == "lang"]
    assert hidden == ([{"type": "hidden", "name": "lang", "value": lang}] if suffix else [])  # the form keeps it
    home = portal.get("/" + query, headers=headers)
    assert home.status_code == 302 and home.headers["location"] == "/portal" + suffix


def test_a_vietnamese_page_has_no_english_words_of_the_interface(portal: Portal) -> None:
    english = [text for key, text in MESSAGES["en"].items()
               if text != MESSAGES["vi"][key] and "{" not in text and "<" not in text and len(text) > 12]
    assert len(english) > 30
    for path in ("/portal", "/portal/datasets/dossier", "/portal/datasets/citizen", "/portal/nowhere",
                 "/portal?q=nothing+at+all"):
        vietnamese = html.unescape(portal.get(path).text)
        assert [text for text in english if text in vietnamese] == [], path
        assert not [text for text in english if text in html.unescape(portal.get(path + "?lang=vi").text)]
    assert "All records as CSV" in portal.get("/portal/datasets/dossier?lang=en").text


def test_the_apis_carry_the_vietnamese_title_and_description(portal: Portal) -> None:
    dossier = portal.catalog.sharing["dossier"]
    listed = requests.get(portal.base + "/api/v1/datasets", timeout=30).json()["datasets"]
    assert {d["name"]: d["title_vi"] for d in listed}["dossier"] == dossier.title_vi
    columns = {(d["name"], c["name"]): c["description_vi"] for d in listed for c in d["schema"]}
    assert columns["dossier", "dossier_id"] == "Mã hồ sơ (MaHoSo)" and columns["procedure", "agency"] is None
    package = requests.get(portal.base + "/api/3/action/package_show", params={"id": "dossier"}, timeout=30).json()
    extras = {e["key"]: e["value"] for e in package["result"]["extras"]}
    assert (extras["title_vi"], extras["notes_vi"]) == (dossier.title_vi, dossier.description_vi)
    assert "notes_vi" not in {e["key"] for e in requests.get(  # procedure: no Vietnamese description here
        portal.base + "/api/3/action/package_show", params={"id": "procedure"}, timeout=30).json()["result"]["extras"]}
    search = requests.get(portal.base + "/api/3/action/package_search", params={"q": "minh bạch"}, timeout=30).json()
    assert [p["name"] for p in search["result"]["results"]] == ["dossier"]
