"""Report deadlines: has the receiver acknowledged each period's report by the day it was due?

A push feed that reports by period declares `due: {period_column, after}` (catalog/feeds.yaml):
the report for a period is due `after` (a duration) once the period has ended, in local time
(Asia/Ho_Chi_Minh). The government reporting system's monthly indicator report, for instance, is
due by the end of the 5th of the next month (`after: 5d`: 2025-09's at 2025-10-06 00:00 +07).
A period's report is delivered when the receiver has acknowledged the current version of every
row of it that the feed sends (`lgsp_outbox_item` of an acked message); a row whose value changed
since (a late correction) waits until its new version is acknowledged. A period past its due time
that is not delivered is overdue: `lgsp status` lists it with the count of rows acknowledged and
exits 1, and the lgsp_freshness DAG alerts once.

Example (the feed `government_report`, its last two months)::

    {"feed": "government_report", "due_after_s": 432000.0, "periods_due": 5,
     "last_delivered": {"period": "2025-09", "rows": 9, "acknowledged": 9, "due_at": "2025-10-06T00:00:00+07:00"},
     "overdue": [{"period": "2025-10", "rows": 9, "acknowledged": 7, "due_at": "2025-11-06T00:00:00+07:00"}]}
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, FeedSpec
from indicators import periods
from warehouse import Warehouse


def period_end(label: str) -> datetime:
    """When a period ends, local midnight after its last day: '2025-08' -> 2025-09-01T00:00+07:00."""
    if periods.period_type(label) == "range":
        last = periods.parse_range(label)[1]
        day = last + timedelta(days=1)
    else:
        day = periods.next_month_start(periods.months_in(label)[-1])
    return datetime(day.year, day.month, day.day, tzinfo=periods.VN_TZ)


def _acknowledged(conn: sa.Connection, wh: Warehouse, feed: str) -> set[tuple[str, str]]:
    """(record key, content hash) of every row version the receiver acknowledged."""
    items, outbox = wh.system["lgsp_outbox_item"], wh.system["lgsp_outbox"]
    rows = conn.execute(sa.select(items.c.record_key, items.c.content_hash)
                        .join(outbox, outbox.c.message_id == items.c.message_id)
                        .where(items.c.feed == feed, outbox.c.status == "acked"))
    return {(r.record_key, r.content_hash) for r in rows}


def feed_deadlines(wh: Warehouse, feed: FeedSpec, now: datetime | None = None) -> dict[str, Any]:
    """Each period of the feed past its due time: delivered or overdue (see the module's example)."""
    from lgsp.outbox import candidates

    assert feed.due is not None
    now = now or datetime.now(timezone.utc)
    with wh.engine.connect() as conn:
        acked = _acknowledged(conn, wh, feed.name)
    by_period: dict[str, list[bool]] = {}
    for key, content_hash, row in candidates(wh, feed):
        by_period.setdefault(str(row[feed.due.period_column]), []).append((key, content_hash) in acked)
    due = []
    for label, delivered in by_period.items():
        try:
            due_at = period_end(label) + timedelta(seconds=feed.due.after)
        except periods.PeriodError:
            continue  # not a period label this check can read; the feed still sends it
        if due_at <= now:
            due.append({"period": label, "rows": len(delivered), "acknowledged": sum(delivered), "due_at": due_at})
    due.sort(key=lambda p: p["due_at"])
    overdue = [p for p in due if p["acknowledged"] < p["rows"]]
    delivered = [p for p in due if p["acknowledged"] == p["rows"]]
    return {"feed": feed.name, "due_after_s": feed.due.after, "periods_due": len(due),
            "last_delivered": delivered[-1] if delivered else None, "overdue": overdue}


def all_deadlines(wh: Warehouse, catalog: Catalog, now: datetime | None = None) -> list[dict[str, Any]]:
    """`feed_deadlines` of every feed that declares `due`."""
    return [feed_deadlines(wh, feed, now) for feed in catalog.feeds.values() if feed.due is not None]
