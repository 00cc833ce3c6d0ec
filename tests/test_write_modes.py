"""Write modes (merge, append, replace, history) on SQLite and a real PostgreSQL.

A small `firm` dataset (300 rows: enough for PostgreSQL's COPY path) is written
straight through `Warehouse.write_batch` with lineage from the runner; the last
test runs the real `runner.load()` against the sandbox.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from catalog import load_catalog
from catalog.models import DatasetSpec
from lgsp.runner import _with_lineage
from warehouse import Warehouse
from warehouse.store import COPY_MIN_ROWS, SchemaMigrationNeeded, utc

FIRMS = 300
T0 = datetime(2025, 8, 1, tzinfo=timezone.utc)
MODES = ["merge", "append", "replace", "history"]


def firm_spec(mode: str, **extra: Any) -> DatasetSpec:
    return DatasetSpec(name="firm", title="Firm", key=["code"], cursor_field="updated_at", write_mode=mode,
                       delete_field="deleted", columns={
                           "code": {"type": "string", "required": True}, "status": {"type": "string"},
                           "deleted": {"type": "boolean"}, "updated_at": {"type": "timestamp", "required": True}},
                       **extra)


def open_firm_warehouse(url: str, mode: str) -> tuple[Warehouse, DatasetSpec]:
    ds = firm_spec(mode)
    catalog = load_catalog()
    wh = Warehouse(url, catalog.model_copy(update={"datasets": {"firm": ds}}))
    wh.create_all()
    return wh, ds


def firms(count: int = FIRMS, status: str = "active", at: datetime = T0, deleted: bool = False,
          start: int = 0) -> list[dict[str, Any]]:
    return [{"code": f"F{i:05d}", "status": status, "deleted": deleted, "updated_at": at}
            for i in range(start, start + count)]


def batch(records: list[dict[str, Any]], batch_id: str, system: str = "business") -> list[dict[str, Any]]:
    """Rows as `runner.load` writes them: the runner's own lineage and content hash."""
    ctx = SimpleNamespace(system=SimpleNamespace(name=system))
    return _with_lineage(pa.Table.from_pylist(records), ctx, batch_id)  # type: ignore[arg-type]


def write(wh: Warehouse, ds: DatasetSpec, rows: list[dict[str, Any]]) -> int:
    with wh.transaction() as conn:
        return wh.write_batch(conn, ds, rows)


def snapshot(wh: Warehouse, ds: DatasetSpec, engine: sa.Engine | None = None) -> list[tuple[Any, ...]]:
    table = wh.dataset_table(ds)
    with (engine or wh.engine).connect() as conn:
        rows = conn.execute(sa.select(table)).all()
    return sorted((tuple(utc(v) if isinstance(v, datetime) else v for v in r) for r in rows), key=repr)


def versions(wh: Warehouse, ds: DatasetSpec) -> dict[str, list[Any]]:
    table = wh.dataset_table(ds)
    found: dict[str, list[Any]] = {}
    with wh.engine.connect() as conn:
        for row in conn.execute(sa.select(table).order_by(table.c.code, table.c.valid_from)):
            found.setdefault(row.code, []).append(row)
    return found


def test_the_firm_batch_takes_the_postgres_copy_path() -> None:
    assert FIRMS >= COPY_MIN_ROWS


@pytest.mark.parametrize("mode", MODES)
def test_a_rerun_of_the_same_batch_changes_nothing(database_url: str, mode: str) -> None:
    wh, ds = open_firm_warehouse(database_url, mode)
    rows = batch(firms(), "b1")
    assert write(wh, ds, rows) == FIRMS
    before = snapshot(wh, ds)
    assert len(before) == FIRMS
    assert write(wh, ds, batch(firms(), "b1")) == 0  # same batch, loaded again (new _loaded_at)
    assert snapshot(wh, ds) == before


