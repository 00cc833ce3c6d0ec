"""Compute indicators from the core tables into the mart (`mart_indicator_value`).

An indicator's numerator and denominator are counted per unit (the province,
then each level in its `units`) and local month in SQL (`indicators.query`);
quarters and years are the sums of their months' numerators and denominators,
rolled up from the mart. The mart stores numerator, denominator and value, so
a report can be checked.

Recomputing is idempotent: the new values are compared with the stored ones in
one transaction; only changed rows are written (with a new `computed_at`), rows
that no longer exist are deleted, unchanged rows are left alone. Late-arriving
data: `compute_touched` recomputes only the months of rows loaded since the last
computation (by their `_loaded_at`) and the quarters and years they roll into.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import IndicatorSpec, UnitVia
from indicators import definitions, periods, query
from warehouse import Warehouse
from warehouse.store import aggregate_time
from warehouse.lake import Lake

MART_DATASET = "indicator_value"  # the dataset of `mart_indicator_value` (catalog/datasets.yaml)

PROVINCE_CODE = "37"  # Ninh Bình; the province the sandbox and the demo serve
LATE_LOOKBACK = timedelta(minutes=15)
"""Rows loaded this long before the last computation's newest `_loaded_at` count as touched again
(a load transaction that committed late); recomputing them is harmless."""

Cell = tuple[str, str, str]  # (unit_level, unit_code, period)
Counts = dict[Cell, tuple[int, int]]


def unit_levels(wh: Warehouse, spec: IndicatorSpec) -> list[tuple[str, query.Unit | None]]:
    """The province, then each unit level with what it groups by."""
    return [("province", None), *((level, query.unit_of(wh.catalog, wh.core, spec.dataset, unit))
                                  for level, unit in spec.units.items())]


def _value(spec: IndicatorSpec, numerator: int, denominator: int) -> float | None:
    if not denominator:
        return None
    return numerator / denominator / (spec.value_scale if spec.measure == "average" else 1.0)


def _monthly_counts(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec, months: set[str] | None) -> Counts:
    """Numerator and denominator per (level, unit, month), for the given months (all when None)."""
    table = wh.core[spec.dataset]
    span = None
    if months is not None:
        span = (min(periods.month_start(m) for m in months), max(periods.next_month_start(m) for m in months))
    counts: Counts = {}
    for level, grouped in unit_levels(wh, spec):
        for row in conn.execute(query.monthly_cells(spec, table, wh.dialect, grouped, span)).mappings():
            if months is None or row["period"] in months:
                unit = PROVINCE_CODE if grouped is None else str(row["unit_code"])
                counts[(level, unit, row["period"])] = (int(row["numerator"] or 0), int(row["denominator"]))
    return counts


def computation_id(spec: IndicatorSpec) -> str:
    """The id a computation's rows carry in `_batch_id` (and the change feed's record of it): a batch id's form."""
    from lgsp.runner import new_batch_id

    return new_batch_id(f"indicator-{spec.name}-v{spec.version}")


def _sync(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec, period_type: str, counts: Counts,
          scope: set[str] | None, batch_id: str) -> int:
    """Make the mart's rows of `period_type` within `scope` (all when None) equal `counts`; returns rows written.

    Rows written carry `batch_id`; cells no longer there are recorded as deleted (the change feed's deletes).
    """
    mart = wh.system["mart_indicator_value"]
    mine = [mart.c.indicator == spec.name, mart.c.version == spec.version, mart.c.period_type == period_type]
    select = sa.select(mart.c.unit_level, mart.c.unit_code, mart.c.period, mart.c.numerator, mart.c.denominator)
    if scope is not None:
        select = select.where(mart.c.period.in_(sorted(scope)))
    stored = {(r.unit_level, r.unit_code, r.period): (r.numerator, r.denominator)
              for r in conn.execute(select.where(*mine))}
    now = datetime.now(timezone.utc)
    fresh = [{"indicator": spec.name, "version": spec.version, "unit_level": cell[0], "unit_code": cell[1],
              "period": cell[2], "period_type": period_type, "measure": spec.measure, "numerator": num,
              "denominator": den, "value": _value(spec, num, den), "computed_at": now, "_batch_id": batch_id}
             for cell, (num, den) in sorted(counts.items()) if stored.get(cell) != (num, den)]
    gone = [cell for cell in stored if cell not in counts]
    for level, unit, period in gone + [(r["unit_level"], r["unit_code"], r["period"]) for r in fresh
                                       if (r["unit_level"], r["unit_code"], r["period"]) in stored]:
        conn.execute(mart.delete().where(*mine, mart.c.unit_level == level, mart.c.unit_code == unit,
                                         mart.c.period == period))
    if fresh:
        conn.execute(mart.insert(), fresh)
    if gone:
        wh.record_deletions(conn, MART_DATASET, [c.name for c in mart.primary_key.columns],
                            [(spec.name, spec.version, *cell) for cell in gone], batch_id)
    return len(fresh) + len(gone)


