"""The SQL of an indicator: SQLAlchemy Core, bound parameters only, the same on SQLite and PostgreSQL.

One query per unit level returns, per unit and local month, the denominator
(rows matching the denominator's filters) and the numerator (those rows also
matching the numerator's, or the sum of seconds between two timestamps for an
average). A date range query groups by unit only.

Example (online submission rate per commune, SQLite)::

    SELECT core_dossier.commune_code AS unit_code,
           strftime('%Y-%m', core_dossier.received_at, '+7 hours') AS period,
           sum(CASE WHEN (core_dossier.channel = ?) THEN 1 ELSE 0 END) AS numerator,
           count(*) AS denominator
    FROM core_dossier WHERE core_dossier.received_at IS NOT NULL AND core_dossier.commune_code IS NOT NULL
    GROUP BY core_dossier.commune_code, period
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from catalog.models import IndicatorSpec
from indicators.periods import local_midnight_utc

LOCAL_TZ = "Asia/Ho_Chi_Minh"


def _is_date(column: sa.ColumnElement[Any]) -> bool:
    return isinstance(column.type, sa.Date) and not isinstance(column.type, sa.DateTime)


def local_month(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """'YYYY-MM' of a UTC timestamp column in Vietnam's local time (UTC+7, no DST), or of a date column."""
    if dialect == "postgresql":
        local = column if _is_date(column) else sa.func.timezone(LOCAL_TZ, column)
        return sa.func.to_char(local, "YYYY-MM")
    if _is_date(column):
        return sa.func.strftime("%Y-%m", column)
    return sa.func.strftime("%Y-%m", column, "+7 hours")


def seconds_between(start: sa.ColumnElement[Any], end: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[int]:
    """Whole seconds from `start` to `end` (both timestamps)."""
    if dialect == "postgresql":
        return sa.cast(sa.extract("epoch", end - start), sa.BigInteger)
    return (sa.cast(sa.func.strftime("%s", end), sa.Integer) - sa.cast(sa.func.strftime("%s", start), sa.Integer))


def condition(table: sa.Table, filters: dict[str, Any]) -> sa.ColumnElement[bool]:
    """AND of the filters: value (equality), list (one of), None (is null), `{"not": one of those}` (not equal,
    none of, is not null; a null value passes neither a value nor its `not`); true when there are none."""
    parts: list[sa.ColumnElement[bool]] = []
    for name, wanted in filters.items():
        column = table.c[name]
        negated = isinstance(wanted, dict)
        wanted = wanted["not"] if negated else wanted
        if wanted is None:
            parts.append(column.is_not(None) if negated else column.is_(None))
        elif isinstance(wanted, list):
            parts.append(sa.and_(column.is_not(None), column.not_in(wanted)) if negated else column.in_(wanted))
        else:
            parts.append(sa.and_(column.is_not(None), column != wanted) if negated else column == wanted)
    return sa.and_(sa.true(), *parts)


def _numerator(spec: IndicatorSpec, table: sa.Table, dialect: str) -> sa.ColumnElement[Any]:
    if spec.measure == "average":
        start, end = spec.sum_seconds or ("", "")
        return sa.func.sum(seconds_between(table.c[start], table.c[end], dialect))
    return sa.func.sum(sa.case((condition(table, spec.numerator), 1), else_=0))


def _rows(spec: IndicatorSpec, table: sa.Table) -> list[sa.ColumnElement[bool]]:
    """The WHERE of every query: dated, in the denominator, and (average) both timestamps present."""
    where = [table.c[spec.date_column].is_not(None), condition(table, spec.denominator)]
    for name in spec.sum_seconds or ():
        where.append(table.c[name].is_not(None))
    return where


def _bound(table: sa.Table, spec: IndicatorSpec, day: date) -> date | datetime:
    """A local day as a bound for the date column: the day itself, or its local midnight in UTC."""
    return day if _is_date(table.c[spec.date_column]) else local_midnight_utc(day)


def monthly_cells(spec: IndicatorSpec, table: sa.Table, dialect: str, unit_column: str | None,
                  span: tuple[date, date] | None = None) -> sa.Select[Any]:
    """(unit_code, period, numerator, denominator) per unit and month; the province when `unit_column` is None.

    `span` limits the rows to local days [first, end) (end excluded).
    """
    period = local_month(table.c[spec.date_column], dialect).label("period")
    where = _rows(spec, table)
    if span is not None:
        where += [table.c[spec.date_column] >= _bound(table, spec, span[0]),
                  table.c[spec.date_column] < _bound(table, spec, span[1])]
    measures = [_numerator(spec, table, dialect).label("numerator"), sa.func.count().label("denominator")]
    if unit_column is None:
        return sa.select(period, *measures).where(*where).group_by(period)
    unit = table.c[unit_column]
    return (sa.select(unit.label("unit_code"), period, *measures)
            .where(*where, unit.is_not(None)).group_by(unit, period))


def range_cells(spec: IndicatorSpec, table: sa.Table, dialect: str, unit_column: str | None,
                first: date, end: date) -> sa.Select[Any]:
    """(unit_code, numerator, denominator) per unit over local days [first, end); the province when no column."""
    where = [*_rows(spec, table), table.c[spec.date_column] >= _bound(table, spec, first),
             table.c[spec.date_column] < _bound(table, spec, end)]
    measures = [_numerator(spec, table, dialect).label("numerator"), sa.func.count().label("denominator")]
    if unit_column is None:
        return sa.select(*measures).where(*where)
    unit = table.c[unit_column]
    return sa.select(unit.label("unit_code"), *measures).where(*where, unit.is_not(None)).group_by(unit)


def state_cells(spec: IndicatorSpec, table: sa.Table, dialect: str, unit_column: str | None) -> sa.Select[Any]:
    """(unit_code, numerator, denominator) per unit over the records the table holds now (a history table's
    current versions), whatever their dates: an indicator `as_of: period_end` for the period under way."""
    where = [condition(table, spec.denominator)]
    if "is_current" in table.c:
        where.append(table.c["is_current"].is_(sa.true()))
    measures = [_numerator(spec, table, dialect).label("numerator"), sa.func.count().label("denominator")]
    if unit_column is None:
        return sa.select(*measures).where(*where)
    unit = table.c[unit_column]
    return sa.select(unit.label("unit_code"), *measures).where(*where, unit.is_not(None)).group_by(unit)


def touched_months(spec: IndicatorSpec, table: sa.Table, dialect: str, loaded_after: datetime) -> sa.Select[Any]:
    """The distinct local months of the rows loaded after `loaded_after` (late-arriving or changed data)."""
    month = local_month(table.c[spec.date_column], dialect)
    return (sa.select(month.label("period")).distinct()
            .where(table.c["_loaded_at"] > loaded_after, table.c[spec.date_column].is_not(None)))
