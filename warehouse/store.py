"""The relational store: SQLite by default, PostgreSQL when LGSP_DATABASE_URL says so.

Same code for both through SQLAlchemy Core. A batch is written by its
dataset's write mode (`Warehouse.write_chunks`): merge (upsert on the key, only
rows whose content hash changed), append, replace (swapped in atomically) or
history (SCD type 2). Every mode is idempotent: a rerun of the same batch
changes nothing. On PostgreSQL, large upserts are COPYed into a temporary
staging table and merged with one INSERT ... SELECT ... ON CONFLICT.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import psycopg  # imported with the store, not on the first connection (a load's fixed cost)
import sqlalchemy as sa
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401 - the dialect the engine loads on first use
from sqlalchemy.dialects import postgresql, sqlite

from catalog.models import Catalog, DatasetSpec, PipelineSpec, WriteMode
from schemas.sql import core_table
from warehouse.tables import system_tables

log = logging.getLogger("lgsp.warehouse")
CHUNK_ROWS = 5000
READ_AHEAD_MIN_ROWS = 1000  # an upsert of this many rows reads its target rows' pages ahead (PostgreSQL)
READ_AHEAD_READERS = 2  # as fast as 4 with bitmap heap scans (`Warehouse._read_ahead_sql`)
READ_AHEAD_IO = 64  # heap pages each reader asks the disk for at once (effective_io_concurrency)
COPY_MIN_ROWS = 200  # on PostgreSQL, from this many rows an upsert goes through COPY and a staging table
# `conn.info` key: a callable (no arguments) the bulk upsert calls once its rows are staged, as the server
# starts merging them; from there to the end of the statement the loading thread holds no GIL
ON_MERGING = "lgsp_on_merging"
CHANGE_SEQ_LOCK = 0x6C677370_63686E67 & (2**63 - 1)  # the advisory lock `Warehouse.stamp_change` holds ("lgspchng")


class SchemaMigrationNeeded(RuntimeError):
    """A core table's shape (write mode, key, column types) is not its dataset's definition."""


def rebuild_lock(dataset: str) -> int:
    """The advisory lock a load holds shared, and a migration of `dataset`'s table exclusively (PostgreSQL).

    A load takes it before it touches the table, so it never holds a lock the migration's swap
    waits for while waiting for the migration itself (which would be a deadlock).
    """
    return int.from_bytes(hashlib.sha256(f"lgsp rebuild {dataset}".encode()).digest()[:8], "big") & (2**63 - 1)


def tombstone_key(key: Sequence[str], values: Sequence[Any]) -> str:
    """A deleted record's key as `lgsp_tombstone.record_key` holds it: a JSON object, in the key's order."""
    keyed = {str(name): value for name, value in zip(key, values)}  # str: SQLAlchemy's column names subclass it
    return orjson.dumps(keyed, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode()


ARROW_TYPES: dict[type[sa.types.TypeEngine], pa.DataType] = {
    sa.Text: pa.string(), sa.BigInteger: pa.int64(), sa.Integer: pa.int64(), sa.Float: pa.float64(),
    sa.Boolean: pa.bool_(), sa.Date: pa.date32(), sa.DateTime: pa.timestamp("us", tz="UTC"),
}


def _arrow_type(column: sa.Column[Any]) -> pa.DataType:
    for kind, arrow in ARROW_TYPES.items():
        if isinstance(column.type, kind):
            if kind is sa.Integer and not isinstance(column.type, sa.BigInteger):
                return pa.int32()
            if kind is sa.DateTime and not column.type.timezone:  # type: ignore[attr-defined]
                return pa.timestamp("us")
            return arrow
    raise TypeError(f"no Arrow type for column {column.name} ({column.type})")


def arrow_binary(rows: pa.Table, table: sa.Table) -> Iterator[bytes]:
    """`rows` in PostgreSQL's binary COPY format, in `table`'s column order and types (pgpq), in pieces.

    Absent columns are NULL. Binary COPY skips PostgreSQL's text parsing of every value
    (dates, timestamps, integers): about half the server's time for a wide batch.
    """
    import pgpq

    columns, fields = [], []
    for column in table.columns:
        kind = _arrow_type(column)
        values = rows.column(column.name) if column.name in rows.column_names else pa.nulls(rows.num_rows, kind)
        columns.append(values if values.type == kind else values.cast(kind))
        fields.append(pa.field(column.name, kind))
    typed = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    encoder = pgpq.ArrowToPostgresBinaryEncoder(typed.schema)
    yield encoder.write_header()
    for batch in typed.to_batches(max_chunksize=10_000):  # a piece at a time: memory
        yield encoder.write_batch(batch)
    yield encoder.finish()


def utc(value: datetime | None) -> datetime | None:
    """A stored time in UTC: SQLite hands back naive datetimes (the warehouse stores UTC, so say so),
    PostgreSQL aware ones in the session's time zone (the same instant, said in UTC)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def aggregate_time(value: datetime | str | None) -> datetime | None:
    """A time an aggregate (`min`, `max`) handed back, in UTC: SQLite may give it as text."""
    return utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def make_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout for concurrent readers."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return sa.create_engine(url, pool_pre_ping=True)


def rows_of(catalog: Catalog, pipeline: PipelineSpec) -> tuple[str | None, str | None]:
    """Which rows of its dataset a pipeline answers for, as `Warehouse.written_by`'s (system, pipeline): every row
    when it alone loads the dataset, (None, None); its system's when other pipelines load it too; only those its
    own batches wrote last when one of those others is of its system (two endpoints of one system)."""
    others = [p for p in catalog.pipelines.values() if p.dataset == pipeline.dataset and p.name != pipeline.name]
    return (pipeline.source.system if others else None,
            pipeline.name if any(p.source.system == pipeline.source.system for p in others) else None)