def _roll_up(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec, period_type: str,
             months: set[str] | None, batch_id: str) -> int:
    """Quarters or years as sums of the mart's months (those containing `months`, or all)."""
    mart = wh.system["mart_indicator_value"]
    scope = None if months is None else {periods.roll_up(m, period_type) for m in months}
    select = sa.select(mart.c.unit_level, mart.c.unit_code, mart.c.period, mart.c.numerator, mart.c.denominator).where(
        mart.c.indicator == spec.name, mart.c.version == spec.version, mart.c.period_type == "month")
    if scope is not None:
        select = select.where(mart.c.period.in_(sorted({m for p in scope for m in periods.months_in(p)})))
    sums: dict[Cell, list[int]] = defaultdict(lambda: [0, 0])
    for r in conn.execute(select):
        pair = sums[(r.unit_level, r.unit_code, periods.roll_up(r.period, period_type))]
        pair[0] += r.numerator
        pair[1] += r.denominator
    return _sync(conn, wh, spec, period_type, {c: (n, d) for c, (n, d) in sums.items()}, scope, batch_id)


def through(wh: Warehouse, spec: IndicatorSpec) -> list[str]:
    """The datasets the units read through a reference (`UnitVia`): a change of theirs moves units of old months."""
    found = [wh.catalog.datasets[spec.dataset].columns[u.via].references for u in spec.units.values()
             if isinstance(u, UnitVia)]
    return sorted({r.dataset for r in found if r is not None})


def _loaded_until(conn: sa.Connection, wh: Warehouse, dataset: str) -> datetime | None:
    table = wh.core[dataset]
    return aggregate_time(conn.execute(sa.select(sa.func.max(table.c["_loaded_at"]))).scalar())


def _newest_load(conn: sa.Connection, wh: Warehouse, spec: IndicatorSpec) -> datetime | None:
    """The newest load of the indicator's dataset and of those its units read through a reference."""
    loads = [_loaded_until(conn, wh, d) for d in [spec.dataset, *through(wh, spec)]]
    return max((at for at in loads if at is not None), default=None)


def _lake(lake: Lake | None) -> Lake:
    if lake is not None:
        return lake
    from lgsp.settings import load_settings

    return Lake(load_settings().lake_root)


def compute_indicator(wh: Warehouse, spec: IndicatorSpec, months: set[str] | None = None,
                      lake: Lake | None = None, recount: bool = False) -> int:
    """Recompute `spec` for `months` (every month when None) and the quarters and years they roll into.

    An indicator `as_of: period_end` (`indicators.snapshot`, from `lake`: the settings' lake when None) counts
    its periods under way and those ended since the last computation; `recount` counts every ended period
    again; `months` does not apply to it.

    Returns:
        Mart rows written (inserted, changed or deleted); 0 when nothing changed.

    Raises:
        IndicatorVersionError: the definition changed without a new version.
    """
    from indicators import snapshot

    batch_id = computation_id(spec)
    if definitions.widened(wh, spec):  # unit levels added: every period counted again, with them
        months, recount = None, True
    held = None  # read before writing
    if spec.as_of is not None:
        held = snapshot.snapshot_counts(wh, spec, _lake(lake), None if recount else definitions.settled_until(wh, spec))
    with wh.transaction() as conn:
        _adopt_untyped_rows(conn, wh)
        definitions.register(conn, wh, spec)
        newest = _newest_load(conn, wh, spec)
        written = 0
        if held is not None:
            for period_type, (counts, scope) in held.found.items():
                written += _sync(conn, wh, spec, period_type, counts, scope, batch_id)
            definitions.settle(conn, wh, spec, held.settled_until)
        elif months is None or months:
            written = _sync(conn, wh, spec, "month", _monthly_counts(conn, wh, spec, months), months, batch_id)
            for period_type in ("quarter", "year"):
                if period_type in spec.periods:
                    written += _roll_up(conn, wh, spec, period_type, months, batch_id)
        definitions.set_watermark(conn, wh, spec, newest)
        wh.stamp_change(conn, batch_id, MART_DATASET, written)  # last: the change feed's order is the commit order
    return written


