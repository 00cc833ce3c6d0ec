"""How much each agency read through the gateway, from the audit: `lgsp audit usage`, `GET /api/v1/usage`.

The province reports on its data sharing (which agencies use which datasets, how much, how often they
are refused) and watches for an agency reading far more than its purpose needs; an agency checks what
its own staff and systems read. Every read is a row of the hash-chained audit (gateway.audit), so the
figures are the audit's, per agency and dataset over a window:

- `requests`: reads asked for, by kind: `records` (pages), `export`, `lookup` (one record at its source),
  `changes` (the change feed), `ckan` (CKAN datastore_search), `portal` (a portal page's preview);
- `refused`: those answered 4xx or 5xx (no grant, a bad parameter, a timeout);
- `rows`: records sent (an export's rows counted when its stream ends, as far as the client read it);
- `first` and `last`: the window's first and last read.

An agency reading far more than it usually does (a key leaked, a script run wild, a purpose exceeded)
is **unusual** (`unusual`): more than `UNUSUAL_MIN_ROWS` rows of a dataset in the last 24 hours and
more than `UNUSUAL_FACTOR` times its daily median over the 7 days before (a day it read nothing counts
as 0, so a new reader of 10,000 rows a day is unusual on its first; `LGSP_UNUSUAL_READS_FACTOR` and
`LGSP_UNUSUAL_READS_MIN_ROWS` change the two). A grant that says how many rows a day its purpose needs
(`lgsp agencies grant|approve ... --daily-rows N`) is judged by that instead: more than N rows in the
last 24 hours is unusual, however much the agency read before. The `lgsp_freshness` DAG alerts once when
a pair becomes unusual; `lgsp status` warns while it is.

The province's own acts (a disclosure report, access decisions, an agency disabled) are not reads and are
not counted; an anonymous reader (open datasets) is `anonymous`.
"""
from __future__ import annotations

import statistics
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import duration_s
from gateway import tables
from indicators.periods import VN_TZ
from lgsp.settings import env_number
from warehouse.store import utc

DEFAULT_WINDOW = timedelta(days=30)
UNUSUAL_FACTOR = 10.0  # rows sent in the last 24 hours, against the daily median of the days before
UNUSUAL_MIN_ROWS = 10_000  # fewer rows in a day are never unusual (a small agency's first busy day)
UNUSUAL_BASELINE_DAYS = 7

KINDS = {"records": "records", "changes": "changes", "ckan_datastore_search": "ckan", "portal_preview": "portal"}
PREFIXES = ("export", "lookup")  # export_<format>[_done]; lookup (refused), lookup_<where it was answered from>


def _kind(action: str) -> str:
    return next((p for p in PREFIXES if action.startswith(p)), None) or KINDS[action]


def usage(engine: sa.Engine, since: datetime | None = None, until: datetime | None = None,
          agency_id: str | None = None) -> list[dict[str, Any]]:
    """Per agency and dataset, the reads of [since, until) (every read without them), busiest first: agency_id,
    dataset, requests (and by kind), refused, rows, first, last."""
    a = tables.audit.c
    where = [sa.or_(a.action.in_(list(KINDS)), *(a.action.like(f"{p}%") for p in PREFIXES))]  # reads only
    if since is not None:
        where.append(a.recorded_at >= since)
    if until is not None:
        where.append(a.recorded_at < until)
    if agency_id is not None:
        where.append(a.agency_id == agency_id)
    with engine.connect() as conn:
        groups = conn.execute(sa.select(
            a.agency_id, a.dataset, a.action, sa.func.count().label("n"),
            sa.func.sum(sa.case((a.status >= 400, 1), else_=0)).label("refused"),
            sa.func.coalesce(sa.func.sum(a.rows_returned), 0).label("rows"),
            sa.func.min(a.recorded_at).label("first"), sa.func.max(a.recorded_at).label("last"))
            .where(*where).group_by(a.agency_id, a.dataset, a.action)).mappings().all()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for g in groups:
        entry = out.setdefault((g["agency_id"], g["dataset"]), {
            "agency_id": g["agency_id"], "dataset": g["dataset"], "requests": 0, "by_kind": {}, "refused": 0,
            "rows": 0, "first": None, "last": None})
        if g["action"].endswith("_done"):  # an export's end: the rows it sent (its request is counted at its start)
            entry["rows"] += int(g["rows"])
            continue
        kind = _kind(g["action"])
        entry["requests"] += int(g["n"])
        entry["by_kind"][kind] = entry["by_kind"].get(kind, 0) + int(g["n"])
        entry["refused"] += int(g["refused"] or 0)
        if kind != "export":  # an export's start row holds no row count
            entry["rows"] += int(g["rows"])
        first, last = utc(g["first"]), utc(g["last"])
        entry["first"] = first if entry["first"] is None else min(entry["first"], first)
        entry["last"] = last if entry["last"] is None else max(entry["last"], last)
    return sorted(out.values(), key=lambda e: (-e["requests"], e["agency_id"], e["dataset"]))


