"""Indicators of what the warehouse held at each period's end (`as_of: period_end`).

A rate of `indicators.query` counts the rows dated in a period (dossiers received in August). Some figures
are the state of a catalogue or of master data instead: the procedures with no administrative boundary
(Binh Duong: 275, then 570), the procedures offered fully online. Their value for a month is the records the
table held at the month's end: for a quarter, at the quarter's end; for the period under way, now. A
period's value does not move once it has ended, whatever the source says later, so a report sent for it
stays true.

What the table held, and when: now, the table itself (one GROUP BY, `indicators.query.state_cells`); at an
earlier instant, the table now corrected by the records written since (`warehouse.versions.written_since`):
their counts now are taken out and those of their versions held then put in (`warehouse.versions.versions_of`:
the lake's files, the change log's commit times, the tombstones, in the warehouse's time; a version counts from
the moment its write committed). So only the records changed since are replayed, not the whole table; and those a
key range at a time (`SLICE` records), so a replay of millions holds a few hundred MB, not several GB.

The periods start with the month of the dataset's first write; earlier ones have no value (the warehouse held
nothing then). A period, once ended and counted at its end, is settled: the mart keeps its value, later
computations leave it alone (`mart_indicator_definition.settled_until`; `lgsp indicators compute --full` counts
the ended ones again). So a daily computation counts the table as it is (the periods under way), and the first one
after a month ends replays only what changed since that month's end. When the lake's oldest files are gone
(`Versions.known_since`; all of them: today), the periods that ended before it are left as the mart has them.

Example (catalog/indicators.yaml)::

    boundary_free_procedure_rate:
      version: 1
      dataset: procedure
      as_of: period_end
      denominator: {}
      numerator: {boundary_free: true}
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa

from catalog.models import DatasetSpec, IndicatorSpec, UnitVia
from indicators import periods, query
from indicators.compute import PROVINCE_CODE, Counts, through, unit_levels
from warehouse import Warehouse
from warehouse.lake import Lake
from warehouse.store import aggregate_time
from warehouse.versions import MANY, Held, Key, KeyRange, chunks, key_ranges, versions_of, written_since

log = logging.getLogger("lgsp.indicators")


def matches(values: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether a record's values pass an indicator's filters, as `indicators.query.condition` says in SQL:
    value (equality), list (one of), None (is null), `{"not": one of those}`; a null value equals nothing and
    differs from nothing."""
    for name, wanted in filters.items():
        value, negated = values.get(name), isinstance(wanted, dict)
        wanted = wanted["not"] if negated else wanted
        if wanted is None:
            if (value is None) == negated:
                return False
        elif value is None or (value in wanted if isinstance(wanted, list) else value == wanted) == negated:
            return False
    return True


def counted_columns(dataset: DatasetSpec, spec: IndicatorSpec) -> list[str]:
    """The columns a count reads: the key, the cursor, the filters' and the units'."""
    wanted = [*dataset.key, dataset.cursor_field, *spec.denominator, *spec.numerator, *spec.unit_columns]
    return [c for c in dataset.columns if c in wanted]


def _current_rows(conn: sa.Connection, wh: Warehouse, dataset: DatasetSpec, columns: Sequence[str],
                  keys: set[Key] | None, within: KeyRange) -> list[dict[str, Any]]:
    """The table's rows now (a history table's current versions) of the records `keys` (None: all) in the range
    `within`, in `columns` and `_batch_id`."""
    table = wh.core[dataset.name]
    select = sa.select(*[table.c[c] for c in columns], table.c["_batch_id"])
    if "is_current" in table.c:
        select = select.where(table.c["is_current"].is_(sa.true()))
    key, names = list(dataset.key), [*columns, "_batch_id"]
    if keys is None or len(keys) > MANY:  # much of the range: one pass over it
        found = (dict(zip(names, r)) for r in conn.execute(select.where(within.where(table.c[key[0]], wh.dialect))))
        return [r for r in found if keys is None or tuple(r[k] for k in key) in keys]
    column = table.c[key[0]] if len(key) == 1 else sa.tuple_(*[table.c[k] for k in key])
    values = [k[0] for k in keys] if len(key) == 1 else list(keys)
    return [dict(zip(names, r)) for chunk in chunks(values) for r in conn.execute(select.where(column.in_(chunk)))]


