"""Backups of everything lgsp keeps, and restoring one (`lgsp backup`).

A backup is a folder `lgsp-<UTC time>[-label]` under the backup root (`LGSP_BACKUP_DIR`, default
`$LGSP_HOME/backups`; put it on another disk) holding:

    manifest.json     when, from where, each table's rows, each pipeline's cursor, every file's size and SHA-256
    store.sqlite      the embedded store, copied by SQLite's online backup API (one consistent instant,
                      while pipelines and the gateway go on writing), or
    store.pgdump      PostgreSQL's store: `pg_dump --format=custom` in the snapshot the row counts were read in
    lake/raw/...      the lake's Parquet files, each dataset copied while its compaction is held off
    lake/landing/...  the pages as received that retention has not pruned yet, and every batch's manifest
    gx/...            Great Expectations' stored results and Data Docs

A file the previous backup holds with the same size and modification time (the lake's files are written
once, under a new name) is hard-linked from it instead of copied: nightly backups of a lake cost one lake
of disk plus what changed.

It is built under `.partial-<name>/` and renamed into place once every file is written and its
manifest flushed: a backup that is listed is whole; one killed half-way is never listed and the
next backup deletes it. The store is copied first, then the lake: every batch the store names
has its files in the lake copy (a batch written meanwhile may be in the lake copy and not in
the store's: its rows come again with the next sync).

`verify` reads every file back against its size and SHA-256, checks the SQLite copy's integrity
and row counts (`PRAGMA integrity_check`) or that `pg_restore` can read the dump.

`restore` verifies first and refuses a damaged backup; takes a backup of the current state
(label `before-restore`) unless told not to; puts the store back in one transaction (SQLite's
backup API into the live file; `pg_restore --clean --single-transaction`); swaps the lake's
`raw/` and `landing/` folders and `gx/` for the backup's in one atomic rename each; and records
the restore (`lgsp_restore`), numbering the change feed's next writes above every number
issued before, so an agency holding a token from the writes the restore undid is told to read
the dataset afresh instead of missing writes. Pipelines then resume from the backup's cursors:
the next sync pulls again what changed since, merged without duplicates. A restore killed
half-way is run again.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from lgsp.settings import Settings, load_settings, redact_url
from warehouse.lake import _exchange_dirs, _fsync

FORMAT = 1
BACKUP_DIR_ENV = "LGSP_BACKUP_DIR"
KEEP_ENV = "LGSP_BACKUP_KEEP"
MAX_AGE_ENV = "LGSP_BACKUP_MAX_AGE_HOURS"
DEFAULT_KEEP = 7
DEFAULT_MAX_AGE_HOURS = 48.0
PREFIX = "lgsp-"
PARTIAL = ".partial-"
MANIFEST = "manifest.json"
LAKE_PARTS = ("raw", "landing", "removed")  # the lake's folders a backup keeps (not .staging, .locks: work in progress)
CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup or a restore could not be made; the message says what, where and what to do."""