def test_append_keeps_every_batch_keyed_by_batch_id(database_url: str) -> None:
    wh, ds = open_firm_warehouse(database_url, "append")
    assert [c.name for c in wh.dataset_table(ds).primary_key] == ["code", "_batch_id"]
    write(wh, ds, batch(firms(), "b1"))
    assert write(wh, ds, batch(firms(), "b2")) == FIRMS
    assert wh.count("core_firm") == 2 * FIRMS


def test_merge_updates_only_changed_rows(database_url: str) -> None:
    wh, ds = open_firm_warehouse(database_url, "merge")
    write(wh, ds, batch(firms(), "b1"))
    changed = firms(50, status="suspended", at=T0 + timedelta(days=1))
    assert write(wh, ds, batch(changed + firms(100, start=50), "b2")) == 50
    statuses = [r[1] for r in snapshot(wh, ds)]
    assert (statuses.count("suspended"), len(statuses)) == (50, FIRMS)



def test_a_full_refresh_replaces_an_earlier_runs_rows_and_keeps_its_own_newest(database_url: str) -> None:
    """A full refresh of a partitioned run: two slice batches sharing the run's id (`runner.slice_batch_id`).

    An earlier run stored every firm a day late (a zone read wrong): the refresh puts the source's times back,
    though they are older. A record read by both slices (it moved between them mid-run) keeps the run's newer
    version. The earlier run's id differs from the refresh's only where the refresh's has `_`, which LIKE
    would take for any character: its rows are still another run's. Rows another source system wrote
    later are that system's truth, not the refresh's: they stay.
    """
    wh, ds = open_firm_warehouse(database_url, "merge")
    run = "firm_sync-20251201T000000000000-abcd1234"
    write(wh, ds, batch(firms(status="wrong", at=T0 + timedelta(days=1)), run.replace("_", "Z") + ".0a0a0a0a"))
    other = firms(20, status="registry", at=T0 + timedelta(days=2), start=280)  # F280-F299, later, elsewhere
    write(wh, ds, batch(other, "registry-20251130T000000000000-0b0b0b0b", system="registry"))

    def load_slice(records: list[dict[str, Any]], batch_id: str, refresh: str | None = run) -> int:
        with wh.transaction() as conn:
            return wh.write_chunks(conn, ds, [batch(records, batch_id)], refresh=refresh)[1]

    first = firms(200)  # 200 rows: PostgreSQL's COPY path
    assert load_slice(first, f"{run}.00000001", refresh=None) == 0  # an ordinary merge: older, so kept out
    assert load_slice(first, f"{run}.00000001") == 200
    moved = firms(100, status="stale", at=T0 - timedelta(days=1))  # F0-F99 again, older: read before they moved
    assert load_slice(firms(100, start=200) + moved, f"{run}.00000002") == 80
    rows = snapshot(wh, ds)
    assert len(rows) == FIRMS and {(r[1], utc(r[3])) for r in rows[280:]} == {("registry", T0 + timedelta(days=2))}
    assert {(r[1], utc(r[3])) for r in rows[:280]} == {("active", T0)}
    assert {r[4].rsplit(".", 1)[0] for r in rows[:280]} == {run}  # written by the refresh's slices
    assert load_slice(first, f"{run}.00000001") == 0  # a slice loaded again changes nothing

def test_history_keeps_every_version(database_url: str) -> None:
    wh, ds = open_firm_warehouse(database_url, "history")
    assert [c.name for c in wh.dataset_table(ds).primary_key] == ["code", "valid_from"]
    write(wh, ds, batch(firms(), "v1"))
    later = T0 + timedelta(days=3)
    second = firms(40, status="dissolved", at=later) + firms(FIRMS - 40, start=40)  # 40 changed, rest unchanged
    assert write(wh, ds, batch(second, "v2")) == 40
    assert write(wh, ds, batch(second, "v2")) == 0
    history = versions(wh, ds)
    assert len(history) == FIRMS and sum(len(v) for v in history.values()) == FIRMS + 40
    for code, kept in history.items():
        assert [v.is_current for v in kept].count(True) == 1, code
        assert kept[-1].is_current and kept[-1].valid_to is None
        if int(code[1:]) < 40:
            old, new = kept
            assert (old.status, new.status) == ("active", "dissolved")
            assert utc(old.valid_to) == utc(new.valid_from) == later and not old.is_current
        else:
            assert len(kept) == 1 and utc(kept[0].valid_from) == T0


