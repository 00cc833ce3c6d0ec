"""`lgsp backup restore NAME --dataset D`: one dataset's table put back as a backup holds it, the rest untouched.

A whole restore (lgsp.backup.restore) puts back the store, the lake and the feed's numbering: right after a
dead disk, too much after a bad load of one dataset (a source that sent wrong values that passed the rules,
a mapping bug found a day later). This restores one core table, as a write like any load's:

- the backup is verified first (every file's SHA-256; the dump readable), and the table must have the same
  columns in the backup and here (else `lgsp warehouse migrate` changed it since: said, nothing done);
- its rows are staged from the backup (SQLite: read in place from the backup's file, only the records named;
  PostgreSQL: the table's data alone, `pg_restore --data-only --table`, streamed into COPY, then only the
  records named kept), their number checked against the manifest;
- in one transaction, with the table locked against loads (PostgreSQL: SHARE ROW EXCLUSIVE, and the rebuild
  lock a load takes): the rows (versions, for a history dataset) the backup does not hold are deleted, those
  it holds differently or that are missing are written as the backup has them, named by the restore's id
  (`restore:<backup>:<time>`, their `_batch_id`); the records gone are tombstoned and the write is numbered
  in `lgsp_change`. So the gateway's change feed tells agencies' copies (`lgsp mirror`) exactly what changed,
  with no token refused; a restore run again changes nothing.

`--where COLUMN=V1,V2` (repeated: every column must match; `COLUMN=@FILE` reads the values from a file, one a
line) puts back only some records: those whose row (current version, for a history dataset) holds one of the
values in the backup or here, e.g. one commune's records, those that moved out of it since and those that moved
in, or a list of keys. `--dry-run` does all of it and rolls it back: what would change, nothing changed. Each
restore is recorded in `lgsp_dataset_restore` (who, when, which backup, the scope, what changed).

The pipelines' cursors are not moved: the next incremental sync pulls from its cursor (less the pipeline's
`lookback_s`), so what the source changed between the backup and then is not pulled again; `lgsp run PIPELINE
--since <the backup's cursor>` pulls it again (printed). The lake
keeps every page received (it is the record of what came), and GX's results stay.
"""
from __future__ import annotations

import getpass
import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from catalog import Catalog, load_catalog
from lgsp.backup import Backup, BackupError, _pg_tool, verify
from lgsp.settings import Settings, load_settings, redact_url
from schemas.sql import LINEAGE_COLUMNS
from warehouse.store import utc

WHERE_TYPES = ("string", "integer", "boolean", "date")  # exact values only: no ranges, no instants
EXAMPLES = 5  # records whose differing columns a restore names

@dataclass
class DatasetRestored:
    """What `restore_dataset` did."""

    backup: Backup
    dataset: str
    restore_id: str
    rows: int  # rows (versions) the backup holds (of the records `where` named)
    written: int  # rows written as the backup has them (missing here, or held differently)
    deleted: int  # rows deleted (not in the backup)
    records_gone: int  # records tombstoned for the change feed
    cursors: dict[str, dict[str, Any]]  # pipeline -> {"backup": cursor then, "now": cursor now}
    took_s: float
    where: dict[str, list[Any]] | None = None  # the records restored (`--where`); None: the whole table
    records_in_scope: int | None = None  # records the `where` named, in the backup or here
    dry_run: bool = False  # done and rolled back: nothing changed
    # of the rows written: {"missing_here": n, "columns": {column: rows differing}, "examples": [{"key", "columns"}]}
    differences: dict[str, Any] | None = None

    @property
    def changed(self) -> int:
        return self.written + self.deleted


