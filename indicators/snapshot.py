"""Indicators of what the warehouse held at each period's end (`as_of: period_end`).

A rate of `indicators.query` counts the rows dated in a period (dossiers received in August). Some figures
are the state of a catalogue or of master data instead: the procedures with no administrative boundary
(Binh Duong: 275, then 570), the procedures offered fully online. Their value for a month is the records the
table held at the month's end: for a quarter, at the quarter's end; for the period under way, now. A
period's value does not move once it has ended, whatever the source says later, so a report sent for it
stays true.

What the table held, and when, comes from the dataset's versions (`warehouse.versions.dataset_versions`:
the lake's files, the change log's commit times, the tombstones), in the warehouse's time: a version
counts from the moment its write committed. So the periods start with the month of the dataset's first
write; earlier ones have no value (the warehouse held nothing then). When the lake's oldest files are gone
(`Versions.known_since`; all of them: today), the periods that ended before it are left as the mart has them,
neither recomputed from what is left nor deleted.

The versions of every record are replayed in memory: meant for datasets of some thousands to some tens of
thousands of records (a catalogue, a register), not for a table of millions (count those by a date column).

Example (catalog/indicators.yaml)::

    boundary_free_procedure_rate:
      version: 1
      dataset: procedure
      as_of: period_end
      denominator: {}
      numerator: {boundary_free: true}
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa

from catalog.models import DatasetSpec, IndicatorSpec
from indicators import periods
from indicators.compute import PROVINCE_CODE, Counts
from warehouse import Warehouse
from warehouse.lake import Lake
from warehouse.store import aggregate_time
from warehouse.versions import Held, dataset_versions


def matches(values: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether a record's values pass an indicator's filters, as `indicators.query.condition` says in SQL:
    value (equality), list (one of), None (is null); a null value equals nothing."""
    for name, wanted in filters.items():
        value = values.get(name)
        if wanted is None:
            if value is not None:
                return False
        elif value is None or (value not in wanted if isinstance(wanted, list) else value != wanted):
            return False
    return True


def _current_rows(conn: sa.Connection, wh: Warehouse, dataset: DatasetSpec) -> list[dict[str, Any]]:
    """The table's records now (a history table's current versions), in the dataset's columns and `_batch_id`."""
    table = wh.core[dataset.name]
    select = sa.select(*[table.c[c] for c in dataset.columns], table.c["_batch_id"])
    if "is_current" in table.c:
        select = select.where(table.c["is_current"].is_(sa.true()))
    return [dict(r) for r in conn.execute(select).mappings()]


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

    def __init__(self, held: Sequence[Held], spec: IndicatorSpec) -> None:
        keys: dict[Any, int] = {}
        self.record = np.array([keys.setdefault(h.key, len(keys)) for h in held], dtype=np.int64)
        self.since = np.array([-np.inf if h.since is None else h.since.timestamp() for h in held], dtype=np.float64)
        self.until = np.array([np.inf if h.until is None else h.until.timestamp() for h in held], dtype=np.float64)
        self.counted = np.array([matches(h.values, spec.denominator) for h in held], dtype=bool)
        self.hit = np.array([matches(h.values, spec.numerator) for h in held], dtype=bool) & self.counted
        self.units: list[tuple[str, list[str], np.ndarray]] = []
        for level, column in spec.units.items():
            codes: dict[str, int] = {}
            index = np.array([-1 if h.values.get(column) is None
                              else codes.setdefault(str(h.values[column]), len(codes)) for h in held], dtype=np.int64)
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


def _versions(wh: Warehouse, spec: IndicatorSpec, lake: Lake) -> tuple[list[Held], datetime | None, date | None]:
    dataset = wh.catalog.datasets[spec.dataset]
    with wh.engine.connect() as conn:
        current = _current_rows(conn, wh, dataset)
        first = _first_write(conn, wh, dataset.name)
    versions = dataset_versions(wh.engine, dataset, lake, current)
    known_since = versions.known_since
    if first is not None and not lake.partitions(dataset.name):  # no lake at all: only the table as it is now
        known_since = datetime.now(timezone.utc).date()
    return versions.held, first, known_since


def snapshot_counts(wh: Warehouse, spec: IndicatorSpec, lake: Lake,
                    now: datetime | None = None) -> dict[str, tuple[Counts, set[str]]]:
    """Per period type of `spec.periods`: the counts of each period from the month of the dataset's first write
    to the one under way (`now`'s), and the periods they stand for (those to make the mart's rows equal)."""
    now = now or datetime.now(timezone.utc)
    held, first, known_since = _versions(wh, spec, lake)
    if first is None:
        return {kind: ({}, set()) for kind in spec.periods}
    tally = Tally(held, spec)
    months = _months(_local_month(first), _local_month(now))
    if known_since is not None:  # periods that ended before the lake's oldest file: left as the mart has them
        months = [m for m in months if period_end(m) > periods.local_midnight_utc(known_since)]
    found: dict[str, tuple[Counts, set[str]]] = {}
    for kind in spec.periods:
        labels = sorted({periods.roll_up(m, kind) for m in months})
        if known_since is not None:
            labels = [p for p in labels if period_end(p) > periods.local_midnight_utc(known_since)]
        counts: Counts = {}
        for label in labels:
            for (level, unit), pair in tally.at(min(period_end(label), now)).items():
                counts[(level, unit, label)] = pair
        found[kind] = (counts, set(labels))
    return found


def range_counts(wh: Warehouse, spec: IndicatorSpec, lake: Lake, label: str, last: date,
                 now: datetime | None = None) -> Counts:
    """The counts at the end of local day `last` (now, if it has not ended), labelled `label`."""
    now = now or datetime.now(timezone.utc)
    held, first, _ = _versions(wh, spec, lake)
    at = min(periods.local_midnight_utc(last + timedelta(days=1)), now)
    if first is None or first > at:
        return {}
    return {(level, unit, label): pair for (level, unit), pair in Tally(held, spec).at(at).items()}
