"""Compute indicators from the core tables into the mart (`mart_indicator_value`).

An indicator is a numerator and a denominator, each a count of rows of one
core table matching equality filters, grouped by unit (e.g. commune) and
period (month, in Asia/Ho_Chi_Minh time). The mart stores all three, so a
report can be checked. Recomputing replaces the indicator's rows in one
transaction: idempotent.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import IndicatorSpec
from warehouse import Warehouse

LOCAL_TZ = "Asia/Ho_Chi_Minh"


def local_month(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """'YYYY-MM' of a UTC timestamp column, in Vietnam's local time (UTC+7, no DST)."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone(LOCAL_TZ, column), "YYYY-MM")
    return sa.func.strftime("%Y-%m", column, "+7 hours")


def _count_where(table: sa.Table, filters: dict[str, Any]) -> sa.ColumnElement[Any]:
    if not filters:
        return sa.func.count()
    condition = sa.and_(*[table.c[col] == value for col, value in filters.items()])
    return sa.func.sum(sa.case((condition, 1), else_=0))


def indicator_query(spec: IndicatorSpec, table: sa.Table, dialect: str) -> sa.Select[Any]:
    """SELECT unit, period, numerator, denominator for one indicator (bound parameters only)."""
    period = local_month(table.c[spec.date_column], dialect).label("period")
    unit = table.c[spec.unit_column].label("unit_code")
    return (sa.select(unit, period, _count_where(table, spec.numerator).label("numerator"),
                      _count_where(table, spec.denominator).label("denominator"))
            .where(table.c[spec.date_column].is_not(None))
            .group_by(unit, period))


PROVINCE_CODE = "37"  # Ninh Bình; the province the sandbox and the demo serve


def _province_totals(spec: IndicatorSpec, values: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The province's value per period: sums of the units' numerators and denominators (not a mean of rates)."""
    totals: dict[str, list[int]] = {}
    for v in values:
        pair = totals.setdefault(v["period"], [0, 0])
        pair[0] += v["numerator"]
        pair[1] += v["denominator"]
    return [{"indicator": spec.name, "version": spec.version, "unit_level": "province", "unit_code": PROVINCE_CODE,
             "period": period, "numerator": num, "denominator": den, "computed_at": now,
             "value": num / den if den else None} for period, (num, den) in sorted(totals.items())]


def compute_indicator(wh: Warehouse, spec: IndicatorSpec) -> int:
    """Recompute every value of `spec` (this version) and replace them in the mart."""
    table, mart = wh.core[spec.dataset], wh.system["mart_indicator_value"]
    now = datetime.now(timezone.utc)
    with wh.transaction() as conn:
        values = [
            {"indicator": spec.name, "version": spec.version, "unit_level": spec.unit_level,
             "unit_code": r.unit_code, "period": r.period, "numerator": int(r.numerator or 0),
             "denominator": int(r.denominator), "computed_at": now,
             "value": (int(r.numerator or 0) / int(r.denominator)) if r.denominator else None}
            for r in conn.execute(indicator_query(spec, table, wh.dialect))
        ]
        if spec.unit_level != "province":
            values += _province_totals(spec, values, now)
        conn.execute(mart.delete().where(mart.c.indicator == spec.name, mart.c.version == spec.version))
        if values:
            conn.execute(mart.insert(), values)
    return len(values)


def read_indicator(wh: Warehouse, name: str, version: int | None = None,
                   unit_level: str | None = None) -> list[dict[str, Any]]:
    """The mart rows of an indicator (latest version unless one is given; one unit level or all)."""
    mart = wh.system["mart_indicator_value"]
    with wh.engine.connect() as conn:
        if version is None:
            version = conn.execute(sa.select(sa.func.max(mart.c.version)).where(mart.c.indicator == name)).scalar()
        query = sa.select(mart).where(mart.c.indicator == name, mart.c.version == version)
        if unit_level is not None:
            query = query.where(mart.c.unit_level == unit_level)
        rows = conn.execute(query.order_by(mart.c.period, mart.c.unit_code)).mappings().all()
    return [dict(r) for r in rows]