class Warehouse:
    """The store's tables (core, bookkeeping, mart) and the operations on them."""

    def __init__(self, url: str, catalog: Catalog) -> None:
        self.url = url
        self.catalog = catalog
        self.engine = make_engine(url)
        self.metadata = sa.MetaData()
        self.core: dict[str, sa.Table] = {
            name: core_table(ds, self.metadata) for name, ds in catalog.datasets.items() if ds.layer == "core"}
        self.system = system_tables(self.metadata)
        self.system.update({ds.table_name: core_table(ds, self.metadata)
                            for ds in catalog.datasets.values() if ds.layer == "mart"})
        self._read_early: dict[str, bool] = {}  # tables `read_ahead` was asked to read for the next upsert

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def reconnected(self) -> Warehouse:
        """This warehouse (its tables as defined and checked here) on new connections: for a forked process."""
        clone = copy.copy(self)
        clone.engine = make_engine(self.url)
        return clone

    def _fingerprint(self) -> str:
        """A digest of every table this warehouse defines: names, columns, types, nullability, keys."""
        digest = hashlib.sha256()
        for table in sorted(self.metadata.tables.values(), key=lambda t: t.name):
            digest.update(repr((table.name, [(c.name, repr(c.type), c.nullable, c.primary_key)
                                             for c in table.columns], self._storage(table))).encode())
        return digest.hexdigest()

    def _schema_unchanged(self, fingerprint: str) -> bool:
        """True if the last `create_all` recorded `fingerprint` and every table is still there (one query)."""
        names = list(self.metadata.tables)
        if self.dialect == "postgresql":
            present = ("SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
                       "c.relnamespace WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
                       "AND c.relname IN :names")
        else:
            present = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN :names"
        query = sa.text(f"SELECT (SELECT fingerprint FROM lgsp_schema_state WHERE name = 'tables'), ({present})"
                        ).bindparams(sa.bindparam("names", expanding=True))
        try:
            with self.engine.connect() as conn:
                recorded, count = conn.execute(query, {"names": names}).one()
        except sa.exc.DBAPIError:  # no lgsp_schema_state yet: a new or older warehouse
            return False
        return bool(recorded == fingerprint and count == len(names))

    @staticmethod
    def _storage(table: sa.Table) -> dict[str, Any]:
        """The table's PostgreSQL storage parameters as defined (`WITH (...)`: the fillfactor)."""
        return dict(table.dialect_options["postgresql"]["with"] or {})

    def _apply_storage(self, conn: sa.Connection) -> None:
        """Bring existing tables' storage parameters to their definitions (PostgreSQL).

        `ALTER TABLE ... SET (fillfactor = N)` rewrites nothing: pages written from then on
        follow it (a replace, the first load of an emptied table, `VACUUM FULL` rewrites all).
        """
        wanted = {name: self._storage(table) for name, table in self.metadata.tables.items() if self._storage(table)}
        if not wanted:
            return
        query = sa.text("SELECT c.relname, c.reloptions FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
                        "AND c.relname IN :names").bindparams(sa.bindparam("names", expanding=True))
        found = conn.execute(query, {"names": list(wanted)}).all()
        for name, options in found:
            present = dict(option.split("=", 1) for option in options or [])
            changed = {k: v for k, v in wanted[name].items() if present.get(k) != str(v)}
            if changed:
                settings = ", ".join(f"{k} = {int(v)}" for k, v in changed.items())
                conn.exec_driver_sql(f'ALTER TABLE "{name}" SET ({settings})')

    def create_all(self, check_shapes: bool = True) -> None:
        """Create missing tables, and add columns a newer lgsp or dataset definition declares.

        When nothing changed since the last check (same table definitions, every table
        there) this is one query: a pipeline run's fixed cost. A core table whose write
        mode, key or column types differ from its dataset's definition cannot be loaded:
        `SchemaMigrationNeeded` says so (`lgsp warehouse migrate` rebuilds it), unless
        `check_shapes` is false (the migration itself), which also leaves the check to be
        made again next time.
        """
        fingerprint = self._fingerprint()
        if self._schema_unchanged(fingerprint):
            return
        self._create_all(check_shapes)
        if not check_shapes:
            return
        try:
            with self.engine.begin() as conn:
                self.upsert(conn, self.system["lgsp_schema_state"], [
                    {"name": "tables", "fingerprint": fingerprint, "checked_at": datetime.now(timezone.utc)}], ["name"])
        except sa.exc.IntegrityError:  # another process checked the same tables at the same moment and said so
            pass

    def _create_all(self, check_shapes: bool) -> None:
        from warehouse.migrate import LiveTable, structural_steps

        self.metadata.create_all(self.engine)
        inspector = sa.inspect(self.engine)
        names = [t.name for t in self.metadata.sorted_tables]  # reflected in one query per kind, not per table
        keys = {name: pk for (_, name), pk in inspector.get_multi_pk_constraint(filter_names=names).items()}
        columns = {name: cols for (_, name), cols in inspector.get_multi_columns(filter_names=names).items()}
        blocking = [f"{table.name} ({name}): {step.text}" for name, table in self.core.items()
                    for step in structural_steps(LiveTable.reflect(table.name, columns[table.name],
                                                                   keys[table.name]["constrained_columns"]),
                                                 self.catalog.datasets[name]) if step.blocking]
        if blocking and check_shapes:
            raise SchemaMigrationNeeded(
                "the warehouse's tables do not match their datasets' definitions: " + "; ".join(blocking)
                + ". `lgsp warehouse plan` shows what changes and `lgsp warehouse migrate` makes it "
                "(the table as it was is kept)")
        indexes = {name: {i["name"] for i in found}
                   for (_, name), found in inspector.get_multi_indexes(filter_names=list(self.system)).items()}
        with self.engine.begin() as conn:
            for name, table in self.system.items():  # an index a newer lgsp declares on its own tables, made on a
                for index in table.indexes:           # store an older one made (mart and core tables: not here)
                    if index.name not in indexes.get(name, set()) and name.startswith("lgsp_"):
                        index.create(conn)
            for table in self.metadata.sorted_tables:
                present = {c["name"] for c in columns[table.name]}
                for column in table.columns:
                    if column.name not in present and not column.primary_key:
                        # a required column too: older rows have no value (`lgsp warehouse migrate` makes it NOT NULL)
                        kind = column.type.compile(dialect=self.engine.dialect)
                        conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            if self.dialect == "postgresql":
                self._apply_storage(conn)

    def table(self, name: str) -> sa.Table:
        """A table by its SQL name (e.g. `core_citizen`, `lgsp_batch`)."""
        return self.metadata.tables[name]

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table))

    @staticmethod
    def _update_when(table: sa.Table, excluded: Any, only_if_changed: str | None,
                     only_if_newer: str | None, refresh: str | None = None) -> sa.ColumnElement[bool] | None:
        """The ON CONFLICT ... WHERE: the content hash differs and the incoming row is not older.

        `refresh` (a full refresh: the source's whole truth now) is the refreshing run's id: its batch id, or
        the id all of a partitioned run's slice batches begin with (`runner.slice_batch_id`). Older only counts
        against a row the run itself wrote (a record paged twice, or read by two slices, keeps its newer
        version), or one another source system wrote (a dataset fed by two: the refresh is its own source's
        truth, not the other's); a row an earlier run from the same system wrote is replaced, even by an older
        time (one read in the wrong zone before its column said `timezone`, or the source's own correction).
        """
        conditions = []
        if only_if_changed:
            conditions.append(table.c[only_if_changed].is_distinct_from(excluded[only_if_changed]))
        if only_if_newer:
            newer = [table.c[only_if_newer].is_(None), excluded[only_if_newer].is_(None),
                     excluded[only_if_newer] >= table.c[only_if_newer]]
            if refresh:
                newer.append(sa.and_(sa.not_(table.c["_batch_id"].startswith(refresh, autoescape=True)),
                                     table.c["_source_system"] == excluded["_source_system"]))
            conditions.append(sa.or_(*newer))
        return sa.and_(*conditions) if conditions else None

    def upsert(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]],
               key: Sequence[str], only_if_changed: str | None = None, only_if_newer: str | None = None,
               refresh: str | None = None) -> int:
        """Insert or update `rows` on `key`; returns the number of rows written.

        With `only_if_changed` (a hash column), an existing row is updated only
        when its hash differs, so reruns of unchanged data write nothing; with
        `only_if_newer` (the cursor column), never by an older version. On
        PostgreSQL, `COPY_MIN_ROWS` or more rows take the COPY path. `refresh`: see `_update_when`.
        """
        if not rows:
            return 0
        if self.dialect == "postgresql" and len(rows) >= COPY_MIN_ROWS:
            return self._copy_upsert(conn, table, rows, key, only_if_changed, only_if_newer, refresh)
        stmt = self._insert(table)
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key}
        where = self._update_when(table, stmt.excluded, only_if_changed, only_if_newer, refresh)
        stmt = (stmt.on_conflict_do_update(index_elements=list(key), set_=updates, where=where)
                if updates else stmt.on_conflict_do_nothing(index_elements=list(key)))
        stmt = stmt.returning(table.c[key[0]])  # rows actually inserted or updated
        written = 0
        for start in range(0, len(rows), CHUNK_ROWS):
            written += len(conn.execute(stmt, list(rows[start:start + CHUNK_ROWS])).all())
        return written

    def _copy_to_stage(self, conn: sa.Connection, table: sa.Table,
                       rows: Sequence[dict[str, Any]] | pa.Table) -> sa.TableClause:
        """COPY `rows` into a temporary table shaped like `table`, dropped at commit (PostgreSQL only).

        The COPY runs on the driver connection under `conn`, so inside the caller's transaction.
        """
        stage, names = f"_stage_{table.name}", [c.name for c in table.columns]
        if conn.info.pop("lgsp_fresh_stage", None) != (id(conn.get_transaction()), stage):
            self._prepare_stage(conn, table)
        self._copy_into(conn, table, rows, into=stage)
        return sa.table(stage, *(sa.column(name) for name in names))

    @staticmethod
    def _prepare_stage(conn: sa.Connection, table: sa.Table) -> None:
        """An empty staging table for `table`, dropped at commit."""
        stage = f"_stage_{table.name}"
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS pg_temp."{stage}"')
        conn.exec_driver_sql(f'CREATE TEMP TABLE "{stage}" (LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DROP')

    @staticmethod
    def _copy_into(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]] | pa.Table,
                   into: str | None = None, freeze: bool = False) -> None:
        """COPY rows into `table` (or the table `into`, shaped like it): Arrow tables in binary, dicts as text.

        `freeze` (COPY FREEZE) writes the rows already frozen: allowed when the table was
        created or truncated in this transaction.
        """
        names = [c.name for c in table.columns]
        columns = ", ".join(f'"{name}"' for name in names)
        with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            if isinstance(rows, pa.Table):
                options = "FORMAT binary, FREEZE" if freeze else "FORMAT binary"
                with cur.copy(f'COPY "{into or table.name}" ({columns}) FROM STDIN ({options})') as copy:
                    for piece in arrow_binary(rows, table):
                        copy.write(piece)
                return
            with cur.copy(f'COPY "{into or table.name}" ({columns}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row([row.get(name) for name in names])

    def _copy_upsert(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]] | pa.Table,
                     key: Sequence[str], only_if_changed: str | None, only_if_newer: str | None = None,
                     refresh: str | None = None) -> int:
        """The PostgreSQL bulk path of `upsert`: COPY to a stage, then one INSERT ... ON CONFLICT."""
        readers = self._read_ahead(table, key, rows)
        stage = self._copy_to_stage(conn, table, rows)
        for reader in readers:
            reader.join()
        names = [c.name for c in table.columns]
        # in key order: the index is probed (and grown) page after page, not at random
        stmt = postgresql.insert(table).from_select(
            names, sa.select(*(stage.c[n] for n in names)).order_by(*(stage.c[k] for k in key)))
        updates = {n: stmt.excluded[n] for n in names if n not in key}
        where = self._update_when(table, stmt.excluded, only_if_changed, only_if_newer, refresh)
        stmt = (stmt.on_conflict_do_update(index_elements=list(key), set_=updates, where=where)
                if updates else stmt.on_conflict_do_nothing(index_elements=list(key)))
        written = stmt.returning(sa.literal(1)).cte("written")
        if (on_merging := conn.info.get(ON_MERGING)) is not None:
            on_merging()
        return int(conn.execute(sa.select(sa.func.count()).select_from(written)).scalar_one())

    def _read_ahead(self, table: sa.Table, key: Sequence[str],
                    rows: Sequence[dict[str, Any]] | pa.Table) -> list[threading.Thread]:
        """Read the pages of the rows an upsert will update, on several connections at once; the readers.

        `INSERT ... ON CONFLICT` finds each existing row through the key's index and reads
        its index and heap pages one at a time. After a while the pages of a large table
        are no longer in memory, and 10,000 changed rows scattered over a million touch
        ~9,000 of its ~23,000 heap pages. PostgreSQL then reads them from disk one by one:
        about 1 s. Read ahead (`_read_ahead_sql`: bitmap heap scans on `READ_AHEAD_READERS`
        connections, while the chunk is COPYed to the stage), they take about 0.2 s, and the
        upsert finds them in memory.
        It is only a warm-up: a reader that fails or would wait on a lock gives up.
        Nothing is read twice: rows `read_ahead` was already asked for (before the batch was
        validated) are not read again here.
        """
        early = self._read_early.pop(table.name, False)
        if early or len(key) != 1 or len(rows) < READ_AHEAD_MIN_ROWS:
            return []
        keys = rows.column(key[0]).to_pylist() if isinstance(rows, pa.Table) else [r.get(key[0]) for r in rows]
        return self._readers(table, key[0], keys)

    def read_ahead(self, dataset: DatasetSpec, keys: Sequence[Any]) -> list[threading.Thread]:
        """Start reading the stored rows of `keys` (a batch about to be merged) into memory; the readers.

        For a batch known before it is validated (a one-page incremental): the table's pages
        are read while the batch is checked, instead of while it is loaded. The next upsert
        into the table then reads nothing ahead itself. PostgreSQL, merged datasets with a
        one-column key and at least `READ_AHEAD_MIN_ROWS` rows only; anything else: nothing.
        """
        if (self.dialect != "postgresql" or dataset.write_mode != "merge" or len(dataset.key) != 1
                or len(keys) < READ_AHEAD_MIN_ROWS):
            return []
        table = self.dataset_table(dataset)
        self._read_early[table.name] = True
        return self._readers(table, dataset.key[0], list(keys))

    @staticmethod
    def _read_ahead_sql(table: sa.Table, key: str) -> tuple[str, str]:
        """(settings, query) of a read-ahead reader: the query takes the keys as `%(keys)s`.

        The settings (this transaction only) make it a bitmap heap scan, which reads the heap
        pages in block order and asks the disk for `READ_AHEAD_IO` of them at once
        (posix_fadvise); an index scan reads them one at a time, in key order. For 10,000
        rows of a cold 1M-row table: 0.22 s against 0.45 s on 4 connections. It never waits
        on a lock (the load's own, taken earlier in its transaction).
        """
        touch = next((c.name for c in table.columns if c.name != key), key)  # a heap column, not the index's
        settings = ("SELECT set_config('lock_timeout', '100ms', true), set_config('enable_indexscan', 'off', true), "
                    "set_config('enable_seqscan', 'off', true), "
                    f"set_config('effective_io_concurrency', '{READ_AHEAD_IO}', true)")
        return settings, f'SELECT count("{touch}") FROM "{table.name}" WHERE "{key}" = ANY(%(keys)s)'

    def _readers(self, table: sa.Table, key: str, keys: list[Any]) -> list[threading.Thread]:
        """Threads reading the rows of `keys`, one key range each on its own connection; started."""
        settings, query = self._read_ahead_sql(table, key)
        keys = sorted((k for k in keys if k is not None), key=str)

        def read(part: list[Any]) -> None:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql(settings)
                    conn.exec_driver_sql(query, {"keys": part})
            except Exception:  # noqa: BLE001 - a warm-up only; the upsert reads what it needs anyway
                log.debug("read-ahead of %s gave up", table.name, exc_info=True)

        size = -(-len(keys) // READ_AHEAD_READERS)
        readers = [threading.Thread(target=read, args=(keys[start:start + size],), daemon=True,
                                    name=f"lgsp-read-ahead-{table.name}") for start in range(0, len(keys), size)]
        for reader in readers:
            reader.start()
        return readers

    # --- write modes -----------------------------------------------------------------------

    def write_batch(self, conn: sa.Connection, dataset: DatasetSpec, rows: pa.Table | Sequence[dict[str, Any]],
                    mode: WriteMode | None = None) -> int:
        """Write one batch (rows with lineage) by the dataset's write mode; returns the rows changed."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        return self.write_chunks(conn, dataset, [table], mode)[1]

    def write_chunks(self, conn: sa.Connection, dataset: DatasetSpec, chunks: Iterable[pa.Table],
                     mode: WriteMode | None = None, refresh: str | None = None) -> tuple[int, int]:
        """Write a batch, chunk by chunk, by the dataset's write mode; returns (rows written, rows changed).

        Runs inside the caller's transaction, so the data commits with the
        batch record and the cursor. A rerun of the same batch changes nothing.
        Memory holds one chunk at a time. `refresh` (merge), the id of a full refresh's run: the batch is
        the source's whole truth, so it replaces an earlier run's row even with an older cursor value
        (`_update_when`).
        """
        table = self.dataset_table(dataset)
        mode = mode or dataset.write_mode
        if self.dialect == "postgresql":  # waits while `lgsp warehouse migrate` rebuilds the table (before touching it)
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock_shared(%(lock)s)", {"lock": rebuild_lock(dataset.name)})
        if mode == "replace":
            return self._replace(conn, dataset, table, chunks)
        into_empty = mode == "merge" and self.dialect == "postgresql" and self._is_empty(conn, table)
        if into_empty and not dataset.delete_field and self._lock_now(conn, table) and self._is_empty(conn, table):
            return self._first_load(conn, dataset, table, chunks)
        if mode == "merge" and self.dialect == "postgresql" and not into_empty:
            # made before the first chunk is there; the first `_copy_to_stage` of this transaction uses it
            self._prepare_stage(conn, table)
            conn.info["lgsp_fresh_stage"] = (id(conn.get_transaction()), f"_stage_{table.name}")
        landed = changed = 0
        try:
            for chunk in chunks:
                landed += chunk.num_rows
                if mode == "append":  # primary key = key + _batch_id: a rerun of the batch hits its own rows
                    changed += self.upsert(conn, table, chunk.to_pylist(), [*dataset.key, "_batch_id"],
                                           only_if_changed="_row_hash")
                elif mode == "history":
                    changed += self._write_history(conn, dataset, table, chunk.to_pylist(), refresh)
                else:
                    changed += self._merge(conn, dataset, table, chunk, into_empty, refresh)
        finally:
            conn.info.pop("lgsp_fresh_stage", None)  # a stage made ahead lives no longer than this load
        return landed, changed

    @staticmethod
    def _deleted(dataset: DatasetSpec, row: dict[str, Any]) -> bool:
        return bool(dataset.delete_field and row.get(dataset.delete_field))

    @staticmethod
    def _is_empty(conn: sa.Connection, table: sa.Table) -> bool:
        return conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first() is None

    def _merge(self, conn: sa.Connection, dataset: DatasetSpec, table: sa.Table, chunk: pa.Table,
               into_empty: bool = False, refresh: str | None = None) -> int:
        """Upsert on the key (only changed rows, never by an older version); deletion markers delete.

        On PostgreSQL a table that was empty when the load began takes plain COPY (no
        conflict is possible unless a record repeats across chunks: then that chunk goes
        through the staging table instead); otherwise COPY to a stage and INSERT ... ON CONFLICT.
        """
        kept, gone = chunk, []
        if dataset.delete_field and dataset.delete_field in chunk.column_names:
            marked = pc.fill_null(chunk.column(dataset.delete_field), False)
            gone = chunk.filter(marked).select(dataset.key).to_pylist()
            kept = chunk.filter(pc.invert(marked))
            self.record_marked(conn, dataset, [tuple(r[k] for k in dataset.key) for r in gone],
                               chunk.column("_batch_id")[0].as_py() if gone else "")
        written = 0
        if self.dialect == "postgresql" and kept.num_rows >= COPY_MIN_ROWS:
            written = (self._copy_insert(conn, table, kept) if into_empty else None)
            if written is None:
                written = self._copy_upsert(conn, table, kept, dataset.key, "_row_hash", dataset.cursor_field,
                                            refresh)
        elif kept.num_rows:
            written = self.upsert(conn, table, kept.to_pylist(), dataset.key, only_if_changed="_row_hash",
                                  only_if_newer=dataset.cursor_field, refresh=refresh)
        key_columns = sa.tuple_(*(table.c[k] for k in dataset.key))
        gone_keys = [tuple(r[k] for k in dataset.key) for r in gone]
        for start in range(0, len(gone_keys), CHUNK_ROWS):
            deleted = conn.execute(table.delete().where(key_columns.in_(gone_keys[start:start + CHUNK_ROWS]))
                                   .returning(*(table.c[k] for k in dataset.key))).all()
            self.record_deletions(conn, dataset.name, dataset.key, deleted, chunk.column("_batch_id")[0].as_py())
            written += len(deleted)
        return written

    @staticmethod
    def _lock_now(conn: sa.Connection, table: sa.Table) -> bool:
        """Lock the table for this transaction if nobody else holds a lock on it (PostgreSQL); False if taken.

        Two loads of one empty table at once (partitioned slices) must not both take the
        first-load path: each would wait for the other's lock.
        """
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f'LOCK TABLE "{table.name}" IN ACCESS EXCLUSIVE MODE NOWAIT')
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                return False
            raise
        return True

    def _first_load(self, conn: sa.Connection, dataset: DatasetSpec, table: sa.Table,
                    chunks: Iterable[pa.Table]) -> tuple[int, int]:
        """Merge into a table that is empty (PostgreSQL): PostgreSQL's bulk-load recipe, in the caller's transaction.

        Truncate (it is empty: nothing is lost, and the heap starts afresh), drop the
        primary key, COPY every chunk (binary, frozen), then build the key once, sorted,
        instead of one index insert per row: the load takes about half the time. A record
        repeated across chunks keeps the version the merge would keep (the newest by the
        cursor field, the later one on a tie); only then is the key added. Readers of the
        table wait for the commit (the truncate locks it), then see the whole batch.
        """
        pkey = conn.exec_driver_sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = %(t)s::regclass AND contype = 'p'",
            {"t": table.name}).scalar_one()
        conn.exec_driver_sql(f'TRUNCATE "{table.name}"')
        conn.exec_driver_sql(f'ALTER TABLE "{table.name}" DROP CONSTRAINT "{pkey}"')
        landed = 0
        for chunk in chunks:
            if chunk.num_rows:
                self._copy_into(conn, table, chunk, freeze=True)
                landed += chunk.num_rows
        key = ", ".join(f'"{k}"' for k in dataset.key)
        add_key = f'ALTER TABLE "{table.name}" ADD CONSTRAINT "{pkey}" PRIMARY KEY ({key})'
        repeated = 0
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(add_key)
        except sa.exc.IntegrityError:  # a key repeated across chunks: keep its newest version, then add the key
            newest = f'"{dataset.cursor_field}" DESC NULLS LAST, ' if dataset.cursor_field else ""
            repeated = conn.exec_driver_sql(
                f'DELETE FROM "{table.name}" WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER '
                f'(PARTITION BY {key} ORDER BY {newest}ctid DESC) AS n FROM "{table.name}") v WHERE n > 1)').rowcount
            conn.exec_driver_sql(add_key)
        return landed, landed - repeated

    def _copy_insert(self, conn: sa.Connection, table: sa.Table, chunk: pa.Table) -> int | None:
        """COPY straight into the table, under a savepoint; None if a key was already there."""
        try:
            with conn.begin_nested():
                self._copy_into(conn, table, chunk)
        except psycopg.errors.UniqueViolation:
            return None
        return chunk.num_rows

    def _begin_ddl(self, conn: sa.Connection) -> None:
        """Make sure DDL joins the transaction: Python's sqlite3 opens one only before DML."""
        if self.dialect == "sqlite" and not conn.connection.driver_connection.in_transaction:  # type: ignore
            conn.exec_driver_sql("BEGIN")

    def _replace(self, conn: sa.Connection, dataset: DatasetSpec, table: sa.Table,
                 chunks: Iterable[pa.Table]) -> tuple[int, int]:
        """Full refresh: load `<table>__new`, then drop the old table and rename the new one.

        All in the caller's transaction, so another connection sees the old
        table until commit and the new one after, never a partial one (on
        PostgreSQL, a reader arriving during the swap waits for the commit).
        A batch identical to the table (or empty) leaves it untouched. The records the new
        table no longer has are recorded as deleted by the batch (`lgsp_tombstone`).
        """
        key = dataset.key
        new, landed, batch_id = None, 0, ""
        for chunk in chunks:
            if not chunk.num_rows:
                continue
            if new is None:
                self._begin_ddl(conn)
                new = table.to_metadata(sa.MetaData(), name=f"{table.name}__new")
                new.drop(conn, checkfirst=True)
                new.create(conn)
            self.upsert(conn, new, chunk.to_pylist(), key)
            landed += chunk.num_rows
            batch_id = chunk.column("_batch_id")[0].as_py()
        if new is None:
            return 0, 0
        changed = self._rows_differing(conn, table, new, key)
        if changed == 0:
            new.drop(conn)
            return landed, 0
        same_key = sa.and_(*(table.c[k] == new.c[k] for k in key))
        removed = conn.execute(sa.select(*(table.c[k] for k in key))
                               .select_from(table.outerjoin(new, same_key)).where(new.c[key[0]].is_(None))).all()
        self.record_deletions(conn, dataset.name, key, removed, batch_id)
        table.drop(conn)
        conn.exec_driver_sql(f'ALTER TABLE "{new.name}" RENAME TO "{table.name}"')
        if self.dialect == "postgresql":  # keep the primary key's name free for the next replace
            conn.exec_driver_sql(
                f'ALTER TABLE "{table.name}" RENAME CONSTRAINT "{new.name}_pkey" TO "{table.name}_pkey"')
        return landed, changed

    @staticmethod
    def _rows_differing(conn: sa.Connection, old: sa.Table, new: sa.Table, key: Sequence[str]) -> int:
        """Rows new or changed in `new`, plus rows of `old` that `new` no longer has."""
        same_key = sa.and_(*(old.c[k] == new.c[k] for k in key))
        same_row = sa.and_(same_key, old.c._row_hash == new.c._row_hash)
        added = sa.select(sa.func.count()).select_from(new.outerjoin(old, same_row)).where(old.c[key[0]].is_(None))
        removed = sa.select(sa.func.count()).select_from(old.outerjoin(new, same_key)).where(new.c[key[0]].is_(None))
        return int(conn.execute(added).scalar_one()) + int(conn.execute(removed).scalar_one())

    def _write_history(self, conn: sa.Connection, dataset: DatasetSpec, table: sa.Table,
                       rows: Sequence[dict[str, Any]], refresh: str | None = None) -> int:
        """SCD type 2: a changed row closes the current version and opens a new one.

        A version starts at the row's cursor value (or its load time). An
        unchanged row, or one older than the current version, writes nothing;
        a deletion marker closes the current version; a change with the same
        start as the current version corrects that version in place.

        A full refresh (`refresh`, the run's id: see `_update_when`) is the source's truth: a row older than
        the current version an earlier run from the same system wrote mends that version (`_mend_history`).
        """
        key = dataset.key
        current = {tuple(r[:-4]): (r[-4], utc(r[-3]), r[-2], r[-1]) for r in conn.execute(
            sa.select(*(table.c[k] for k in key), table.c._row_hash, table.c.valid_from, table.c._batch_id,
                      table.c._source_system).where(table.c.is_current))}
        closes: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        gone: list[tuple[Any, ...]] = []
        marked: list[tuple[Any, ...]] = []  # every marked record, held or not: the source still counts it
        mends: list[tuple[datetime, datetime, dict[str, Any]]] = []
        for row in rows:
            record = tuple(row[k] for k in key)
            starts = utc(row.get(dataset.cursor_field) if dataset.cursor_field else None) or row["_loaded_at"]
            version = current.get(record)
            if (refresh and version is not None and starts < version[1] and version[0] != row["_row_hash"]
                    and not self._deleted(dataset, row) and not str(version[2]).startswith(refresh)
                    and version[3] == row["_source_system"]):
                mends.append((version[1], starts, row))
                continue
            if version is not None and (starts < version[1] or version[0] == row["_row_hash"]):
                continue  # stale, or unchanged
            if self._deleted(dataset, row):
                marked.append(record)
                if version is not None:
                    closes.append({**{f"k_{k}": row[k] for k in key}, "closed_at": starts})
                    gone.append(record)
                continue
            if version is not None and starts > version[1]:
                closes.append({**{f"k_{k}": row[k] for k in key}, "closed_at": starts})
            versions.append({**row, "valid_from": starts, "valid_to": None, "is_current": True})
        if closes:
            conn.execute(table.update().where(*(table.c[k] == sa.bindparam(f"k_{k}") for k in key),
                                              table.c.is_current.is_(sa.true()))
                         .values(valid_to=sa.bindparam("closed_at"), is_current=False), closes)
        if gone:
            self.record_deletions(conn, dataset.name, key, gone, rows[0]["_batch_id"])
        self.record_marked(conn, dataset, marked, rows[0]["_batch_id"] if rows else "")
        versions += self._mend_history(conn, key, table, mends)
        return len(gone) + self.upsert(conn, table, versions, [*key, "valid_from"], only_if_changed="_row_hash")

    @staticmethod
    def _mend_history(conn: sa.Connection, key: Sequence[str], table: sa.Table,
                      mends: Sequence[tuple[datetime, datetime, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Move current versions back to the earlier start a full refresh read; the versions that replace them.

        `mends`: (the current version's start, the source's start, its row). The current version is
        removed and the row takes its place from its own start; the version closed at the old start is
        closed at the new one. A record whose earlier version began at or after the new start (its versions
        less apart than the shift) is left as it is: its history would run backwards.
        """
        if not mends:
            return []
        match = [table.c[k] == sa.bindparam(f"k_{k}") for k in key]
        earlier: dict[tuple[Any, ...], datetime] = {}
        olds = sorted({old for old, _, _ in mends})
        for start in range(0, len(olds), 500):
            for found in conn.execute(sa.select(*(table.c[k] for k in key), table.c.valid_from, table.c.valid_to)
                                      .where(table.c.is_current.is_(sa.false()),
                                             table.c.valid_to.in_(olds[start:start + 500]))):
                earlier[(*found[:len(key)], utc(found.valid_to))] = utc(found.valid_from)
        moved = [(old, new, row) for old, new, row in mends
                 if earlier.get((*(row[k] for k in key), old), datetime.min.replace(tzinfo=timezone.utc)) < new]
        if not moved:
            return []
        keys = [{f"k_{k}": row[k] for k in key} for _, _, row in moved]
        conn.execute(table.delete().where(*match, table.c.valid_from == sa.bindparam("old")),
                     [{**k, "old": old} for k, (old, _, _) in zip(keys, moved)])
        conn.execute(table.update().where(*match, table.c.valid_to == sa.bindparam("old"))
                     .values(valid_to=sa.bindparam("new")),
                     [{**k, "old": old, "new": new} for k, (old, new, _) in zip(keys, moved)])
        return [{**row, "valid_from": new, "valid_to": None, "is_current": True} for _, new, row in moved]

    def written_by(self, table: sa.Table, system: str | None, pipeline: str | None = None
                   ) -> list[sa.ColumnElement[bool]]:
        """The conditions on `table`'s rows for those `system` wrote (its `_source_system`) and, with `pipeline`,
        those a batch of that pipeline wrote last (`_batch_id`): what a pipeline answers for when others load
        its dataset too (`rows_of`)."""
        conditions = [] if system is None else [table.c._source_system == system]
        if pipeline is not None:
            conditions.append(table.c._batch_id.in_(self.batch_ids(pipeline=pipeline)))
        return conditions

    def batch_ids(self, system: str | None = None, pipeline: str | None = None) -> sa.Select[Any]:
        """The ids of the batches of `pipeline`, or else of `system` (every batch without either)."""
        batch = self.system["lgsp_batch"]
        return sa.select(batch.c.batch_id).where(*(
            [batch.c.pipeline == pipeline] if pipeline is not None
            else [batch.c.source_system == system] if system is not None else []))

    def missing(self, conn: sa.Connection, dataset: DatasetSpec, keys: pa.Table, held: Sequence[str], system: str,
                loaded_by: datetime, pipeline: str | None = None) -> tuple[sa.Select, int]:
        """The rows `system` wrote by `loaded_by` whose key neither a full refresh's `keys` nor `held` (record keys
        as `lgsp_quarantine` writes them: the refresh's quarantined records) has; and how many rows it wrote.
        With `pipeline` (the system has other pipelines into the dataset), only rows a batch of that pipeline wrote
        last: the others' records are theirs, and a row a migration or a restore wrote last is nobody's to remove.

        A merge table's rows, a history table's current versions. The keys go to temporary tables (COPY on
        PostgreSQL), dropped at the end of the caller's transaction on PostgreSQL, before the next use on SQLite.
        """
        table, key = self.dataset_table(dataset), dataset.key
        seen = sa.Table(f"_seen_{table.name}", sa.MetaData(), *(sa.Column(k, table.c[k].type) for k in key),
                        prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
        kept = sa.Table(f"_held_{table.name}", sa.MetaData(), sa.Column("record_key", sa.Text),
                        prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
        for temporary in (seen, kept):
            temporary.drop(conn, checkfirst=True)
            temporary.create(conn)
        if self.dialect == "postgresql":
            self._copy_into(conn, seen, keys.select(key))
        else:
            for start in range(0, keys.num_rows, CHUNK_ROWS):
                conn.execute(seen.insert(), keys.slice(start, CHUNK_ROWS).select(key).to_pylist())
        if held:
            conn.execute(kept.insert(), [{"record_key": k} for k in held])
        sa.Index(f"_seen_{table.name}_key", *seen.c).create(conn)
        as_text = [sa.cast(table.c[k], sa.Text) for k in key]  # runner._record_key's str(value) joined by "|"
        record_key = as_text[0] if len(key) == 1 else sa.func.concat_ws("|", *as_text) \
            if self.dialect == "postgresql" else sa.literal_column(" || '|' || ".join(
                f'CAST("{table.name}"."{k}" AS TEXT)' for k in key))
        mine = [*self.written_by(table, system, pipeline), table.c._loaded_at <= loaded_by,
                *([table.c.is_current.is_(True)] if "is_current" in table.c else [])]
        total = conn.execute(sa.select(sa.func.count()).select_from(table).where(*mine)).scalar_one()
        absent = [~sa.exists().where(*(seen.c[k] == table.c[k] for k in key)),
                  ~sa.exists().where(kept.c.record_key == record_key)]
        return sa.select(table).where(*mine, *absent), int(total)

    def remove(self, conn: sa.Connection, dataset: DatasetSpec, rows: Sequence[dict[str, Any]], batch_id: str,
               at: datetime) -> int:
        """Records the source no longer has: delete them (merge), or close their current version at `at`
        (history); each is recorded as deleted by `batch_id` (`lgsp_tombstone`). Returns how many."""
        if not rows:
            return 0
        table, key = self.dataset_table(dataset), dataset.key
        match = [table.c[k] == sa.bindparam(f"k_{k}") for k in key]
        params = [{f"k_{k}": row[k] for k in key} for row in rows]
        if "is_current" in table.c:
            conn.execute(table.update().where(*match, table.c.is_current.is_(True))
                         .values(valid_to=at, is_current=False), params)
        else:
            conn.execute(table.delete().where(*match), params)
        self.record_deletions(conn, dataset.name, key, [tuple(row[k] for k in key) for row in rows], batch_id)
        return len(rows)

    def insert_ignore(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]],
                      key: Sequence[str]) -> None:
        if rows:
            conn.execute(self._insert(table).on_conflict_do_nothing(index_elements=list(key)), list(rows))

    def stamp_change(self, conn: sa.Connection, batch_id: str, dataset: str, rows_changed: int) -> None:
        """Record that `batch_id` changed `rows_changed` rows of `dataset`, with the next change number, as the
        last write of its transaction (nothing when it changed nothing).

        Numbers follow the order writes commit in: on PostgreSQL a transaction-scoped
        advisory lock is held from the number's choice to the commit (a moment), so a
        write beside it takes the next number only once this one is visible; SQLite has
        one writer at a time. A reader that sees number N therefore sees every write
        numbered below it: the change feed (gateway.changes) reads windows of numbers and
        never skips a write that committed late.
        """
        if rows_changed <= 0:
            return
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(lock)s)", {"lock": CHANGE_SEQ_LOCK})
        change = self.system["lgsp_change"]
        following = sa.select(sa.func.coalesce(sa.func.max(change.c.change_seq), 0) + 1,
                              sa.literal(batch_id), sa.literal(dataset), sa.literal(rows_changed),
                              sa.literal(datetime.now(timezone.utc), type_=sa.DateTime(timezone=True)))
        conn.execute(change.insert().from_select(
            ["change_seq", "batch_id", "dataset", "rows_changed", "committed_at"], following))

    def record_marked(self, conn: sa.Connection, dataset: DatasetSpec, keys: Sequence[tuple[Any, ...]],
                      batch_id: str) -> None:
        """Record the records a batch received with their deletion marker (`lgsp_source_deleted`), by the key as
        `lgsp_quarantine` writes it: the source serves and counts them still, and `lgsp reconcile` holds them."""
        if keys:
            now = datetime.now(timezone.utc)
            self.upsert(conn, self.system["lgsp_source_deleted"], [
                {"dataset": dataset.name, "record_key": "|".join(str(v) for v in values), "batch_id": batch_id,
                 "marked_at": now} for values in dict.fromkeys(keys)], ["dataset", "record_key"])

    def record_deletions(self, conn: sa.Connection, dataset: str, key: Sequence[str],
                         keys: Iterable[tuple[Any, ...]], batch_id: str) -> None:
        """Record the keys a write deleted from `dataset`'s table (`lgsp_tombstone`: the change feed's deletes)."""
        now = datetime.now(timezone.utc)
        rows = [{"dataset": dataset, "batch_id": batch_id, "record_key": tombstone_key(key, values),
                 "deleted_at": now} for values in keys]
        for start in range(0, len(rows), CHUNK_ROWS):
            self.insert_ignore(conn, self.system["lgsp_tombstone"], rows[start:start + CHUNK_ROWS],
                               ["dataset", "batch_id", "record_key"])

    def get_cursor(self, pipeline: str) -> datetime | None:
        t = self.system["lgsp_cursor"]
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(t.c.cursor_value).where(t.c.pipeline == pipeline)).scalar()
        return utc(value)

    def set_cursor(self, conn: sa.Connection, pipeline: str, value: datetime | None, batch_id: str,
                   synced: bool = False, exact: bool = False) -> None:
        """Advance the pipeline's watermark (never backwards), inside the caller's transaction.

        `synced`: this batch read the source to the end (not a backfill), so the pipeline's `synced_at`
        (its freshness, `lgsp.freshness`) becomes now, even when it brought nothing new.
        `exact`: the batch read the whole source (a full refresh): its newest value is the watermark, even
        if an earlier one was later (times once read in the wrong zone; the source's newest record deleted).
        """
        t = self.system["lgsp_cursor"]
        row = conn.execute(sa.select(t).where(t.c.pipeline == pipeline)).first()
        current = utc(row.cursor_value) if row is not None else None
        advance = value is not None and (current is None or value > current or (exact and value != current))
        if not advance and not synced:
            return
        now = datetime.now(timezone.utc)
        kept = row is not None and not advance
        values = {"pipeline": pipeline, "cursor_value": current if kept else value,
                  "batch_id": row.batch_id if kept else batch_id, "updated_at": row.updated_at if kept else now,
                  "synced_at": now if synced else (row.synced_at if row is not None else None)}
        self.upsert(conn, t, [values], ["pipeline"])

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table(table))).scalar() or 0)

    def dataset_table(self, dataset: DatasetSpec) -> sa.Table:
        return self.core[dataset.name]
