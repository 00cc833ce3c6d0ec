"""Bring a core table to its dataset's definition when the definition changed: `lgsp warehouse plan|migrate`.

A dataset's definition (`catalog/datasets.yaml`) changes as its source does: a field the
source started sending (kept in `_extras` until declared) is declared, a type is corrected, a
column becomes required, the write mode becomes `history` to keep every version. Adding an
optional column needs nothing (`Warehouse.create_all` adds it), but the rows loaded before
keep their value in `_extras`, and a new key, write mode or type cannot be altered in place.

`plan` compares each core table with its definition and says what would change, with counts.
`migrate` makes the change the way dbt's full refresh or a table rebuild does, in one
transaction: a new table of the declared shape is filled from the old one, each value that
moves or changes type passed through the loader's own typing (`schemas.arrow._coerce_column`),
so a value ends as a load of the same record would have put it, and its content hash is the one a load computes (a later
full refresh of unchanged data writes nothing). Then the new table takes the old one's
name and the old one is kept under `<table>__before_<time>` (nothing is lost; drop it once
satisfied, or pass `--drop-previous`; retention drops it once it is older than
`LGSP_RETENTION_DAYS`: `drop_previous`).

- A declared column's value waiting in `_extras` (under the column's name, or the source field's
  that a pipeline's `fields` maps to it) moves into the column; a column no longer declared moves
  into `_extras`.
- A type change converts every value as a load would; if any value does not convert, or a
  required column has no value, nothing changes and the error says how many rows and where.
- merge/replace -> history: each row becomes its record's current version, valid from its
  cursor value (or load time). history -> merge: the current versions stay. append ->
  merge: the newest row per key; append -> history: the rows become versions as the
  history writer would have made them. Anything -> append keeps every row.
- Rows whose values changed are stamped with the migration's id as their `_batch_id` and
  recorded as one change (`lgsp_change`), so the change feed, agencies' copies and webhooks
  pick them up; rows whose values did not change keep their batch.
- On PostgreSQL a migration waits for running loads of the dataset, then holds an advisory
  lock that new loads wait on before they touch the table (`store.rebuild_lock`), and the
  table's `SHARE` lock against any other writer; readers read on, and the swap waits for
  them a moment. A load that waited then writes into the new table. SQLite holds its write
  lock throughout (a load waits up to the busy timeout, then fails and is loaded again).

- Every row is checked again by the dataset's row rules (`quality.run_row_checks`, as a load
  checks it): a promoted or retyped value, or a rule the definition added, may reject it. A
  migration with such rows changes nothing and counts them per rule; with `quarantine_failing`
  (`--quarantine-failing`) they move to `lgsp_quarantine` instead (rule, reason, the row as a
  record; `lgsp quarantine replay` lands them once they pass) and leave the table, recorded as
  deletions for the change feed. They stay in the table kept as it was, too.

Each migration is recorded in `lgsp_migration`.
"""
from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from catalog.models import Catalog, DatasetSpec
from schemas.arrow import _coerce_column, arrow_schema, extras_json
from schemas.sql import HISTORY_COLUMNS, LINEAGE_COLUMNS
from warehouse.rowhash import row_hashes
from warehouse.store import Warehouse, _arrow_type, rebuild_lock, utc

EXTRAS = "_extras"
CHUNK_ROWS = 20_000
BOOKKEEPING = {*LINEAGE_COLUMNS, *HISTORY_COLUMNS, EXTRAS}


class MigrationError(RuntimeError):
    """A migration that cannot be made as the definition stands; nothing was changed."""


def _kind(sql_type: sa.types.TypeEngine[Any]) -> str | None:
    """A reflected column type as a dataset column type (`catalog.models.ColumnType`)."""
    for kind, classes in (("boolean", sa.Boolean), ("timestamp", sa.DateTime), ("date", sa.Date),
                          ("integer", sa.Integer), ("float", (sa.Float, sa.Numeric)), ("string", sa.String)):
        if isinstance(sql_type, classes):
            return kind
    return None


