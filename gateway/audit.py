"""The audit of every read: append-only, each row chained to the previous one by hash.

Each row: chain, seq (1, 2, 3, ... no gaps within its chain), when, agency, dataset,
action, the query (filter values on personal columns replaced by their keyed
pseudonym), rows returned, HTTP status, the previous row's hash and its own:

    row_hash = sha256(prev_hash + canonical JSON of the row's other fields)

There is one chain per writing process (on PostgreSQL): a gateway worker claims the
lowest free chain number (0, 1, 2, ...) with a session advisory lock on its audit
connection and is the only writer of that chain while it holds it, so it keeps the
chain's head in memory and appends a group-committed batch in one round trip (one
multi-row INSERT in autocommit), without waiting for the other workers. A worker that
restarts claims a free chain again and continues it from its head. SQLite has one
chain (0), its writers serialised by a file lock.

`verify` walks each chain in seq order and reports any row whose hash does not match
its content (edited), whose prev_hash is not the previous row's hash, a gap in seq
(deleted), and a gap in the chain numbers (a whole chain deleted). Triggers refuse
UPDATE and DELETE (see gateway.tables); the chains catch what someone with the rights
to drop them changes anyway. Deleting the newest rows of a chain leaves a valid
shorter chain: compare the heads `verify` prints with ones kept elsewhere.

Writes are group-committed: a request hands its entry to the writer thread and waits
until the transaction holding it commits, so a response never leaves before its
audit row is durable, while concurrent requests share one transaction.
"""
from __future__ import annotations