def parse_where(texts: Sequence[str]) -> dict[str, list[str]]:
    """The CLI's `--where COLUMN=V1,V2` (repeated), `COLUMN=@FILE` reading the file's values (one a line; blank
    lines and lines starting with # skipped) -> {column: [values as typed]}; BackupError says what is wrong."""
    from gateway.agencies import RegistryError, parse_scope

    try:
        parsed = parse_scope(texts, option="--where")
    except RegistryError as exc:
        raise BackupError(str(exc)) from None
    where: dict[str, list[str]] = {}
    for column, values in parsed.items():
        for value in values:
            if not value.startswith("@"):
                where.setdefault(column, []).append(value)
                continue
            try:
                lines = open(value[1:], encoding="utf-8").read().splitlines()  # noqa: SIM115 - read at once
            except (OSError, UnicodeDecodeError) as exc:
                raise BackupError(f"--where {column}={value}: cannot read the file of values: {exc}") from None
            found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not found:
                raise BackupError(f"--where {column}={value}: the file holds no value (one a line)")
            where.setdefault(column, []).extend(found)
    return where


def check_where(spec: Any, where: Mapping[str, Sequence[Any]] | None) -> dict[str, list[Any]] | None:
    """`where` typed as `spec`'s columns (any of them: a restore is the province's own act), each an exact type
    with a value; None for the whole table. BackupError names what is wrong."""
    from gateway.records import QueryError, exact_values

    if not where:
        return None
    checked: dict[str, list[Any]] = {}
    for column, values in sorted(where.items()):
        if column not in spec.columns:
            raise BackupError(f"--where: '{column}' is not a column of {spec.name} (its columns: "
                              f"{', '.join(spec.columns)})")
        try:
            checked[column] = exact_values(spec.columns[column].type, values, column, "--where", WHERE_TYPES)
        except QueryError as exc:
            raise BackupError(str(exc)) from None
    return checked