def _first_write(conn: sa.Connection, wh: Warehouse, dataset: str) -> datetime | None:
    change = wh.system["lgsp_change"]
    return aggregate_time(conn.execute(sa.select(sa.func.min(change.c.committed_at))
                                       .where(change.c.dataset == dataset)).scalar())


def _local_month(at: datetime) -> str:
    return at.astimezone(periods.VN_TZ).strftime("%Y-%m")


def _months(first: str, last: str) -> list[str]:
    months, month = [], first
    while month <= last:
        months.append(month)
        month = periods.next_month_start(month).strftime("%Y-%m")
    return months


def period_end(label: str) -> datetime:
    """The instant a month, quarter or year ends (local midnight after its last day, in UTC)."""
    return periods.local_midnight_utc(periods.next_month_start(periods.months_in(label)[-1]))


class Tally:
    """The versions of a dataset as arrays, counted at any instant: numerator and denominator per (unit level,
    unit code) over the records held then (`at`). Each version is matched against the filters once; each instant
    is a few vectorised passes (numpy), so a register's 34 period ends cost little more than one."""

    def __init__(self, held: Sequence[Held], spec: IndicatorSpec,
                 lookups: Mapping[str, Mapping[Any, Any]] | None = None) -> None:
        """`lookups`: per unit level read through a reference (`UnitVia`), the referencing value -> unit code."""
        keys: dict[Any, int] = {}
        self.record = np.array([keys.setdefault(h.key, len(keys)) for h in held], dtype=np.int64)
        self.since = np.array([-np.inf if h.since is None else h.since.timestamp() for h in held], dtype=np.float64)
        self.until = np.array([np.inf if h.until is None else h.until.timestamp() for h in held], dtype=np.float64)
        self.counted = np.array([matches(h.values, spec.denominator) for h in held], dtype=bool)
        self.hit = np.array([matches(h.values, spec.numerator) for h in held], dtype=bool) & self.counted
        self.units: list[tuple[str, list[str], np.ndarray]] = []
        for level, unit in spec.units.items():
            if isinstance(unit, UnitVia):
                lookup = (lookups or {}).get(level, {})
                found = [lookup.get(h.values.get(unit.via)) for h in held]
            else:
                found = [h.values.get(unit) for h in held]
            codes: dict[str, int] = {}
            index = np.array([-1 if v is None else codes.setdefault(str(v), len(codes)) for v in found], dtype=np.int64)
            self.units.append((level, list(codes), index))

    def at(self, at: datetime) -> dict[tuple[str, str], tuple[int, int]]:
        """Each record once, in the last of its versions held at `at` (the table's row now, when a migration or a
        restore changed it, comes after the lake's version it replaced)."""
        instant = at.timestamp()
        held = np.flatnonzero((self.since <= instant) & (instant < self.until))[::-1]
        _, first = np.unique(self.record[held], return_index=True)
        chosen = held[first]
        counted, hit = self.counted[chosen], self.hit[chosen]
        found: dict[tuple[str, str], tuple[int, int]] = {}
        if counted.any():
            found[("province", PROVINCE_CODE)] = (int(hit.sum()), int(counted.sum()))
        for level, names, index in self.units:
            codes = index[chosen]
            inside = counted & (codes >= 0)
            denominators = np.bincount(codes[inside], minlength=len(names))
            numerators = np.bincount(codes[inside & hit], minlength=len(names))
            for code in np.flatnonzero(denominators):
                found[(level, names[code])] = (int(numerators[code]), int(denominators[code]))
        return found


def _held(conn: sa.Connection, wh: Warehouse, dataset: DatasetSpec, within: KeyRange) -> int:
    """How many records of the range `within` the table holds now."""
    table = wh.core[dataset.name]
    select = sa.select(sa.func.count()).select_from(table).where(within.where(table.c[dataset.key[0]], wh.dialect))
    if "is_current" in table.c:
        select = select.where(table.c["is_current"].is_(sa.true()))
    return int(conn.execute(select).scalar() or 0)


Cells = dict[tuple[str, str], tuple[int, int]]  # (unit level, unit code) -> (numerator, denominator)


def _lookups(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec) -> dict[str, dict[Any, Any]]:
    """Per unit level read through a reference: each record of the referenced table now -> its unit code."""
    found: dict[str, dict[Any, Any]] = {}
    for level, grouped in unit_levels(wh, spec):
        if grouped is not None and grouped.joined is not None and grouped.key is not None:
            target = grouped.joined[0]
            select = sa.select(grouped.key, grouped.column)
            if "is_current" in target.c:
                select = select.where(target.c["is_current"].is_(sa.true()))
            found[level] = {r[0]: r[1] for r in conn.execute(select)}
    return found


