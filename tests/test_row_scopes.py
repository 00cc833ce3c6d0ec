"""Grants that cover some rows only (`lgsp agencies grant ... --scope commune_code=...`): a commune's People's
Committee reads its own residents, on every read path, and its copy kept by the change feed converges when
records leave its commune. SQLite and a real PostgreSQL; the real gateway over loopback, the real CLI, the
real sandbox's population service for the lookups.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

import pgserver
from catalog import load_catalog
from catalog.models import Catalog, DatasetSpec, SharedDatasetSpec
from gateway.agencies import AgencyRegistry, Grant, RegistryError, check_scope, parse_scope
from gateway.api import create_app
from gateway.service import _write_engine
from gateway.settings import load_gateway_settings
from lgsp.cli import app as lgsp_app
from test_gateway import gateway_env, loaded_registry, running
from test_gateway_changes import T0, _load
from warehouse import Warehouse

PURPOSE = "Rà soát hộ nghèo và đối tượng bảo trợ xã hội trên địa bàn xã (kế hoạch 45/KH-UBND)"
A, B, C = "20001", "20002", "20003"  # the shops' communes


def shop_catalog() -> Catalog:
    """The project's catalog plus `shop`: a merge dataset with deletion markers and a commune, shared restricted
    with a personal column; its commune is not filterable (a scope needs no filterable column)."""
    catalog = load_catalog()
    shop = DatasetSpec(name="shop", title="Shop", key=["code"], cursor_field="updated_at", delete_field="deleted",
                       columns={"code": {"type": "string", "required": True}, "commune_code": {"type": "string"},
                                "status": {"type": "string"}, "owner_name": {"type": "string"},
                                "floor_m2": {"type": "float"}, "deleted": {"type": "boolean"},
                                "updated_at": {"type": "timestamp", "required": True}})
    shared = SharedDatasetSpec(name="shop", description="Shops", owner="test", licence="test", access="restricted",
                               columns=["code", "commune_code", "status", "owner_name", "floor_m2", "updated_at"],
                               filterable=["status"], personal={"owner_name": "mask"})
    return catalog.model_copy(update={"datasets": {**catalog.datasets, "shop": shop},
                                      "sharing": {**catalog.sharing, "shop": shared}})


def shop(i: int, commune: str, status: str = "open", deleted: bool = False, day: int = 0) -> dict[str, Any]:
    return {"code": f"S{i:04d}", "commune_code": commune, "status": status, "owner_name": f"Trần Thị {i}",
            "floor_m2": 20.0 + i, "deleted": deleted, "updated_at": T0 + timedelta(days=day)}


@dataclasses.dataclass
class Env:
    url: str
    base: str
    keys: dict[str, str]
    registry: AgencyRegistry
    catalog: Catalog
    communes: tuple[str, str]  # the two communes with the most citizens: the commune agency's scope

    def get(self, path: str, agency: str | None, **params: Any) -> requests.Response:
        headers = {"X-API-Key": self.keys[agency]} if agency else {}
        return requests.get(f"{self.base}{path}", params=params, headers=headers, timeout=60)

    def post(self, path: str, agency: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.base}{path}", json=body, headers={"X-API-Key": self.keys[agency]}, timeout=60)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.registry.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def pages(self, dataset: str, agency: str, **params: Any) -> list[dict[str, Any]]:
        """Every record of a keyset read, following next_cursor."""
        records: list[dict[str, Any]] = []
        cursor = None
        while True:
            answer = self.get(f"/api/v1/datasets/{dataset}/records", agency,
                              **params, **({"cursor": cursor} if cursor else {}))
            assert answer.status_code == 200, answer.text
            records += answer.json()["records"]
            cursor = answer.json()["next_cursor"]
            if cursor is None:
                return records

    def export(self, dataset: str, agency: str) -> dict[str, dict[str, Any]]:
        answer = self.get(f"/api/v1/datasets/{dataset}/export", agency, format="jsonl")
        assert answer.status_code == 200, answer.text
        key = self.catalog.datasets[dataset].key[0]
        return {r[key]: r for r in (orjson.loads(line) for line in answer.content.splitlines() if line)}

    def audit(self) -> dict[str, Any]:
        with self.registry.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM gateway_audit ORDER BY recorded_at DESC, seq DESC LIMIT 1"))
            return dict(row.mappings().one())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp(f"scopes-{request.param}")
    admin = request.getfixturevalue("pg_admin_url") if request.param == "postgresql" else ""
    url = pgserver.create_database(admin) if admin else f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url, LGSP_GATEWAY_MAX_EXPORT_ROWS="100000"):
        catalog = shop_catalog()
        registry = loaded_registry(url, catalog, ("population_citizens", "admin_units"))
        with registry.engine.connect() as conn:
            top = conn.execute(sa.text("SELECT commune_code FROM shared_citizen GROUP BY commune_code "
                                       "ORDER BY count(*) DESC, commune_code LIMIT 2")).scalars().all()
        keys = {}
        for agency in ("ubnd_xa", "so_lao_dong", "so_y_te"):
            registry.add_agency(agency, agency, 100_000.0)
            keys[agency] = registry.issue_api_key(agency)
        registry.grant("ubnd_xa", "citizen", ["personal_id"], scope={"commune_code": list(top)})
        registry.grant("ubnd_xa", "shop", scope={"commune_code": [A]})
        registry.grant("so_lao_dong", "citizen", ["personal_id"])
        registry.grant("so_lao_dong", "shop")
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0)
        try:
            with running(create_app(settings, catalog)) as base:
                yield Env(url, base, keys, registry, catalog, (top[0], top[1]))
        finally:
            registry.engine.dispose()
    if admin:
        pgserver.drop_database(admin, url)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(lgsp_app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _indexes(env: Env, table: str) -> dict[str, list[str]]:
    with env.registry.engine.connect() as conn:
        return {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes(table)}


def test_a_scoped_grant_reads_its_rows_only_on_every_read_path(env: Env) -> None:
    communes = list(env.communes)
    assert _indexes(env, "core_citizen")["ix_scope_core_citizen_commune_code"] == ["commune_code", "personal_id"]
    ours = {r[0] for r in env.rows("SELECT personal_id FROM shared_citizen WHERE commune_code IN (:a, :b)",
                                   a=communes[0], b=communes[1])}
    everyone = {r[0] for r in env.rows("SELECT personal_id FROM shared_citizen")}
    assert 0 < len(ours) < len(everyone), "the sandbox has citizens in and beyond the scope"

    paged = env.pages("citizen", "ubnd_xa", limit=7, sort="-birth_date")  # the records route (lean path), sorted
    assert {r["personal_id"] for r in paged} == ours and len(paged) == len(ours)
    assert {r["commune_code"] for r in paged} == set(communes)
    audited = json.loads(env.audit()["query"])
    assert audited["scope"] == {"commune_code": sorted(communes)}, "the audit says which rows could be read"
    assert {r["personal_id"] for r in env.pages("citizen", "so_lao_dong", limit=1000)} == everyone, "unscoped"
    assert "scope" not in json.loads(env.audit()["query"])

    beyond = sorted({r[0] for r in env.rows("SELECT commune_code FROM shared_citizen")} - set(communes))[0]
    asked = env.get("/api/v1/datasets/citizen/records", "ubnd_xa", commune_code=beyond)
    assert asked.status_code == 200 and asked.json()["records"] == [], "a filter cannot reach beyond the scope"
    one = env.get("/api/v1/datasets/citizen/records", "ubnd_xa", commune_code=communes[1], limit=1000).json()
    assert {r["personal_id"] for r in one["records"]} == {
        r[0] for r in env.rows("SELECT personal_id FROM shared_citizen WHERE commune_code = :c", c=communes[1])}
    searched = env.get("/api/v1/datasets/citizen/records", "ubnd_xa", q=communes[0], limit=1000).json()["records"]
    assert searched and {r["personal_id"] for r in searched} <= ours
    assert env.get("/api/v1/datasets/citizen/records", "ubnd_xa", q=beyond).json()["records"] == [], "nor a search"

    assert set(env.export("citizen", "ubnd_xa")) == ours
    ckan = requests.post(f"{env.base}/api/3/action/datastore_search", headers={"X-API-Key": env.keys["ubnd_xa"]},
                         json={"resource_id": "citizen", "limit": 1000, "include_total": True}, timeout=60).json()
    assert ckan["success"] and ckan["result"]["total"] == len(ours)
    assert {r["personal_id"] for r in ckan["result"]["records"]} == ours
    offset = requests.post(f"{env.base}/api/3/action/datastore_search", headers={"X-API-Key": env.keys["ubnd_xa"]},
                           json={"resource_id": "citizen", "limit": 5, "offset": len(ours) - 2}, timeout=60).json()
    assert len(offset["result"]["records"]) == 2, "CKAN's offset pages count the scope's rows only"


def test_a_scoped_lookup_answers_within_and_says_the_same_404_beyond_as_for_no_one(env: Env) -> None:
    communes = list(env.communes)
    within = env.rows("SELECT personal_id FROM shared_citizen WHERE commune_code = :c ORDER BY personal_id LIMIT 1",
                      c=communes[0])[0][0]
    beyond = env.rows("SELECT personal_id FROM shared_citizen WHERE commune_code NOT IN (:a, :b) "
                      "ORDER BY personal_id LIMIT 1", a=communes[0], b=communes[1])[0][0]
    found = env.get("/api/v1/datasets/citizen/lookup", "ubnd_xa", personal_id=within)
    assert found.status_code == 200 and found.json()["record"]["personal_id"] == within, found.text
    hidden = env.get("/api/v1/datasets/citizen/lookup", "ubnd_xa", personal_id=beyond)
    assert hidden.status_code == 404, hidden.text
    assert env.audit()["status"] == 404 and json.loads(env.audit()["query"])["scope"]
    nobody = env.get("/api/v1/datasets/citizen/lookup", "ubnd_xa", personal_id="037099999999")
    assert nobody.status_code == 404
    said = [answer.json()["error"]["message"].replace(pid, "<id>")
            for answer, pid in ((hidden, beyond), (nobody, "037099999999"))]
    assert said[0] == said[1], "beyond the scope and unknown at the source read alike"
    assert "among the records your grant covers (commune_code in [" in said[0]
    assert env.get("/api/v1/datasets/citizen/lookup", "so_lao_dong", personal_id=beyond).status_code == 200


def _feed(env: Env, agency: str, token: str | None, limit: int = 25) -> tuple[list[dict[str, Any]], str, Any]:
    """Every page of one window: the changes, the token after it, its `scope_rows` if it said `reconcile`."""
    changes: list[dict[str, Any]] = []
    reconcile = False
    while True:
        answer = env.get("/api/v1/datasets/shop/changes", agency, limit=limit, **({"since": token} if token else {}))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        changes += body["changes"]
        token, reconcile = body["next"], reconcile or body.get("reconcile", False) and body["scope_rows"]
        assert not (body["more"] and body.get("reconcile")), "said on the window's last page"
        if not body["more"]:
            return changes, token, reconcile


def test_the_change_feed_of_a_scoped_grant_never_names_a_record_beyond_it_and_a_mirror_converges(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = Warehouse(env.url, env.catalog)
    ds = env.catalog.datasets["shop"]
    _load(wh, ds, "shop-1", [shop(i, (A, B, C)[i % 3]) for i in range(120)])
    monkeypatch.setenv("LGSP_GATEWAY_API_KEY", env.keys["ubnd_xa"])
    into = f"sqlite:///{tmp_path / 'commune.db'}"
    command = ["mirror", "shop", "--gateway", env.base, "--into", into, "--limit", "15"]

    def copy() -> dict[str, str]:
        engine = sa.create_engine(into)
        with engine.connect() as conn:
            held = dict(conn.execute(sa.text("SELECT code, commune_code FROM shop")).all())
        engine.dispose()
        return held

    def scoped() -> dict[str, str]:
        return {code: r["commune_code"] for code, r in env.export("shop", "ubnd_xa").items()}

    code, said = _cli(*command)
    assert code == 0 and "snapshot, 40 upserted" in said, said
    assert copy() == scoped() and set(copy().values()) == {A}
    snapshot, token, reconcile = _feed(env, "ubnd_xa", None)
    assert len(snapshot) == 40 and not reconcile
    _, unscoped_token, _ = _feed(env, "so_lao_dong", None)

    _load(wh, ds, "shop-2", [shop(i, B, day=1) for i in (0, 3, 6, 9, 12)]  # five move out of A
          + [shop(i, A, day=1) for i in (1, 4, 7)]  # three move into A
          + [shop(i, A, deleted=True, day=1) for i in (15, 18, 21, 24)]  # four of A closed
          + [shop(i, C, deleted=True, day=1) for i in (2, 5)])  # two beyond A closed
    changes, token, reconcile = _feed(env, "ubnd_xa", token)
    assert reconcile, "records may have left the scope: the reader is told to reconcile"
    assert {c["op"] for c in changes} == {"upsert"}, "no deletion: its key could name a record beyond the scope"
    assert sorted(c["record"]["code"] for c in changes) == ["S0001", "S0004", "S0007"]
    assert {c["record"]["commune_code"] for c in changes} == {A}
    unscoped, _, told = _feed(env, "so_lao_dong", unscoped_token)
    assert not told, "an unscoped reader is never asked to reconcile: it gets the deletions"
    assert sorted(c["key"]["code"] for c in unscoped if c["op"] == "delete") == [
        f"S{i:04d}" for i in (2, 5, 15, 18, 21, 24)]

    code, said = _cli(*command)
    assert code == 0 and "changes, 3 upserted, 0 deleted, 9 left the grant's rows" in said, said
    assert copy() == scoped() and len(copy()) == 40 - 5 + 3 - 4
    again, token, reconcile = _feed(env, "ubnd_xa", token)
    assert again == [] and not reconcile

    _load(wh, ds, "shop-3", [shop(i, A, status="closed", day=2) for i in (1, 27)])  # within A only
    changes, token, reconcile = _feed(env, "ubnd_xa", token)
    assert sorted(c["record"]["code"] for c in changes) == ["S0001", "S0027"] and not reconcile
    code, said = _cli(*command)
    assert code == 0 and "changes, 2 upserted, 0 deleted in" in said and copy() == scoped(), said

    _load(wh, ds, "shop-3b", [shop(i, B, status="closed", day=2) for i in (2, 5)])  # beyond A only
    changes, token, reconcile = _feed(env, "ubnd_xa", token)
    assert changes == [] and reconcile == len(scoped()), "reconcile, with as many rows as the grant covers"
    reads = env.rows("SELECT count(*) FROM gateway_audit WHERE agency_id = 'ubnd_xa' AND action = 'records'")[0][0]
    code, said = _cli(*command)
    assert code == 0 and "left the grant's rows" not in said and copy() == scoped(), said
    assert env.rows("SELECT count(*) FROM gateway_audit WHERE agency_id = 'ubnd_xa' AND action = 'records'")[0][0] \
        == reads, "the copy holds as many rows as the grant covers: no key listing"

    _load(wh, ds, "shop-4", [shop(30, C, day=3)])  # one moves out of A, nothing deleted
    changes, token, reconcile = _feed(env, "ubnd_xa", token)
    assert changes == [] and reconcile, "a record that only moved away is found too"
    code, said = _cli(*command)
    assert code == 0 and "1 left the grant's rows" in said and copy() == scoped() and "S0030" not in copy(), said

    env.registry.grant("ubnd_xa", "shop", scope={"commune_code": [B]})  # the scope itself changed
    assert env.get("/api/v1/datasets/shop/changes", "ubnd_xa", since=token).status_code == 410
    code, said = _cli(*command)
    assert code == 1 and "HTTP 410" in said and "the grant covers other rows" in said and "--resync" in said, said
    code, said = _cli(*command, "--resync")
    assert code == 0 and copy() == scoped() and set(copy().values()) == {B}, said


def test_a_scope_is_checked_when_granted_and_listed(env: Env) -> None:
    for args, message in [
        (["--scope", "commune"], "write COLUMN=VALUE[,VALUE...]"),
        (["--scope", "commune_code="], "write COLUMN=VALUE[,VALUE...]"),
        (["--scope", "ward=1"], "'ward' is not a shared column of 'citizen'"),
        (["--scope", "full_name=An"], "'full_name' is a personal column of 'citizen'"),
        (["--scope", "birth_date=2000-01-01"], "'birth_date' is a date column; a scope names exact values"),
    ]:
        code, said = _cli("agencies", "grant", "so_y_te", "citizen", *args)
        assert code == 1 and message in said, (args, said)
    code, said = _cli("agencies", "grant", "so_y_te", "dossier", "--scope", "commune_code=20001")
    assert code == 1 and "'dossier' is open: anyone reads all of its rows" in said
    with pytest.raises(RegistryError, match="1 to 1000 values"):
        check_scope(env.catalog, "citizen", {"commune_code": [str(i) for i in range(1001)]})
    with pytest.raises(RegistryError, match="a float column"):
        check_scope(env.catalog, "shop", {"floor_m2": ["20.5"]})
    assert parse_scope(["commune_code=1, 2", "commune_code=3", "status=open"]) == {
        "commune_code": ["1", "2", "3"], "status": ["open"]}
    assert Grant(scope=(("commune_code", ("1", "2")),)).covers((("commune_code", ("2",)), ("status", ("x",))))
    assert not Grant(scope=(("commune_code", ("1",)),)).covers(())

    code, said = _cli("agencies", "grant", "so_y_te", "citizen", "--scope", f"commune_code={env.communes[1]},99999")
    assert code == 0 and "warning: commune_code 99999: no admin_unit.code has it (a typo?" in said, said
    code, said = _cli("agencies", "grant", "so_y_te", "citizen", "--scope", f"commune_code={env.communes[1]}")
    count = env.rows("SELECT count(*) FROM shared_citizen WHERE commune_code = :c", c=env.communes[1])[0][0]
    assert code == 0 and f"so_y_te may read citizen (only rows with commune_code in {env.communes[1]}): " \
                         f"{count} row(s) now" in said and "warning" not in said, said
    code, listed = _cli("agencies", "list")
    assert code == 0 and env.communes[1] in listed  # the table wraps its cells: the registry says it exactly
    held = next(a for a in env.registry.agencies() if a["agency_id"] == "so_y_te")
    assert held["grant_scope"] == {"citizen": {"commune_code": [env.communes[1]]}}
    read = env.pages("citizen", "so_y_te", limit=1000)
    assert read and {r["commune_code"] for r in read} == {env.communes[1]}, "the grant works at once"
    code, said = _cli("agencies", "grant", "so_y_te", "citizen")
    assert code == 0 and len(env.pages("citizen", "so_y_te", limit=1000)) > len(read), "granted again: every row"


def test_an_agency_asks_for_its_communes_rows_and_is_granted_as_asked_or_fewer(env: Env) -> None:
    first, second = env.communes
    env.registry.add_agency("ubnd_phuong", "UBND phường")
    env.keys["ubnd_phuong"] = env.registry.issue_api_key("ubnd_phuong")
    wide = env.post("/api/v1/access-requests", "ubnd_phuong", {
        "dataset": "citizen", "purpose": PURPOSE, "until": (date.today() + timedelta(days=60)).isoformat(),
        "scope": {"commune_code": [first, second, "99999"]}})
    assert wide.status_code == 201, wide.text
    request_id = wide.json()["request_id"]
    assert wide.json()["scope"] == {"commune_code": sorted([first, second, "99999"])}
    code, said = _cli("agencies", "requests")
    assert code == 0 and "rows: only rows with commune_code in" in said
    code, said = _cli("agencies", "approve", request_id, "--scope", f"commune_code={first},88888")
    assert code == 1 and "are more than asked" in said, said
    code, said = _cli("agencies", "approve", request_id, "--scope", f"commune_code={first}")
    assert code == 0 and f"only rows with commune_code in {first}" in said, said
    shown = env.get(f"/api/v1/access-requests/{request_id}", "ubnd_phuong").json()
    assert (shown["status"], shown["granted_scope"]) == ("approved", {"commune_code": [first]})
    [held] = env.get("/api/v1/grants", "ubnd_phuong").json()["grants"]  # what it may read now, as it sees it
    assert (held["dataset"], held["scope"], held["personal"], held["request_id"]) == (
        "citizen", {"commune_code": [first]}, [], request_id) and held["expires_at"].startswith(
        (date.today() + timedelta(days=60)).isoformat())
    assert requests.get(f"{env.base}/api/v1/grants", timeout=30).status_code == 401
    assert {r["commune_code"] for r in env.pages("citizen", "ubnd_phuong", limit=1000)} == {first}

    again = env.post("/api/v1/access-requests", "ubnd_phuong", {
        "dataset": "citizen", "purpose": PURPOSE, "scope": {"commune_code": [first]},
        "until": (date.today() + timedelta(days=30)).isoformat()})
    assert again.status_code == 400 and "already holds 'citizen' as asked" in again.text
    more = env.post("/api/v1/access-requests", "ubnd_phuong", {
        "dataset": "citizen", "purpose": PURPOSE, "scope": {"commune_code": [first, second]},
        "until": (date.today() + timedelta(days=30)).isoformat()})
    assert more.status_code == 201, "more rows than held can be asked for"
    schemas = env.get("/openapi.json", None).json()["components"]["schemas"]
    assert "scope" in schemas["GrantInfo"]["properties"]
    assert "scope" in schemas["AccessRequestIn"]["properties"] and "granted_scope" in schemas[
        "AccessRequestInfo"]["properties"] and {"reconcile", "scope_rows"} <= set(schemas["ShopChanges"]["properties"])
    for body, message in [({"scope": {"full_name": ["An"]}}, "is a personal column"),
                          ({"scope": {"commune_code": []}}, "needs 1 to 1000 values"),
                          ({"dataset": "dossier", "scope": {"commune_code": [first]}}, "is open")]:
        answer = env.post("/api/v1/access-requests", "so_lao_dong", {"dataset": "citizen", "purpose": PURPOSE,
                                                                     **body})
        assert answer.status_code == 400 and message in answer.text, answer.text


def test_the_scope_index_is_made_again_when_the_gateway_starts_and_when_a_failed_attempt_left_it_invalid(
        env: Env) -> None:
    from gateway.service import prepare_database

    name = "ix_scope_core_citizen_commune_code"
    assert env.registry.index_scopes() == {}, "made with the grant: nothing to do"
    with env.registry.engine.begin() as conn:  # as a migration's new table has none
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    prepare_database(env.url, env.catalog)  # what `lgsp serve` runs first
    assert _indexes(env, "core_citizen")[name] == ["commune_code", "personal_id"]
    if env.url.startswith("postgresql"):  # CREATE INDEX CONCURRENTLY interrupted: an invalid index, never used
        with env.registry.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{name}'::regclass")
        assert list(env.registry.index_scopes("citizen")) == [("citizen", "commune_code")]
        valid = env.rows(f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{name}'::regclass")
        assert valid == [(True,)]


@pytest.mark.parametrize("scope, message", [
    ({"commune_code": ["144\u000055"]}, "is not a valid string"),
    ({"commune_code": [["14455"]]}, "scope.commune_code.0"),
    ({"commune_code": {"in": ["14455"]}}, "scope.commune_code: Input should be a valid list"),
    ({"commune_code": [str(i) for i in range(1001)]}, "needs 1 to 1000 values (1001 given)"),
    ({f"c{i}": ["1"] for i in range(6)}, "scope: Dictionary should have at most 5 items"),
    ({"personal_id\u0000": ["1"]}, "is not a shared column of 'citizen'"),
])
def test_a_hostile_scope_is_refused_saying_why_and_nothing_is_filed(env: Env, scope: Any, message: str) -> None:
    before = env.rows("SELECT count(*) FROM gateway_access_request")[0][0]
    answer = env.post("/api/v1/access-requests", "so_y_te", {"dataset": "citizen", "purpose": PURPOSE,
                                                             "scope": scope})
    assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
    assert env.rows("SELECT count(*) FROM gateway_access_request")[0][0] == before


def test_a_grant_whose_scope_column_is_no_longer_shared_reads_nothing(env: Env) -> None:
    from gateway.access import AccessDenied, authorize
    from gateway.agencies import Principal

    principal = Principal("ubnd_xa", grants={"shop": Grant(scope=(("commune_code", (A,)),))})
    assert authorize(principal, env.catalog.sharing["shop"]).scope == (("commune_code", (A,)),)
    narrower = env.catalog.sharing["shop"].model_copy(update={"columns": ["code", "status", "updated_at"]})
    with pytest.raises(AccessDenied, match="no longer shared columns of it: the province grants it again") as refused:
        authorize(principal, narrower)
    assert refused.value.status == 403



def test_every_commune_is_registered_with_its_own_rows_once(env: Env) -> None:
    result = CliRunner().invoke(lgsp_app, ["agencies", "communes", "--dataset", "citizen", "--keys"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "129 communes of province 37: 129 agencies registered, 129 grants made (citizen, each scoped" in said
    issued = [line.split(",") for line in result.stdout.strip().splitlines()]
    assert len(issued) == 129 and len({row[0] for row in issued}) == 129
    first = env.communes[0]
    [(agency, key)] = [(row[0], row[-1]) for row in issued if row[2] == first]
    assert agency.startswith("ubnd_") and key.startswith("lgsp_")
    env.keys[agency] = key
    read = env.pages("citizen", agency, limit=1000)
    assert read and {r["commune_code"] for r in read} == {first}
    assert len(read) == env.rows("SELECT count(*) FROM shared_citizen WHERE commune_code = :c", c=first)[0][0]

    env.registry.grant(agency, "citizen", ["personal_id"], scope={"commune_code": [first]})  # widened by hand
    again = CliRunner().invoke(lgsp_app, ["agencies", "communes", "--dataset", "citizen", "--keys"])
    assert again.exit_code == 0 and again.stdout == "", "no key issued twice"
    assert "0 agencies registered, 0 grants made" in " ".join(again.stderr.split())
    assert env.pages("citizen", agency, limit=1)[0]["personal_id"].isdigit(), "the grant made by hand is kept"
    refused = CliRunner().invoke(lgsp_app, ["agencies", "communes", "--dataset", "dossier"])
    assert refused.exit_code == 1 and "'dossier' is open" in refused.output
    unknown = CliRunner().invoke(lgsp_app, ["agencies", "communes", "--dataset", "citizen", "--province", "99"])
    assert unknown.exit_code == 1 and "no commune-level unit of province 99" in unknown.output


def test_lgsp_warehouse_migrate_indexes_the_new_table_for_the_scoped_grants(
        lgsp_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import yaml

    from gateway.tables import create_gateway_tables
    from test_write_modes import batch, firm_spec, firms, write

    folder = tmp_path / "catalog"  # the catalog on disk: firm (merge, then history) shared, restricted
    shutil.copytree(Path(__file__).parent.parent / "catalog", folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    shared = {"description": "Firms", "owner": "test", "licence": "test", "access": "restricted",
              "columns": ["code", "status", "updated_at"], "filterable": ["status"]}
    sharing = yaml.safe_load((folder / "sharing.yaml").read_text())
    sharing["sharing"]["firm"] = shared
    (folder / "sharing.yaml").write_text(yaml.safe_dump(sharing, allow_unicode=True))

    def with_firm(mode: str) -> Catalog:
        datasets = yaml.safe_load((folder / "datasets.yaml").read_text())
        datasets["datasets"]["firm"] = json.loads(firm_spec(mode).model_dump_json(exclude_defaults=True))
        (folder / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
        monkeypatch.setenv("LGSP_CATALOG_DIR", str(folder))
        return load_catalog()

    catalog = with_firm("merge")
    wh = Warehouse(lgsp_env.database_url, catalog)
    wh.create_all(check_shapes=False)
    write(wh, catalog.datasets["firm"], batch(firms(), "b1"))
    create_gateway_tables(wh.engine)
    registry = AgencyRegistry(wh.engine, catalog)
    registry.add_agency("ubnd_xa", "UBND xã")
    assert list(registry.grant("ubnd_xa", "firm", scope={"status": ["active"]})) == [("firm", "status")]

    def indexed() -> list[str]:
        with wh.engine.connect() as conn:
            return [i["name"] for i in sa.inspect(conn).get_indexes("core_firm")]

    assert "ix_scope_core_firm_status" in indexed()
    with_firm("history")  # firm's write mode changed: its table is rebuilt
    migrated = CliRunner().invoke(lgsp_app, ["warehouse", "migrate", "firm"])
    assert migrated.exit_code == 0, migrated.output
    assert "indexed by status again for the gateway's scoped grants" in " ".join(migrated.output.split())
    assert "ix_scope_core_firm_status" in indexed(), "the new table has it too"
    wh.engine.dispose()