@dataclass
class Backup:
    """One complete backup: its folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    @property
    def bytes(self) -> int:
        return sum(entry[0] for entry in self.manifest["files"].values())

    @property
    def rows(self) -> int:
        return sum(self.manifest["store"]["tables"].values())

    @property
    def lake_files(self) -> int:
        return sum(1 for name in self.manifest["files"] if name.startswith("lake/"))


@dataclass
class Verified:
    """What `verify` found: nothing in `problems` means every file is as it was written."""

    backup: Backup
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Restored:
    """What `restore` did."""

    backup: Backup
    safety: Backup | None
    tables: int
    rows: int
    lake_files: int
    changes_from: int  # the feed's numbers from here on were issued before the restore for writes it undid...
    changes_to: int  # ...up to here: tokens in this range are refused with "read it afresh"
    took_s: float


def backup_root(settings: Settings | None = None) -> Path:
    """Where backups go: `LGSP_BACKUP_DIR`, else `$LGSP_HOME/backups`."""
    settings = settings or load_settings()
    return Path(os.environ.get(BACKUP_DIR_ENV) or settings.home / "backups").resolve()


def keep_count() -> int:
    """How many backups `create` keeps (`LGSP_BACKUP_KEEP`, default 7)."""
    text = os.environ.get(KEEP_ENV, "").strip()
    if not text:
        return DEFAULT_KEEP
    if not text.isdigit() or int(text) < 1:
        raise BackupError(f"{KEEP_ENV}={text!r} is not a number of backups (1 or more)")
    return int(text)


def max_age() -> timedelta | None:
    """After how long `lgsp status` warns that the latest backup is old (`LGSP_BACKUP_MAX_AGE_HOURS`; `off`)."""
    text = os.environ.get(MAX_AGE_ENV, "").strip()
    if text.lower() == "off":
        return None
    try:
        hours = float(text) if text else DEFAULT_MAX_AGE_HOURS
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise BackupError(f"{MAX_AGE_ENV}={text!r} is not a number of hours (48, 0.5) or 'off'")
    return timedelta(hours=hours)


# ---------------------------------------------------------------------------------------------- listing


def backups(root: Path | None = None) -> list[Backup]:
    """The complete backups under `root`, oldest first (a folder without a readable manifest is not one)."""
    root = root or backup_root()
    found = []
    if root.is_dir():
        for path in root.iterdir():
            if not path.name.startswith(PREFIX) or not path.is_dir():
                continue
            try:
                manifest = json.loads((path / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if manifest.get("format") == FORMAT:
                found.append(Backup(path, manifest))
    return sorted(found, key=lambda b: (b.manifest["created_at"], b.name))


def find(name: str, root: Path | None = None) -> Backup:
    """A backup by its folder (a path), its name, or `latest`."""
    root = root or backup_root()
    candidates = backups(root)
    if name == "latest":
        if not candidates:
            raise BackupError(f"no backup in {root}: `lgsp backup create` makes one")
        return candidates[-1]
    path = Path(name)
    if path.is_dir():
        path = path.resolve()
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BackupError(f"{path} is not a whole lgsp backup: its {MANIFEST} cannot be read ({exc})") from None
        return Backup(path, manifest)
    for backup in candidates:
        if backup.name == name:
            return backup
    raise BackupError(f"no backup named {name!r} in {root} (`lgsp backup list`)")


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest backups (0: none), and what killed backups left; the names deleted."""
    gone = []
    for backup in backups(root)[:-keep] if keep else []:
        shutil.rmtree(backup.path)
        gone.append(backup.name)
    for path in root.glob(PARTIAL + "*"):
        shutil.rmtree(path, ignore_errors=True)
        gone.append(path.name)
    return gone


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One backup or restore at a time per backup root."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup or restore is running on {root}; wait for it to finish") from None
        yield


# ---------------------------------------------------------------------------------------------- files


def _copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file, hashing it on the way; (bytes, sha256)."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, target)
    return size, digest.hexdigest()


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, skipping hidden names (a file being written, `.staging`, `.locks`)."""
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


@dataclass
class _Copying:
    """Where a backup's files come from, and what it can take from the previous backup instead of copying."""

    files: dict[str, list[Any]]
    previous: Backup | None
    linked: int = 0
    bytes_copied: int = 0


def _copy_tree(source: Path, target: Path, prefix: str, copying: _Copying) -> None:
    """Copy every file under `source`; one the previous backup holds unchanged (same size and modification time:
    the lake's files are written once, under a new name) is hard-linked from it instead, its hash taken along."""
    previous = copying.previous
    for path in _files_under(source):
        relative = path.relative_to(source)
        name, destination = f"{prefix}/{relative.as_posix()}", target / relative
        try:
            stat = path.stat()
            if previous is not None and _link(previous, name, stat, destination):
                copying.files[name] = list(previous.manifest["files"][name])
                copying.linked += 1
                continue
            size, sha = _copy(path, destination)
        except FileNotFoundError:  # a landed page pruned meanwhile: its batch is in the store already
            continue
        copying.files[name] = [size, sha]
        copying.bytes_copied += size


def _link(previous: Backup, name: str, stat: os.stat_result, destination: Path) -> bool:
    entry = previous.manifest["files"].get(name)
    held = previous.path / name
    if entry is None or entry[0] != stat.st_size:
        return False
    try:
        kept = held.stat()
        if kept.st_size != stat.st_size or kept.st_mtime_ns != stat.st_mtime_ns:
            return False
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.link(held, destination)
    except OSError:  # gone, or another file system: copied instead
        return False
    return True


# ---------------------------------------------------------------------------------------------- the store


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"the store {redact_url(url)} is not a file: nothing to back up")
    return Path(database)