def _state_now(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec) -> Cells:
    """The counts of the table as it is: one GROUP BY per unit level."""
    table, found = wh.core[spec.dataset], {}
    for level, grouped in unit_levels(wh, spec):
        for row in conn.execute(query.state_cells(spec, table, wh.dialect, grouped)).mappings():
            if row["denominator"]:
                unit = PROVINCE_CODE if grouped is None else str(row["unit_code"])
                found[(level, unit)] = (int(row["numerator"] or 0), int(row["denominator"]))
    return found


SLICE = 200_000
"""At most about this many records are replayed at once: a register of millions is replayed a slice of its key's
range at a time (`warehouse.versions.key_ranges`), each slice counted at every instant asked and let go, so a
replay holds one slice's versions (~1.2 KB each with their counted columns: a few hundred MB), whatever the
dataset's size; each slice reads the lake's key columns again (benchmarks/snapshot_indicator.py, `--slice`)."""


def _add(counts: Cells, cells: Cells, sign: int) -> None:
    for cell, (numerator, denominator) in cells.items():
        held = counts.get(cell, (0, 0))
        counts[cell] = (held[0] + sign * numerator, held[1] + sign * denominator)


ATTEMPTS = 3
"""A snapshot whose table was read while a write of it was committing is counted again, at most this often."""


class ConcurrentWrites(RuntimeError):
    """Writes kept committing, stamped before the table was read, while a snapshot was counted."""


def _last_change(conn: sa.Connection, wh: Warehouse, names: Sequence[str]) -> int:
    change = wh.system["lgsp_change"]
    return int(conn.execute(sa.select(sa.func.max(change.c.change_seq)).where(change.c.dataset.in_(names)))
               .scalar() or 0)


def _late_writes(wh: Warehouse, names: Sequence[str], seen: int, read_at: datetime) -> list[str]:
    """The writes numbered after `seen` whose commit time is not after `read_at`: they were committing while the
    table was read, so the table's count may not hold them while the replay, which times versions by that commit
    time, does (`Warehouse.stamp_change` stamps the time just before the commit). A write stamped after `read_at`
    is harmless: the count of `read_at` and the replay both leave it out."""
    change = wh.system["lgsp_change"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(change.c.batch_id, change.c.committed_at)
                            .where(change.c.dataset.in_(names), change.c.change_seq > seen)).all()
    return [r.batch_id for r in rows if r.committed_at is not None and aggregate_time(r.committed_at) <= read_at]