def _mode(write_mode: str) -> str:
    """merge and replace have the same table shape."""
    return "merge" if write_mode in ("merge", "replace") else write_mode


@dataclass
class LiveTable:
    """A core table as it is in the database."""

    name: str
    columns: dict[str, tuple[str | None, bool]]  # name -> (type, nullable)
    key: list[str]
    mode: str  # merge (also replace), append or history

    @classmethod
    def reflect(cls, name: str, columns: list[dict[str, Any]], primary_key: list[str]) -> LiveTable:
        described = {c["name"]: (_kind(c["type"]), bool(c["nullable"])) for c in columns}
        if "valid_from" in primary_key and "is_current" in described:
            mode = "history"
        elif "_batch_id" in primary_key:
            mode = "append"
        else:
            mode = "merge"
        return cls(name, described, [k for k in primary_key if k not in ("valid_from", "_batch_id")], mode)

    @property
    def business(self) -> list[str]:
        return [name for name in self.columns if name not in BOOKKEEPING]


@dataclass
class Step:
    """One difference between a table and its definition; `blocking`: loads cannot run until it is made."""

    text: str
    blocking: bool = False
    rebuild: bool = True
    column: str | None = None  # the column it is about, if one


@dataclass
class Plan:
    dataset: str
    table: str
    rows: int = 0
    steps: list[Step] = field(default_factory=list)
    live: LiveTable | None = None

    @property
    def needed(self) -> bool:
        return any(step.rebuild for step in self.steps)

    @property
    def blocking(self) -> list[Step]:
        return [step for step in self.steps if step.blocking]


@dataclass
class Migrated:
    dataset: str
    migration_id: str
    rows_before: int
    rows_after: int
    rows_changed: int
    previous_table: str | None
    steps: list[str]
    seconds: float
    retyped_shared: list[str] = field(default_factory=list)  # shared columns whose type changed: restart the gateway
    quarantined: int = 0  # rows a row rule rejected, moved to the quarantine (`quarantine_failing`)


_MODE_TEXT = {
    ("merge", "history"): "each row becomes its record's current version, valid from its {start}",
    ("history", "merge"): "the current version of each record stays (older versions stay in the previous table)",
    ("append", "merge"): "the newest row of each key stays (the others stay in the previous table)",
    ("append", "history"): "the rows of each key become its versions, as the history writer makes them",
    ("merge", "append"): "every row stays",
    ("history", "append"): "every version stays, as a row",
}


def structural_steps(live: LiveTable, dataset: DatasetSpec) -> list[Step]:
    """What differs in shape (write mode, key, types, nullability, columns), from the table's reflection alone."""
    steps: list[Step] = []
    declared = _mode(dataset.write_mode)
    if live.mode != declared:
        start = f"cursor field {dataset.cursor_field}" if dataset.cursor_field else "load time"
        steps.append(Step(f"write mode {live.mode} -> {dataset.write_mode}: "
                          + _MODE_TEXT[(live.mode, declared)].format(start=start), blocking=True))
    if sorted(live.key) != sorted(dataset.key):
        steps.append(Step(f"key {live.key} -> {dataset.key}", blocking=True))
    for name, column in dataset.columns.items():
        if name not in live.columns:
            steps.append(Step(f"column {name} ({column.type}) added", rebuild=False))
            continue
        kind, nullable = live.columns[name]
        if kind != column.type:  # a type lgsp does not make (a table made by hand) is reported, not refused
            steps.append(Step(f"column {name}: {kind or 'unknown type'} -> {column.type}, each value converted as "
                              "a load converts it", blocking=kind is not None))
        if name in dataset.key:  # a key column is not null whatever the database reports
            continue
        if column.required and nullable:
            steps.append(Step(f"column {name} becomes required (NOT NULL)"))
        elif not column.required and not nullable:
            steps.append(Step(f"column {name} becomes optional"))
    for name in live.business:
        if name not in dataset.columns:
            steps.append(Step(f"column {name} is no longer declared: its values move to {EXTRAS}", column=name))
    return steps


