"""The audit of every read: append-only, each row chained to the previous one by hash.

Each row: seq (1, 2, 3, ... no gaps), when, agency, dataset, action, the query (filter
values on personal columns replaced by their keyed pseudonym), rows returned, HTTP
status, the previous row's hash and its own:

    row_hash = sha256(prev_hash + canonical JSON of the row's other fields)

`verify` walks the table in seq order and reports any row whose hash does not match
its content (edited), whose prev_hash is not the previous row's hash, or a gap in seq
(deleted). Triggers refuse UPDATE and DELETE (see gateway.tables); the chain catches
what someone with the rights to drop them changes anyway. Deleting the newest rows
leaves a valid shorter chain: compare the head `verify` prints with one kept elsewhere.

Writes are group-committed: a request hands its entry to the writer thread and waits
until the transaction holding it commits, so a response never leaves before its
audit row is durable, while concurrent requests share one transaction.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gateway import tables
from warehouse.store import utc

log = logging.getLogger("lgsp.gateway.audit")
GENESIS = "0" * 64
MAX_BATCH = 500
_ADVISORY_LOCK = 7_000_007  # PostgreSQL: one writer of the chain at a time, across processes


class AuditUnavailable(RuntimeError):
    """The audit row could not be written; the read is refused (no data leaves unaudited)."""


@dataclass
class AuditEntry:
    """One read (or refused attempt) to record."""

    agency_id: str
    dataset: str
    action: str
    query: dict[str, Any]
    rows_returned: int | None
    status: int
    recorded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def _canonical(row: dict[str, Any]) -> bytes:
    fields = {k: row[k] for k in ("seq", "agency_id", "dataset", "action", "query", "rows_returned", "status")}
    fields["recorded_at"] = utc(row["recorded_at"]).astimezone(timezone.utc).isoformat(timespec="microseconds")
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The chain hash of `row` after a row whose hash is `prev_hash`."""
    return hashlib.sha256(prev_hash.encode() + _canonical(row)).hexdigest()