def restore_dataset(backup: Backup, dataset: str, settings: Settings | None = None, catalog: Catalog | None = None,
                    where: Mapping[str, Sequence[Any]] | None = None, dry_run: bool = False) -> DatasetRestored:
    """Put `dataset`'s core table back as `backup` holds it, or only the records `where` names; with `dry_run`
    everything is done and rolled back (see the module's words).

    Raises:
        BackupError: the dataset is unknown or not in the backup, its table's columns changed since, the backup
            is damaged or of another kind of store, `where` names no column or a wrong value; nothing is changed.
    """
    from warehouse import Warehouse

    settings, catalog = settings or load_settings(), catalog or load_catalog()
    started = time.monotonic()
    spec = catalog.datasets.get(dataset)
    if spec is None or spec.layer != "core":
        core = ", ".join(sorted(n for n, d in catalog.datasets.items() if d.layer == "core"))
        raise BackupError(f"{dataset!r} is not a core dataset of the catalog (one of: {core})")
    scope = check_where(spec, where)
    kind, held = make_url(settings.database_url).get_backend_name(), backup.manifest["store"]["kind"]
    if kind != held:
        raise BackupError(f"backup {backup.name} holds a {held} store and this lgsp's is {kind} "
                          f"({redact_url(settings.database_url)}): restore it into a {held} store")
    name = spec.table_name
    expected = backup.manifest["store"]["tables"].get(name)
    if expected is None:
        raise BackupError(f"backup {backup.name} ({backup.manifest['created_at']}) has no table {name}: the dataset "
                          "came after it")
    checked = verify(backup)
    if not checked.ok:
        raise BackupError(f"backup {backup.path} is damaged, nothing was restored: " + "; ".join(checked.problems[:5]))
    wh = Warehouse(settings.database_url, catalog)
    wh.create_all()
    table = wh.dataset_table(spec)
    columns = [c["name"] for c in sa.inspect(wh.engine).get_columns(name)]  # as the table is, here
    if sorted(columns) != sorted(c.name for c in table.columns):
        wh.engine.dispose()
        raise BackupError(f"table {name} is not as {dataset}'s definition says (`lgsp warehouse plan {dataset}`): "
                          "migrate it first; nothing was restored")
    restored_at = datetime.now(timezone.utc)
    restore_id = f"restore:{backup.name}:{restored_at:%Y%m%dT%H%M%S.%fZ}"
    try:
        with wh.transaction() as conn:
            if kind == "postgresql":  # loads of the dataset wait; `lgsp warehouse migrate` too
                from warehouse.store import rebuild_lock

                conn.exec_driver_sql("SELECT pg_advisory_xact_lock_shared(%(lock)s)", {"lock": rebuild_lock(dataset)})
                conn.exec_driver_sql(f'LOCK TABLE "{name}" IN SHARE ROW EXCLUSIVE MODE')
            stage = _stage_table(table)
            stage.create(conn)
            limit, record = None, list(spec.key)
            if kind == "postgresql":  # the whole table staged, then only the records named kept
                _counted(backup, name, _stage_postgres(conn, backup, name, columns), expected)
                if scope is not None:
                    limit = _scope(conn, table, stage, record, scope)
                    conn.execute(stage.delete().where(~sa.exists().where(*(limit.c[k] == stage.c[k] for k in record))))
            else:  # the backup's table read in place: only the records named are copied into the stage
                kept = _attach_sqlite(conn, backup, table, columns)
                _counted(backup, name, _count(conn, kept), expected)
                if scope is not None:
                    limit = _scope(conn, table, kept, record, scope)
                conn.execute(stage.insert().from_select(columns, sa.select(*(kept.c[c] for c in columns)).where(
                    *([] if limit is None else [sa.exists().where(*(limit.c[k] == kept.c[k] for k in record))]))))
            rows = _count(conn, stage)
            in_scope = None if limit is None else _count(conn, limit)
            _index_stage(conn, table)
            written, deleted, gone, differences = _apply(conn, wh, spec, table, stage, restore_id, limit)
            if dry_run:
                raise _RolledBack
            wh.stamp_change(conn, restore_id, dataset, written + deleted)
            conn.execute(wh.system["lgsp_dataset_restore"].insert().values(
                restore_id=restore_id, dataset=dataset, backup=backup.name, backup_created_at=backup.created_at,
                restored_at=restored_at, restored_by=_account(), records_in_scope=in_scope,
                scope=None if scope is None else json.dumps(scope, default=str, ensure_ascii=False),
                rows_written=written, rows_deleted=deleted, records_gone=gone))
    except _RolledBack:
        pass
    finally:
        wh.engine.dispose()  # its connections closed: the temporary tables (and an attached backup) go with them
    now = {p.name: wh.get_cursor(p.name) for p in catalog.pipelines.values() if p.dataset == dataset}
    cursors = {p: {"backup": _instant((backup.manifest.get("pipelines", {}).get(p) or {}).get("cursor")),
                   "now": value.isoformat() if value else None} for p, value in now.items()}
    return DatasetRestored(backup, dataset, restore_id, rows, written, deleted, gone, cursors,
                           round(time.monotonic() - started, 3), scope, in_scope, dry_run, differences)


class _RolledBack(Exception):
    """A dry run's end: its transaction is rolled back."""


