"""The gateway's change feed, on SQLite and on a real PostgreSQL: an agency keeps its own copy of a shared
dataset by asking what changed since its last token, and its copy stays equal to what a full export gives.

The warehouse is loaded by the real pipelines from the real sandbox services; changes come from a second
sandbox serving a changed snapshot of the same systems (citizens moved, enterprises suspended), loaded by
the same pipelines. Deletions come from a `firm` dataset with deletion markers, written through the
warehouse's own write modes and stamped as the runner stamps a load. The gateway is uvicorn in a thread
(real HTTP on loopback).
"""
from __future__ import annotations

import base64
import dataclasses
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pyarrow as pa
import pytest
import requests
import sqlalchemy as sa

import pgserver
from catalog import load_catalog
from catalog.models import Catalog, DatasetSpec, SharedDatasetSpec
from gateway.api import create_app
from gateway.service import _write_engine
from gateway.settings import load_gateway_settings
from lgsp import runner
from lgsp.runner import _with_lineage
from test_gateway import _pseudonym, gateway_env, loaded_registry, running
from warehouse import Warehouse

T0 = datetime(2025, 9, 1, tzinfo=timezone.utc)


def firm_catalog() -> Catalog:
    """The project's catalog plus `firm`: a merge dataset with deletion markers, shared with a personal column."""
    catalog = load_catalog()
    firm = DatasetSpec(name="firm", title="Firm", key=["code"], cursor_field="updated_at", delete_field="deleted",
                       columns={"code": {"type": "string", "required": True}, "status": {"type": "string"},
                                "owner_name": {"type": "string"}, "deleted": {"type": "boolean"},
                                "updated_at": {"type": "timestamp", "required": True}})
    shared = SharedDatasetSpec(name="firm", description="Firms", owner="test", licence="test", access="restricted",
                               columns=["code", "status", "owner_name", "updated_at"], filterable=["status"],
                               personal={"owner_name": "mask"})
    log = firm.model_copy(update={"name": "firm_log", "title": "Firm log", "write_mode": "append"})
    shared_log = shared.model_copy(update={"name": "firm_log", "access": "open", "personal": {},
                                           "columns": ["code", "status", "updated_at"]})
    return catalog.model_copy(update={"datasets": {**catalog.datasets, "firm": firm, "firm_log": log},
                                      "sharing": {**catalog.sharing, "firm": shared, "firm_log": shared_log}})


@dataclasses.dataclass
class Env:
    url: str
    keys: dict[str, str]
    base: str
    catalog: Catalog
    sandbox: Any

    def get(self, path: str, agency: str | None = "so_tai_chinh", **params: Any) -> requests.Response:
        headers = {"X-API-Key": self.keys[agency]} if agency else {}
        return requests.get(f"{self.base}{path}", params=params, headers=headers, timeout=60)

    def export(self, dataset: str, agency: str = "so_tai_chinh") -> dict[tuple[Any, ...], dict[str, Any]]:
        """The dataset as a full export shows it to `agency`, by key."""
        answer = self.get(f"/api/v1/datasets/{dataset}/export", agency, format="jsonl")
        assert answer.status_code == 200, answer.text
        key = self.catalog.datasets[dataset].key
        rows = [orjson.loads(line) for line in answer.content.splitlines() if line]
        return {tuple(r[k] for k in key): r for r in rows}

    def scalar(self, sql: str) -> Any:
        engine = _write_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql)).scalar()
        finally:
            engine.dispose()


class Mirror:
    """An agency's copy kept by the feed: upsert replaces by key, delete removes; the token kept between polls."""

    def __init__(self, env: Env, dataset: str, agency: str = "so_tai_chinh", limit: int = 37) -> None:
        self.env, self.dataset, self.agency, self.limit = env, dataset, agency, limit
        self.key = env.catalog.datasets[dataset].key
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.token: str | None = None
        self.pages = 0

    def poll(self) -> list[dict[str, Any]]:
        """Ask until `more` is false; returns the changes applied."""
        applied: list[dict[str, Any]] = []
        while True:
            params = {"limit": self.limit, **({"since": self.token} if self.token else {})}
            answer = self.env.get(f"/api/v1/datasets/{self.dataset}/changes", self.agency, **params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert len(body["changes"]) <= self.limit
            for change in body["changes"]:
                if change["op"] == "upsert":
                    self.rows[tuple(change["record"][k] for k in self.key)] = change["record"]
                else:
                    self.rows.pop(tuple(change["key"][k] for k in self.key), None)
            applied += body["changes"]
            self.token, self.pages = body["next"], self.pages + 1
            if not body["more"]:
                return applied


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp(f"changes-{request.param}")
    admin = request.getfixturevalue("pg_admin_url") if request.param == "postgresql" else ""
    url = pgserver.create_database(admin) if admin else f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url, LGSP_GATEWAY_MAX_EXPORT_ROWS="100000"):
        catalog = firm_catalog()
        registry = loaded_registry(url, catalog, ("population_citizens", "business_enterprises", "tthc_dossiers"))
        keys = {}
        for agency, grants in (("so_tai_chinh", {"citizen": [], "enterprise": [], "firm": []}),
                               ("cong_an", {"citizen": ["personal_id", "full_name"]}), ("so_xay_dung", {})):
            registry.add_agency(agency, agency, 100_000.0)
            keys[agency] = registry.issue_api_key(agency)
            for dataset, personal in grants.items():
                registry.grant(agency, dataset, personal)
        registry.engine.dispose()
        settings = dataclasses.replace(load_gateway_settings(url), principal_cache_s=0.0)
        with running(create_app(settings, catalog)) as base:
            yield Env(url, keys, base, catalog, sandbox_handle)
    if admin:
        pgserver.drop_database(admin, url)


