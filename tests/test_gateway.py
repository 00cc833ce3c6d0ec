"""The sharing gateway against a real PostgreSQL, over real HTTP on loopback.

The warehouse is loaded by the real pipelines from the sandbox (citizens, enterprises,
dossiers); the gateway (uvicorn, in a thread of this process) serves its shared views.
Agencies are registered through the registry the `lgsp agencies` command uses.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
import sqlalchemy as sa

import pgserver
from catalog import load_catalog
from gateway.agencies import AgencyRegistry
from gateway.api import create_app
from gateway.audit import verify
from gateway.service import _write_engine, prepare_database
from gateway.serving import in_thread, start_in_thread
from gateway.settings import load_gateway_settings
from lgsp import runner

pytestmark = pytest.mark.postgres
KEY = "test-pseudonym-key-not-a-secret"
PIPELINES = ("population_citizens", "business_enterprises", "tthc_dossiers")


@dataclasses.dataclass
class Served:
    """A running gateway: its base URL, database URL, and the agencies' credentials."""

    base: str
    database_url: str
    keys: dict[str, str]
    client: tuple[str, str]
    registry: AgencyRegistry

    def get(self, path: str, agency: str | None = None, **params: Any) -> requests.Response:
        headers = {"X-API-Key": self.keys[agency]} if agency else {}
        return requests.get(self.base + path, params=params, headers=headers, timeout=30)

    def view(self, name: str) -> list[dict[str, Any]]:
        engine = sa.create_engine(self.database_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM shared_{name}")).mappings()]
        engine.dispose()
        return rows

    def last_audit(self) -> dict[str, Any]:
        engine = _write_engine(self.database_url)
        with engine.connect() as conn:
            row = conn.execute(sa.text(  # the newest row of any chain (the records route writes a chain of its own)
                "SELECT * FROM gateway_audit ORDER BY recorded_at DESC, seq DESC LIMIT 1")).mappings().one()
        engine.dispose()
        return dict(row)


def _register(registry: AgencyRegistry) -> tuple[dict[str, str], tuple[str, str]]:
    """Agencies: health (citizens, IDs masked), police (citizens, IDs in clear), land office (enterprises,
    OAuth2 client), education (registered, no grant), auditor (everything), limited (1 request/s)."""
    plans = {"so_y_te": ("Sở Y tế", None, {"citizen": []}),
             "cong_an": ("Công an tỉnh", None, {"citizen": ["personal_id", "full_name"]}),
             "van_phong_dat_dai": ("Văn phòng đăng ký đất đai", None, {"enterprise": []}),
             "so_gd_dt": ("Sở Giáo dục và Đào tạo", None, {}),
             "kiem_toan": ("Kiểm toán", 100_000.0, {n: [] for n in load_catalog().sharing}),
             "han_che": ("Rate-limited agency", 1.0, {"dossier": []})}
    keys = {}
    for agency, (name, rate, grants) in plans.items():
        registry.add_agency(agency, name, rate)
        keys[agency] = registry.issue_api_key(agency)
        for dataset, personal in grants.items():
            registry.grant(agency, dataset, personal)
    return keys, registry.add_oauth_client("van_phong_dat_dai")


@contextlib.contextmanager
def gateway_env(sandbox_handle: Any, home: Path, url: str, **more: str) -> Iterator[pytest.MonkeyPatch]:
    """The environment of a module's gateway: the sandbox, LGSP_HOME, the warehouse at `url`, the pseudonym
    key (and `more`); the sandbox's faults off and the breakers closed. Undone on leaving."""
    from connectors.limits import reset_limits

    with pytest.MonkeyPatch.context() as env:
        for name, value in {**sandbox_handle.env(), "LGSP_HOME": str(home), "LGSP_DATABASE_URL": url,
                            "LGSP_GATEWAY_PSEUDONYM_KEY": KEY, **more}.items():
            env.setenv(name, value)
        sandbox_handle.faults.clear()
        reset_limits()
        yield env


@pytest.fixture(scope="module")
def served(pg_admin_url: str, sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = pgserver.create_database(pg_admin_url)
    with gateway_env(sandbox_handle, tmp_path_factory.mktemp("gateway-home"), url,
                     LGSP_GATEWAY_ANONYMOUS_RATE_PER_S="100000", LGSP_GATEWAY_MAX_EXPORT_ROWS="250"):
        catalog = load_catalog()
        registry = loaded_registry(url, catalog, PIPELINES)
        keys, client = _register(registry)
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0)
        try:
            with running(create_app(settings, catalog)) as base:
                yield Served(base, url, keys, client, registry)
        finally:
            registry.engine.dispose()
    pgserver.drop_database(pg_admin_url, url)


def loaded_registry(url: str, catalog: Any, pipelines: Any) -> AgencyRegistry:
    """Run `pipelines` into the warehouse at `url`, prepare its shared views and gateway tables; its registry."""
    for pipeline in pipelines:
        runner.run_pipeline(pipeline, catalog=catalog)
    prepare_database(url, catalog)
    return AgencyRegistry(_write_engine(url), catalog)


running = in_thread  # `app` served in a thread on a free loopback port: its base URL; stopped on leaving
_start = start_in_thread


def _pseudonym(value: str) -> str:
    return "ps_" + hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


# --- access control and audit -------------------------------------------------------------

def test_agency_without_grant_gets_403_and_the_attempt_is_audited(served: Served) -> None:
    response = served.get("/api/v1/datasets/citizen/records", "so_gd_dt", commune_code="14329")
    assert response.status_code == 403
    assert "no grant on 'citizen'" in response.json()["error"]["message"]
    audit = served.last_audit()
    assert (audit["agency_id"], audit["dataset"], audit["status"], audit["rows_returned"]) == (
        "so_gd_dt", "citizen", 403, None)
    assert json.loads(audit["query"])["filters"] == [["commune_code", "eq", "14329"]]

    anonymous = served.get("/api/v1/datasets/citizen/records")
    assert anonymous.status_code == 401
    assert (served.last_audit()["agency_id"], served.last_audit()["status"]) == ("anonymous", 401)
    bad_key = requests.get(served.base + "/api/v1/datasets/dossier/records", headers={"X-API-Key": "lgsp_x_y"})
    assert bad_key.status_code == 401  # a wrong key is refused, not downgraded to anonymous


def test_personal_ids_masked_unless_the_grant_includes_them(served: Served) -> None:
    truth = {r["personal_id"]: r for r in served.view("citizen")}
    assert len(truth) > 200
    health = served.get("/api/v1/datasets/citizen/records", "so_y_te", limit=1000)
    assert health.status_code == 200
    records = health.json()["records"]
    assert len(records) == len(truth)
    assert not any(pid in health.text for pid in truth)  # no raw personal ID anywhere in the body
    assert {r["personal_id"] for r in records} == {_pseudonym(pid) for pid in truth}
    assert all(r["full_name"].startswith("*") and r["address"] is None for r in records)
    assert served.last_audit()["rows_returned"] == len(truth)

    police = served.get("/api/v1/datasets/citizen/records", "cong_an", limit=1000).json()["records"]
    assert {r["personal_id"] for r in police} == set(truth)
    for record in police:
        assert record["full_name"] == truth[record["personal_id"]]["full_name"]
        assert record["address"] is None  # not in the police grant: withheld

    someone = next(iter(truth))
    refused = served.get("/api/v1/datasets/citizen/records", "so_y_te", personal_id=someone)
    assert refused.status_code == 400 and "needs a grant" in refused.json()["error"]["message"]
    audited = json.loads(served.last_audit()["query"])["filters"]
    assert audited == [["personal_id", "eq", _pseudonym(someone)]]  # the audit keeps no raw ID either
    found = served.get("/api/v1/datasets/citizen/records", "cong_an", personal_id=someone).json()["records"]
    assert [r["personal_id"] for r in found] == [someone]


def test_audit_is_append_only_and_an_edited_or_deleted_row_is_detected(served: Served) -> None:
    served.get("/api/v1/datasets/dossier/records", limit=3)
    engine = _write_engine(served.database_url)
    try:
        assert verify(engine).intact
        with engine.connect() as conn:  # a chain with a second row (the server writes one chain or more)
            chain = conn.execute(sa.text("SELECT min(chain) FROM gateway_audit WHERE seq = 2")).scalar_one()
        row = {"c": chain}
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text("UPDATE gateway_audit SET rows_returned = 0 WHERE chain = :c AND seq = 2"), row)
        with engine.begin() as conn:  # someone with the rights to lift the triggers edits a row
            conn.execute(sa.text("ALTER TABLE gateway_audit DISABLE TRIGGER USER"))
            original = conn.execute(sa.text("SELECT * FROM gateway_audit WHERE chain = :c AND seq = 2"),
                                    row).mappings().one()
            conn.execute(sa.text("UPDATE gateway_audit SET rows_returned = 999999 WHERE chain = :c AND seq = 2"), row)
        report = verify(engine)
        assert report.problems == [f"chain {chain} row 2: content does not match its hash (edited)"]
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE gateway_audit SET rows_returned = :r WHERE chain = :c AND seq = 2"),
                         {"r": original["rows_returned"], **row})
            conn.execute(sa.text("DELETE FROM gateway_audit WHERE chain = :c AND seq = 2"), row)
        report = verify(engine)
        assert f"chain {chain} rows 2..2 are missing (deleted)" in report.problems
        with engine.begin() as conn:  # put it back: the chain is whole again
            conn.execute(sa.text(
                "INSERT INTO gateway_audit SELECT * FROM json_populate_record(NULL::gateway_audit, :row)"),
                {"row": json.dumps(dict(original), default=str)})
            conn.execute(sa.text("ALTER TABLE gateway_audit ENABLE TRIGGER USER"))
        assert verify(engine).intact
    finally:
        engine.dispose()