def _account() -> str:
    """Who ran the restore: the operating system's account (as `lgsp_dataset_restore.restored_by`)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the process's uid (a container's)
        import os

        return f"uid {os.getuid()}"


def _instant(text: str | None) -> str | None:
    """A cursor as the manifest keeps it (SQLite's text has no offset: UTC) as an ISO instant with its offset."""
    return utc(datetime.fromisoformat(text)).isoformat() if text else None  # type: ignore[union-attr]


def _stage_table(table: sa.Table) -> sa.Table:
    """A temporary table of `table`'s columns: the backup's rows, before they are compared (its key's unique
    index made once they are in: `_index_stage`)."""
    return sa.Table("_lgsp_restore_stage", sa.MetaData(), *(sa.Column(c.name, c.type) for c in table.columns),
                    prefixes=["TEMPORARY"])


def _index_stage(conn: sa.Connection, table: sa.Table) -> None:
    """SQLite: the stage's key indexed in one build, for its comparisons' lookups. PostgreSQL compares by hash
    joins, which need no index (building one took longer than the comparisons), but its statistics: a temporary
    table is never analysed by autovacuum, and without them the planner hashed the wrong side."""
    if conn.dialect.name == "sqlite":
        key = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
        conn.exec_driver_sql(f'CREATE UNIQUE INDEX "_lgsp_restore_stage_key" ON "_lgsp_restore_stage" ({key})')
    else:
        conn.exec_driver_sql('ANALYZE "_lgsp_restore_stage"')


def _backup_columns(found: list[str], columns: list[str], name: str, backup: Backup) -> None:
    if sorted(found) != sorted(columns):
        raise BackupError(f"table {name} has other columns here than in backup {backup.name} (here: "
                          f"{', '.join(sorted(set(columns) - set(found))) or '-'} not in the backup; the backup: "
                          f"{', '.join(sorted(set(found) - set(columns))) or '-'} not here): its definition changed "
                          "since (`lgsp warehouse migrations`); restore the whole backup, or put the definition back "
                          "first; nothing was restored")


def _attach_sqlite(conn: sa.Connection, backup: Backup, table: sa.Table, columns: list[str]) -> sa.Table:
    """The backup's SQLite file attached to this connection (read by this restore's statements only; the engine is
    disposed after it) as `lgsp_backup`: its copy of `table`."""
    conn.exec_driver_sql("ATTACH DATABASE ? AS lgsp_backup", (str(backup.path / backup.manifest["store"]["file"]),))
    found = [r[1] for r in conn.exec_driver_sql(f'PRAGMA lgsp_backup.table_info("{table.name}")')]
    _backup_columns(found, columns, table.name, backup)
    return sa.Table(table.name, sa.MetaData(), *(sa.Column(c, table.c[c].type) for c in columns),
                    schema="lgsp_backup")


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _counted(backup: Backup, name: str, staged: int, expected: int) -> None:
    if staged != expected:
        raise BackupError(f"backup {backup.name}: table {name} gave {staged:,} rows, its manifest counted "
                          f"{expected:,}; nothing was restored")


@contextmanager
def _dump_reader(backup: Backup, name: str) -> Iterator[IO[bytes]]:
    """pg_restore's output of table `name`'s data in the backup's dump (`--data-only --table`), to read."""
    command = [_pg_tool("pg_restore"), "--data-only", f"--table={name}", "--file=-",
               str(backup.path / backup.manifest["store"]["file"])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    read = False
    try:
        yield process.stdout
        read = True
    finally:
        if not read:  # the reader stopped early (a refusal): pg_restore is not needed any more
            process.kill()
        process.stdout.close()
        error = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        code = process.wait()
    if code != 0:
        raise BackupError(f"pg_restore could not read table {name} from {backup.name}: {error[-500:]}")


def _stage_postgres(conn: sa.Connection, backup: Backup, name: str, columns: list[str]) -> int:
    """The backup's rows of `name`, COPY's own text from the dump, streamed into the stage in blocks of 1 MB."""
    with _dump_reader(backup, name) as out:
        header = b""
        while not header.startswith(b"COPY "):
            header = out.readline()
            if not header:
                raise BackupError(f"backup {backup.name}: the dump holds no data of table {name}")
        found = [c.strip().strip('"') for c in header.split(b"(", 1)[1].rsplit(b")", 1)[0].decode().split(",")]
        _backup_columns(found, columns, name, backup)
        listed = ", ".join(f'"{c}"' for c in found)
        staged, tail = 0, b""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f'COPY "_lgsp_restore_stage" ({listed}) FROM STDIN') as copy:
            while True:
                block = out.read(1 << 20)
                data = tail + block
                end = 0 if data.startswith(b"\\.\n") else data.find(b"\n\\.\n") + 1  # the data's end marker
                if end > 0 or data.startswith(b"\\.\n"):
                    copy.write(data[:end])
                    staged += data.count(b"\n", 0, end)
                    break
                if not block:
                    raise BackupError(f"backup {backup.name}: the dump's data of table {name} ends early")
                tail, data = data[-3:], data[:-3]  # a marker cut between two blocks is found in the next
                copy.write(data)
                staged += data.count(b"\n")
        while out.read(1 << 20):  # the rest of pg_restore's output, so that its exit is read
            pass
    return staged


def _scope(conn: sa.Connection, table: sa.Table, held: sa.Table, record: list[str],
           where: dict[str, list[Any]]) -> sa.Table:
    """The keys of the records `where` names: those whose row (current version) holds one of each column's values
    in the backup (`held`) or here (`table`), as a temporary table."""
    history = "is_current" in table.c
    listed = []
    for number, (column, values) in enumerate(where.items()):
        holder = sa.Table(f"_lgsp_restore_where_{number}", sa.MetaData(), sa.Column("v", table.c[column].type),
                          prefixes=["TEMPORARY"])
        holder.create(conn)
        for start in range(0, len(values), 10_000):
            conn.execute(holder.insert(), [{"v": v} for v in values[start:start + 10_000]])
        listed.append((column, holder))

    def named(t: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(*(t.c[column].in_(sa.select(holder.c.v)) for column, holder in listed),
                       *([t.c.is_current.is_(sa.true())] if history else []))

    scope = sa.Table("_lgsp_restore_scope", sa.MetaData(),
                     *(sa.Column(k, table.c[k].type, primary_key=True) for k in record), prefixes=["TEMPORARY"])
    scope.create(conn)
    conn.execute(scope.insert().from_select(record, sa.union(
        sa.select(*(held.c[k] for k in record)).where(named(held)),
        sa.select(*(table.c[k] for k in record)).where(named(table)))))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql('ANALYZE "_lgsp_restore_scope"')
    return scope


def _changed_rows(conn: sa.Connection, table: sa.Table, stage: sa.Table, key: list[str]) -> tuple[sa.Table, dict]:
    """The stage's rows `table` lacks or holds differently, copied into a temporary table (one anti-join of the
    stage; then no other pass of it); and what differs: how many of them are missing here, how many differ in
    each column (those here), and a few examples' keys and columns (never their values: a person's data)."""
    compared = ["_row_hash"] + [c for c in ("valid_to", "is_current") if c in table.c]
    same_row = sa.and_(*(table.c[k] == stage.c[k] for k in key),
                       *(table.c[c].is_not_distinct_from(stage.c[c]) for c in compared))
    changed = sa.Table("_lgsp_restore_changed", sa.MetaData(),
                       *(sa.Column(c.name, c.type, primary_key=c.name in key) for c in table.columns),
                       prefixes=["TEMPORARY"])
    changed.create(conn)
    conn.execute(changed.insert().from_select([c.name for c in table.columns], sa.select(
        *(stage.c[c.name] for c in table.columns)).where(~sa.exists().where(same_row))))
    columns = [c.name for c in table.columns if c.name not in key and c.name not in LINEAGE_COLUMNS]
    here = sa.and_(*(table.c[k] == changed.c[k] for k in key))
    flags = [sa.case((table.c[c].is_distinct_from(changed.c[c]), 1), else_=0) for c in columns]
    totals = conn.execute(sa.select(sa.func.count(), *(sa.func.coalesce(sa.func.sum(f), 0) for f in flags))
                          .select_from(changed.join(table, here))).one()
    examples = [{"key": dict(zip(key, row[:len(key)])), "columns": [c for c, f in zip(columns, row[len(key):]) if f]}
                for row in conn.execute(sa.select(*(changed.c[k] for k in key), *flags)
                                        .select_from(changed.join(table, here))
                                        .order_by(*(changed.c[k] for k in key)).limit(EXAMPLES))]
    return changed, {"missing_here": _count(conn, changed) - int(totals[0]), "examples": examples,
                     "columns": {c: int(n) for c, n in zip(columns, totals[1:]) if n}}


def _apply(conn: sa.Connection, wh: Any, spec: Any, table: sa.Table, stage: sa.Table,
           restore_id: str, scope: sa.Table | None = None) -> tuple[int, int, int, dict[str, Any]]:
    """Make `table` hold the stage's rows: (rows written, rows deleted, records tombstoned, what differed:
    `_changed_rows`); with `scope`, only its records' rows (the stage holds no other)."""
    key = [c.name for c in table.primary_key.columns]
    changed, differences = _changed_rows(conn, table, stage, key)
    record = list(spec.key)
    named = [] if scope is None else [sa.exists().where(*(scope.c[k] == table.c[k] for k in record))]
    absent = table.delete().where(~sa.exists().where(*(stage.c[k] == table.c[k] for k in key)), *named)
    if "is_current" in table.c:  # history: records with a current version here and none in the backup
        kept = sa.exists().where(*(stage.c[k] == table.c[k] for k in record), stage.c.is_current.is_(sa.true()))
        gone = conn.execute(sa.select(*(table.c[k] for k in record)).where(table.c.is_current.is_(sa.true()), ~kept,
                                                                           *named).distinct()).all()
        deleted = int(conn.execute(absent).rowcount or 0)
    else:  # one row a record: the rows deleted are the records gone
        gone = conn.execute(absent.returning(*(table.c[k] for k in record))).all()
        deleted = len(gone)
    conn.execute(table.delete().where(sa.exists().where(*(changed.c[k] == table.c[k] for k in key))))
    values = [sa.literal(restore_id).label(c.name) if c.name == "_batch_id" else changed.c[c.name]
              for c in table.columns]
    conn.execute(table.insert().from_select([c.name for c in table.columns], sa.select(*values)))
    written = int(conn.execute(sa.select(sa.func.count()).select_from(changed)).scalar_one())
    if gone:
        wh.record_deletions(conn, spec.name, record, [tuple(r) for r in gone], restore_id)
    return written, deleted, len(gone), differences


def history(url: str) -> list[dict[str, Any]]:
    """Every restore into this store, oldest first: whole ones (`lgsp_restore`) and those of one dataset
    (`lgsp_dataset_restore`; before it was kept, the writes numbered in `lgsp_change` under a `restore:` id): when,
    from which backup, what (everything, a dataset, a dataset's records `where` named), by whom, rows changed."""
    from lgsp.backup import restores
    from warehouse.store import make_engine
    from warehouse.tables import system_tables

    done = [{"restored_at": utc(r["restored_at"]), "backup": r["backup"], "what": "everything", "where": None,
             "restored_by": None, "rows_changed": None} for r in restores(url)]
    engine = make_engine(url)
    tables = system_tables(sa.MetaData())
    change, kept = tables["lgsp_change"].c, tables["lgsp_dataset_restore"].c
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            recorded = set()
            if inspector.has_table("lgsp_dataset_restore"):
                for r in conn.execute(sa.select(kept.restore_id, kept.restored_at, kept.backup, kept.dataset,
                                                kept.scope, kept.restored_by, kept.rows_written, kept.rows_deleted)):
                    recorded.add(r.restore_id)
                    done.append({"restored_at": utc(r.restored_at), "backup": r.backup, "what": r.dataset,
                                 "where": json.loads(r.scope) if r.scope else None, "restored_by": r.restored_by,
                                 "rows_changed": int(r.rows_written + r.rows_deleted)})
            if inspector.has_table("lgsp_change"):
                done += [{"restored_at": utc(at), "backup": batch.split(":")[1], "what": dataset, "where": None,
                          "restored_by": None, "rows_changed": int(rows)} for batch, dataset, rows, at in conn.execute(
                              sa.select(change.batch_id, change.dataset, change.rows_changed, change.committed_at)
                              .where(change.batch_id.like("restore:%"), change.dataset != "*restore*"))
                         if batch not in recorded]
    finally:
        engine.dispose()
    return sorted(done, key=lambda r: r["restored_at"])