def _changed_snapshot(data: Any) -> tuple[Any, set[str], set[str]]:
    """The sandbox's data with 7 citizens moved and 5 enterprises suspended, after everything loaded so far."""
    citizens, enterprises = [dict(c) for c in data.citizens], [dict(e) for e in data.enterprises]
    later = max(r["updated_at"] for r in citizens + enterprises) + timedelta(days=1)
    moved = [c for c in citizens if c["personal_id"] not in data.citizen_defects][:7]
    for citizen in moved:
        citizen.update(address=f"{citizen['address']} (chuyển đến)", updated_at=later)
    suspended = [e for e in enterprises if e["tax_code"] not in data.enterprise_defects and e["status"] == "active"][:5]
    for enterprise in suspended:
        enterprise.update(status="suspended", updated_at=later)
    citizens.sort(key=lambda c: (c["updated_at"], c["personal_id"]))
    enterprises.sort(key=lambda e: (e["updated_at"], e["tax_code"]))
    return (dataclasses.replace(data, citizens=citizens, enterprises=enterprises),
            {c["personal_id"] for c in moved}, {e["tax_code"] for e in suspended})


def test_a_mirror_kept_by_the_feed_equals_the_export_through_syncs_and_reruns(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import start_sandbox

    citizens, enterprises = Mirror(env, "citizen"), Mirror(env, "enterprise")
    citizens.poll(), enterprises.poll()
    assert citizens.rows == env.export("citizen") and len(citizens.rows) > 500
    assert enterprises.rows == env.export("enterprise") and len(enterprises.rows) > 200
    assert citizens.pages > 10, "the snapshot came in pages of 37"
    one = next(iter(citizens.rows.values()))
    assert one["personal_id"].startswith("ps_") and one["address"] is None, "protected as a records read"
    assert set(one) == set(env.catalog.sharing["citizen"].columns), "no lineage column"
    assert citizens.poll() == [] and enterprises.poll() == [], "nothing changed"

    for pipeline in ("population_citizens", "business_enterprises"):  # a rerun of the same source changes nothing
        runner.run_pipeline(pipeline, catalog=env.catalog, full_refresh=True)
    assert citizens.poll() == [] and enterprises.poll() == []

    changed, moved, suspended = _changed_snapshot(env.sandbox.data)
    with start_sandbox(data=changed, api_key="test-key-not-secret") as newer:
        for name, value in newer.env().items():
            monkeypatch.setenv(name, value)
        for pipeline in ("population_citizens", "business_enterprises"):
            runner.run_pipeline(pipeline, catalog=env.catalog)
    got = citizens.poll()
    assert sorted(c["record"]["personal_id"] for c in got) == sorted(_pseudonym(p) for p in moved)
    assert all(c["op"] == "upsert" and c["record"]["full_name"] for c in got)
    assert citizens.rows == env.export("citizen")
    got = enterprises.poll()  # a history dataset: the new current version of each, nothing of the closed ones
    assert sorted(c["record"]["tax_code"] for c in got) == sorted(suspended)
    assert {c["record"]["status"] for c in got} == {"suspended"}
    assert enterprises.rows == env.export("enterprise")

    unmasked = Mirror(env, "citizen", agency="cong_an", limit=1000)  # another grant, another view of the same feed
    unmasked.poll()
    assert set(unmasked.rows) == {(r["personal_id"],) for r in env.export("citizen", "cong_an").values()}
    assert all(not k[0].startswith("ps_") for k in unmasked.rows)


# --- deletions, windows and commit order: the `firm` dataset ---------------------------------------------


def _load(wh: Warehouse, ds: DatasetSpec, batch_id: str, records: list[dict[str, Any]],
          conn: sa.Connection | None = None) -> None:
    """Write one batch as `runner.load` does: batch record, rows with lineage, then the change number."""
    ctx = SimpleNamespace(system=SimpleNamespace(name="business"))
    rows = _with_lineage(pa.Table.from_pylist(records), ctx, batch_id)  # type: ignore[arg-type]

    def write(c: sa.Connection) -> None:
        now = datetime.now(timezone.utc)
        c.execute(wh.system["lgsp_batch"].insert().values(
            batch_id=batch_id, pipeline="firms", dataset=ds.name, source_system="business", status="loaded",
            started_at=now, finished_at=now))
        changed = wh.write_batch(c, ds, rows)
        batches = wh.system["lgsp_batch"]
        c.execute(batches.update().where(batches.c.batch_id == batch_id).values(rows_changed=changed))
        wh.stamp_change(c, batch_id, ds.name, changed)

    if conn is not None:
        write(conn)
        return
    with wh.transaction() as c:
        write(c)


def firm(i: int, status: str = "active", deleted: bool = False, day: int = 0) -> dict[str, Any]:
    return {"code": f"F{i:04d}", "status": status, "owner_name": f"Nguyễn Văn {i}", "deleted": deleted,
            "updated_at": T0 + timedelta(days=day)}


def test_deletions_come_before_the_records_of_their_window_and_a_mirror_converges(env: Env) -> None:
    wh = Warehouse(env.url, env.catalog)
    ds = env.catalog.datasets["firm"]
    _load(wh, ds, "firm-1", [firm(i) for i in range(250)])  # 250: PostgreSQL's COPY path
    mirror = Mirror(env, "firm", limit=40)
    mirror.poll()
    assert mirror.rows == env.export("firm") and len(mirror.rows) == 250
    assert next(iter(mirror.rows.values()))["owner_name"] != "Nguyễn Văn 0", "masked"

    _load(wh, ds, "firm-2", [firm(i, deleted=True, day=1) for i in range(0, 90)])  # 90 deleted at the source
    _load(wh, ds, "firm-3", [firm(i, status="dissolved", day=2) for i in range(80, 100)]  # 10 made again, 10 changed
          + [firm(i, day=2) for i in range(300, 305)])  # 5 new
    got = mirror.poll()
    ops = [c["op"] for c in got]
    assert ops == ["delete"] * 90 + ["upsert"] * 25, "deletes first, then the window's records in key order"
    assert sorted(c["key"]["code"] for c in got if c["op"] == "delete") == [f"F{i:04d}" for i in range(90)]
    assert mirror.rows == env.export("firm") and len(mirror.rows) == 250 - 80 + 5
    assert mirror.rows[("F0085",)]["status"] == "dissolved", "deleted then made again in one window: present"
    assert int(env.scalar("SELECT count(*) FROM lgsp_tombstone WHERE dataset = 'firm'")) == 90

    _load(wh, ds, "firm-4", [firm(i, deleted=True, day=3) for i in range(300, 305)])
    _load(wh, ds, "firm-4b", [firm(i, deleted=True, day=3) for i in range(300, 305)])  # again: nothing to delete
    assert [c["op"] for c in mirror.poll()] == ["delete"] * 5
    assert mirror.rows == env.export("firm")
    late = Mirror(env, "firm", limit=1000)  # a new agency copy starts from the snapshot: no deletes needed
    assert {c["op"] for c in late.poll()} == {"upsert"} and late.rows == mirror.rows


def test_a_batch_that_commits_late_is_not_skipped(env: Env) -> None:
    """Two loads at once: the one that took its change number first commits last. Without the lock that
    orders numbers by commit, the reader's token passes the first one's number before it is visible."""
    wh = Warehouse(env.url, env.catalog)
    ds = env.catalog.datasets["firm"]
    mirror = Mirror(env, "firm", limit=1000)
    mirror.poll()
    slow = wh.engine.connect()
    transaction = slow.begin()
    _load(wh, ds, "firm-slow", [firm(i, status="merged", day=9) for i in range(100, 110)], conn=slow)
    fast = threading.Thread(target=_load, args=(wh, ds, "firm-fast", [firm(i, day=9) for i in range(400, 403)]))
    fast.start()
    time.sleep(1.0)
    # meanwhile the fast load waits for the slow one's commit (or, without the lock, is visible alone); on SQLite
    # the poll itself waits: its audit row needs the one writer's lock
    poller = threading.Thread(target=mirror.poll)
    poller.start()
    poller.join(timeout=5)
    transaction.commit()
    slow.close()
    for thread in (fast, poller):
        thread.join(timeout=60)
        assert not thread.is_alive()
    mirror.poll()
    assert mirror.rows == env.export("firm")
    assert mirror.rows[("F0105",)]["status"] == "merged" and ("F0401",) in mirror.rows


def test_tokens_are_sealed_and_bound_to_their_dataset_and_reads_are_audited(env: Env) -> None:
    answer = env.get("/api/v1/datasets/citizen/changes", limit=5)
    token = answer.json()["next"]
    last_key = str(answer.json()["changes"][-1]["record"]["personal_id"])
    sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert answer.json()["more"] is True and last_key, "the page ends at a citizen's (pseudonymised) key"
    assert last_key not in token and last_key.encode() not in sealed and b"citizen" not in sealed, "token readable"
    refused = env.get("/api/v1/datasets/enterprise/changes", since=token)
    assert refused.status_code == 400 and "not a token this gateway issued" in refused.json()["error"]["message"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert env.get("/api/v1/datasets/citizen/changes", since=forged).status_code == 400
    cursor = env.get("/api/v1/datasets/citizen/records", limit=1).json()["next_cursor"]
    assert env.get("/api/v1/datasets/citizen/changes", since=cursor).status_code == 400, "a cursor is not a token"
    assert env.get("/api/v1/datasets/citizen/changes", agency="so_xay_dung").status_code == 403
    assert env.get("/api/v1/datasets/citizen/changes", agency=None).status_code == 401
    assert env.get("/api/v1/datasets/citizen/changes", limit=0).status_code == 400
    log = env.get("/api/v1/datasets/firm_log/changes", agency=None)
    assert log.status_code == 404 and "append log" in log.json()["error"]["message"]
    assert env.get("/api/v1/datasets/passport/changes").status_code == 404
    audited = env.scalar("SELECT count(*) FROM gateway_audit WHERE action = 'changes' AND dataset = 'citizen' "
                         "AND agency_id = 'so_tai_chinh' AND status = 200")
    assert int(audited) >= 1
    assert env.get("/api/v1/datasets/citizen").json()["changes"] == "/api/v1/datasets/citizen/changes"
    assert env.get("/api/v1/datasets/firm_log").json()["changes"] is None
    spec = env.get("/openapi.json").json()
    assert "changes_citizen" in {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert "/api/v1/datasets/firm_log/changes" not in spec["paths"]
    assert "/api/v1/datasets/indicator_value/changes" in spec["paths"]


def test_the_runner_numbers_each_load_that_changed_something_in_commit_order(env: Env, monkeypatch: Any) -> None:
    from sandbox import start_sandbox

    before = int(env.scalar("SELECT coalesce(max(change_seq), 0) FROM lgsp_change"))
    runner.run_pipeline("population_citizens", catalog=env.catalog)  # nothing new at the source: no number
    assert int(env.scalar("SELECT coalesce(max(change_seq), 0) FROM lgsp_change")) == before
    data = env.sandbox.data
    citizens = [dict(c) for c in data.citizens]
    later = max(c["updated_at"] for c in citizens) + timedelta(days=30)
    for citizen in [c for c in citizens if c["personal_id"] not in data.citizen_defects][100:103]:
        citizen.update(address=f"{citizen['address']} (lần 2)", updated_at=later)
    citizens.sort(key=lambda c: (c["updated_at"], c["personal_id"]))
    # citizens an earlier test's source moved (`_changed_snapshot`), which this source never did: a full refresh is
    # the source's whole truth, so they go back too, though the copy's time for them is later
    moved = int(env.scalar("SELECT count(*) FROM core_citizen WHERE address LIKE '%(chuyển đến)'"))
    with start_sandbox(data=dataclasses.replace(data, citizens=citizens), api_key="test-key-not-secret") as newer:
        for name, value in newer.env().items():
            monkeypatch.setenv(name, value)
        result = runner.run_pipeline("population_citizens", catalog=env.catalog, full_refresh=True)
    row = env.scalar(f"SELECT change_seq || ' ' || rows_changed || ' ' || dataset FROM lgsp_change "
                     f"WHERE batch_id = '{result['batch_id']}'")
    assert result["rows_changed"] == 3 + moved and row == f"{before + 1} {3 + moved} citizen"
    assert int(env.scalar("SELECT count(*) FROM core_citizen WHERE address LIKE '%(chuyển đến)'")) == 0


# --- lgsp mirror: the agency's side ---------------------------------------------------------------


def _table(url: str, table: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """A mirror table's rows as the export shows them (JSON), by key."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            mirrored = sa.Table(table, sa.MetaData(), autoload_with=conn)  # typed as the mirror made it
            rows = [{str(k): v for k, v in r.items()} for r in conn.execute(sa.select(mirrored)).mappings()]
    finally:
        engine.dispose()
    option = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
    return {(r["code"],): orjson.loads(orjson.dumps(r, option=option)) for r in rows}


@pytest.fixture
def agency_db(env: Env, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The agency's own database, of the same kind as the warehouse's."""
    if env.url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'agency.db'}"
        return
    admin = request.getfixturevalue("pg_admin_url")
    url = pgserver.create_database(admin)
    yield url
    pgserver.drop_database(admin, url)


def test_lgsp_mirror_keeps_an_agency_table_in_sync_and_a_stopped_run_loses_nothing(
        env: Env, agency_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from lgsp.cli import app as lgsp_app

    wh = Warehouse(env.url, env.catalog)
    ds = env.catalog.datasets["firm"]
    _load(wh, ds, "firm-m1", [firm(i, status="active", day=20) for i in range(500, 600)])
    monkeypatch.setenv("LGSP_GATEWAY_API_KEY", env.keys["so_tai_chinh"])
    command = ["mirror", "firm", "--gateway", env.base, "--into", agency_db, "--limit", "30"]
    cli = CliRunner()
    stopped = cli.invoke(lgsp_app, [*command, "--max-pages", "2"])  # a run stopped after two pages
    assert stopped.exit_code == 0, stopped.output
    assert "snapshot, 60 upserted" in stopped.output and len(_table(agency_db, "firm")) == 60
    done = cli.invoke(lgsp_app, command)
    assert done.exit_code == 0, done.output
    exported = env.export("firm")
    assert _table(agency_db, "firm") == exported
    assert f"{len(exported) - 60} upserted" in done.output, "it went on from the third page"
    assert env.keys["so_tai_chinh"] not in done.output

    _load(wh, ds, "firm-m2", [firm(i, deleted=True, day=21) for i in range(500, 510)]
          + [firm(i, status="merged", day=21) for i in range(510, 515)])
    changed = cli.invoke(lgsp_app, command)
    assert changed.exit_code == 0, changed.output
    assert "changes, 5 upserted, 10 deleted" in changed.output, changed.output
    assert _table(agency_db, "firm") == env.export("firm")
    again = cli.invoke(lgsp_app, command)
    assert "changes, 0 upserted, 0 deleted in 1 page(s)" in again.output, again.output

    engine = sa.create_engine(agency_db.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:  # the saved token damaged: the gateway refuses it, --resync starts afresh
        conn.execute(sa.text("UPDATE lgsp_mirror_state SET token = 'x' || token"))
    engine.dispose()
    refused = cli.invoke(lgsp_app, command)
    assert refused.exit_code == 1 and "HTTP 400" in refused.output and "--resync" in refused.output
    resynced = cli.invoke(lgsp_app, [*command, "--resync"])
    assert resynced.exit_code == 0 and "snapshot" in resynced.output
    assert _table(agency_db, "firm") == env.export("firm")

    monkeypatch.setenv("LGSP_GATEWAY_API_KEY", "not-a-key")
    denied = cli.invoke(lgsp_app, command)
    assert denied.exit_code == 1 and "HTTP 401" in denied.output and "LGSP_GATEWAY_API_KEY" in denied.output
    assert "not-a-key" not in denied.output
    monkeypatch.setenv("LGSP_GATEWAY_API_KEY", env.keys["so_xay_dung"])
    no_grant = cli.invoke(lgsp_app, command)
    assert no_grant.exit_code == 1 and "HTTP 403" in no_grant.output and "grant on firm" in no_grant.output
    assert _table(agency_db, "firm") == env.export("firm"), "a refused run changed nothing"


def test_a_mirror_whose_dataset_changed_columns_keeps_the_old_and_asks_for_a_resync_when_a_type_changed(
        env: Env, agency_db: str) -> None:
    from gateway.mirror import Mirror, MirrorError

    def mirrored(**kwargs: Any) -> Any:
        copy = Mirror(env.base, "firm", agency_db, env.keys["so_tai_chinh"], limit=1000)
        try:
            return copy.run(**kwargs) if not kwargs.pop("resync", False) else (copy.resync(), copy.run())[1]
        finally:
            copy.close()

    _load(Warehouse(env.url, env.catalog), env.catalog.datasets["firm"], "firm-cols",
          [firm(i, status="active", day=22) for i in range(700, 720)])
    mirrored()
    engine = sa.create_engine(agency_db.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:  # a column the dataset shared once and no longer does
        conn.exec_driver_sql("ALTER TABLE firm ADD COLUMN fax_number TEXT")
        conn.exec_driver_sql("UPDATE firm SET fax_number = '0229 3871 234'")
    kept = mirrored()
    assert "column(s) fax_number no longer shared: kept in firm, no longer filled" in kept.notes
    assert {k: {c: v for c, v in r.items() if c != "fax_number"} for k, r in _table(agency_db, "firm").items()} \
        == env.export("firm") and {r["fax_number"] for r in _table(agency_db, "firm").values()} == {"0229 3871 234"}

    with engine.begin() as conn:  # a copy made when `updated_at` was text: the gateway now says timestamp
        rows = conn.exec_driver_sql("SELECT code, status, owner_name FROM firm").all()
        conn.exec_driver_sql("DROP TABLE firm")
        conn.exec_driver_sql("CREATE TABLE firm (code TEXT PRIMARY KEY, status TEXT, owner_name TEXT, "
                             "updated_at TEXT)")
        conn.execute(sa.text("INSERT INTO firm VALUES (:code, :status, :owner_name, 'yesterday')"),
                     [dict(r._mapping) for r in rows])
    with pytest.raises(MirrorError, match=r"other types than table firm holds: updated_at \(str here, timestamp "
                                          r"now\).*run again with --resync"):
        mirrored()
    assert len(_table(agency_db, "firm")) == len(rows), "refused: the copy as it was"
    remade = mirrored(resync=True)
    assert remade.snapshot and any(n.startswith("table firm made again: updated_at") for n in remade.notes)
    assert _table(agency_db, "firm") == env.export("firm")
    assert mirrored().notes == [] and _table(agency_db, "firm") == env.export("firm")
    engine.dispose()


def test_a_mirror_of_a_gateway_that_does_not_answer_says_so_and_keeps_its_pages(env: Env, agency_db: str) -> None:
    from gateway.mirror import Mirror, MirrorError

    copy = Mirror(env.base, "firm", agency_db, env.keys["so_tai_chinh"], limit=40)
    try:
        copy.run(max_pages=1)
    finally:
        copy.close()
    down = socket.socket()
    down.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = down.getsockname()[1]
    copy = Mirror(f"http://127.0.0.1:{port}", "firm", agency_db, env.keys["so_tai_chinh"], attempts=3, backoff_s=0.01)
    try:
        with pytest.raises(MirrorError, match="mirrors firm at http://127.0.0.1"):
            copy.run()  # the table belongs to another gateway's feed: refused before any request
        copy.resync()
        with pytest.raises(MirrorError, match=r"no usable answer after 3 attempts \(no answer \(ConnectionError\)\)"):
            copy.run()
    finally:
        copy.close()
        down.close()


def test_a_token_whose_deletions_were_pruned_or_that_outlived_a_restore_expires_with_410(
        env: Env, agency_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from lgsp.cli import app as lgsp_app
    from lgsp.retention import prune

    wh = Warehouse(env.url, env.catalog)
    ds = env.catalog.datasets["firm"]
    monkeypatch.setenv("LGSP_GATEWAY_API_KEY", env.keys["so_tai_chinh"])
    command = ["mirror", "firm", "--gateway", env.base, "--into", agency_db]
    cli = CliRunner()
    _load(wh, ds, "firm-p0", [firm(i, day=29) for i in range(600, 605)])
    assert cli.invoke(lgsp_app, command).exit_code == 0
    mirror = Mirror(env, "firm", limit=1000)
    mirror.poll()
    _load(wh, ds, "firm-p1", [firm(i, deleted=True, day=30) for i in range(600, 605)])
    done = prune(timedelta(0))  # the deletions of every batch loaded until now
    assert done.tombstones >= 5
    assert int(env.scalar("SELECT count(*) FROM lgsp_tombstone WHERE batch_id = 'firm-p1'")) == 0
    assert env.scalar("SELECT tombstones_pruned_at FROM lgsp_change WHERE batch_id = 'firm-p1'") is not None
    expired = env.get("/api/v1/datasets/firm/changes", since=mirror.token)
    assert expired.status_code == 410 and "pruned" in expired.json()["error"]["message"]
    refused = cli.invoke(lgsp_app, command)
    assert refused.exit_code == 1 and "HTTP 410" in refused.output and "--resync" in refused.output
    resynced = cli.invoke(lgsp_app, [*command, "--resync"])
    assert resynced.exit_code == 0, resynced.output
    assert _table(agency_db, "firm") == env.export("firm")
    assert int(env.scalar("SELECT count(*) FROM gateway_audit WHERE action = 'changes' AND status = 410")) >= 2

    fresh = Mirror(env, "firm", limit=1000)
    fresh.poll()
    engine = _write_engine(env.url)
    with engine.begin() as conn:  # as if the warehouse were restored from a backup taken before the last loads
        top = conn.execute(sa.text("SELECT max(change_seq) FROM lgsp_change")).scalar()
        conn.execute(sa.text("DELETE FROM lgsp_change WHERE change_seq >= :top"), {"top": top - 1})
    engine.dispose()
    restored = env.get("/api/v1/datasets/firm/changes", since=fresh.token)
    assert restored.status_code == 410 and "restored from a backup" in restored.json()["error"]["message"]


def test_the_demo_agency_copy_writes_no_secret_and_follows_the_feed_when_the_key_is_stable(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.demo import DemoAgency, agency_copy
    from lgsp.settings import Settings

    settings = Settings(home=tmp_path, database_url=env.url, lake_root=tmp_path / "lake")
    stable = os.environ["LGSP_GATEWAY_PSEUDONYM_KEY"]
    monkeypatch.delenv("LGSP_GATEWAY_PSEUDONYM_KEY")

    def demo() -> Any:
        agency = DemoAgency(settings, env.catalog)
        try:
            return agency_copy(settings, env.catalog, agency)
        finally:
            agency.close()

    first, path = demo()
    shared = len(env.export("enterprise"))
    assert first.snapshot and first.upserts == first.rows == shared and path == tmp_path / "agency/so_xay_dung.db"
    second, _ = demo()  # another demo, another key of its own: read afresh
    assert second.rows == shared and "set LGSP_GATEWAY_PSEUDONYM_KEY" in "".join(second.notes)
    assert "LGSP_GATEWAY_PSEUDONYM_KEY" not in os.environ, "the demo's own key did not outlive it"
    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", stable)
    demo()
    fourth, _ = demo()
    assert not fourth.snapshot and (fourth.upserts, fourth.deletes, fourth.rows) == (0, 0, shared)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["so_xay_dung.db"], "no secret on disk"
    keys = env.scalar("SELECT count(*) FROM gateway_credential WHERE agency_id = 'so_xay_dung' AND revoked_at IS NULL")
    assert int(keys) == 1, "each demo revokes the agency's earlier keys"
    engine = _write_engine(env.url)
    try:
        with engine.connect() as conn:
            hooks = conn.execute(sa.text("SELECT events FROM gateway_webhook WHERE agency_id = 'so_xay_dung' "
                                         "AND removed_at IS NULL ORDER BY events")).scalars().all()
    finally:
        engine.dispose()
    assert hooks == ["access", "dataset.changed"], "and removes its earlier webhooks (one of each kind is left)"
    asked = env.scalar("SELECT count(*) FROM gateway_grant WHERE agency_id = 'so_xay_dung' AND dataset = 'land_parcel'")
    assert int(asked) == 1, "each demo's access request takes the earlier grant back before asking"


def test_a_mirror_refuses_a_damaged_answer_whole_and_loses_nothing(env: Env, agency_db: str) -> None:
    """A proxy between the agency and the gateway damages the change pages; the mirror applies none of a damaged
    page, keeps its token, says what was wrong, and converges once the answers are sound again."""
    from gateway.mirror import Mirror, MirrorError
    from loopback import serve

    damage: dict[str, str | None] = {"now": None}

    def proxy(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = environ.get("QUERY_STRING")
        answer = requests.get(f"{env.base}{environ['PATH_INFO']}" + (f"?{query}" if query else ""),
                              headers={"X-API-Key": environ.get("HTTP_X_API_KEY", "")}, timeout=30)
        body, how = answer.content, damage["now"]
        if "/changes" in environ["PATH_INFO"] and how:
            if how == "502":
                start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
                return [b"upstream unavailable"]
            page = orjson.loads(body)
            if how == "wrong_type":
                page["changes"][-1]["record"]["updated_at"] = "yesterday"
            elif how == "bad_op":
                page["changes"][-1]["op"] = "merge"
            elif how == "no_next":
                del page["next"]
            body = b"<html>proxy error</html>" if how == "not_json" else orjson.dumps(page)
        start_response(f"{answer.status_code} -", [("Content-Type", "application/json")])
        return [body]

    def state() -> tuple[dict[tuple[Any, ...], dict[str, Any]], str]:
        engine = sa.create_engine(agency_db.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            token = conn.execute(sa.text("SELECT token FROM lgsp_mirror_state WHERE mirror = 'firm'")).scalar_one()
        engine.dispose()
        return _table(agency_db, "firm"), token

    relay = serve(proxy)
    base = next(relay)
    try:
        copy = Mirror(base, "firm", agency_db, env.keys["so_tai_chinh"], attempts=2, backoff_s=0.01)
        copy.run()
        before = state()
        _load(Warehouse(env.url, env.catalog), env.catalog.datasets["firm"], "firm-h1",
              [firm(i, status="renamed", day=40) for i in range(120, 123)])
        for how, says in (("wrong_type", "not a valid timestamp"), ("bad_op", "neither an upsert nor a delete"),
                          ("no_next", "not a page of changes"), ("not_json", "not JSON"),
                          ("502", "no usable answer after 2 attempts (HTTP 502")):
            damage["now"] = how
            with pytest.raises(MirrorError) as caught:
                copy.run()
            assert says in str(caught.value), (how, str(caught.value))
            assert state() == before, f"{how}: nothing applied, the token kept"
        damage["now"] = None
        run = copy.run()
        assert run.upserts == 3 and _table(agency_db, "firm") == env.export("firm")
        copy.close()
    finally:
        relay.close()


def test_a_mirror_killed_mid_run_goes_on_from_its_last_page(env: Env, agency_db: str) -> None:
    """`lgsp mirror` as its own process, killed (SIGKILL) in the middle of a snapshot; the rerun loses nothing,
    doubles nothing, and does not start again from the first page."""
    from loopback import serve

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:  # the gateway, 0.1 s per change page
        query = environ.get("QUERY_STRING")
        if "/changes" in environ["PATH_INFO"]:
            time.sleep(0.1)
        answer = requests.get(f"{env.base}{environ['PATH_INFO']}" + (f"?{query}" if query else ""),
                              headers={"X-API-Key": environ.get("HTTP_X_API_KEY", "")}, timeout=30)
        start_response(f"{answer.status_code} -", [("Content-Type", "application/json")])
        return [answer.content]

    def pages_applied() -> int:
        engine = sa.create_engine(agency_db.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.connect() as conn:
                return int(conn.execute(sa.text('SELECT count(*) FROM "firm"')).scalar_one()) // 10
        except sa.exc.DBAPIError:
            return 0
        finally:
            engine.dispose()

    _load(Warehouse(env.url, env.catalog), env.catalog.datasets["firm"], "firm-k1",
          [firm(i, day=50) for i in range(700, 900)])  # at least 20 pages of 10
    relay = serve(slow)
    base = next(relay)
    root = Path(__file__).resolve().parents[1]
    command = [str(root / ".venv/bin/lgsp"), "mirror", "firm", "--gateway", base, "--into", agency_db, "--limit", "10"]
    environment = {**os.environ, "LGSP_GATEWAY_API_KEY": env.keys["so_tai_chinh"], "PYTHONPATH": str(root)}
    try:
        process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while pages_applied() < 3:
            assert time.monotonic() < deadline and process.poll() is None, "the mirror did not get going"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kept = len(_table(agency_db, "firm"))
        total = len(env.export("firm"))
        assert 30 <= kept < total, "killed mid-snapshot"
        rerun = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        upserted = int(re.search(r"(\d+) upserted", rerun.stdout).group(1))  # type: ignore[union-attr]
        assert total - kept <= upserted <= total - kept + 10, "at most the page in flight again, not the whole"
        assert _table(agency_db, "firm") == env.export("firm")
    finally:
        relay.close()


def test_the_indicator_mart_has_a_feed_through_recomputes_and_vanished_cells(env: Env) -> None:
    from indicators import compute_indicator

    wh = Warehouse(env.url, env.catalog)
    spec = env.catalog.indicators["online_submission_rate"]
    assert compute_indicator(wh, spec) > 0
    mirror = Mirror(env, "indicator_value", limit=200)
    mirror.poll()
    assert mirror.rows == env.export("indicator_value") and len(mirror.rows) > 200
    assert compute_indicator(wh, spec) == 0 and mirror.poll() == [], "a recompute that changes nothing adds nothing"

    engine = _write_engine(env.url)  # every dossier of one commune gone from the copy: its cells vanish
    with engine.begin() as conn:
        commune = conn.execute(sa.text("SELECT commune_code FROM core_dossier GROUP BY commune_code "
                                       "ORDER BY count(*), commune_code LIMIT 1")).scalar_one()
        conn.execute(sa.text("DELETE FROM core_dossier WHERE commune_code = :c"), {"c": commune})
    engine.dispose()
    assert compute_indicator(wh, spec) > 0
    got = mirror.poll()
    deleted = [c["key"] for c in got if c["op"] == "delete"]
    units = {(k["unit_level"], k["unit_code"]) for k in deleted}  # the commune, and its receiving agency
    assert ("commune", commune) in units and all(commune in code for _, code in units)
    assert {c["record"]["unit_level"] for c in got if c["op"] == "upsert"} >= {"province"}, "the province's rates"
    assert mirror.rows == env.export("indicator_value")


def test_a_migration_while_the_gateway_serves_sends_the_moved_values_down_the_feed(env: Env) -> None:
    """Firms loaded while `status` was not declared keep it in `_extras`; `lgsp warehouse migrate` moves it into the
    column with the gateway serving, readers never refused, and an agency's copy gets exactly those firms again."""
    from warehouse.migrate import migrate_dataset

    declared = env.catalog.datasets["firm"]
    before = declared.model_copy(update={"columns": {k: v for k, v in declared.columns.items() if k != "status"}})
    early = Warehouse(env.url, env.catalog.model_copy(update={"datasets": {**env.catalog.datasets, "firm": before}}))
    records = [{**{k: v for k, v in firm(i).items() if k != "status"}, "code": f"G{i:04d}",  # as a load keeps it
                "_extras": orjson.dumps({"status": "suspended" if i % 2 else "active"}).decode()} for i in range(300)]
    _load(early, before, "firm-undeclared", records)
    early.engine.dispose()
    mirror = Mirror(env, "firm", limit=1000)
    mirror.poll()
    assert mirror.rows == env.export("firm") and mirror.rows[("G0001",)]["status"] is None

    refused: list[int] = []
    reading = threading.Event()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            answer = env.get("/api/v1/datasets/firm/records", limit=50, status="suspended")
            if answer.status_code != 200:
                refused.append(answer.status_code)
            reading.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        reading.wait(30)
        done = migrate_dataset(Warehouse(env.url, env.catalog), env.catalog, "firm", drop_previous=True)
    finally:
        stop.set()
        reader.join()
    assert refused == [], "a reader was refused during the migration"
    assert done is not None and done.rows_changed == 300
    got = mirror.poll()
    assert sorted(c["record"]["code"] for c in got) == [f"G{i:04d}" for i in range(300)], "those firms, no others"
    assert mirror.rows == env.export("firm") and mirror.rows[("G0001",)]["status"] == "suspended"
    assert mirror.poll() == []


def test_a_record_a_full_refresh_removes_as_missing_reaches_a_mirror_as_a_delete(env: Env) -> None:
    """`--delete-missing` tombstones what it removes in the refresh's own change: the feed sends it as a delete."""
    mirror = Mirror(env, "citizen", limit=500)
    mirror.poll()
    catalog = load_catalog()
    wh = Warehouse(env.url, catalog)
    table = wh.dataset_table(catalog.datasets["citizen"])
    with wh.transaction() as conn:  # a citizen the population database held at a sync, and has since deleted
        row = dict(conn.execute(sa.select(table).limit(1)).mappings().one())
        conn.execute(table.insert().values({**row, "personal_id": "037099000001", "_batch_id": "gone-later"}))
        wh.stamp_change(conn, "gone-later", "citizen", 1)
    added = mirror.poll()
    assert [c["op"] for c in added] == ["upsert"] and mirror.rows == env.export("citizen")
    held = len(mirror.rows)

    assert runner.run_pipeline("population_citizens", full_refresh=True, delete_missing=0.1)["rows_deleted"] == 1
    removed = [c for c in mirror.poll() if c["op"] == "delete"]
    assert len(removed) == 1 and len(mirror.rows) == held - 1
    assert mirror.rows == env.export("citizen")
    wh.engine.dispose()