def test_history_ignores_a_version_older_than_the_current_one(database_url: str) -> None:
    wh, ds = open_firm_warehouse(database_url, "history")
    write(wh, ds, batch(firms(status="suspended", at=T0 + timedelta(days=1)), "v2"))
    assert write(wh, ds, batch(firms(), "v1")) == 0  # a late re-read of the older batch
    assert len(snapshot(wh, ds)) == FIRMS



def test_a_full_refresh_moves_a_history_back_to_the_sources_start(database_url: str) -> None:
    """Two versions of every firm stored 7 hours late (a zone read wrong), a third firm's versions 3 hours apart
    (closer than the shift), and 20 firms of another system: the refresh moves each current version back to
    the source's start and closes the one before there. The close firms' history would run backwards: left.
    """
    wh, ds = open_firm_warehouse(database_url, "history")
    late, apart = timedelta(hours=7), timedelta(days=30)
    write(wh, ds, batch(firms(270, status="founded", at=T0 + late), "firm_sync-20251101T000000000000-0a0a0a0a"))
    write(wh, ds, batch(firms(260, status="active", at=T0 + apart + late)
                        + firms(10, status="active", at=T0 + timedelta(hours=3) + late, start=260),
                        "firm_sync-20251102T000000000000-0b0b0b0b"))
    write(wh, ds, batch(firms(30, status="registry", at=T0 + apart * 2, start=270),
                        "registry-20251103T000000000000-0c0c0c0c", system="registry"))
    before = versions(wh, ds)
    source = (firms(260, status="active", at=T0 + apart) + firms(10, status="active", at=T0 + timedelta(hours=3),
                                                                 start=260)
              + firms(30, status="active", at=T0 + apart, start=270))  # older than the registry's
    run = "firm_sync-20251201T000000000000-abcd1234"
    with wh.transaction() as conn:
        assert wh.write_chunks(conn, ds, [batch(source, run)])[1] == 0  # an ordinary load: older, so stale
    with wh.transaction() as conn:
        assert wh.write_chunks(conn, ds, [batch(source, run)], refresh=run)[1] == 260
    after = versions(wh, ds)
    for code in (f"F{i:05d}" for i in range(260)):
        founded, active = after[code]
        assert (utc(founded.valid_from), utc(founded.valid_to), founded.is_current) == (T0 + late, T0 + apart, False)
        assert (active.status, utc(active.valid_from), active.valid_to, active.is_current) == (
            "active", T0 + apart, None, True)
        assert active._batch_id == run and len(after[code]) == 2
    assert {code: after[code] for code in after if code >= "F00260"} == \
        {code: before[code] for code in before if code >= "F00260"}  # too close to move; another system's
    with wh.transaction() as conn:  # the refresh loaded again changes nothing
        assert wh.write_chunks(conn, ds, [batch(source, run)], refresh=run)[1] == 0

@pytest.mark.parametrize("mode", MODES)
def test_a_deletion_marker_deletes_closes_or_is_kept_as_data(database_url: str, mode: str) -> None:
    wh, ds = open_firm_warehouse(database_url, mode)
    write(wh, ds, batch(firms(), "b1"))
    gone_at = T0 + timedelta(days=2)
    marked = firms(10, at=gone_at, deleted=True) + firms(FIRMS - 10, start=10)
    written = write(wh, ds, batch(marked, "b2"))
    assert write(wh, ds, batch(marked, "b2")) == 0, "a rerun of the deletions changes nothing"
    rows = snapshot(wh, ds)
    codes = [r[0] for r in rows]
    if mode == "merge":
        assert written == 10 and len(rows) == FIRMS - 10 and "F00000" not in codes
    elif mode == "history":
        assert written == 10 and len(rows) == FIRMS
        history = versions(wh, ds)
        closed = [history[f"F{i:05d}"][0] for i in range(10)]
        assert all(not v.is_current and utc(v.valid_to) == gone_at and not v.deleted for v in closed)
        assert all(history[f"F{i:05d}"][0].is_current for i in range(10, FIRMS))
    elif mode == "append":
        assert written == FIRMS and len(rows) == 2 * FIRMS
    else:  # replace: the marker is data
        assert written == 10 and len(rows) == FIRMS and sum(1 for r in rows if r[2]) == 10


