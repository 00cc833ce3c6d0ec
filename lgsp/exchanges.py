"""Bookkeeping of exchanges with peers in the warehouse: message log, circuit state, health.

The connectors buffer what happened (`connectors.message_log`,
`connectors.limits`); this module writes it down in the same transactions as
the data it concerns, and reads it back for `lgsp health` and the breaker.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import SystemSpec
from connectors.limits import CircuitBreaker, limits_for
from connectors.message_log import MessageLog
from warehouse import Warehouse
from warehouse.store import utc


def flush_log(wh: Warehouse, log: MessageLog, conn: sa.Connection | None = None) -> int:
    """Write the buffered exchanges of `log` to lgsp_message_log (in `conn`'s transaction if given)."""
    rows = log.drain()
    if not rows:
        return 0
    table = wh.system["lgsp_message_log"]
    if conn is not None:
        wh.insert_ignore(conn, table, rows, ["message_id"])
    else:
        with wh.transaction() as own:
            wh.insert_ignore(own, table, rows, ["message_id"])
    return len(rows)


def breaker_for(wh: Warehouse, system: SystemSpec) -> CircuitBreaker:
    """The system's breaker in this process, restored from lgsp_circuit and persisted on every change."""
    breaker = limits_for(system).breaker
    table = wh.system["lgsp_circuit"]
    with wh.engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.system == system.name)).first()
    if row is not None and row.state == "open" and breaker.opened_at is None:
        breaker.restore(row.failures, utc(row.opened_at), row.last_error or "")

    def _persist(b: CircuitBreaker) -> None:
        state = "open" if b.opened_at is not None else "closed"
        with wh.transaction() as conn:
            wh.upsert(conn, table, [{"system": b.system, "state": state, "failures": b.failures,
                                     "opened_at": b.opened_at, "last_error": b.last_error[:500],
                                     "updated_at": datetime.now(timezone.utc)}], ["system"])

    breaker.on_change = _persist
    return breaker


def circuit_states(wh: Warehouse) -> list[dict[str, Any]]:
    table = wh.system["lgsp_circuit"]
    with wh.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.system))]


def record_health(wh: Warehouse, results: list[Any], log: MessageLog | None = None) -> None:
    """Keep probe results (and the probes' message-log records) in the warehouse."""
    from dataclasses import asdict

    with wh.transaction() as conn:
        wh.insert_ignore(conn, wh.system["lgsp_health_check"], [asdict(r) for r in results], ["system", "checked_at"])
        if log is not None:
            flush_log(wh, log, conn)


def health_history(wh: Warehouse, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per system: probes, success rate, median and worst latency, last status."""
    table = wh.system["lgsp_health_check"]
    query = sa.select(table)
    if since is not None:
        query = query.where(table.c.checked_at >= since)
    with wh.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query.order_by(table.c.system, table.c.checked_at))]
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row["system"], {"system": row["system"], "probes": 0, "ok": 0, "latencies": []})
        entry["probes"] += 1
        entry["ok"] += int(bool(row["ok"]))
        if row["latency_ms"] is not None:
            entry["latencies"].append(float(row["latency_ms"]))
        entry["last_status"], entry["last_checked_at"] = row["status"], row["checked_at"]
    for entry in out.values():
        latencies = sorted(entry.pop("latencies"))
        entry["success_rate"] = entry["ok"] / entry["probes"]
        entry["p50_ms"] = latencies[len(latencies) // 2] if latencies else None
        entry["max_ms"] = latencies[-1] if latencies else None
    return list(out.values())
