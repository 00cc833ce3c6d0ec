"""Push with nothing lost and nothing doubled: the transactional outbox.

`enqueue(feed)` turns rows of a warehouse table that the receiver has not got
yet (new, or changed in the columns the feed watches) into messages in
`lgsp_outbox`, each with its payload fixed and an idempotency key, in one
transaction with the record of which row versions they carry
(`lgsp_outbox_item`). `dispatch(feed)` sends pending messages in order; the
receiver deduplicates on the key, so a message whose acknowledgement was lost
is simply sent again. An acknowledged message keeps the receiver's answer; one
that keeps failing is dead-lettered after `max_attempts` (a fatal refusal at
once) and waits for `lgsp outbox retry`.

Example message (DVCQG `DongBoHoSoMC`, one of 50 dossiers shown):
    {"service": "DongBoHoSoMC", "madonvi": "000.00.37.H42",
     "data": [{"MaHoSo": "H37.12-250815-0001", "MaTTHC": "1.004227", "NgayTiepNhan": "20250815093000",
               "NgayHenTra": "20250822093000", "NgayTra": "", "TrangThaiHoSo": "9", "HinhThuc": "1"}]}
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import LOCAL_TZ as VN_TZ
from catalog.models import Catalog, FeedSpec, FieldMapSpec
from warehouse import Warehouse

log = logging.getLogger("lgsp.outbox")
STATUSES = ("pending", "failed", "acked", "dead")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _format(value: Any, spec: FieldMapSpec) -> Any:
    if spec.map:
        return spec.map.get(str(value), value)
    if value is None:
        return "" if spec.format == "dvcqg" else None
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # the warehouse stores UTC
    if spec.format == "dvcqg":
        return value.astimezone(VN_TZ).strftime("%Y%m%d%H%M%S")
    if spec.format in ("iso", "raw") and isinstance(value, (datetime, date)):
        return value.isoformat()
    if spec.format == "date":
        return (value.date() if isinstance(value, datetime) else value).isoformat()
    if spec.format == "str":
        return str(value)
    return value


def map_record(row: dict[str, Any], feed: FeedSpec, key: str = "") -> dict[str, Any]:
    """One source row as the receiver's item (field names, formats and codes from the feed's mapping)."""
    item: dict[str, Any] = {}
    for name, spec in feed.mapping.items():
        if spec.idempotency_key:
            item[name] = key
        elif spec.column is not None:
            item[name] = _format(row[spec.column], spec)
        else:
            item[name] = spec.value
    return item


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def candidates(wh: Warehouse, feed: FeedSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(record key, content hash, row) of every source row, hash over what the receiver cares about."""
    table = wh.table(feed.table)
    query = sa.select(table)
    for column, value in feed.where.items():
        query = query.where(table.c[column].in_(value) if isinstance(value, list) else table.c[column] == value)
    with wh.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query.order_by(*[table.c[k] for k in feed.key]))]
    out = []
    for row in rows:
        watched = {c: row[c] for c in feed.change_columns} if feed.change_columns else map_record(row, feed)
        out.append(("|".join(str(row[k]) for k in feed.key), _hash(watched), row))
    return out


def enqueue(wh: Warehouse, catalog: Catalog, feed: FeedSpec) -> int:
    """Queue a message for every row version the receiver has not been sent; returns messages queued."""
    items = wh.system["lgsp_outbox_item"]
    with wh.engine.connect() as conn:
        sent = {(r.record_key, r.content_hash) for r in
                conn.execute(sa.select(items.c.record_key, items.c.content_hash).where(items.c.feed == feed.name))}
    fresh = [c for c in candidates(wh, feed) if (c[0], c[1]) not in sent]
    system = catalog.systems[feed.system]
    messages, links = [], []
    for start in range(0, len(fresh), feed.batch_size):
        chunk = fresh[start:start + feed.batch_size]
        unkeyed = [map_record(row, feed) for _, _, row in chunk]
        key = _hash([feed.name, feed.body, unkeyed])  # same key <=> same message, whatever warehouse sent it
        records = [map_record(row, feed, key) for _, _, row in chunk]
        payload = {**feed.body, feed.records_param: records if feed.batch_size > 1 else records[0]}
        message_id = str(uuid.uuid4())
        messages.append({"message_id": message_id, "idempotency_key": key, "feed": feed.name,
                         "system": system.name, "operation": feed.operation,
                         "payload": json.dumps(payload, ensure_ascii=False, default=str), "records": len(chunk),
                         "status": "pending", "attempts": 0, "created_at": _now()})
        links += [{"feed": feed.name, "record_key": k, "content_hash": h, "message_id": message_id}
                  for k, h, _ in chunk]
    with wh.transaction() as conn:
        wh.insert_ignore(conn, wh.system["lgsp_outbox"], messages, ["message_id"])
        wh.insert_ignore(conn, items, links, ["feed", "record_key", "content_hash"])
    log.info("%s: %d message(s) queued for %d row version(s)", feed.name, len(messages), len(links))
    return len(messages)