def test_oauth2_client_credentials_and_revocation(served: Served) -> None:
    client_id, secret = served.client
    token = requests.post(served.base + "/oauth/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}, timeout=30)
    assert token.status_code == 200 and token.json()["token_type"] == "bearer"
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    enterprises = requests.get(served.base + "/api/v1/datasets/enterprise/records", headers=bearer,
                               params={"limit": 1000}, timeout=30)
    assert enterprises.status_code == 200
    current = served.view("enterprise")
    assert len(enterprises.json()["records"]) == len(current)  # history dataset: current versions only
    assert requests.get(served.base + "/api/v1/datasets/citizen/records", headers=bearer).status_code == 403
    wrong = requests.post(served.base + "/oauth/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": "nope"}, timeout=30)
    assert wrong.status_code == 401
    served.registry.revoke_credential(client_id)
    assert requests.get(served.base + "/api/v1/datasets/enterprise/records", headers=bearer).status_code == 401


# --- records, filters, pagination, exports --------------------------------------------------

def test_keyset_pages_filters_sort_and_fields(served: Served) -> None:
    truth = served.view("citizen")
    communes = sorted({r["commune_code"] for r in truth})[:40]
    wanted = sorted((r for r in truth if r["commune_code"] in communes and r["birth_date"] >= date(1980, 1, 1)),
                    key=lambda r: r["personal_id"])
    wanted.sort(key=lambda r: r["birth_date"], reverse=True)
    pages, cursor, seen = 0, None, []
    while True:
        params = {"commune_code__in": ",".join(communes), "birth_date__gte": "1980-01-01", "sort": "-birth_date",
                  "fields": "personal_id,birth_date", "limit": 7, **({"cursor": cursor} if cursor else {})}
        body = served.get("/api/v1/datasets/citizen/records", "cong_an", **params).json()
        assert all(set(r) == {"personal_id", "birth_date"} for r in body["records"])
        seen += body["records"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages > 2
    assert [r["personal_id"] for r in seen] == [r["personal_id"] for r in wanted]
    assert personal_id_not_in(cursor_of(served), truth)


def cursor_of(served: Served) -> str:
    return served.get("/api/v1/datasets/citizen/records", "so_y_te", limit=1).json()["next_cursor"]


def personal_id_not_in(cursor: str, truth: list[dict[str, Any]]) -> bool:
    """A cursor is sealed: it carries no personal ID a masked reader could read."""
    return not any(r["personal_id"] in cursor for r in truth)


def test_exports_stream_csv_jsonl_and_parquet(served: Served) -> None:
    records = served.get("/api/v1/datasets/dossier/records", limit=250, sort="-received_at").json()["records"]
    assert len(records) == 250
    params = {"sort": "-received_at", "fields": "dossier_id,received_at,channel,paid_online"}
    csv_text = served.get("/api/v1/datasets/dossier/export", format="csv", **params).text.splitlines()
    assert csv_text[0] == "dossier_id,received_at,channel,paid_online"
    assert [line.split(",")[0] for line in csv_text[1:]] == [r["dossier_id"] for r in records]  # capped at 250
    lines = served.get("/api/v1/datasets/dossier/export", format="jsonl", **params).text.splitlines()
    assert [json.loads(line)["received_at"] for line in lines] == [r["received_at"] for r in records]
    parquet = served.get("/api/v1/datasets/dossier/export", format="parquet", **params)
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column("dossier_id").to_pylist() == [r["dossier_id"] for r in records]
    assert served.last_audit()["action"] == "export_parquet_done" and served.last_audit()["rows_returned"] == 250
    masked = served.get("/api/v1/datasets/citizen/export", "so_y_te", format="csv", fields="personal_id").text
    assert not any(r["personal_id"] in masked for r in served.view("citizen"))
    assert served.get("/api/v1/datasets/citizen/export", "so_gd_dt", format="csv").status_code == 403


def test_caps_errors_and_rate_limit(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    too_big = served.get("/api/v1/datasets/dossier/records", limit=5000)
    assert too_big.status_code == 400 and "limit" in too_big.json()["error"]["message"]
    bad_date = served.get("/api/v1/datasets/dossier/records", received_at__gte="yesterday")
    assert bad_date.status_code == 400 and "received_at__gte" in bad_date.json()["error"]["message"]
    unfilterable = served.get("/api/v1/datasets/dossier/records", fields="secret_column")
    assert unfilterable.status_code == 400 and "secret_column" in unfilterable.json()["error"]["message"]
    forged = served.get("/api/v1/datasets/dossier/records", cursor="gAAAAforged")
    assert forged.status_code == 400 and "cursor" in forged.json()["error"]["message"]
    assert served.get("/api/v1/datasets/nothing").status_code == 404
    for response in (too_big, bad_date, unfilterable, forged):
        assert "Traceback" not in response.text and "sqlalchemy" not in response.text.lower()
    codes = [served.get("/api/v1/datasets/dossier/records", "han_che", limit=1).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and 429 in codes[5:]
    limited = served.get("/api/v1/datasets/dossier/records", "han_che", limit=1)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    with caplog.at_level(logging.INFO, logger="lgsp.gateway"):
        someone = served.view("citizen")[0]["personal_id"]
        assert served.get("/api/v1/datasets/citizen/records", "cong_an", personal_id=someone).status_code == 200
    assert "citizen" in caplog.text and someone not in caplog.text  # logged, without the personal ID


def test_catalog_shows_schema_counts_freshness_and_quality(served: Served) -> None:
    listing = served.get("/api/v1/datasets").json()["datasets"]
    assert {d["name"] for d in listing} == set(load_catalog().sharing)
    citizen = served.get("/api/v1/datasets/citizen").json()
    assert citizen["access"] == "restricted" and citizen["row_count"] == len(served.view("citizen"))
    assert citizen["freshness"] is not None and citizen["last_quality"]["success"] is True
    personal = {c["name"]: c["personal"] for c in citizen["schema"] if c["personal"]}
    assert personal == {"personal_id": "pseudonym", "full_name": "mask", "address": "withhold"}
    enterprise = served.get("/api/v1/datasets/enterprise").json()
    assert enterprise["history"] is True and enterprise["row_count"] == len(served.view("enterprise"))
    openapi = served.get("/openapi.json").json()
    assert "/api/v1/datasets/citizen/records" in openapi["paths"]
    names = {p["name"] for p in openapi["paths"]["/api/v1/datasets/citizen/records"]["get"]["parameters"]}
    assert {"commune_code", "commune_code__in", "birth_date__gte", "cursor", "limit", "sort", "fields"} <= names


# --- CKAN and the OpenAPI contract -------------------------------------------------------------

def test_ckanapi_client_lists_shows_searches_and_reads(served: Served) -> None:
    import ckanapi

    ckan = ckanapi.RemoteCKAN(served.base, apikey=served.keys["so_y_te"])
    assert set(ckan.action.package_list()) == set(load_catalog().sharing)
    package = ckan.action.package_show(id="citizen")
    assert package["private"] is True and package["resources"][0]["datastore_active"] is True
    found = ckan.action.package_search(q="enterprises")
    assert "enterprise" in [p["name"] for p in found["results"]]
    truth = served.view("citizen")
    commune = truth[0]["commune_code"]
    result = ckan.action.datastore_search(resource_id="citizen", filters={"commune_code": commune},
                                          fields=["personal_id", "commune_code"], sort="personal_id asc", limit=5)
    expected = sorted(r["personal_id"] for r in truth if r["commune_code"] == commune)
    assert result["total"] == len(expected)
    assert [r["personal_id"] for r in result["records"]] == [_pseudonym(p) for p in expected[:5]]
    assert [f["id"] for f in result["fields"]] == ["personal_id", "commune_code"]
    audit = served.last_audit()
    assert (audit["agency_id"], audit["action"], audit["rows_returned"]) == (
        "so_y_te", "ckan_datastore_search", len(expected[:5]))
    with pytest.raises(ckanapi.NotAuthorized):
        ckanapi.RemoteCKAN(served.base, apikey=served.keys["so_gd_dt"]).action.datastore_search(resource_id="citizen")
    with pytest.raises(ckanapi.NotFound):
        ckan.action.package_show(id="no_such_dataset")
    with pytest.raises(ckanapi.ValidationError):
        ckan.action.datastore_search(resource_id="dossier", filters={"status": {"nested": 1}})
    anonymous = ckanapi.RemoteCKAN(served.base).action.datastore_search(resource_id="dossier", q="lý lịch", limit=3)
    assert anonymous["records"] and all("lý lịch" in r["procedure_name"].lower() for r in anonymous["records"])


def _raw_post(base: str, path: str, headers: dict[str, str], chunks: Iterator[bytes] = iter(())) -> tuple[int, Any]:
    """POST over a plain socket (http.client): `headers` as given, then `chunks` as a chunked body if any."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(base)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        for chunk in chunks:
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        if "Transfer-Encoding" in headers:
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_body_over_the_limit_is_refused_before_it_is_held(served: Served) -> None:
    """A POST declaring more than LGSP_GATEWAY_MAX_BODY_BYTES (1 MiB) is answered 413 from its headers, no byte
    of it read; a chunked one as soon as it passes the limit; one nested too deeply to parse gets 409 (CKAN) or
    400, not a 500; a body within the limit, chunked or not, is served."""
    path, key = "/api/3/action/datastore_search", {"X-API-Key": served.keys["so_y_te"]}
    started = time.monotonic()
    status, body = _raw_post(served.base, path, {**key, "Content-Type": "application/json",
                                                 "Content-Length": str(1 << 30)})
    assert status == 413 and "LGSP_GATEWAY_MAX_BODY_BYTES" in body["error"]["message"], body
    assert time.monotonic() - started < 10, "answered without waiting for the gigabyte"
    status, body = _raw_post(served.base, path, {**key, "Content-Type": "application/json",
                                                 "Transfer-Encoding": "chunked"},
                             iter([b'{"resource_id": "citizen", "q": "' + b"x" * 65536] * 17 + [b'"}']))
    assert status == 413 and "1,048,576 bytes" in body["error"]["message"], body
    small = json.dumps({"resource_id": "citizen", "limit": 2}).encode()
    status, body = _raw_post(served.base, path, {**key, "Content-Type": "application/json",
                                                 "Transfer-Encoding": "chunked"}, iter([small[:10], small[10:]]))
    assert status == 200 and body["success"] and len(body["result"]["records"]) == 2, body
    deep = requests.post(served.base + path, data=b"[" * 500_000, headers={**key, "Content-Type": "application/json"},
                         timeout=30)
    assert deep.status_code == 409 and "nested too deeply" in deep.json()["error"]["message"], deep.text[:300]
    asked = requests.post(served.base + "/api/v1/access-requests", data=b"[" * 500_000, timeout=30,
                          headers={**key, "Content-Type": "application/json"})
    assert asked.status_code in (400, 422), asked.text[:300]
    near = small + b" " * ((1 << 20) - len(small))  # exactly the limit
    answered = requests.post(served.base + path, data=near, headers={**key, "Content-Type": "application/json"},
                             timeout=30)
    assert answered.status_code == 200 and len(answered.json()["result"]["records"]) == 2, answered.text[:300]


def test_schemathesis_finds_no_server_errors_and_responses_match_the_openapi(served: Served) -> None:
    import hypothesis
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)

    schema = schemathesis.openapi.from_url(served.base + "/openapi.json")
    # and requests the schema calls invalid are refused; `positive_data_acceptance` is left out: a cursor is opaque,
    # so a schema-valid random one is still (rightly) refused with 400
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    headers = {"X-API-Key": served.keys["kiem_toan"]}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 2 * len(load_catalog().sharing) + 4

    for operation in operations:
        @hypothesis.settings(max_examples=60, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
        @hypothesis.given(case=operation.as_strategy())
        def exercise(case: Any) -> None:
            case.call_and_validate(base_url=served.base, headers=headers, checks=checks)

        exercise()


def test_a_query_past_the_time_limit_is_cancelled_on_postgresql(pg_url: str) -> None:
    from gateway.records import QueryTimeout, _timed, read_engine

    engine = read_engine(pg_url, timeout_s=0.05)
    try:
        with pytest.raises(QueryTimeout, match="longer than 0.05 s"), _timed(0.05), engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_sleep(2)"))
        with engine.connect() as conn:  # read-only, too
            with pytest.raises(sa.exc.DBAPIError, match="read-only"):
                conn.execute(sa.text("CREATE TABLE nope (x int)"))
    finally:
        engine.dispose()


# --- the lean records path (gateway.fast) and the credential cache ----------------------------

def test_lean_reader_returns_what_the_threaded_reader_returns(served: Served) -> None:
    """The records route on PostgreSQL reads through async psycopg (gateway.fast); the export and CKAN routes
    through SQLAlchemy. Same pages, cursors aside (each seal has its own nonce), for every kind of query."""
    import asyncio

    from starlette.datastructures import QueryParams

    from gateway.agencies import Grant
    from gateway.fast import AsyncReads
    from gateway.params import parse_params, record_params, record_query
    from gateway.service import Gateway

    catalog = load_catalog()
    gateway = Gateway(load_gateway_settings(served.database_url), catalog)
    cases = [("citizen", Grant(), "limit=100"),
             ("citizen", Grant(frozenset({"personal_id", "full_name"})),
              "limit=7&sort=-birth_date&birth_date__gte=1980-01-01"),
             ("citizen", Grant(), "commune_code__in=14329,14332,14335&fields=personal_id,sex&limit=50"),
             ("citizen", Grant(frozenset({"full_name"})), "q=nguy&limit=20"),
             ("citizen", Grant(scope=(("commune_code", ("14329", "14332")),)), "limit=40&sort=-birth_date"),
             ("dossier", Grant(), "status__in=finished,returned&received_at__gte=2025-08-01T00:00:00Z"
                                  "&sort=-received_at,commune_code&limit=30"),
             ("dossier", Grant(), "channel=online&limit=10"),
             ("land_parcel", Grant(), "area_m2__gte=100.5&sort=-area_m2&limit=5"),
             ("enterprise", Grant(), "limit=1000")]

    async def lean(reads: AsyncReads, name: str, granted: Grant, query: Any, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        plan = gateway.reader.plan_page(name, granted, query, limit, cursor)
        names, rows = await reads.fetch(plan)
        return gateway.reader.finish_page(plan, names, rows)

    async def compare() -> int:
        reads, pages = AsyncReads(gateway), 0
        try:
            for name, granted, text in cases:
                dataset, shared = catalog.datasets[name], catalog.sharing[name]
                specs = record_params(dataset, shared, gateway.reader.sortable(name), gateway.settings, export=False)
                params = parse_params(specs, QueryParams(text))
                query = record_query(dataset, shared, params)
                cursor: str | None = None
                for _ in range(3):  # the first pages, following the lean path's cursors
                    expected, expected_next = gateway.reader.page(name, granted, query, params["limit"], cursor)
                    got, got_next = await lean(reads, name, granted, query, params["limit"], cursor)
                    assert orjson_dumps(got) == orjson_dumps(expected), (name, text)
                    assert (got_next is None) == (expected_next is None)
                    pages += bool(got)
                    if got_next is None:
                        break
                    cursor = got_next
        finally:
            await reads.close()
        return pages

    try:
        assert asyncio.run(compare()) >= len(cases) + 2
    finally:
        gateway.close()


def orjson_dumps(records: list[dict[str, Any]]) -> bytes:
    import orjson

    return orjson.dumps(records, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)


def test_a_cached_key_that_is_revoked_stops_working_when_its_cache_entry_expires(served: Served) -> None:
    from gateway.access import AccessDenied
    from gateway.service import Gateway

    settings = dataclasses.replace(load_gateway_settings(served.database_url), principal_cache_s=0.5)
    gateway = Gateway(settings, load_catalog())
    key = served.registry.issue_api_key("so_y_te")
    credential_id = key.split("_")[1]
    try:
        assert gateway.authenticate(key, "127.0.0.1").agency_id == "so_y_te"
        assert gateway.authenticate_cached(key, "127.0.0.1").agency_id == "so_y_te"  # the lean path's cache hit
        served.registry.revoke_credential(credential_id)
        time.sleep(0.6)
        assert gateway.authenticate_cached(key, "127.0.0.1") is None  # expired: the lean path looks it up again
        with pytest.raises(AccessDenied) as refused:
            gateway.authenticate(key, "127.0.0.1")
        assert refused.value.status == 401
        with pytest.raises(AccessDenied):  # and the refusal is cached too, not downgraded to anonymous
            gateway.authenticate_cached(key, "127.0.0.1")
    finally:
        gateway.close()
    # over HTTP (this server caches nothing): the revoked key is refused at once, on the lean route too
    response = requests.get(served.base + "/api/v1/datasets/citizen/records", headers={"X-API-Key": key}, timeout=30)
    assert response.status_code == 401


def test_the_lean_reader_cancels_a_query_past_the_time_limit(pg_url: str) -> None:
    import asyncio

    from gateway.fast import AsyncReads
    from gateway.records import PagePlan, QueryTimeout
    from gateway.service import Gateway

    from gateway.settings import GatewaySettings

    gateway = Gateway(GatewaySettings(database_url=pg_url, pseudonym_key=KEY.encode(), query_timeout_s=0.05),
                      load_catalog())

    async def run() -> None:
        reads = AsyncReads(gateway)
        slow = PagePlan("citizen", frozenset(), sa.select(sa.func.pg_sleep(2)), [], [], {}, 1)
        try:
            with pytest.raises(QueryTimeout, match="longer than 0.05 s"):
                await reads.fetch(slow)
            names, rows = await reads.fetch(PagePlan("citizen", frozenset(), sa.select(sa.literal(1).label("one")),
                                                     [], [], {}, 1))
            assert (names, rows) == (["one"], [(1,)])  # the connection is usable again
        finally:
            await reads.close()

    try:
        asyncio.run(run())
    finally:
        gateway.close()