def _read_in_thread(wh: Warehouse, ds: DatasetSpec, engine: sa.Engine) -> tuple[threading.Thread, list[Any]]:
    seen: list[Any] = []

    def read() -> None:
        try:
            seen.append(snapshot(wh, ds, engine))
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            seen.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, seen


def test_replace_is_swapped_in_atomically(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wh, ds = open_firm_warehouse(database_url, "replace")
    write(wh, ds, batch(firms(), "old"))
    old = snapshot(wh, ds)
    new_rows = batch(firms(200, status="suspended", at=T0 + timedelta(days=1), start=100), "new")
    reader = sa.create_engine(wh.engine.url)  # another connection pool: another session
    while_loading: list[Any] = []
    real_diff = Warehouse._rows_differing

    def diff_then_peek(conn: sa.Connection, *args: Any) -> int:  # the new table is loaded, not yet swapped
        while_loading.append(snapshot(wh, ds, reader))
        return real_diff(conn, *args)

    monkeypatch.setattr(Warehouse, "_rows_differing", staticmethod(diff_then_peek))
    with wh.engine.connect() as conn:
        transaction = conn.begin()
        assert wh.write_batch(conn, ds, new_rows) == 200 + 100  # 200 new or changed rows, 100 old ones gone
        thread, seen = _read_in_thread(wh, ds, reader)  # the swap is done but not committed
        thread.join(1.0)
        if wh.dialect == "sqlite":  # WAL: the reader does not wait and sees the committed (old) table
            assert not thread.is_alive() and seen == [old]
        else:  # PostgreSQL: the reader waits for the swap's lock, then reads the new table
            assert thread.is_alive()
        transaction.commit()
    thread.join(10)
    after = snapshot(wh, ds)
    assert while_loading == [old]
    assert len(after) == 200 and {r[1] for r in after} == {"suspended"}
    assert seen in ([old], [after]), f"a reader saw a partial table: {seen!r:.300}"
    assert snapshot(wh, ds, reader) == after
    assert write(wh, ds, new_rows) == 0 and not sa.inspect(wh.engine).has_table("core_firm__new")
    reader.dispose()


def test_a_failed_replace_leaves_the_old_table(database_url: str) -> None:
    wh, ds = open_firm_warehouse(database_url, "replace")
    write(wh, ds, batch(firms(), "old"))
    old = snapshot(wh, ds)
    with pytest.raises(RuntimeError), wh.transaction() as conn:
        wh.write_batch(conn, ds, batch(firms(5, status="x"), "new"))
        raise RuntimeError("the step after the swap failed")
    assert snapshot(wh, ds) == old
    assert not sa.inspect(wh.engine).has_table("core_firm__new"), "the new table's DDL was not in the transaction"
    assert write(wh, ds, batch(firms(5, status="x"), "new")) == 5 + (FIRMS - 5)


@pytest.mark.parametrize("pipeline", ["business_enterprises", "population_citizens"])
def test_cursor_and_data_commit_together(lgsp_env: Any, monkeypatch: pytest.MonkeyPatch, pipeline: str) -> None:
    from lgsp import runner

    ctx = runner.context(pipeline, settings=lgsp_env)
    batch_id = runner.extract(ctx)["batch_id"]
    valid = runner.validate(ctx, batch_id)["rows_valid"]
    table = ctx.dataset.table_name

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("cursor store failed")

    with monkeypatch.context() as patch:
        patch.setattr(Warehouse, "set_cursor", fail)
        with pytest.raises(RuntimeError, match="cursor store failed"):
            runner.load(ctx, batch_id)
    wh = ctx.warehouse
    assert (wh.count(table), wh.get_cursor(pipeline)) == (0, None), "rows written without their cursor"
    assert runner.load(ctx, batch_id)["rows_changed"] == valid > 0
    assert runner.load(ctx, batch_id)["rows_changed"] == 0
    assert runner.run_pipeline(pipeline, settings=lgsp_env)["rows_changed"] == 0
    assert wh.count(table) == valid and wh.get_cursor(pipeline) is not None


def test_write_mode_declarations_are_validated() -> None:
    assert firm_spec("history").write_mode == "history"
    with pytest.raises(ValidationError, match="boolean"):
        DatasetSpec(
            name="firm", title="Firm", key=["code"], delete_field="status",
            columns={"code": {"type": "string"}, "status": {"type": "string"}})
    with pytest.raises(ValidationError, match="timestamp"):
        DatasetSpec(name="firm", title="Firm", key=["code"], cursor_field="day", write_mode="history",
                    columns={"code": {"type": "string"}, "day": {"type": "date"}})
    with pytest.raises(ValidationError, match="write_mode"):
        DatasetSpec(name="firm", title="Firm", key=["code"], write_mode="bogus", columns={"code": {"type": "string"}})
    no_cursor = DatasetSpec(name="firm", title="Firm", key=["code"], write_mode="history",
                            columns={"code": {"type": "string"}})
    assert no_cursor.cursor_field is None  # versions then start at the load time
    assert load_catalog().datasets["enterprise"].write_mode == "history"


def test_a_table_of_another_write_mode_is_refused_with_a_clear_message(database_url: str) -> None:
    wh, ds = open_firm_warehouse(database_url, "merge")
    wh.engine.dispose()
    with pytest.raises(SchemaMigrationNeeded, match=r"core_firm \(firm\): write mode merge -> history: .*"
                                                   r"`lgsp warehouse migrate` makes it"):
        open_firm_warehouse(database_url, "history")


def test_an_unchanged_schema_costs_one_query_and_a_changed_one_is_brought_up_to_date(database_url: str) -> None:
    """`create_all` on every run: one query when nothing changed; a table dropped behind lgsp's back is
    made again, and a column a newer dataset definition declares is added."""
    wh, ds = open_firm_warehouse(database_url, "merge")
    statements: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    wh.create_all()
    assert len(statements) == 1 and "lgsp_schema_state" in statements[0], statements

    with wh.transaction() as conn:
        conn.execute(sa.text("DROP TABLE lgsp_cursor"))
    wh.create_all()
    assert "lgsp_cursor" in sa.inspect(wh.engine).get_table_names()
    wh.engine.dispose()

    wider = ds.model_copy(update={"columns": {**ds.columns, "city": ds.columns["status"]}})
    catalog = load_catalog()
    newer = Warehouse(database_url, catalog.model_copy(update={"datasets": {"firm": wider}}))
    newer.create_all()
    assert "city" in {c["name"] for c in sa.inspect(newer.engine).get_columns("core_firm")}
    newer.engine.dispose()


def _fillfactor(engine: sa.Engine, table: str) -> str | None:
    with engine.connect() as conn:
        options = conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE relname = :t"), {"t": table}).scalar()
    return next((o.split("=")[1] for o in options or [] if o.startswith("fillfactor=")), None)


@pytest.mark.postgres
def test_tables_whose_rows_are_updated_leave_room_on_each_page(pg_url: str) -> None:
    """Merge and history tables are made with fillfactor 90, append and replace with PostgreSQL's 100, a declared
    one as declared (kept by a replace's swap); an existing table is brought to its definition by `create_all`."""
    for mode, expected in (("merge", "90"), ("history", "90"), ("append", "100"), ("replace", "100")):
        wh, ds = open_firm_warehouse(pg_url, mode)
        assert ds.table_fillfactor == int(expected)
        assert _fillfactor(wh.engine, "core_firm") == expected, mode
        with wh.transaction() as conn:
            conn.exec_driver_sql("DROP TABLE core_firm")
        wh.engine.dispose()

    ds = firm_spec("replace", fillfactor=70)
    wh = Warehouse(pg_url, load_catalog().model_copy(update={"datasets": {"firm": ds}}))
    wh.create_all()
    write(wh, ds, batch(firms(), "b1"))
    write(wh, ds, batch(firms(status="closed", at=T0 + timedelta(days=1)), "b2"))  # swapped in: a new table
    assert _fillfactor(wh.engine, "core_firm") == "70" and len(snapshot(wh, ds)) == FIRMS

    with wh.transaction() as conn:  # as an older lgsp left it: no fillfactor, another fingerprint
        conn.exec_driver_sql("ALTER TABLE core_firm RESET (fillfactor)")
        conn.exec_driver_sql("DELETE FROM lgsp_schema_state")
    wh.create_all()
    assert _fillfactor(wh.engine, "core_firm") == "70"
    wh.engine.dispose()
    with pytest.raises(ValidationError, match="fillfactor"):
        firm_spec("merge", fillfactor=5)


@pytest.mark.postgres
def test_a_merge_updates_its_rows_on_their_own_pages(pg_url: str) -> None:
    """With the room a merge table leaves, every updated row is a HOT update: its new version stays on its page
    and the key's index gets no new entry (PostgreSQL's own counters, flushed when the connections close)."""
    wh, ds = open_firm_warehouse(pg_url, "merge")
    write(wh, ds, batch(firms(), "b1"))
    changed = [r for i, r in enumerate(firms(status="closed", at=T0 + timedelta(days=1))) if i % 15 == 0]
    write(wh, ds, batch(changed, "b2"))
    wh.engine.dispose()  # each backend reports its counters as it exits
    deadline, counts = time.monotonic() + 20, (0, 0)
    while time.monotonic() < deadline:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            counts = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                  "WHERE relname = 'core_firm'").fetchone()
        if counts[0] >= len(changed):
            break
        time.sleep(0.2)
    assert counts == (len(changed), len(changed)), counts