def _sqlite_tables(conn: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def _sqlite_backup(url: str, target: Path) -> tuple[dict[str, int], dict[str, Any]]:
    """The live SQLite store copied in one instant by the online backup API; (rows per table, pipelines)."""
    source_path = _sqlite_path(url)
    if not source_path.exists():
        raise BackupError(f"the store {source_path} does not exist: run a pipeline (or `lgsp demo`) first")
    source = sqlite3.connect(source_path, timeout=60)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one file, whatever the live store's mode
        tables = _sqlite_tables(copy)
        return tables, _pipelines(lambda q: copy.execute(q).fetchall(), tables)
    finally:
        copy.close()
        source.close()


def _pipelines(query: Callable[[str], list[Any]], tables: dict[str, int]) -> dict[str, Any]:
    """Each pipeline's cursor and last complete sync in the copy: the point a restore goes back to."""
    if "lgsp_cursor" not in tables:
        return {}
    rows = query("SELECT pipeline, cursor_value, synced_at, batch_id FROM lgsp_cursor ORDER BY pipeline")
    return {r[0]: {"cursor": _text(r[1]), "synced_at": _text(r[2]), "batch": r[3]} for r in rows}


def _text(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value is not None else None)


def _pg_conninfo(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string for pg_dump/pg_restore and the environment carrying the password (never argv)."""
    from psycopg.conninfo import make_conninfo

    parsed = make_url(url)
    parts = {"host": parsed.host, "port": parsed.port, "dbname": parsed.database, "user": parsed.username}
    parts.update({k: v for k, v in parsed.query.items() if isinstance(v, str)})
    conninfo = make_conninfo("", **{k: str(v) for k, v in parts.items() if v is not None})  # quoted as libpq reads it
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return conninfo, env


def _pg_tool(name: str, server_major: int | None = None) -> str:
    """pg_dump or pg_restore: from LGSP_PG_BIN, else the newest under /usr/lib/postgresql, else the PATH."""
    folder = os.environ.get("LGSP_PG_BIN")
    candidates = [Path(folder) / name] if folder else []
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                         key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
                         reverse=True)
    on_path = shutil.which(name)
    candidates += [Path(on_path)] if on_path else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    major = f"-{server_major}" if server_major else ""
    raise BackupError(f"{name} is not installed, and a PostgreSQL store is backed up with it: install PostgreSQL's "
                      f"client programs of the server's version or newer (Debian: apt-get install "
                      f"postgresql-client{major}), or set LGSP_PG_BIN to the folder holding them")


def _run_tool(command: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(f"{what} failed ({Path(command[0]).name} exit {done.returncode}): "
                          + " / ".join(said[-5:] or ["no message"]))


def _pg_backup(url: str, target: Path) -> tuple[dict[str, int], dict[str, Any], str]:
    """pg_dump in the snapshot the row counts are read in; (rows per table, pipelines, server version)."""
    import psycopg

    conninfo, env = _pg_conninfo(url)
    with psycopg.connect(conninfo, password=env.get("PGPASSWORD")) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])
        major = int(version.split(".")[0].split()[0])
        tool = _pg_tool("pg_dump", major)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        names = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                                            "ORDER BY tablename")]
        tables = {n: int(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}
        pipelines = _pipelines(lambda q: conn.execute(q).fetchall(), tables)
        _run_tool([tool, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                   f"--file={target}", f"--dbname={conninfo}"], env, "pg_dump of the store")
        conn.execute("COMMIT")
    return tables, pipelines, version


# ---------------------------------------------------------------------------------------------- create


def create(settings: Settings | None = None, root: Path | None = None, label: str | None = None,
           keep: int | None = None, now: datetime | None = None) -> Backup:
    """Back up the store, the lake and GX's results into a new folder under `root`; then keep the `keep` newest."""
    settings = settings or load_settings()
    root = root or backup_root(settings)
    keep = keep_count() if keep is None else keep
    if label is not None and not label.replace("-", "").isalnum():
        raise BackupError(f"a backup label is letters, digits and '-': {label!r}")
    with _exclusive(root):
        return _create(settings, root, label, keep, now)


def _create(settings: Settings, root: Path, label: str | None, keep: int, now: datetime | None) -> Backup:
    started = time.monotonic()
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    stem, n = PREFIX + now.strftime("%Y%m%dT%H%M%SZ"), 1
    name = stem + (f"-{label}" if label else "")
    while (root / name).exists() or (root / (PARTIAL + name)).exists():  # two backups within a second
        n += 1
        name = f"{stem}-{n}" + (f"-{label}" if label else "")
    earlier = backups(root)
    previous = earlier[-1] if earlier else None
    _room_for(settings, root, previous)
    work = root / (PARTIAL + name)
    work.mkdir(parents=True)
    try:
        manifest = _fill(settings, work, now, label, previous, started)
    except BaseException as exc:  # a backup that failed leaves nothing: its space back, nothing half listed
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise BackupError(f"{root} ran out of space during the backup (nothing was kept): free some, or set "
                              f"{BACKUP_DIR_ENV} to a disk with room, or keep fewer (`{KEEP_ENV}`)") from None
        if isinstance(exc, (OSError, sqlite3.Error)):
            raise BackupError(f"the backup failed, nothing was kept: {exc}") from None
        raise
    os.rename(work, root / name)
    _fsync(root)  # the rename survives a power cut
    prune(root, keep)
    return Backup(root / name, manifest)


def _room_for(settings: Settings, root: Path, previous: Backup | None) -> None:
    """Refuse before starting when the backup root has clearly too little space for the store and the new files."""
    need = _store_bytes(settings.database_url)
    for part in LAKE_PARTS:
        for path in _files_under(settings.lake_root / part):
            name = f"lake/{part}/{path.relative_to(settings.lake_root / part).as_posix()}"
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            entry = previous.manifest["files"].get(name) if previous else None
            need += 0 if entry is not None and entry[0] == size else size
    free = shutil.disk_usage(root).free
    if free < need * 1.1:
        raise BackupError(f"{root} has {free / 1e6:,.1f} MB free and the backup needs about {need / 1e6:,.1f} MB: "
                          f"free some space, set {BACKUP_DIR_ENV} to a disk with room, or keep fewer ({KEEP_ENV})")


def _store_bytes(url: str) -> int:
    """About what the store's copy takes: the SQLite file, or PostgreSQL's database size (a dump is smaller)."""
    if make_url(url).get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        return path.stat().st_size if path.exists() else 0
    import psycopg

    conninfo, env = _pg_conninfo(url)
    try:
        with psycopg.connect(conninfo, password=env.get("PGPASSWORD"), connect_timeout=10) as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]) // 2
    except psycopg.Error as exc:
        raise BackupError(f"cannot reach the store {redact_url(url)} to back it up: {exc}".strip()) from None