def reflect(conn: sa.Connection, table: str) -> LiveTable | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table):
        return None
    key = inspector.get_pk_constraint(table)["constrained_columns"]
    return LiveTable.reflect(table, inspector.get_columns(table), key)


def _in_extras(table: sa.Table, name: str, dialect: str) -> sa.ColumnElement[bool]:
    """The row's `_extras` JSON has a value for `name`."""
    if dialect == "postgresql":
        return sa.cast(table.c[EXTRAS], JSONB)[name].is_not(None)
    return sa.func.json_extract(table.c[EXTRAS], f'$."{name}"').is_not(None)


def source_names(catalog: Catalog, dataset: DatasetSpec) -> dict[str, str]:
    """{a source's field name: the column it is renamed to} for the pipelines loading `dataset` (their `fields`).

    A field sent before it was mapped and declared waits in `_extras` under the source's own name
    (`NgayCapNhat`); once `fields` maps it to a column (`updated_at`), its value moves there.
    """
    return {field: column for pipeline in catalog.pipelines.values() if pipeline.dataset == dataset.name
            for field, column in pipeline.source.fields.items() if column in dataset.columns and field != column}


def _extras_named(parsed: dict[str, Any] | None, renames: dict[str, str]) -> dict[str, Any] | None:
    """A row's `_extras` with each source name its pipeline maps now read as its column's."""
    if not parsed or not renames:
        return parsed
    named = {k: v for k, v in parsed.items() if k not in renames}
    for field, column in renames.items():
        if field in parsed and named.get(column) is None:
            named[column] = parsed[field]
    return named


def plan_dataset(conn: sa.Connection, warehouse: Warehouse, dataset: DatasetSpec,
                 renamed: dict[str, str] | None = None) -> Plan:
    """What `migrate_dataset` would change in `dataset`'s table, with counts (one scan of the table).

    `renamed`: `source_names` of the dataset (default: in the warehouse's catalog)."""
    plan = Plan(dataset.name, dataset.table_name)
    live = plan.live = reflect(conn, dataset.table_name)
    if live is None:
        plan.steps.append(Step("table created by the next load", rebuild=False))
        return plan
    plan.steps = structural_steps(live, dataset)
    table = sa.Table(live.name, sa.MetaData(), *(sa.Column(name) for name in live.columns))
    counts: dict[str, sa.ColumnElement[Any]] = {"rows": sa.func.count()}
    waiting = [n for n in dataset.columns if n not in dataset.key] if EXTRAS in live.columns else []
    renamed = source_names(warehouse.catalog, dataset) if renamed is None else renamed
    held = {name: sa.or_(*(_in_extras(table, n, warehouse.dialect) for n in
                           [name, *(f for f, c in renamed.items() if c == name)])) for name in waiting}
    for name in waiting:
        counts[f"extras:{name}"] = sa.func.sum(sa.case((held[name], 1), else_=0))
    required = [n for n, c in dataset.columns.items() if c.required and n in live.columns and n not in dataset.key]
    for name in required:
        empty = table.c[name].is_(None)
        if name in waiting:
            empty = sa.and_(empty, sa.not_(held[name]))
        counts[f"empty:{name}"] = sa.func.sum(sa.case((empty, 1), else_=0))
    for name in live.business:
        if name not in dataset.columns:
            counts[f"kept:{name}"] = sa.func.count(table.c[name])
    found = conn.execute(sa.select(*(v.label(k.replace(":", "__")) for k, v in counts.items())).select_from(table)
                         ).one()._mapping
    plan.rows = int(found["rows"])
    for name in waiting:
        if found[f"extras__{name}"]:
            sources = [f for f, c in renamed.items() if c == name]
            plan.steps.append(Step(f"column {name}: {found[f'extras__{name}']} row(s) hold its value in {EXTRAS} "
                                   + (f"(as {', '.join(sources)}) " if sources else "")
                                   + "(loaded before it was declared): moved into the column"))
    for name in required:
        if found[f"empty__{name}"]:
            plan.steps.append(Step(f"column {name} is required but {found[f'empty__{name}']} row(s) have no value: "
                                   "migrate refuses until they have one", blocking=False))
    for step in plan.steps:
        if step.column is not None and f"kept__{step.column}" in found:
            step.text += f" ({found[f'kept__{step.column}']} row(s) with a value)"
    return plan


