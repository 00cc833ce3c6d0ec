"""How much of the time was each dataset fresh, and each report on time? (`lgsp status --history`)

The lgsp_freshness DAG judges every pipeline and push feed every 15 minutes (lgsp.freshness) and
keeps each change of state in `lgsp_freshness_event`. Between two changes the state held, so over
a window (the last 30 days, say) each subject's time splits into its states: the share it was
fresh, behind (warn; a reference's or a group check's pending) and stale (stale, never, a feed's overdue,
a reference's or a group check's broken: `ref:<dataset>.<column>`, lgsp.references; `check:<dataset>.<check>`,
lgsp.group_checks), how many times it went stale,
and its longest stale stretch. Time before a subject's first judged state is not counted
(`observed_s` says how much was). A province can report it as its platform's stability, per
connected system's dataset, next to `lgsp health --history` (per connection).

Example row::

    {"subject": "land_parcels", "observed_s": 2592000.0, "fresh": 0.962, "warn": 0.021, "stale": 0.017,
     "incidents": 2, "longest_stale_s": 30600.0}
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from warehouse.store import Warehouse, utc

BAD = {"stale", "never", "overdue", "broken"}  # a reference between datasets (lgsp.references) counts as stale
BEHIND = {"warn", "pending"}


def _share(events: list[tuple[datetime, str]], start: datetime, end: datetime) -> dict[str, Any]:
    """The window [start, end) split by `events` (ordered; the first may be before `start`)."""
    seconds = {"fresh": 0.0, "warn": 0.0, "stale": 0.0}
    incidents, longest, stretch = 0, 0.0, 0.0
    previous: str | None = None
    for (at, state), following in zip(events, [e[0] for e in events[1:]] + [end]):
        lo, hi = max(at, start), min(following, end)
        span = max(0.0, (hi - lo).total_seconds())
        bad = state in BAD
        seconds["stale" if bad else "warn" if state in BEHIND else "fresh"] += span
        if bad and previous not in BAD and at >= start:
            incidents += 1
        stretch = stretch + span if bad and previous in BAD else span if bad else 0.0
        longest = max(longest, stretch)
        previous = state
    observed = sum(seconds.values())
    return {"observed_s": observed, **{k: round(v / observed, 4) if observed else None for k, v in seconds.items()},
            "incidents": incidents, "longest_stale_s": longest}


def availability(wh: Warehouse, days: float = 30.0, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per subject (a pipeline, or `feed:<name>`), the shares of the last `days` days in each state."""
    end = now or datetime.now(timezone.utc)
    start = end - timedelta(days=days)
    table = wh.system["lgsp_freshness_event"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.subject, table.c.at, table.c.state).where(table.c.at < end)
                            .order_by(table.c.subject, table.c.at)).all()
    by_subject: dict[str, list[tuple[datetime, str]]] = {}
    for subject, at, state in rows:
        by_subject.setdefault(subject, []).append((utc(at), state))  # type: ignore[arg-type]
    found = []
    for subject, events in sorted(by_subject.items()):
        before = [e for e in events if e[0] <= start]
        events = before[-1:] + [e for e in events if e[0] > start]  # the state the window began in, then changes
        found.append({"subject": subject, **_share(events, start, end)})
    return found