class AuditLog:
    """Writes audit entries, chained, with group commit from a writer thread."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._queue: queue.Queue[tuple[AuditEntry, Future[None]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pg: psycopg.Connection[Any] | None = None  # PostgreSQL: the writer's own connection
        self._pg_lock = threading.Lock()

    def record(self, entry: AuditEntry, timeout_s: float = 30.0) -> None:
        """Write `entry` and return once it is committed.

        Raises:
            AuditUnavailable: the audit could not be written (the caller refuses the read).
        """
        self._ensure_writer()
        done: Future[None] = Future()
        self._queue.put((entry, done))
        try:
            done.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not audited"
            raise AuditUnavailable("the audit log could not record this read") from exc

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lgsp-gateway-audit", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the writer after the queued entries are written."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        if self._pg is not None:
            self._pg.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                self.write([entry for entry, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                log.error("audit write failed: %s", type(exc).__name__)
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)

    def write(self, entries: list[AuditEntry], attempts: int = 20) -> None:
        """Append `entries` to the chain in one transaction (retried if another process took the next seq)."""
        for attempt in range(attempts):
            try:
                if self.engine.dialect.name == "postgresql":
                    self._append_postgres(entries)
                else:
                    with self._sqlite_writer(), self.engine.begin() as conn:
                        self._append(conn, entries)
                return
            except (IntegrityError, psycopg.errors.UniqueViolation):
                if attempt == attempts - 1:
                    raise

    @contextmanager
    def _sqlite_writer(self) -> Iterator[None]:
        """One chain writer at a time across processes: a file lock next to the database.

        SQLite's own busy handler would also serialise them, but it polls with sleeps of up
        to 100 ms; a blocked `flock` wakes as soon as the other writer is done.
        """
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.audit-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, conn: sa.Connection, entries: list[AuditEntry]) -> None:
        """SQLite: the first write of the transaction takes the database's write lock, so the head stays ours."""
        a = tables.audit.c
        head = conn.execute(sa.select(a.seq, a.row_hash).order_by(a.seq.desc()).limit(1)).first()
        conn.execute(tables.audit.insert(), chain(entries, *((head.seq, head.row_hash) if head else (0, GENESIS))))

    def _append_postgres(self, entries: list[AuditEntry]) -> None:
        """PostgreSQL in two round trips: lock + read the head; insert + commit (pipelined).

        An advisory lock serialises the chain's writers across processes; each statement
        of the first round trip takes its own snapshot, so the head is read after the lock.
        """
        with self._pg_lock:
            conn = self._pg_connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"BEGIN; SELECT pg_advisory_xact_lock({_ADVISORY_LOCK}); "
                                "SELECT seq, row_hash FROM gateway_audit ORDER BY seq DESC LIMIT 1")
                    cur.nextset()
                    cur.nextset()
                    head = cur.fetchone()
                    rows = chain(entries, *(head if head else (0, GENESIS)))
                    names = [c.name for c in tables.audit.columns]
                    values = ", ".join("(" + ", ".join(["%s"] * len(names)) + ")" for _ in rows)
                    with conn.pipeline():
                        cur.execute(f"INSERT INTO gateway_audit ({', '.join(names)}) VALUES {values}",
                                    [row[n] for row in rows for n in names])
                        cur.execute("COMMIT")
            except BaseException:
                self._pg_reset()
                raise

    def _pg_connection(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed:
            url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pg = psycopg.connect(url, autocommit=True)
        return self._pg

    def _pg_reset(self) -> None:
        """After a failure: roll back what is open, or drop the connection."""
        try:
            if self._pg is not None and not self._pg.closed:
                self._pg.execute("ROLLBACK")
        except psycopg.Error:
            self._pg.close()


def chain(entries: list[AuditEntry], seq: int, prev: str) -> list[dict[str, Any]]:
    """The audit rows of `entries` after the row (`seq`, `prev` hash): numbered and hashed in order."""
    rows = []
    for entry in entries:
        seq += 1
        row = {"seq": seq, "recorded_at": entry.recorded_at, "agency_id": entry.agency_id,
               "dataset": entry.dataset, "action": entry.action,
               "query": orjson.dumps(entry.query, option=orjson.OPT_SORT_KEYS).decode(),
               "rows_returned": entry.rows_returned, "status": entry.status, "prev_hash": prev}
        row["row_hash"] = prev = row_hash(prev, row)
        rows.append(row)
    return rows


@dataclass
class AuditReport:
    """What `verify` found: rows checked, the head (last seq and hash), problems (empty = intact)."""

    rows: int
    head_seq: int
    head_hash: str
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(engine: sa.Engine, chunk: int = 5000) -> AuditReport:
    """Walk the chain in seq order; report edited rows, broken links and deleted rows."""
    a = tables.audit
    problems: list[str] = []
    expected_seq, prev, rows = 1, GENESIS, 0
    with engine.connect() as conn:
        for row in _stream(conn, sa.select(a).order_by(a.c.seq), chunk):
            rows += 1
            if row["seq"] != expected_seq:
                problems.append(f"rows {expected_seq}..{row['seq'] - 1} are missing (deleted)")
            if row["prev_hash"] != prev:
                problems.append(f"row {row['seq']}: prev_hash does not match row {row['seq'] - 1}'s hash")
            if row_hash(row["prev_hash"], row) != row["row_hash"]:
                problems.append(f"row {row['seq']}: content does not match its hash (edited)")
            expected_seq, prev = row["seq"] + 1, row["row_hash"]
    return AuditReport(rows=rows, head_seq=expected_seq - 1, head_hash=prev, problems=problems)


def _stream(conn: sa.Connection, query: sa.Select, chunk: int) -> Iterable[dict[str, Any]]:
    result = conn.execution_options(stream_results=True, max_row_buffer=chunk).execute(query)
    for row in result.mappings():
        yield dict(row)


def entries(engine: sa.Engine, limit: int = 50, agency_id: str | None = None) -> list[dict[str, Any]]:
    """The most recent audit rows (newest first)."""
    a = tables.audit
    query = sa.select(a).order_by(a.c.seq.desc()).limit(limit)
    if agency_id:
        query = query.where(a.c.agency_id == agency_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