def plan(warehouse: Warehouse, catalog: Catalog, names: Iterable[str] | None = None) -> list[Plan]:
    """The plan of every core dataset (or of `names`)."""
    chosen = list(names) if names else [n for n, ds in catalog.datasets.items() if ds.layer == "core"]
    with warehouse.engine.connect() as conn:
        return [plan_dataset(conn, warehouse, catalog.datasets[name], source_names(catalog, catalog.datasets[name]))
                for name in chosen]


# --- migrate -----------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """A stored value as the source would have sent it (what the loader's typing reads)."""
    if isinstance(value, datetime):
        return utc(value).isoformat()  # type: ignore[union-attr]
    if isinstance(value, date):
        return value.isoformat()
    return value


def _start(row: dict[str, Any], dataset: DatasetSpec) -> datetime:
    """When a version starts: the row's cursor value, or its load time (as `Warehouse._write_history`)."""
    value = row.get(dataset.cursor_field) if dataset.cursor_field else None
    return utc(value) or utc(row["_loaded_at"])  # type: ignore[return-value]


def _deleted(row: dict[str, Any], dataset: DatasetSpec) -> bool:
    return bool(dataset.delete_field and row.get(dataset.delete_field))


def _versions(rows: list[dict[str, Any]], dataset: DatasetSpec) -> list[dict[str, Any]]:
    """One key's append rows (oldest first) as history versions, the way the history writer makes them."""
    versions: list[dict[str, Any]] = []
    for row in rows:
        starts = _start(row, dataset)
        current = versions[-1] if versions and versions[-1]["is_current"] else None
        if current is not None and (starts < current["valid_from"] or current["_row_hash"] == row["_row_hash"]):
            continue
        if current is not None and starts == current["valid_from"]:
            versions.pop()  # a correction of the current version
        elif current is not None:
            current.update(valid_to=starts, is_current=False)
        if not _deleted(row, dataset):
            versions.append({**row, "valid_from": starts, "valid_to": None, "is_current": True})
    return versions


def _reshaped(rows: Iterator[dict[str, Any]], live: LiveTable, dataset: DatasetSpec) -> Iterator[dict[str, Any]]:
    """The old table's rows in the declared write mode's shape (history columns set or dropped)."""
    declared = _mode(dataset.write_mode)
    if live.mode == "append" and declared != "append":  # rows come ordered by key, oldest first
        for _, group in itertools.groupby(rows, key=lambda r: tuple(r[k] for k in dataset.key)):
            kept = list(group)
            if declared == "history":
                yield from _versions(kept, dataset)
            elif not _deleted(kept[-1], dataset):
                yield kept[-1]
        return
    for row in rows:
        if live.mode == "history" and declared == "merge" and not row["is_current"]:
            continue
        if declared == "history" and live.mode != "history":
            row.update(valid_from=_start(row, dataset), valid_to=None, is_current=True)
        yield row