@pytest.mark.postgres
def test_merge_chunks_share_one_staging_table_per_load(pg_url: str) -> None:
    """A merge load's staging table is made before its first chunk and serves chunk after chunk, whatever
    path each chunk takes (COPY or, for a small one, a plain upsert); the next load makes its own."""
    wh, ds = open_firm_warehouse(pg_url, "merge")
    write(wh, ds, batch(firms(), "b1"))  # into the empty table: the first-load path
    later = T0 + timedelta(days=1)
    chunks = [batch(firms(status="closed", at=later), "b2"),  # every firm updated, through the stage
              batch(firms(start=FIRMS), "b2"),  # new firms, through the stage again
              batch(firms(50, status="merged", at=later + timedelta(days=1)), "b2")]  # small: a plain upsert
    with wh.transaction() as conn:
        assert wh.write_chunks(conn, ds, iter(chunks)) == (2 * FIRMS + 50, 2 * FIRMS + 50)
    with wh.transaction() as conn:  # the next load, in a new transaction, gets a new stage
        assert wh.write_chunks(conn, ds, iter([batch(firms(start=FIRMS, status="closed", at=later), "b3")])) \
            == (FIRMS, FIRMS)
    statuses = [r[1] for r in snapshot(wh, ds)]
    assert (statuses.count("merged"), statuses.count("closed"), len(statuses)) == (50, 2 * FIRMS - 50, 2 * FIRMS)


