"""The warehouse's shared layer: one view per shared dataset, `shared_<dataset>`.

Layers: raw (the lake), core (curated tables), shared (what agencies may read, as
views), mart (indicators). catalog/sharing.yaml says which datasets are shared and
which of their columns; a view exposes exactly those columns, and for a history
(SCD type 2) dataset only the current version of each record. The sharing gateway
(`gateway/`) reads these views, never the core tables.

The same code creates the views on SQLite and PostgreSQL: the view's SELECT is
built with SQLAlchemy Core from the table definitions and compiled for the
engine's dialect (no value from outside the catalog reaches the DDL).

Example:
    >>> from warehouse.shared import create_shared_views
    >>> create_shared_views(open_warehouse(), load_catalog())   # doctest: +SKIP
    ['shared_admin_unit', 'shared_citizen', ...]
"""
from __future__ import annotations

import hashlib
import time

import sqlalchemy as sa

from catalog.models import Catalog, DatasetSpec, SharedDatasetSpec
from schemas.sql import SQL_TYPES
from warehouse.store import Warehouse


def shared_select(dataset: DatasetSpec, shared: SharedDatasetSpec, table: sa.Table) -> sa.Select:
    """The SELECT behind `shared_<dataset>`: the shared columns; current versions only for history.

    The view also has `_batch_id` (the load or computation that last changed the row), which
    the gateway's change feed selects rows by and never shows (gateway.changes).
    """
    lineage = [table.c._batch_id] if has_lineage(dataset) else []
    query = sa.select(*(table.c[name] for name in shared.columns), *lineage)
    if dataset.write_mode == "history":
        query = query.where(table.c.is_current.is_(sa.true()))
    return query


def shared_view_table(dataset: DatasetSpec, shared: SharedDatasetSpec, metadata: sa.MetaData) -> sa.Table:
    """A typed description of the view, for querying it with SQLAlchemy Core (bound parameters only).

    It is never created as a table: `create_shared_views` creates the view.
    """
    columns = []
    for name in shared.columns:
        spec = dataset.columns[name]
        sql_type = sa.DateTime(timezone=True) if spec.type == "timestamp" else SQL_TYPES[spec.type]()
        columns.append(sa.Column(name, sql_type, primary_key=name in dataset.key))
    if has_lineage(dataset):
        columns.append(sa.Column("_batch_id", sa.Text))
    return sa.Table(shared.view_name, metadata, *columns)


def has_lineage(dataset: DatasetSpec) -> bool:
    """True for a dataset whose rows name the write that last changed them: loaded by pipelines (core), or
    computed by lgsp into the mart (indicators.compute)."""
    return dataset.layer in ("core", "mart")


def shared_views(catalog: Catalog) -> dict[str, sa.Table]:
    """Every shared dataset's view description, by dataset name."""
    metadata = sa.MetaData()
    return {name: shared_view_table(catalog.datasets[name], shared, metadata)
            for name, shared in catalog.sharing.items()}


def _view_ddl(warehouse: Warehouse, dataset: DatasetSpec, shared: SharedDatasetSpec) -> str:
    select = shared_select(dataset, shared, warehouse.table(dataset.table_name))
    body = select.compile(dialect=warehouse.engine.dialect, compile_kwargs={"literal_binds": True})
    return f'CREATE VIEW "{shared.view_name}" AS {body}'


def create_shared_views(warehouse: Warehouse, catalog: Catalog) -> list[str]:
    """(Re)create every view of the shared layer in one transaction; returns the view names.

    The core and mart tables must exist (`Warehouse.create_all`, done by
    `lgsp.runner.open_warehouse`). A view whose dataset is no longer shared is dropped.
    """
    inspector = sa.inspect(warehouse.engine)
    stale = [v for v in inspector.get_view_names() if v.startswith("shared_")
             and v.removeprefix("shared_") not in catalog.sharing]
    created: list[str] = []
    with warehouse.engine.begin() as conn:
        if warehouse.dialect == "sqlite" and not conn.connection.driver_connection.in_transaction:  # type: ignore
            conn.exec_driver_sql("BEGIN")  # Python's sqlite3 only opens a transaction before DML
        for view in stale:
            conn.exec_driver_sql(f'DROP VIEW IF EXISTS "{view}"')
        for name in sorted(catalog.sharing):
            created.append(recreate_view(conn, warehouse, catalog, name))
    return created


def recreate_view(conn: sa.Connection, warehouse: Warehouse, catalog: Catalog, name: str) -> str:
    """(Re)create the shared view of dataset `name` in the caller's transaction; returns its name."""
    shared = catalog.sharing[name]
    conn.exec_driver_sql(f'DROP VIEW IF EXISTS "{shared.view_name}"')
    conn.exec_driver_sql(_view_ddl(warehouse, catalog.datasets[name], shared))
    return shared.view_name


def scope_index_name(table: str, column: str) -> str:
    """`ix_scope_<table>_<column>`, within PostgreSQL's 63 characters (a hash's digits replace the rest)."""
    name = f"ix_scope_{table}_{column}"
    return name if len(name) <= 63 else f"{name[:50]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def scope_index(engine: sa.Engine, dataset: DatasetSpec, column: str) -> float | None:
    """Make sure `dataset`'s core table has an index on (`column`, the key...), so a gateway reader whose grant
    covers some values of `column` (gateway.agencies.Grant) reads its rows by that index, in key order, instead
    of walking the whole key (30x the time on a million citizens: docs/performance.md). Returns the seconds it
    took to make it, None when it was there.

    On PostgreSQL it is made CONCURRENTLY (loads and reads go on meanwhile; an invalid one a failed attempt left
    is made again). It is not in the table's definition: only a dataset some grant is scoped on pays for it in
    its loads. Raises sqlalchemy errors as they come (the table must exist).
    """
    table = dataset.table_name
    name = scope_index_name(table, column)
    columns = ", ".join(f'"{c}"' for c in [column, *dataset.key])
    began = time.perf_counter()
    # the name may be taken by the index of a table `lgsp warehouse migrate` replaced (renamed to
    # <table>__before_<time>, its indexes with it): that one is dropped, the kept table needs no scope index
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            held = conn.execute(sa.text("SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name = :name"),
                                {"name": name}).scalar()
            if held == table:
                return None
            if held is not None:
                conn.exec_driver_sql(f'DROP INDEX "{name}"')
            conn.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({columns})')
        return time.perf_counter() - began
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        held = conn.execute(sa.text(
            "SELECT i.indisvalid, t.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "JOIN pg_class t ON t.oid = i.indrelid WHERE c.relname = :name "
            "AND c.relnamespace = current_schema()::regnamespace"), {"name": name}).first()
        if held is not None and held.indisvalid and held.relname == table:
            return None
        if held is not None:  # another table's, or one a failed attempt left invalid (not used, but maintained)
            conn.exec_driver_sql(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" ({columns})')
    return time.perf_counter() - began