@dataclass
class _Problems:
    """Why rows do not fit the definition, counted per column (and per row rule)."""

    counts: dict[str, int] = field(default_factory=dict)
    rules: bool = False  # some rows fail a row rule (`--quarantine-failing` would move them out)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def report(self, dataset: DatasetSpec) -> str:
        listed = "; ".join(f"{what}: {n} row(s)" for what, n in sorted(self.counts.items()))
        hint = ("; or pass --quarantine-failing to move the rows that fail a rule to the quarantine "
                "(`lgsp quarantine replay` lands them once they pass)") if self.rules else ""
        return (f"{dataset.name}: the table's rows do not fit the definition in catalog/datasets.yaml ({listed}); "
                "nothing was changed. Correct the definition, or correct those records at the source and reload "
                f"them (lgsp run PIPELINE --full-refresh), then migrate again{hint}")


@dataclass
class _Failing:
    """Rows a row rule rejects, when they go to the quarantine (`quarantine_failing`) instead of refusing."""

    pipeline: str
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[tuple[Any, ...]] = field(default_factory=list)  # keys that leave the table (current rows)


_PANDAS_TYPES = {pa.string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(),
                 pa.bool_(): pd.BooleanDtype()}


def _rule_frame(checked: pa.Table, dataset: DatasetSpec) -> pd.DataFrame:
    """The declared columns as the loader's typing hands them to the row rules (nullable pandas dtypes)."""
    frame = {}
    for name, spec in dataset.columns.items():
        column = checked.column(name)
        if spec.type == "date":
            frame[name] = pd.Series(column.to_pandas(date_as_object=False)).astype("datetime64[ns]")
        elif spec.type == "timestamp":
            frame[name] = pd.to_datetime(pd.Series(column.to_pandas()), utc=True)
        else:
            frame[name] = column.to_pandas(types_mapper=_PANDAS_TYPES.get)
    return pd.DataFrame(frame, index=range(checked.num_rows))


def _check_rules(checked: pa.Table, rows: list[dict[str, Any]], dataset: DatasetSpec, problems: _Problems,
                 failing: _Failing | None, migration_id: str) -> list[bool] | None:
    """Run the row rules on a converted chunk; the rows that pass (None: all), counting or keeping the others."""
    from lgsp.runner import quarantine_row
    from quality import run_row_checks
    from quality.checks import row_checks

    if not row_checks(dataset) or problems.counts and not problems.rules:
        return None  # nothing to check, or already refused for a value that does not fit
    result = run_row_checks(_rule_frame(checked, dataset), dataset)
    if not result.rejections:
        return None
    if failing is None:
        problems.rules = True
        for rejection in result.rejections:
            problems.add(f"rule {rejection.rule}")
        return None
    declared = checked.select(list(dataset.columns)).to_pylist()
    extras = checked.column(EXTRAS).to_pylist()
    now = datetime.now(timezone.utc)
    for rejection in result.rejections:
        at = rejection.position
        record = {**(orjson.loads(extras[at]) if extras[at] else {}),
                  **{k: _jsonable(v) for k, v in declared[at].items()}}
        failing.quarantine.append(quarantine_row(dataset, failing.pipeline, migration_id, record, rejection.rule,
                                                 rejection.reason, now))
        if rows[at].get("is_current", True):
            failing.deleted.append(tuple(declared[at][k] for k in dataset.key))
    return [bool(ok) for ok in result.passed]


def _changes(rows: list[dict[str, Any]], parsed: list[dict[str, Any] | None], live: LiveTable,
             dataset: DatasetSpec) -> tuple[list[bool], list[bool]]:
    """Per row: whether values move into or out of `_extras`, and whether any value changes (moves or types)."""
    declared = dataset.columns
    moves = [bool(p) and any(k in declared for k in p) for p in parsed]
    for name in [n for n in live.business if n not in declared]:  # a column no longer declared
        moves = [m or r[name] is not None for m, r in zip(moves, rows)]
    retyped = [n for n in declared if n in live.columns and live.columns[n][0] != declared[n].type]
    changed = [m or any(r[n] is not None for n in retyped) for m, r in zip(moves, rows)]
    return moves, changed


