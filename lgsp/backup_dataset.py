"""`lgsp backup restore NAME --dataset D`: one dataset's table put back as a backup holds it, the rest untouched.

A whole restore (lgsp.backup.restore) puts back the store, the lake and the feed's numbering: right after a
dead disk, too much after a bad load of one dataset (a source that sent wrong values that passed the rules,
a mapping bug found a day later). This restores one core table, as a write like any load's:

- the backup is verified first (every file's SHA-256; the dump readable), and the table must have the same
  columns in the backup and here (else `lgsp warehouse migrate` changed it since: said, nothing done);
- its rows are staged from the backup (SQLite: read from the backup's file; PostgreSQL: the table's data
  alone, `pg_restore --data-only --table`, streamed into COPY), their number checked against the manifest;
- in one transaction, with the table locked against loads (PostgreSQL: SHARE ROW EXCLUSIVE, and the rebuild
  lock a load takes): the rows (versions, for a history dataset) the backup does not hold are deleted, those
  it holds differently or that are missing are written as the backup has them, named by the restore's id
  (`restore:<backup>:<time>`, their `_batch_id`); the records gone are tombstoned and the write is numbered
  in `lgsp_change`. So the gateway's change feed tells agencies' copies (`lgsp mirror`) exactly what changed,
  with no token refused; a restore run again changes nothing.

The pipelines' cursors are not moved: the next incremental sync pulls from its cursor (less the pipeline's
`lookback_s`), so what the source changed between the backup and then is not pulled again; `lgsp run PIPELINE
--since <the backup's cursor>` pulls it again (printed). The lake
keeps every page received (it is the record of what came), and GX's results stay.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from catalog import Catalog, load_catalog
from lgsp.backup import Backup, BackupError, _pg_tool, verify
from lgsp.settings import Settings, load_settings, redact_url
from warehouse.store import utc


@dataclass
class DatasetRestored:
    """What `restore_dataset` did."""

    backup: Backup
    dataset: str
    restore_id: str
    rows: int  # rows (versions) the backup holds
    written: int  # rows written as the backup has them (missing here, or held differently)
    deleted: int  # rows deleted (not in the backup)
    records_gone: int  # records tombstoned for the change feed
    cursors: dict[str, dict[str, Any]]  # pipeline -> {"backup": cursor then, "now": cursor now}
    took_s: float

    @property
    def changed(self) -> int:
        return self.written + self.deleted


def restore_dataset(backup: Backup, dataset: str, settings: Settings | None = None,
                    catalog: Catalog | None = None) -> DatasetRestored:
    """Put `dataset`'s core table back as `backup` holds it (see the module's words).

    Raises:
        BackupError: the dataset is unknown or not in the backup, its table's columns changed since, the backup
            is damaged or of another kind of store; nothing is changed then.
    """
    from warehouse import Warehouse

    settings, catalog = settings or load_settings(), catalog or load_catalog()
    started = time.monotonic()
    spec = catalog.datasets.get(dataset)
    if spec is None or spec.layer != "core":
        core = ", ".join(sorted(n for n, d in catalog.datasets.items() if d.layer == "core"))
        raise BackupError(f"{dataset!r} is not a core dataset of the catalog (one of: {core})")
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
    restore_id = f"restore:{backup.name}:{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}"
    try:
        with wh.transaction() as conn:
            if kind == "postgresql":  # loads of the dataset wait; `lgsp warehouse migrate` too
                from warehouse.store import rebuild_lock

                conn.exec_driver_sql("SELECT pg_advisory_xact_lock_shared(%(lock)s)", {"lock": rebuild_lock(dataset)})
                conn.exec_driver_sql(f'LOCK TABLE "{name}" IN SHARE ROW EXCLUSIVE MODE')
            stage = _stage_table(table)
            stage.create(conn)
            staged = _stage_postgres(conn, backup, name, columns) if kind == "postgresql" else \
                _stage_sqlite(conn, stage, backup, name, columns)
            if staged != expected:
                raise BackupError(f"backup {backup.name}: table {name} gave {staged:,} rows, its manifest counted "
                                  f"{expected:,}; nothing was restored")
            _index_stage(conn, table)
            written, deleted, gone = _apply(conn, wh, spec, table, stage, restore_id)
            wh.stamp_change(conn, restore_id, dataset, written + deleted)
    finally:
        wh.engine.dispose()  # its connections closed: the temporary tables (and an attached backup) go with them
    now = {p.name: wh.get_cursor(p.name) for p in catalog.pipelines.values() if p.dataset == dataset}
    cursors = {p: {"backup": _instant((backup.manifest.get("pipelines", {}).get(p) or {}).get("cursor")),
                   "now": value.isoformat() if value else None} for p, value in now.items()}
    return DatasetRestored(backup, dataset, restore_id, staged, written, deleted, gone, cursors,
                           round(time.monotonic() - started, 3))


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


def _stage_sqlite(conn: sa.Connection, stage: sa.Table, backup: Backup, name: str, columns: list[str]) -> int:
    """The backup's rows of `name`, copied as stored from its SQLite file (attached to this connection, read only
    by this statement; the engine is disposed after the restore) into the stage."""
    conn.exec_driver_sql("ATTACH DATABASE ? AS lgsp_backup", (str(backup.path / backup.manifest["store"]["file"]),))
    found = [r[1] for r in conn.exec_driver_sql(f'PRAGMA lgsp_backup.table_info("{name}")')]
    _backup_columns(found, columns, name, backup)
    listed = ", ".join(f'"{c}"' for c in columns)
    conn.exec_driver_sql(f'INSERT INTO "{stage.name}" ({listed}) SELECT {listed} FROM lgsp_backup."{name}"')
    return int(conn.exec_driver_sql(f'SELECT count(*) FROM "{stage.name}"').scalar_one())


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


def _apply(conn: sa.Connection, wh: Any, spec: Any, table: sa.Table, stage: sa.Table,
           restore_id: str) -> tuple[int, int, int]:
    """Make `table` hold the stage's rows: (rows written, rows deleted, records tombstoned)."""
    key = [c.name for c in table.primary_key.columns]
    compared = ["_row_hash"] + [c for c in ("valid_to", "is_current") if c in table.c]
    same_row = sa.and_(*(table.c[k] == stage.c[k] for k in key),
                       *(table.c[c].is_not_distinct_from(stage.c[c]) for c in compared))
    changed = sa.Table("_lgsp_restore_changed", sa.MetaData(), *(sa.Column(k, table.c[k].type, primary_key=True)
                                                                 for k in key), prefixes=["TEMPORARY"])
    changed.create(conn)
    conn.execute(changed.insert().from_select(key, sa.select(*(stage.c[k] for k in key)).where(
        ~sa.exists().where(same_row))))
    record = list(spec.key)
    absent = table.delete().where(~sa.exists().where(*(stage.c[k] == table.c[k] for k in key)))
    if "is_current" in table.c:  # history: records with a current version here and none in the backup
        kept = sa.exists().where(*(stage.c[k] == table.c[k] for k in record), stage.c.is_current.is_(sa.true()))
        gone = conn.execute(sa.select(*(table.c[k] for k in record)).where(table.c.is_current.is_(sa.true()), ~kept)
                            .distinct()).all()
        deleted = int(conn.execute(absent).rowcount or 0)
    else:  # one row a record: the rows deleted are the records gone
        gone = conn.execute(absent.returning(*(table.c[k] for k in record))).all()
        deleted = len(gone)
    conn.execute(table.delete().where(sa.exists().where(*(changed.c[k] == table.c[k] for k in key))))
    values = [sa.literal(restore_id).label(c.name) if c.name == "_batch_id" else stage.c[c.name]
              for c in table.columns]
    conn.execute(table.insert().from_select([c.name for c in table.columns], sa.select(*values).where(
        sa.exists().where(*(changed.c[k] == stage.c[k] for k in key)))))
    written = int(conn.execute(sa.select(sa.func.count()).select_from(changed)).scalar_one())
    if gone:
        wh.record_deletions(conn, spec.name, record, [tuple(r) for r in gone], restore_id)
    return written, deleted, len(gone)


def history(url: str) -> list[dict[str, Any]]:
    """Every restore into this store, oldest first: whole ones (`lgsp_restore`) and those of one dataset (the writes
    numbered in `lgsp_change` under a `restore:` id): when, from which backup, what, rows changed."""
    from lgsp.backup import restores
    from warehouse.store import make_engine
    from warehouse.tables import system_tables

    done = [{"restored_at": utc(r["restored_at"]), "backup": r["backup"], "what": "everything",
             "rows_changed": None} for r in restores(url)]
    engine = make_engine(url)
    change = system_tables(sa.MetaData())["lgsp_change"].c
    try:
        with engine.connect() as conn:
            if sa.inspect(conn).has_table("lgsp_change"):
                done += [{"restored_at": utc(at), "backup": batch.split(":")[1], "what": dataset,
                          "rows_changed": int(rows)} for batch, dataset, rows, at in conn.execute(
                              sa.select(change.batch_id, change.dataset, change.rows_changed, change.committed_at)
                              .where(change.batch_id.like("restore:%"), change.dataset != "*restore*"))]
    finally:
        engine.dispose()
    return sorted(done, key=lambda r: r["restored_at"])