def _fill(settings: Settings, work: Path, now: datetime, label: str | None, previous: Backup | None,
          started: float) -> dict[str, Any]:
    """Write the backup's files into `work`; its manifest."""
    from warehouse import Lake

    files: dict[str, list[Any]] = {}
    kind = make_url(settings.database_url).get_backend_name()
    store: dict[str, Any] = {"kind": kind, "url": redact_url(settings.database_url)}
    if kind == "sqlite":
        store["file"] = "store.sqlite"
        tables, pipelines = _sqlite_backup(settings.database_url, work / store["file"])
    elif kind == "postgresql":
        store["file"] = "store.pgdump"
        tables, pipelines, store["server_version"] = _pg_backup(settings.database_url, work / store["file"])
    else:
        raise BackupError(f"lgsp backs up SQLite and PostgreSQL stores, not {kind}")
    store["tables"] = tables
    files[store["file"]] = list(_hash(work / store["file"]))
    copying = _Copying(files, previous, bytes_copied=files[store["file"]][0])
    lake = Lake(settings.lake_root)
    with ExitStack() as held:  # compaction of every dataset waits until its files are copied
        for dataset in lake.datasets():
            held.enter_context(lake.steady(dataset))
        for part in LAKE_PARTS:
            _copy_tree(settings.lake_root / part, work / "lake" / part, f"lake/{part}", copying)
    _copy_tree(settings.home / "gx", work / "gx", "gx", copying)
    manifest = {"format": FORMAT, "created_at": now.isoformat(), "label": label, "home": str(settings.home),
                "lake": str(settings.lake_root), "store": store, "pipelines": pipelines,
                "lake_rows": _lake_rows(work / "lake" / "raw"), "files": files,
                "linked": {"files": copying.linked, "from": copying.previous.name if copying.previous else None},
                "bytes_copied": copying.bytes_copied, "took_s": round(time.monotonic() - started, 3)}
    _write_json(work / MANIFEST, manifest)
    return manifest