def _typed(field: pa.Field, values: list[Any], dataset: DatasetSpec, problems: _Problems) -> pa.ChunkedArray:
    """A column's values (as stored, or as the source sent them) typed by the loader (`coerce`'s own rules)."""
    text = pd.Series([_jsonable(v) for v in values], dtype="object")
    converted = _coerce_column(text, dataset.columns[field.name])
    bad = int((text.notna().to_numpy() & converted.isna().to_numpy()).sum())
    if bad:
        problems.add(f"{field.name}: not a valid {dataset.columns[field.name].type}", bad)
    frame = pd.DataFrame({field.name: converted})
    return pa.Table.from_pandas(frame, schema=pa.schema([field.with_nullable(True)]), preserve_index=False).column(0)


def _new_extras(row: dict[str, Any], fields: dict[str, Any] | None, gone: list[str], dataset: DatasetSpec
                ) -> str | None:
    """A row's `_extras` once declared fields left it and the columns no longer declared (`gone`) joined it."""
    kept = {k: v for k, v in fields.items() if k not in dataset.columns} if fields else {}
    for name in gone:
        if row[name] is not None:
            kept[name] = _jsonable(row[name])
    return extras_json(kept) if kept else None


def _converted(rows: list[dict[str, Any]], live: LiveTable, dataset: DatasetSpec, target: sa.Table,
               migration_id: str, problems: _Problems, failing: _Failing | None = None,
               renames: dict[str, str] | None = None) -> tuple[pa.Table, int]:
    """A chunk of reshaped rows as the new table's rows (typed, checked, hashed); returns it and the rows changed.

    Column by column: a column stored with its declared type is taken as it is (a load typed it); one whose
    type changed, or whose values wait in `_extras`, goes through the loader's typing (`_coerce_column`).
    Then the row rules (`_check_rules`): rows they reject are counted, or, given `failing`, left out.
    """
    parsed = [_extras_named(orjson.loads(r[EXTRAS]), renames or {}) if r.get(EXTRAS) else None for r in rows]
    moves, changed = _changes(rows, parsed, live, dataset)
    arrays = []
    for field in arrow_schema(dataset):
        name = field.name
        values = [r[name] for r in rows] if name in live.columns else [None] * len(rows)
        waiting = any(p is not None and name in p for p in parsed)
        if waiting:
            values = [v if v is not None or p is None else p.get(name) for v, p in zip(values, parsed)]
        if waiting or live.columns.get(name, (None,))[0] != dataset.columns[name].type:
            arrays.append(_typed(field, values, dataset, problems))
        else:
            arrays.append(pa.chunked_array([pa.array(values, field.type)]))
        if failing is None and (dataset.columns[name].required or name in dataset.key):  # (with `failing`, the
            if arrays[-1].null_count:  # rules' not_null quarantines them); a key column is never null either
                problems.add(f"{name}: required, no value", arrays[-1].null_count)
    gone = [n for n in live.business if n not in dataset.columns]
    extras = [_new_extras(r, p, gone, dataset) if moved else r.get(EXTRAS) for r, p, moved in zip(rows, parsed, moves)]
    checked = pa.table([*arrays, pa.array(extras, pa.string())], names=[*dataset.columns, EXTRAS])
    passed = _check_rules(checked, rows, dataset, problems, failing, migration_id)
    if passed is not None:  # the rejected rows went to `failing`: the others go on
        checked = checked.filter(pa.array(passed, pa.bool_()))
        rows = [r for r, ok in zip(rows, passed) if ok]
        changed = [c for c, ok in zip(changed, passed) if ok]
    columns = {name: checked.column(name) for name in checked.column_names}  # hashed as a load hashes its chunk
    columns["_row_hash"] = row_hashes(checked)
    batch_ids = pa.array([r["_batch_id"] for r in rows], pa.string())
    columns["_batch_id"] = pc.if_else(pa.array(changed, pa.bool_()), pa.scalar(migration_id), batch_ids)
    for name in ("_source_system", "_loaded_at", *(HISTORY_COLUMNS if dataset.write_mode == "history" else ())):
        columns[name] = pa.array([r[name] for r in rows], _arrow_type(target.c[name]))
    return pa.table({c.name: columns[c.name] for c in target.columns}), sum(changed)