@pytest.mark.postgres
def test_a_large_merge_reads_ahead_and_never_waits_on_its_own_lock(pg_url: str) -> None:
    """An upsert of READ_AHEAD_MIN_ROWS rows or more reads its target rows on other connections first.
    Those readers give up rather than wait for a lock the load itself holds: without that, this load
    would wait for its own readers forever."""
    from warehouse.store import READ_AHEAD_MIN_ROWS, READ_AHEAD_READERS

    count = 2 * READ_AHEAD_MIN_ROWS
    wh, ds = open_firm_warehouse(pg_url, "merge")
    write(wh, ds, batch(firms(count), "b1"))
    readers = wh._read_ahead(wh.dataset_table(ds), ["code"], batch(firms(count), "b2"))
    for reader in readers:
        reader.join(timeout=60)
    assert len(readers) == READ_AHEAD_READERS and not any(r.is_alive() for r in readers)

    later = T0 + timedelta(days=1)
    with wh.transaction() as conn:
        conn.exec_driver_sql("LOCK TABLE core_firm IN ACCESS EXCLUSIVE MODE")  # as an earlier step of a load might
        assert wh.write_chunks(conn, ds, iter([batch(firms(count, status="closed", at=later), "b2")])) == (count, count)
    statuses = [r[1] for r in snapshot(wh, ds)]
    assert (statuses.count("closed"), len(statuses)) == (count, count)


