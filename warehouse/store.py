"""The relational store: SQLite by default, PostgreSQL when LGSP_DATABASE_URL says so.

Same code for both through SQLAlchemy Core. Merges are upserts on the dataset
key that only touch rows whose content hash changed, so a rerun of the same
batch changes nothing.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from catalog.models import Catalog, DatasetSpec
from schemas.sql import core_table
from warehouse.tables import system_tables

CHUNK_ROWS = 5000


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; the warehouse stores UTC, so say so."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


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


class Warehouse:
    """The store's tables (core, bookkeeping, mart) and the operations on them."""

    def __init__(self, url: str, catalog: Catalog) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.metadata = sa.MetaData()
        self.core: dict[str, sa.Table] = {
            name: core_table(ds, self.metadata) for name, ds in catalog.datasets.items() if ds.layer == "core"}
        self.system = system_tables(self.metadata)
        self.system.update({ds.table_name: core_table(ds, self.metadata)
                            for ds in catalog.datasets.values() if ds.layer == "mart"})

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_all(self) -> None:
        """Create missing tables, and add columns a newer lgsp or dataset definition declares."""
        self.metadata.create_all(self.engine)
        inspector = sa.inspect(self.engine)
        with self.engine.begin() as conn:
            for table in self.metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and column.nullable:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))

    def table(self, name: str) -> sa.Table:
        """A table by its SQL name (e.g. `core_citizen`, `lgsp_batch`)."""
        return self.metadata.tables[name]

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table))

    def upsert(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]],
               key: Sequence[str], only_if_changed: str | None = None) -> int:
        """Insert or update `rows` on `key`; returns the number of rows written.

        With `only_if_changed` (a hash column), an existing row is updated only
        when its hash differs, so reruns of unchanged data write nothing.
        """
        if not rows:
            return 0
        stmt = self._insert(table)
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key}
        where = table.c[only_if_changed] != stmt.excluded[only_if_changed] if only_if_changed else None
        stmt = (stmt.on_conflict_do_update(index_elements=list(key), set_=updates, where=where)
                if updates else stmt.on_conflict_do_nothing(index_elements=list(key)))
        stmt = stmt.returning(table.c[key[0]])  # rows actually inserted or updated
        written = 0
        for start in range(0, len(rows), CHUNK_ROWS):
            written += len(conn.execute(stmt, list(rows[start:start + CHUNK_ROWS])).all())
        return written

    def insert_ignore(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]],
                      key: Sequence[str]) -> None:
        if rows:
            conn.execute(self._insert(table).on_conflict_do_nothing(index_elements=list(key)), list(rows))

    def get_cursor(self, pipeline: str) -> datetime | None:
        t = self.system["lgsp_cursor"]
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(t.c.cursor_value).where(t.c.pipeline == pipeline)).scalar()
        return utc(value)

    def set_cursor(self, conn: sa.Connection, pipeline: str, value: datetime | None, batch_id: str) -> None:
        """Advance the pipeline's watermark (never backwards), inside the caller's transaction."""
        t = self.system["lgsp_cursor"]
        current = utc(conn.execute(sa.select(t.c.cursor_value).where(t.c.pipeline == pipeline)).scalar())
        if value is None or (current is not None and current >= value):
            return
        self.upsert(conn, t, [{"pipeline": pipeline, "cursor_value": value, "batch_id": batch_id,
                               "updated_at": datetime.now(timezone.utc)}], ["pipeline"])

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table(table))).scalar() or 0)

    def dataset_table(self, dataset: DatasetSpec) -> sa.Table:
        return self.core[dataset.name]