def _lake_rows(raw: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    rows: dict[str, int] = {}
    for path in _files_under(raw):
        if path.suffix == ".parquet":
            dataset = path.relative_to(raw).parts[0]
            rows[dataset] = rows.get(dataset, 0) + pq.ParquetFile(path).metadata.num_rows
    return rows


def _write_json(path: Path, value: Any) -> None:
    with path.open("w") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------- verify


def verify(backup: Backup) -> Verified:
    """Read every file of the backup back against its manifest, and check the store's copy."""
    result = Verified(backup)
    listed = backup.manifest["files"]
    for name, (size, sha) in sorted(listed.items()):
        path = backup.path / name
        if not path.is_file():
            result.problems.append(f"{name}: missing")
            continue
        got_size, got_sha = _hash(path)
        result.files += 1
        if got_size != size:
            result.problems.append(f"{name}: {got_size:,} bytes, the backup wrote {size:,}")
        elif got_sha != sha:
            result.problems.append(f"{name}: its content changed since the backup (SHA-256 differs)")
    extra = sorted(p.relative_to(backup.path).as_posix() for p in _files_under(backup.path)
                   if p.name != MANIFEST and p.relative_to(backup.path).as_posix() not in listed)
    result.problems += [f"{name}: not written by the backup" for name in extra]
    store = backup.manifest["store"]
    store_file = backup.path / store["file"]
    if result.ok and store["kind"] == "sqlite":
        result.problems += _check_sqlite(store_file, store["tables"])
    elif result.ok:
        try:
            _run_tool([_pg_tool("pg_restore"), "--list", str(store_file)], dict(os.environ), "reading the dump")
        except BackupError as exc:
            result.problems.append(f"{store['file']}: {exc}")
    return result


def _check_sqlite(path: Path, expected: dict[str, int]) -> list[str]:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            said = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if said != ["ok"]:
                return [f"{path.name}: SQLite's integrity check: {'; '.join(said[:5])}"]
            tables = _sqlite_tables(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [f"{path.name}: not a readable SQLite database ({exc})"]
    return [f"{path.name}: table {name} has {tables.get(name, 0):,} rows, the backup counted {rows:,}"
            for name, rows in expected.items() if tables.get(name) != rows]


# ---------------------------------------------------------------------------------------------- restore


def gateway_running(settings: Settings) -> int | None:
    """The pid of an `lgsp serve` of this LGSP_HOME that is running, if one is."""
    try:
        pid = int((settings.home / "gateway.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def restore(backup: Backup, settings: Settings | None = None, safety: bool = True,
            root: Path | None = None) -> Restored:
    """Put the store, the lake and GX's results back as they were in `backup` (see the module's words)."""
    settings = settings or load_settings()
    root = root or backup_root(settings)
    started = time.monotonic()
    pid = gateway_running(settings)
    if pid is not None:
        raise BackupError(f"the gateway (`lgsp serve`, pid {pid}) is running on this LGSP_HOME: stop it (and pause "
                          "the Airflow DAGs) before a restore, then start it again")
    checked = verify(backup)
    if not checked.ok:
        raise BackupError(f"backup {backup.path} is damaged, nothing was restored: " + "; ".join(checked.problems[:5])
                          + ("" if len(checked.problems) <= 5 else f" (and {len(checked.problems) - 5} more)"))
    kind = make_url(settings.database_url).get_backend_name()
    held = backup.manifest["store"]["kind"]
    if kind != held:
        raise BackupError(f"backup {backup.name} holds a {held} store and this lgsp's is {kind} "
                          f"({redact_url(settings.database_url)}): restore it into a {held} store (LGSP_DATABASE_URL)")
    with _exclusive(root):
        issued = _highest_change(settings.database_url)
        kept = None
        if safety and _has_store(settings):
            kept = _create(settings, root, "before-restore", 0, None)  # deletes no backup: a restore never does
        store_file = backup.path / backup.manifest["store"]["file"]
        if kind == "sqlite":
            _sqlite_restore(store_file, _sqlite_path(settings.database_url))
        else:
            conninfo, env = _pg_conninfo(settings.database_url)
            _run_tool([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges",
                       "--single-transaction", "--exit-on-error", f"--dbname={conninfo}", str(store_file)],
                      env, "pg_restore of the store")
        _swap_lake(backup, settings)
        restored_to = _record_restore(settings.database_url, backup, issued)
    return Restored(backup, kept, len(backup.manifest["store"]["tables"]), backup.rows, backup.lake_files,
                    restored_to + 1, issued, round(time.monotonic() - started, 3))


def _has_store(settings: Settings) -> bool:
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        return _sqlite_path(settings.database_url).exists()
    return True


def _sqlite_restore(source: Path, live: Path) -> None:
    """The backup's pages written into the live file by SQLite's backup API: one transaction, WAL handled."""
    live.parent.mkdir(parents=True, exist_ok=True)
    copy = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    target = sqlite3.connect(live, timeout=60)
    try:
        copy.backup(target)
    finally:
        target.close()
        copy.close()


def _swap_lake(backup: Backup, settings: Settings) -> None:
    """Each of the lake's folders (and gx/) replaced by the backup's in one rename; the old one deleted after."""
    from warehouse import Lake

    lake = Lake(settings.lake_root)
    name = f"restore-{os.getpid()}-{time.monotonic_ns()}"
    staging = settings.lake_root / ".staging" / name  # on the lake's file system, so a rename swaps the folders
    aside = settings.home / f".{name}"  # and on the home's, for gx/
    pairs = [(backup.path / "lake" / part, settings.lake_root / part, staging / part) for part in LAKE_PARTS]
    pairs.append((backup.path / "gx", settings.home / "gx", aside / "gx"))
    datasets = set(lake.datasets()) | {p.name for p in (backup.path / "lake" / "raw").glob("*") if p.is_dir()}
    with ExitStack() as held:  # no batch written and no compaction while the folders change
        for dataset in sorted(datasets):
            held.enter_context(lake.held_alone(dataset))
        for source, live, new in pairs:
            if source.is_dir():
                shutil.copytree(source, new)
            else:
                new.mkdir(parents=True)
            if live.is_dir():
                _exchange_dirs(new, live)  # `new` now holds the old folder
                shutil.rmtree(new)
            else:
                live.parent.mkdir(parents=True, exist_ok=True)
                os.rename(new, live)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def _highest_change(url: str) -> int:
    """The highest change number the store has issued (0 without one)."""
    from warehouse.store import make_engine

    if make_url(url).get_backend_name() == "sqlite" and not _sqlite_path(url).exists():
        return 0
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("lgsp_change"):
                return 0
            return int(conn.execute(sa.text("SELECT coalesce(max(change_seq), 0) FROM lgsp_change")).scalar() or 0)
    finally:
        engine.dispose()


def _record_restore(url: str, backup: Backup, issued: int) -> int:
    """Record the restore; number the next write above `issued`. The highest number the backup holds."""
    from warehouse.store import make_engine
    from warehouse.tables import restore_table

    engine = make_engine(url)
    try:
        table = restore_table(sa.MetaData())
        table.create(engine, checkfirst=True)
        with engine.begin() as conn:
            held = int(conn.execute(sa.text("SELECT coalesce(max(change_seq), 0) FROM lgsp_change")).scalar() or 0) \
                if sa.inspect(conn).has_table("lgsp_change") else 0
            conn.execute(table.insert().values(
                restored_at=datetime.now(timezone.utc), backup=backup.name,
                backup_created_at=backup.created_at, changes_from=held + 1, changes_to=issued))
            if issued > held:  # the restore's own number, above the undone ones: no token names two writes, and
                # a token issued from now on (numbered from here) is above the undone range
                conn.execute(sa.text("INSERT INTO lgsp_change (change_seq, batch_id, dataset, rows_changed, "
                                     "committed_at) VALUES (:seq, :batch, '*restore*', 0, :at)"),
                             {"seq": issued + 1, "batch": f"restore:{backup.name}:{issued}",
                              "at": datetime.now(timezone.utc)})
        return held
    finally:
        engine.dispose()


def restores(url: str) -> list[dict[str, Any]]:
    """The restores recorded in the store, oldest first."""
    from warehouse.store import make_engine
    from warehouse.tables import restore_table

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("lgsp_restore"):
                return []
            table = restore_table(sa.MetaData())
            return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.restored_at))]
    finally:
        engine.dispose()