def _ordered(live: LiveTable, dataset: DatasetSpec, table: sa.Table) -> list[sa.ColumnElement[Any]]:
    """The order rows are read in: by the new key (oldest first) when rows of one key are combined."""
    if live.mode == "append" and _mode(dataset.write_mode) != "append":
        absent = [k for k in dataset.key if k not in live.columns]
        if absent:
            raise MigrationError(f"{dataset.name}: key column(s) {absent} are not columns of {live.name} yet: "
                                 "declare the new key after a migration that adds them")
        start = [table.c[dataset.cursor_field]] if dataset.cursor_field in live.columns else []
        return [*(table.c[k] for k in dataset.key), *start, table.c._loaded_at, table.c._batch_id]
    pk = sa.inspect(table).primary_key
    return list(pk.columns) if pk is not None and len(pk.columns) else [table.c[k] for k in live.key]


def _insert(conn: sa.Connection, warehouse: Warehouse, table: sa.Table, rows: pa.Table) -> None:
    if warehouse.dialect == "postgresql":
        warehouse._copy_into(conn, table, rows)  # not FREEZE: the read of the old table is an open cursor
        return
    # SQLite: each column through its type's bind processor (as SQLAlchemy stores it), rows as tuples
    columns = []
    for column in table.columns:
        values = rows.column(column.name).to_pylist()
        process = column.type.bind_processor(conn.dialect)
        columns.append([process(v) for v in values] if process else values)
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    marks = ", ".join("?" for _ in table.columns)
    conn.connection.driver_connection.executemany(  # type: ignore[union-attr]
        f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', list(zip(*columns)))


def _rename(conn: sa.Connection, warehouse: Warehouse, old: str, new: str) -> None:
    conn.exec_driver_sql(f'ALTER TABLE "{old}" RENAME TO "{new}"')
    if warehouse.dialect == "postgresql":  # the primary key's name follows, so the next rebuild can reuse it
        conn.exec_driver_sql(f'ALTER TABLE "{new}" RENAME CONSTRAINT "{old}_pkey" TO "{new}_pkey"')


def migrate_dataset(warehouse: Warehouse, catalog: Catalog, name: str, drop_previous: bool = False,
                    chunk_rows: int = CHUNK_ROWS, quarantine_failing: bool = False) -> Migrated | None:
    """Rebuild `name`'s core table in its declared shape (see the module's docstring); None if nothing to do.

    `quarantine_failing`: rows a row rule rejects go to the quarantine instead of refusing the migration.

    Raises:
        MigrationError: rows that do not fit the definition (nothing changed).
    """
    from warehouse.shared import recreate_view

    dataset = catalog.datasets[name]
    began = time.perf_counter()
    now = datetime.now(timezone.utc)
    migration_id = f"migrate-{name}-{now:%Y%m%dT%H%M%S%f}"
    with warehouse.engine.begin() as conn:
        if warehouse.dialect == "sqlite":  # the write lock from the start: no other writer between read and swap
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        if warehouse.dialect == "postgresql":  # running loads finish first; new ones wait before they touch it
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(lock)s)", {"lock": rebuild_lock(name)})
            if sa.inspect(conn).has_table(dataset.table_name):  # and any other writer; readers go on
                conn.exec_driver_sql(f'LOCK TABLE "{dataset.table_name}" IN SHARE MODE')
        renamed = source_names(catalog, dataset)
        plan = plan_dataset(conn, warehouse, dataset, renamed)
        if not plan.needed or plan.live is None:
            return None
        live = plan.live
        old = sa.Table(live.name, sa.MetaData(), autoload_with=conn)
        target = warehouse.core[name].to_metadata(sa.MetaData(), name=f"{dataset.table_name}__migrating")
        target.drop(conn, checkfirst=True)
        target.create(conn)
        problems, changed, written = _Problems(), 0, 0
        pipeline = next((p.name for p in catalog.pipelines.values() if p.dataset == name), f"migrate-{name}")
        failing = _Failing(pipeline) if quarantine_failing else None
        read = sa.select(old).order_by(*_ordered(live, dataset, old))
        result = conn.execute(read, execution_options={"yield_per": chunk_rows})  # a server-side cursor
        names = list(result.keys())
        rows = _reshaped((dict(zip(names, r)) for r in result), live, dataset)
        while chunk := list(itertools.islice(rows, chunk_rows)):
            converted, n = _converted(chunk, live, dataset, target, migration_id, problems, failing, renamed)
            if not problems.counts:
                _insert(conn, warehouse, target, converted)
            changed, written = changed + n, written + converted.num_rows
        if problems.counts:
            raise MigrationError(problems.report(dataset))
        previous = None if drop_previous else f"{dataset.table_name}__before_{now:%Y%m%dT%H%M%S}"
        shared = catalog.sharing.get(name)
        had_view = shared is not None and shared.view_name in sa.inspect(conn).get_view_names()
        if had_view:  # on the old table: dropped, and made again on the new one
            conn.exec_driver_sql(f'DROP VIEW "{shared.view_name}"')  # type: ignore[union-attr]
        if previous:
            _rename(conn, warehouse, live.name, previous)
        else:
            conn.exec_driver_sql(f'DROP TABLE "{live.name}"')
        _rename(conn, warehouse, target.name, dataset.table_name)
        if had_view:
            recreate_view(conn, warehouse, catalog, name)
        quarantined = len(failing.quarantine) if failing else 0
        if failing and failing.quarantine:  # kept (rule, reason, the row as a record) and deleted for the feed
            warehouse.insert_ignore(conn, warehouse.system["lgsp_quarantine"], failing.quarantine, ["quarantine_id"])
            warehouse.record_deletions(conn, name, dataset.key, failing.deleted, migration_id)
        warehouse.stamp_change(conn, migration_id, name, changed + len(failing.deleted if failing else []))
        steps = [step.text for step in plan.steps]
        conn.execute(warehouse.system["lgsp_migration"].insert().values(
            migration_id=migration_id, dataset=name, steps=json.dumps(steps, ensure_ascii=False),
            rows_before=plan.rows, rows_after=written, rows_changed=changed, previous_table=previous,
            applied_at=now))
    if warehouse.dialect == "postgresql":
        with warehouse.engine.connect() as conn:
            conn.exec_driver_sql(f'ANALYZE "{dataset.table_name}"')
            conn.commit()
    retyped_shared = [c for c in (shared.columns if shared else []) if c in live.columns
                      and live.columns[c][0] != dataset.columns[c].type]
    return Migrated(name, migration_id, plan.rows, written, changed, previous, steps, time.perf_counter() - began,
                    retyped_shared, quarantined)


def drop_previous(warehouse: Warehouse, before: datetime, dry_run: bool = False) -> list[str]:
    """Drop the tables kept by migrations applied before `before` (retention: `lgsp lake prune`); their names."""
    t = warehouse.system["lgsp_migration"]
    with warehouse.engine.begin() as conn:
        kept = conn.execute(sa.select(t.c.migration_id, t.c.previous_table).where(
            t.c.applied_at < before, t.c.previous_table.is_not(None), t.c.previous_dropped_at.is_(None))).all()
        present = set(sa.inspect(conn).get_table_names())
        dropped = [table for _, table in kept if table in present]
        if kept and not dry_run:
            warehouse._begin_ddl(conn)
            for table in dropped:
                conn.exec_driver_sql(f'DROP TABLE "{table}"')
            conn.execute(t.update().where(t.c.migration_id.in_([m for m, _ in kept]))
                         .values(previous_dropped_at=datetime.now(timezone.utc)))
    return dropped