def months_touched(wh: Warehouse, spec: IndicatorSpec) -> set[str] | None:
    """Months holding rows loaded since the last computation (None: never computed, or an indicator `as_of:
    period_end`, so every month)."""
    if spec.as_of is not None:
        return None
    table = wh.system["mart_indicator_definition"]
    with wh.engine.connect() as conn:
        mark = conn.execute(sa.select(table.c.data_loaded_until).where(
            table.c.indicator == spec.name, table.c.version == spec.version)).scalar()
        if mark is None:
            return None
        mark = mark if mark.tzinfo else mark.replace(tzinfo=timezone.utc)
        for dataset in through(wh, spec):  # a procedure's level changed: any month's units may have
            loaded = _loaded_until(conn, wh, dataset)
            if loaded is not None and loaded > mark - LATE_LOOKBACK:
                return None
        touched = query.touched_months(spec, wh.core[spec.dataset], wh.dialect, mark - LATE_LOOKBACK)
        return {r.period for r in conn.execute(touched)}


def compute_touched(wh: Warehouse, spec: IndicatorSpec) -> dict[str, Any]:
    """Recompute only the months late-arriving or changed rows fall in (what the Asset-scheduled DAG runs)."""
    months = None if definitions.widened(wh, spec) else months_touched(wh, spec)
    written = compute_indicator(wh, spec, months)
    counted = "all" if spec.as_of is None else "under way and ended since the last computation"
    return {"indicator": spec.name, "months": counted if months is None else sorted(months), "written": written}


def compute_range(wh: Warehouse, spec: IndicatorSpec, first: date, last: date, lake: Lake | None = None) -> int:
    """Compute `spec` over local days first..last (both included) as a `range` period; returns rows written.
    An indicator `as_of: period_end` counts what the table held at the end of `last` (now, if later)."""
    label = periods.range_label(first, last)
    table = wh.core[spec.dataset]
    counts: Counts = {}
    if spec.as_of is not None:
        from indicators import snapshot

        counts = snapshot.range_counts(wh, spec, _lake(lake), label, last)
    with wh.transaction() as conn:
        definitions.register(conn, wh, spec)
        for level, grouped in unit_levels(wh, spec) if spec.as_of is None else ():
            select = query.range_cells(spec, table, wh.dialect, grouped, first, last + timedelta(days=1))
            for row in conn.execute(select).mappings():
                if row["denominator"]:
                    unit = PROVINCE_CODE if grouped is None else str(row["unit_code"])
                    counts[(level, unit, label)] = (int(row["numerator"] or 0), int(row["denominator"]))
        batch_id = computation_id(spec)
        written = _sync(conn, wh, spec, "range", counts, {label}, batch_id)
        wh.stamp_change(conn, batch_id, MART_DATASET, written)
        return written


def read_indicator(wh: Warehouse, name: str, version: int | None = None, unit_level: str | None = None,
                   period_type: str | None = "month") -> list[dict[str, Any]]:
    """The mart rows of an indicator: the latest version unless one is given; one unit level and period type
    (`None`: all), ordered by period and unit."""
    mart = wh.system["mart_indicator_value"]
    with wh.engine.connect() as conn:
        if version is None:
            version = conn.execute(sa.select(sa.func.max(mart.c.version)).where(mart.c.indicator == name)).scalar()
        select = sa.select(mart).where(mart.c.indicator == name, mart.c.version == version)
        if unit_level is not None:
            select = select.where(mart.c.unit_level == unit_level)
        if period_type is not None:
            select = select.where(mart.c.period_type == period_type)
        rows = conn.execute(select.order_by(mart.c.period, mart.c.unit_level, mart.c.unit_code)).mappings().all()
    return [dict(r) for r in rows]


def _adopt_untyped_rows(conn: sa.Connection, wh: Warehouse) -> None:
    """Rows written before periods had types were all monthly rates: say so, so recomputing finds them."""
    mart = wh.system["mart_indicator_value"]
    conn.execute(mart.update().where(mart.c.period_type.is_(None)).values(period_type="month", measure="rate"))
