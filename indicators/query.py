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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, IndicatorSpec, UnitVia
from indicators.periods import local_midnight_utc

LOCAL_TZ = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True)
class Unit:
    """What a unit level groups by: a column of the indicator's table, or one of the table a referencing column
    names (`catalog.models.UnitVia`: joined on that table's key, its current version for a history table; a row
    whose record is missing has no unit)."""

    column: sa.ColumnElement[Any]
    joined: tuple[sa.FromClause, sa.ColumnElement[bool]] | None = None
    key: sa.ColumnElement[Any] | None = None  # the joined table's key: what the referencing column holds

    def source(self, table: sa.Table) -> sa.FromClause:
        return table if self.joined is None else table.outerjoin(*self.joined)


def unit_of(catalog: Catalog, core: Mapping[str, sa.Table], dataset: str, unit: str | UnitVia) -> Unit:
    """The `Unit` of a level of an indicator's `units` over its dataset's core table (`core`: the core tables)."""
    table = core[dataset]
    if not isinstance(unit, UnitVia):
        return Unit(table.c[unit])
    reference = catalog.datasets[dataset].columns[unit.via].references
    assert reference is not None  # the catalog's cross-check says so
    target = core[reference.dataset].alias(f"unit_{reference.dataset}")
    on = [target.c[reference.column] == table.c[unit.via]]
    if "is_current" in target.c:
        on.append(target.c["is_current"].is_(sa.true()))
    return Unit(target.c[unit.column], (target, sa.and_(*on)), target.c[reference.column])


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


def monthly_cells(spec: IndicatorSpec, table: sa.Table, dialect: str, unit: Unit | None,
                  span: tuple[date, date] | None = None) -> sa.Select[Any]:
    """(unit_code, period, numerator, denominator) per unit and month; the province when `unit` is None.

    `span` limits the rows to local days [first, end) (end excluded).
    """
    period = local_month(table.c[spec.date_column], dialect).label("period")
    where = _rows(spec, table)
    if span is not None:
        where += [table.c[spec.date_column] >= _bound(table, spec, span[0]),
                  table.c[spec.date_column] < _bound(table, spec, span[1])]
    measures = [_numerator(spec, table, dialect).label("numerator"), sa.func.count().label("denominator")]
    return _per_unit(sa.select(period, *measures).where(*where).group_by(period), table, unit)


def range_cells(spec: IndicatorSpec, table: sa.Table, dialect: str, unit: Unit | None,
                first: date, end: date) -> sa.Select[Any]:
    """(unit_code, numerator, denominator) per unit over local days [first, end); the province when no column."""
    where = [*_rows(spec, table), table.c[spec.date_column] >= _bound(table, spec, first),
             table.c[spec.date_column] < _bound(table, spec, end)]
    measures = [_numerator(spec, table, dialect).label("numerator"), sa.func.count().label("denominator")]
    return _per_unit(sa.select(*measures).where(*where), table, unit)


def _per_unit(select: sa.Select[Any], table: sa.Table, unit: Unit | None) -> sa.Select[Any]:
    """`select` (the province's measures) per unit instead, when there is one."""
    if unit is None:
        return select
    return (select.add_columns(unit.column.label("unit_code")).select_from(unit.source(table))
            .where(unit.column.is_not(None)).group_by(unit.column))


def state_cells(spec: IndicatorSpec, table: sa.Table, dialect: str, unit: Unit | None) -> sa.Select[Any]:
    """(unit_code, numerator, denominator) per unit over the records the table holds now (a history table's
    current versions), whatever their dates: an indicator `as_of: period_end` for the period under way."""
    where = [condition(table, spec.denominator)]
    if "is_current" in table.c:
        where.append(table.c["is_current"].is_(sa.true()))
    measures = [_numerator(spec, table, dialect).label("numerator"), sa.func.count().label("denominator")]
    return _per_unit(sa.select(*measures).where(*where), table, unit)


def touched_months(spec: IndicatorSpec, table: sa.Table, dialect: str, loaded_after: datetime) -> sa.Select[Any]:
    """The distinct local months of the rows loaded after `loaded_after` (late-arriving or changed data)."""
    month = local_month(table.c[spec.date_column], dialect)
    return (sa.select(month.label("period")).distinct()
            .where(table.c["_loaded_at"] > loaded_after, table.c[spec.date_column].is_not(None)))