def moment(value: date | datetime | str | None, now: datetime | None = None) -> datetime | None:
    """A window's end as a time: a date is the start of that day in Vietnam (2026-11-01 -> 2026-10-31 17:00 UTC),
    a time without a zone is UTC, a duration ("30d", "12h") is that long before `now`.

    Raises:
        ValueError: none of these.
    """
    if value is None or isinstance(value, datetime):
        return utc(value)
    if isinstance(value, date):
        return datetime.combine(value, time(0), VN_TZ).astimezone(timezone.utc)
    text = value.strip()
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            return moment(parse(text))
        except ValueError:
            pass
    try:
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=duration_s(text))
    except ValueError:
        raise ValueError(f"{value!r} is neither a date (2026-11-01, Vietnam time), a time (2026-11-01T08:00+07:00) "
                         "nor a duration back from now (30d, 12h)") from None


def unusual(engine: sa.Engine, now: datetime | None = None, factor: float | None = None,
            min_rows: float | None = None, days: int = UNUSUAL_BASELINE_DAYS) -> list[dict[str, Any]]:
    """The agency-dataset pairs whose rows sent in the 24 hours before `now` are unusual (see the module's
    docstring): agency_id, dataset, rows (last 24 hours), requests, median (rows a day over the `days` before),
    by_day (those days' rows, the latest first), most first. `factor` and `min_rows` default to
    `LGSP_UNUSUAL_READS_FACTOR` and `LGSP_UNUSUAL_READS_MIN_ROWS` (else 10 and 10,000).

    Raises:
        ValueError: one of those variables is not a number of 0 or more.
    """
    factor = env_number("LGSP_UNUSUAL_READS_FACTOR", UNUSUAL_FACTOR) if factor is None else factor
    min_rows = env_number("LGSP_UNUSUAL_READS_MIN_ROWS", UNUSUAL_MIN_ROWS) if min_rows is None else min_rows
    now = utc(now) or datetime.now(timezone.utc)
    day = timedelta(days=1)
    g = tables.grant.c
    declared: dict[tuple[str, str], int] = {}
    if "daily_rows" in {c["name"] for c in sa.inspect(engine).get_columns("gateway_grant")}:  # (an older gateway)
        with engine.connect() as conn:  # the grants that say how much their purpose needs: judged by that
            declared = {(r.agency_id, r.dataset): int(r.daily_rows) for r in conn.execute(
                sa.select(g.agency_id, g.dataset, g.daily_rows).where(g.daily_rows.isnot(None)))}
    recent = [r for r in usage(engine, now - day, now)
              if r["rows"] > declared.get((r["agency_id"], r["dataset"]), min_rows)]
    if not recent:
        return []  # one pass over a day of the audit: what most checks find
    a = tables.audit.c
    start = now - day * (days + 1)
    if engine.dialect.name == "postgresql":
        seconds = sa.cast(sa.extract("epoch", sa.literal(now, sa.DateTime(timezone=True)) - a.recorded_at), sa.Float)
        age = sa.func.floor(seconds / 86400)  # in double precision: numeric's arithmetic took half the pass
    else:  # SQLite keeps UTC times as text
        age = sa.cast(sa.func.julianday(now.replace(tzinfo=None).isoformat(sep=" ")) - sa.func.julianday(a.recorded_at),
                      sa.Integer)
    pairs = {(r["agency_id"], r["dataset"]) for r in recent}
    with engine.connect() as conn:
        history = conn.execute(sa.select(a.agency_id, a.dataset, age.label("age"),
                                         sa.func.coalesce(sa.func.sum(a.rows_returned), 0).label("rows"))
                               .where(a.recorded_at >= start, a.recorded_at < now - day,
                                      a.agency_id.in_(sorted({p[0] for p in pairs})), a.status < 400,
                                      sa.not_(sa.and_(a.action.like("export%"), sa.not_(a.action.like("%_done")))),
                                      sa.or_(a.action.in_(list(KINDS)), *(a.action.like(f"{p}%") for p in PREFIXES)))
                               .group_by(a.agency_id, a.dataset, age)).all()
    daily: dict[tuple[str, str], list[int]] = {pair: [0] * days for pair in pairs}
    for agency_id, dataset, ago, rows in history:
        if (agency_id, dataset) in daily and 1 <= int(ago) <= days:
            daily[(agency_id, dataset)][int(ago) - 1] += int(rows)
    found = []
    for r in recent:
        pair = (r["agency_id"], r["dataset"])
        by_day = daily[pair]
        median = statistics.median(by_day)
        if pair in declared or r["rows"] > factor * median:
            found.append({"agency_id": r["agency_id"], "dataset": r["dataset"], "rows": r["rows"],
                          "requests": r["requests"], "median": median, "by_day": by_day,
                          "daily_rows": declared.get(pair)})
    return sorted(found, key=lambda f: -f["rows"])


def said(found: dict[str, Any]) -> str:
    """An unusual pair in a sentence, with what to do (the alert's and `lgsp status`'s)."""
    days = len(found["by_day"])
    usual = (f"{found['rows'] / found['median']:.0f}x its daily median over the {days} days before "
             f"({found['median']:,.0f})" if found["median"] else f"on most of the {days} days before it read none")
    if found.get("daily_rows"):
        usual = f"more than the {found['daily_rows']:,} rows a day its grant's purpose needs"
    return (f"{found['agency_id']} read {found['rows']:,} rows of {found['dataset']} in the last 24 hours "
            f"({found['requests']:,} requests), {usual}: see `lgsp audit usage --agency {found['agency_id']} "
            f"--since {days + 1}d`; if it should not, `lgsp agencies disable {found['agency_id']} --note WHY`")