import asyncio
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
_ADVISORY_LOCK = 7_000_007  # PostgreSQL: pg_advisory_lock(_ADVISORY_LOCK, chain) is held by the chain's writer
MAX_CHAINS = 1024


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
    if row.get("chain"):  # chain 0 hashes as rows did before there were chains (so their hashes still hold)
        fields["chain"] = row["chain"]
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
        self._head: tuple[int, int, str] | None = None  # PostgreSQL: (chain, seq, hash) of the chain this process holds

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
        if self._thread is not None and self._thread.is_alive():
            return
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
        """Append `entries` to this process's chain in one transaction (retried, from the head read again, if the
        next seq was taken: on SQLite by another process, on PostgreSQL never while the chain's lock is held)."""
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
        head = conn.execute(sa.select(a.seq, a.row_hash).where(a.chain == 0).order_by(a.seq.desc()).limit(1)).first()
        conn.execute(tables.audit.insert(), chain(entries, 0, *((head.seq, head.row_hash) if head else (0, GENESIS))))

    def _append_postgres(self, entries: list[AuditEntry]) -> None:
        """PostgreSQL in one round trip: a multi-row INSERT in autocommit (one transaction) on this process's chain.

        The chain and its head are claimed once per connection (`_claim`); any failure drops the
        connection (and with it the chain's lock), so the next batch claims a chain and reads its head again.
        """
        with self._pg_lock:
            try:
                conn = self._pg_connection()
                if self._head is None:
                    self._head = self._claim(conn)
                rows = chain(entries, *self._head)
                conn.execute(*_insert(rows))
                self._head = (self._head[0], rows[-1]["seq"], rows[-1]["row_hash"])
            except BaseException:
                self._pg_drop()
                raise

    @staticmethod
    def _claim(conn: psycopg.Connection[Any]) -> tuple[int, int, str]:
        """Take the lowest chain number no other connection holds (a session advisory lock) and read its head."""
        for number in range(MAX_CHAINS):
            if conn.execute(_TRY_LOCK, (_ADVISORY_LOCK, number)).fetchone()[0]:  # type: ignore[index]
                head = conn.execute(_HEAD, (number,)).fetchone()
                return (number, *head) if head else (number, 0, GENESIS)
        raise RuntimeError(f"all {MAX_CHAINS} audit chains are held by other connections")

    def _pg_connection(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed:
            url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pg = psycopg.connect(url, autocommit=True)
            self._head = None
        return self._pg

    def _pg_drop(self) -> None:
        """After a failure: close the connection (releasing the chain); the next write claims one afresh."""
        self._head = None
        if self._pg is not None:
            try:
                self._pg.close()
            except psycopg.Error:
                pass
            self._pg = None

    @property
    def chain_number(self) -> int | None:
        """The chain this process writes (PostgreSQL, once it has written), else None."""
        return self._head[0] if self._head else None


_TRY_LOCK = "SELECT pg_try_advisory_lock(%s::int, %s::int)"
_HEAD = "SELECT seq, row_hash FROM gateway_audit WHERE chain = %s ORDER BY seq DESC LIMIT 1"
_COLUMNS = [c.name for c in tables.audit.columns]


_ARRAY_TYPES = {"seq": "bigint", "recorded_at": "timestamptz", "rows_returned": "bigint", "status": "int",
                "chain": "int"}
_INSERT = (f"INSERT INTO gateway_audit ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
           + ", ".join(f"%s::{_ARRAY_TYPES.get(n, 'text')}[]" for n in _COLUMNS) + ")")


def _insert(rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """One INSERT of `rows` (PostgreSQL): one array per column, so the statement is the same for every batch
    size (parsed and planned once per connection) and its parameters are a column count, not a cell count."""
    return _INSERT, [[row[n] for row in rows] for n in _COLUMNS]


class AsyncAuditWriter:
    """Group commit on the event loop (PostgreSQL), for the lean records route (gateway.fast).

    A coroutine appends its entry and awaits its commit; while a batch is being written the
    next entries gather, and the writer task takes them all in the next transaction. The
    writer has its own connection and so its own chain (claimed as `AuditLog` claims one): no
    thread, no lock shared with the process's threaded writer or another process.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pending: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._head: tuple[int, int, str] | None = None

    async def record(self, entry: AuditEntry, timeout_s: float = 30.0) -> None:
        """Write `entry` and return once it is committed.

        Raises:
            AuditUnavailable: the audit could not be written (the caller refuses the read).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, done))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        try:
            async with asyncio.timeout(timeout_s):
                await done  # on a timeout the entry may still be written: over-audited, never under
        except Exception as exc:  # noqa: BLE001 - any failure means "not audited"
            raise AuditUnavailable("the audit log could not record this read") from exc

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._write([entry for entry, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                log.error("audit write failed: %s", type(exc).__name__)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _write(self, entries: list[AuditEntry]) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                self._head = None
            if self._head is None:
                self._head = await self._claim(self._conn)
            rows = chain(entries, *self._head)
            await self._conn.execute(*_insert(rows))
            self._head = (self._head[0], rows[-1]["seq"], rows[-1]["row_hash"])
        except BaseException:
            await self._drop()
            raise

    @staticmethod
    async def _claim(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int, str]:
        for number in range(MAX_CHAINS):
            if (await (await conn.execute(_TRY_LOCK, (_ADVISORY_LOCK, number))).fetchone())[0]:  # type: ignore[index]
                head = await (await conn.execute(_HEAD, (number,))).fetchone()
                return (number, *head) if head else (number, 0, GENESIS)
        raise RuntimeError(f"all {MAX_CHAINS} audit chains are held by other connections")

    async def _drop(self) -> None:
        self._head = None
        if self._conn is not None:
            try:
                await self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    @property
    def chain_number(self) -> int | None:
        """The chain this writer appends to (once it has written), else None."""
        return self._head[0] if self._head else None

    async def close(self) -> None:
        """Write what is pending, then release the connection (and the chain)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=30)
        await self._drop()


def chain(entries: list[AuditEntry], number: int, seq: int, prev: str) -> list[dict[str, Any]]:
    """The audit rows of `entries` in chain `number` after its row (`seq`, `prev` hash): numbered and hashed in order."""
    rows = []
    for entry in entries:
        seq += 1
        row = {"chain": number, "seq": seq, "recorded_at": entry.recorded_at, "agency_id": entry.agency_id,
               "dataset": entry.dataset, "action": entry.action,
               "query": orjson.dumps(entry.query, option=orjson.OPT_SORT_KEYS).decode(),
               "rows_returned": entry.rows_returned, "status": entry.status, "prev_hash": prev}
        row["row_hash"] = prev = row_hash(prev, row)
        rows.append(row)
    return rows


@dataclass
class AuditReport:
    """What `verify` found: rows checked, each chain's head (last seq and hash), problems (empty = intact)."""

    rows: int
    heads: dict[int, tuple[int, str]]
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(engine: sa.Engine, chunk: int = 5000) -> AuditReport:
    """Walk each chain in seq order; report edited rows, broken links, deleted rows and deleted chains."""
    a = tables.audit
    problems: list[str] = []
    heads: dict[int, tuple[int, str]] = {}
    number, expected_seq, prev, rows = -1, 1, GENESIS, 0
    with engine.connect() as conn:
        for row in _stream(conn, sa.select(a).order_by(a.c.chain, a.c.seq), chunk):
            rows += 1
            if row["chain"] != number:
                if number >= 0:
                    heads[number] = (expected_seq - 1, prev)
                if row["chain"] != number + 1:
                    first, last = number + 1, row["chain"] - 1
                    span = f"chain {first}" if first == last else f"chains {first}..{last}"
                    problems.append(f"{span}: no rows (deleted)")
                number, expected_seq, prev = row["chain"], 1, GENESIS
            where = f"chain {number} row {row['seq']}"
            if row["seq"] != expected_seq:
                problems.append(f"chain {number} rows {expected_seq}..{row['seq'] - 1} are missing (deleted)")
            if row["prev_hash"] != prev:
                problems.append(f"{where}: prev_hash does not match row {row['seq'] - 1}'s hash")
            if row_hash(row["prev_hash"], row) != row["row_hash"]:
                problems.append(f"{where}: content does not match its hash (edited)")
            expected_seq, prev = row["seq"] + 1, row["row_hash"]
    if number >= 0:
        heads[number] = (expected_seq - 1, prev)
    return AuditReport(rows=rows, heads=heads, problems=problems)


def _stream(conn: sa.Connection, query: sa.Select, chunk: int) -> Iterable[dict[str, Any]]:
    result = conn.execution_options(stream_results=True, max_row_buffer=chunk).execute(query)
    for row in result.mappings():
        yield dict(row)


def entries(engine: sa.Engine, limit: int = 50, agency_id: str | None = None) -> list[dict[str, Any]]:
    """The most recent audit rows (newest first)."""
    a = tables.audit
    query = sa.select(a).order_by(a.c.recorded_at.desc(), a.c.chain, a.c.seq.desc()).limit(limit)
    if agency_id:
        query = query.where(a.c.agency_id == agency_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
