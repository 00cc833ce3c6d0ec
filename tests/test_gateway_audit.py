"""The audit's per-process hash chains on a real PostgreSQL: concurrent writers, tampering in any chain found.

Two `AuditLog`s stand for two gateway worker processes: each has its own connection, so
each claims its own chain (a session advisory lock), as two uvicorn workers do.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from gateway.audit import AuditEntry, AuditLog, verify
from gateway.service import _write_engine
from gateway.tables import create_gateway_tables

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = _write_engine(pg_url)
    create_gateway_tables(engine)
    yield engine
    engine.dispose()


def _entry(n: int, agency: str = "so_y_te") -> AuditEntry:
    return AuditEntry(agency_id=agency, dataset="citizen", action="records", query={"n": n}, rows_returned=n,
                      status=200)


def _write_concurrently(logs: list[AuditLog], per_log: int) -> None:
    def run(log: AuditLog, agency: str) -> None:
        for n in range(per_log):
            log.record(_entry(n, agency))

    threads = [threading.Thread(target=run, args=(log, f"agency_{i}")) for i, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def _tamper(engine: sa.Engine, statement: str, **params: object) -> None:
    """What someone with the rights to lift the append-only triggers could do."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE gateway_audit DISABLE TRIGGER USER"))
        conn.execute(sa.text(statement), params)
        conn.execute(sa.text("ALTER TABLE gateway_audit ENABLE TRIGGER USER"))


def test_two_writers_keep_one_chain_each_and_any_edit_or_deletion_is_found(engine: sa.Engine) -> None:
    first, second = AuditLog(engine), AuditLog(engine)
    try:
        _write_concurrently([first, second], 40)
        assert {first.chain_number, second.chain_number} == {0, 1}  # neither waited on the other's chain
        report = verify(engine)
        assert report.intact, report.problems
        assert report.rows == 80 and set(report.heads) == {0, 1}
        assert all(seq == 40 for seq, _ in report.heads.values())
        with engine.connect() as conn:  # a chain is one writer's: its rows all come from one agency here
            per_chain = conn.execute(sa.text(
                "SELECT chain, count(DISTINCT agency_id) FROM gateway_audit GROUP BY chain")).all()
        assert sorted(per_chain) == [(0, 1), (1, 1)]

        # a writer that goes on after a restart continues its chain from the head in the database
        second.close()
        restarted = AuditLog(engine)
        restarted.record(_entry(99))
        assert restarted.chain_number == second.chain_number
        assert verify(engine).intact
        restarted.close()
    finally:
        first.close()
        second.close()

    for chain in (0, 1):
        with engine.connect() as conn:
            original = dict(conn.execute(sa.text("SELECT * FROM gateway_audit WHERE chain = :c AND seq = 7"),
                                         {"c": chain}).mappings().one())
        _tamper(engine, "UPDATE gateway_audit SET rows_returned = 12345 WHERE chain = :c AND seq = 7", c=chain)
        assert verify(engine).problems == [f"chain {chain} row 7: content does not match its hash (edited)"]
        _tamper(engine, "UPDATE gateway_audit SET rows_returned = :r WHERE chain = :c AND seq = 7",
                r=original["rows_returned"], c=chain)
        assert verify(engine).intact

        _tamper(engine, "DELETE FROM gateway_audit WHERE chain = :c AND seq = 7", c=chain)
        assert verify(engine).problems == [f"chain {chain} rows 7..7 are missing (deleted)",
                                           f"chain {chain} row 8: prev_hash does not match row 7's hash"]
        _tamper(engine, "INSERT INTO gateway_audit SELECT * FROM json_populate_record(NULL::gateway_audit, :row)",
                row=json.dumps(original, default=str))
        assert verify(engine).intact

    # a row moved to the other chain (renumbered to fit) does not match its hash there. The restarted
    # writer's chain (second's: 0 or 1, whichever it claimed first) has 41 rows, the other 40
    longer, shorter = second.chain_number, first.chain_number
    _tamper(engine, "UPDATE gateway_audit SET chain = 5 WHERE chain = :c AND seq = 41", c=longer)
    _tamper(engine, "UPDATE gateway_audit SET chain = :c, seq = 41 WHERE chain = :s AND seq = 40", c=longer, s=shorter)
    problems = verify(engine).problems
    assert f"chain {longer} row 41: content does not match its hash (edited)" in problems
    assert "chains 2..4: no rows (deleted)" in problems


def test_a_whole_chain_deleted_is_found(engine: sa.Engine) -> None:
    logs = [AuditLog(engine) for _ in range(3)]
    try:
        _write_concurrently(logs, 5)
    finally:
        for log in logs:
            log.close()
    assert set(verify(engine).heads) == {0, 1, 2}
    _tamper(engine, "DELETE FROM gateway_audit WHERE chain = 1")
    assert verify(engine).problems == ["chain 1: no rows (deleted)"]


def test_an_audit_table_from_before_chains_is_upgraded_and_still_verifies(engine: sa.Engine) -> None:
    log = AuditLog(engine)
    try:
        log.record(_entry(1))
        log.record(_entry(2))
    finally:
        log.close()
    with engine.begin() as conn:  # the table as it was: no chain column, seq the key
        conn.execute(sa.text("ALTER TABLE gateway_audit DROP CONSTRAINT gateway_audit_pkey"))
        conn.execute(sa.text("ALTER TABLE gateway_audit DROP COLUMN chain"))
        conn.execute(sa.text("ALTER TABLE gateway_audit ADD PRIMARY KEY (seq)"))
    create_gateway_tables(engine)
    report = verify(engine)
    assert report.intact and report.heads.keys() == {0} and report.heads[0][0] == 2
    second, third = AuditLog(engine), AuditLog(engine)
    try:
        _write_concurrently([second, third], 3)  # two chains now fit the new key
    finally:
        second.close()
        third.close()
    assert verify(engine).intact and verify(engine).rows == 8


def test_the_event_loop_writer_keeps_a_chain_of_its_own_beside_the_threaded_one(engine: sa.Engine) -> None:
    """The lean records route audits from the event loop (AsyncAuditWriter); the other routes through AuditLog's
    thread: in one process they are two writers, two chains, and a read is only answered once its row committed."""
    import asyncio

    from gateway.audit import AsyncAuditWriter, AuditUnavailable

    threaded = AuditLog(engine)

    async def run() -> int | None:
        writer = AsyncAuditWriter(engine)
        try:
            await asyncio.gather(*(writer.record(_entry(n, "lean")) for n in range(150)))  # batches gather
            worker = threading.Thread(target=lambda: [threaded.record(_entry(n, "threaded")) for n in range(30)])
            worker.start()
            await asyncio.gather(*(writer.record(_entry(n, "lean")) for n in range(50)))
            await asyncio.to_thread(worker.join, 60)
            with engine.connect() as conn:  # committed, every one, by the time record() returned
                assert conn.execute(sa.text("SELECT count(*) FROM gateway_audit WHERE agency_id = 'lean'")
                                    ).scalar_one() == 200
            return writer.chain_number
        finally:
            await writer.close()

    try:
        lean_chain = asyncio.run(run())
    finally:
        threaded.close()
    assert {lean_chain, threaded.chain_number} == {0, 1}
    report = verify(engine)
    assert report.intact and report.heads[lean_chain][0] == 200 and report.heads[threaded.chain_number][0] == 30

    async def unreachable() -> None:
        broken = AsyncAuditWriter(engine)
        broken.conninfo = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
        with pytest.raises(AuditUnavailable):
            await broken.record(_entry(1))

    asyncio.run(unreachable())