@pytest.mark.postgres
def test_the_read_ahead_reads_heap_pages_in_block_order_many_at_a_time(pg_url: str) -> None:
    """A reader's query is a bitmap heap scan (pages in block order, READ_AHEAD_IO asked of the disk at
    once), where PostgreSQL would pick an index scan for a few keys (pages one at a time, in key order)."""
    from warehouse.store import READ_AHEAD_IO

    wh, ds = open_firm_warehouse(pg_url, "merge")
    write(wh, ds, batch(firms(2000), "b1"))
    table = wh.dataset_table(ds)
    settings, query = wh._read_ahead_sql(table, "code")
    keys = {"keys": [f"F{i:05d}" for i in (3, 500, 1700)]}
    with wh.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE core_firm")
        plain = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + query, keys))
        conn.exec_driver_sql(settings)
        ahead = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + query, keys))
        io = conn.exec_driver_sql("SHOW effective_io_concurrency").scalar_one()
        conn.rollback()
        assert conn.exec_driver_sql("SHOW enable_indexscan").scalar_one() == "on"  # the settings were the reader's only
    assert "Index" in plain and "Bitmap" not in plain, plain
    assert "Bitmap Heap Scan" in ahead, ahead
    assert io == str(READ_AHEAD_IO)


def test_the_rows_a_refresh_misses_leave_out_its_keys_and_its_quarantined_records(database_url: str) -> None:
    """`Warehouse.missing` with a two-column key: a record is missing unless the refresh's keys hold it, or the
    quarantine holds its key as `lgsp_quarantine` writes it (`a|n`); only the given system's rows count."""
    ds = DatasetSpec(name="pair", title="Pair", key=["a", "n"], columns={
        "a": {"type": "string", "required": True}, "n": {"type": "integer", "required": True}, "v": {"type": "string"}})
    wh = Warehouse(database_url, load_catalog().model_copy(update={"datasets": {"pair": ds}}))
    wh.create_all()
    pairs = [{"a": f"x{i % 3}", "n": i, "v": "kept"} for i in range(300)]
    write(wh, ds, batch(pairs, "b1"))
    write(wh, ds, batch([{"a": "other", "n": 1, "v": "elsewhere"}], "b2", system="registry"))
    seen = pa.Table.from_pylist([{"a": p["a"], "n": p["n"]} for p in pairs if p["n"] not in (5, 6, 7)])
    with wh.transaction() as conn:
        query, total = wh.missing(conn, ds, seen, ["x1|7"], "business", datetime.now(timezone.utc))
        assert total == 300
        assert sorted((r.a, r.n) for r in conn.execute(query)) == [("x0", 6), ("x2", 5)]