def _settle(wh: Warehouse, message: Any, conn: sa.Connection, **values: Any) -> None:
    table = wh.system["lgsp_outbox"]
    conn.execute(table.update().where(table.c.message_id == message.message_id)
                 .values(attempts=message.attempts + 1, last_attempt_at=_now(), **values))


def dispatch(wh: Warehouse, catalog: Catalog, feed: FeedSpec) -> dict[str, int]:
    """Send the feed's pending messages in order; returns counts by outcome.

    Raises:
        CircuitOpen: the receiver is declared down; the remaining messages stay pending.
    """
    from connectors import CircuitOpen, FatalError, MessageLog, RetriesExhausted, open_transport
    from connectors.retry import call_with_retry
    from lgsp.exchanges import breaker_for, flush_log

    table = wh.system["lgsp_outbox"]
    with wh.engine.connect() as conn:
        queue = conn.execute(sa.select(table).where(table.c.feed == feed.name, table.c.status.in_(("pending", "failed")))
                             .order_by(table.c.created_at, table.c.message_id)).all()
    system = catalog.systems[feed.system]
    message_log = MessageLog(system.name, system.message_log, context=f"outbox:{feed.name}")
    transport = open_transport(system, operation=feed.operation, log=message_log)
    breaker = breaker_for(wh, system)
    counts = {"acked": 0, "failed": 0, "dead": 0}
    try:
        for message in queue:
            payload = json.loads(message.payload)
            try:
                ack = call_with_retry(lambda: transport.send(payload, message.idempotency_key), system.retry,
                                      system.name, feed.operation, breaker=breaker)
            except CircuitOpen:
                raise
            except (FatalError, RetriesExhausted) as exc:
                dead = isinstance(exc, FatalError) or message.attempts + 1 >= feed.max_attempts
                outcome = "dead" if dead else "failed"
                with wh.transaction() as conn:
                    _settle(wh, message, conn, status=outcome, last_error=str(exc)[:1000])
                    flush_log(wh, message_log, conn)
                counts[outcome] += 1
                log.warning("%s: message %s %s: %s", feed.name, message.message_id, outcome, exc)
                continue
            with wh.transaction() as conn:
                _settle(wh, message, conn, status="acked", acked_at=_now(), last_error=None,
                        ack=json.dumps(ack, ensure_ascii=False, default=str)[:4000])
                flush_log(wh, message_log, conn)
            counts["acked"] += 1
    finally:
        flush_log(wh, message_log)
        transport.close()
    return counts


def push(wh: Warehouse, catalog: Catalog, feed_name: str) -> dict[str, int]:
    """Enqueue then dispatch one feed (what a push DAG run does)."""
    feed = catalog.feeds[feed_name]
    queued = enqueue(wh, catalog, feed)
    return {"queued": queued, **dispatch(wh, catalog, feed)}


def list_messages(wh: Warehouse, feed: str | None = None, status: str | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
    table = wh.system["lgsp_outbox"]
    query = sa.select(table.c.message_id, table.c.feed, table.c.status, table.c.records, table.c.attempts,
                      table.c.created_at, table.c.acked_at, table.c.last_error)
    if feed:
        query = query.where(table.c.feed == feed)
    if status:
        query = query.where(table.c.status == status)
    with wh.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(table.c.created_at.desc()).limit(limit))]


def counts_by_status(wh: Warehouse) -> dict[tuple[str, str], int]:
    table = wh.system["lgsp_outbox"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.feed, table.c.status, sa.func.count())
                            .group_by(table.c.feed, table.c.status)).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def requeue(wh: Warehouse, message_ids: list[str] | None = None, feed: str | None = None) -> int:
    """Put dead messages (all, a feed's, or the given ones) back in the queue with a fresh budget."""
    table = wh.system["lgsp_outbox"]
    stmt = table.update().where(table.c.status == "dead")
    if message_ids:
        stmt = stmt.where(table.c.message_id.in_(message_ids))
    if feed:
        stmt = stmt.where(table.c.feed == feed)
    with wh.transaction() as conn:
        return int(conn.execute(stmt.values(status="pending", attempts=0)).rowcount or 0)