class Snapshot:
    """The counts of what a dataset's table held at each of `instants` (and now): the table now, corrected by the
    versions of the records written after the earliest of them. The records are replayed a key range at a time
    (`SLICE`); what each range's versions change of the counts now is summed per instant.

    A write of the dataset (or of one its units read through a reference) committing while the table was read
    makes the table's count and the replay disagree on it: then it is all counted again (`ATTEMPTS`)."""

    def __init__(self, wh: Warehouse, spec: IndicatorSpec, lake: Lake, instants: Sequence[datetime] = ()) -> None:
        names = [spec.dataset, *through(wh, spec)]
        for attempt in range(1, ATTEMPTS + 1):
            seen = self._count(wh, spec, lake, instants)
            late = _late_writes(wh, names, seen, self.read_at)
            if not late:
                return
            log.info("%s: %s committed while the table was read; counting again (%d of %d)", spec.name,
                     ", ".join(late), attempt + 1, ATTEMPTS)
        raise ConcurrentWrites(f"{spec.name}: writes of {', '.join(names)} kept committing while the table was read "
                               f"({ATTEMPTS} times); nothing was written: compute it again (the indicators DAG "
                               "retries)")

    def _count(self, wh: Warehouse, spec: IndicatorSpec, lake: Lake, instants: Sequence[datetime]) -> int:
        """Read the table and replay; the last change number seen before the table was read."""
        dataset = wh.catalog.datasets[spec.dataset]
        with wh.engine.connect() as conn:
            seen = _last_change(conn, wh, [spec.dataset, *through(wh, spec)])
            self.read_at = datetime.now(timezone.utc)
            self.first = _first_write(conn, wh, dataset.name)
            self.now = _state_now(conn, wh, spec)
            lookups = _lookups(conn, wh, spec)
        self.replayed = 0
        self.known_since: date | None = None
        self.slices = 0
        self.change: dict[datetime, Cells] = {at: {} for at in instants if at < self.read_at}
        if self.first is None or not self.change:
            return seen
        since, columns = min(self.change), counted_columns(dataset, spec)
        with wh.engine.connect() as conn:
            ranges = key_ranges(conn, wh.core[dataset.name], dataset.key, wh.dialect, SLICE)
        for within in ranges:
            keys: set[Key] | None = written_since(wh.engine, dataset, lake, since, within)
            with wh.engine.connect() as conn:
                if keys and len(keys) > _held(conn, wh, dataset, within) // 2:
                    keys = None  # most of the range changed since: every record of it, in one pass over the lake
                current = _current_rows(conn, wh, dataset, columns, keys, within) if keys is None or keys else []
            versions = versions_of(wh.engine, dataset, lake, keys, current, columns, within)
            self.known_since, self.slices = versions.known_since, self.slices + 1
            self.replayed += len(versions.held)
            if not versions.held:
                continue
            tally = Tally(versions.held, spec, lookups)
            del versions, current  # this range's rows: let go before the next is read
            base = tally.at(self.read_at)
            for at, change in self.change.items():
                _add(change, tally.at(at), 1)
                _add(change, base, -1)
        if not lake.partitions(dataset.name):  # no lake at all: only the table as it is now
            self.known_since = self.read_at.date()
        return seen

    def at(self, instant: datetime) -> Cells:
        """The counts at `instant`, one of those asked (the table's now, when it is not before the table was
        read)."""
        if instant >= self.read_at or self.first is None:
            return dict(self.now)
        counts = dict(self.now)
        _add(counts, self.change[instant], 1)
        return {cell: pair for cell, pair in counts.items() if pair[1] > 0}


@dataclass
class Counted:
    """What `snapshot_counts` found: per period type, the counts and the periods they stand for (those to make
    the mart's rows equal); `settled_until`: every period ended by then is counted at its end (None: nothing yet);
    `replayed`: versions replayed (0: the table now only)."""

    found: dict[str, tuple[Counts, set[str]]]
    settled_until: datetime | None
    replayed: int = 0


def snapshot_counts(wh: Warehouse, spec: IndicatorSpec, lake: Lake, settled: datetime | None = None) -> Counted:
    """The counts of each period from the month of the dataset's first write to the one under way, except the
    periods ended by `settled` (counted before: left alone)."""
    now = datetime.now(timezone.utc)
    dataset = wh.catalog.datasets[spec.dataset]
    with wh.engine.connect() as conn:
        first = _first_write(conn, wh, dataset.name)
    if first is None:
        return Counted({kind: ({}, set()) for kind in spec.periods}, settled)
    months = _months(_local_month(first), _local_month(now))
    wanted = {kind: sorted({periods.roll_up(m, kind) for m in months}) for kind in spec.periods}
    if settled is not None:
        wanted = {kind: [p for p in labels if period_end(p) > settled] for kind, labels in wanted.items()}
    ended = [period_end(p) for labels in wanted.values() for p in labels if period_end(p) <= now]
    snapshot = Snapshot(wh, spec, lake, ended)
    found: dict[str, tuple[Counts, set[str]]] = {}
    for kind, labels in wanted.items():
        if snapshot.known_since is not None:  # periods that ended before the lake's oldest file: left alone
            labels = [p for p in labels if period_end(p) > periods.local_midnight_utc(snapshot.known_since)]
        counts: Counts = {}
        for label in labels:
            for (level, unit), pair in snapshot.at(period_end(label)).items():  # under way: the table now
                counts[(level, unit, label)] = pair
        found[kind] = (counts, set(labels))
    return Counted(found, periods.local_midnight_utc(periods.month_start(_local_month(now))), snapshot.replayed)


def range_counts(wh: Warehouse, spec: IndicatorSpec, lake: Lake, label: str, last: date) -> Counts:
    """The counts at the end of local day `last` (now, if it has not ended), labelled `label`."""
    at = periods.local_midnight_utc(last + timedelta(days=1))
    snapshot = Snapshot(wh, spec, lake, [at])
    if snapshot.first is None or snapshot.first > min(at, snapshot.read_at):
        return {}
    return {(level, unit, label): pair for (level, unit), pair in snapshot.at(at).items()}
