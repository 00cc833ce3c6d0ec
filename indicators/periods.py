"""Reporting periods in local time (Asia/Ho_Chi_Minh, UTC+7, no DST).

Labels: ``'2025-08'`` (month), ``'2025-Q3'`` (quarter), ``'2025'`` (year) and
``'2025-07-01..2025-07-23'`` (a date range, both days included). Quarters and
years are sums of their months, so they are rolled up from the month values.

Example:
    >>> quarter_of("2025-08"), year_of("2025-08"), period_type("2025-Q3")
    ('2025-Q3', '2025', 'quarter')
    >>> months_in("2025-Q3")
    ['2025-07', '2025-08', '2025-09']
"""
from __future__ import annotations

import re
from datetime import date, datetime, timezone

from catalog.models import LOCAL_TZ as VN_TZ

PERIOD_TYPES = ("month", "quarter", "year", "range")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
_YEAR = re.compile(r"^\d{4}$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")


class PeriodError(ValueError):
    """A period label or date range that cannot be read; the message says what is expected."""


def quarter_of(month: str) -> str:
    """``'2025-08'`` -> ``'2025-Q3'``."""
    return f"{month[:4]}-Q{(int(month[5:7]) + 2) // 3}"


def year_of(month: str) -> str:
    """``'2025-08'`` -> ``'2025'``."""
    return month[:4]


def roll_up(month: str, period_type: str) -> str:
    """The quarter or year (or the month itself) a month belongs to."""
    return {"month": month, "quarter": quarter_of(month), "year": year_of(month)}[period_type]


def period_type(label: str) -> str:
    """``month``, ``quarter``, ``year`` or ``range`` for a period label.

    Raises:
        PeriodError: the label is none of the four forms.
    """
    for kind, pattern in (("month", _MONTH), ("quarter", _QUARTER), ("year", _YEAR), ("range", _RANGE)):
        if pattern.match(label):
            return kind
    raise PeriodError(f"period {label!r} is not YYYY-MM, YYYY-Qn, YYYY or YYYY-MM-DD..YYYY-MM-DD")


def months_in(label: str) -> list[str]:
    """The months of a month, quarter or year label, in order."""
    kind = period_type(label)
    if kind == "month":
        return [label]
    if kind == "quarter":
        first = (int(label[-1]) - 1) * 3 + 1
        return [f"{label[:4]}-{m:02d}" for m in range(first, first + 3)]
    if kind == "year":
        return [f"{label}-{m:02d}" for m in range(1, 13)]
    raise PeriodError(f"period {label!r} is a date range, not made of whole months")


def month_start(month: str) -> date:
    """First day of a ``YYYY-MM`` month."""
    return date(int(month[:4]), int(month[5:7]), 1)


def next_month_start(month: str) -> date:
    """First day of the month after ``YYYY-MM``."""
    year, number = int(month[:4]), int(month[5:7])
    return date(year + number // 12, number % 12 + 1, 1)


def local_midnight_utc(day: date) -> datetime:
    """The UTC instant of 00:00 local time on ``day`` (a timestamp bound for a local day)."""
    return datetime(day.year, day.month, day.day, tzinfo=VN_TZ).astimezone(timezone.utc)


def range_label(first: date, last: date) -> str:
    """``'2025-07-01..2025-07-23'``; raises PeriodError when ``last`` is before ``first``."""
    if last < first:
        raise PeriodError(f"date range ends ({last}) before it starts ({first}); give --from <= --to")
    return f"{first.isoformat()}..{last.isoformat()}"


def parse_range(label: str) -> tuple[date, date]:
    """``'2025-07-01..2025-07-23'`` -> the two days (both included)."""
    match = _RANGE.match(label)
    if not match:
        raise PeriodError(f"{label!r} is not a date range YYYY-MM-DD..YYYY-MM-DD")
    return date.fromisoformat(match.group(1)), date.fromisoformat(match.group(2))


def previous_period(label: str) -> str | None:
    """The period before a month, quarter or year label (``None`` for a range)."""
    kind = period_type(label)
    year = int(label[:4])
    if kind == "month":
        number = int(label[5:7])
        return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"
    if kind == "quarter":
        number = int(label[-1])
        return f"{year - 1}-Q4" if number == 1 else f"{year}-Q{number - 1}"
    if kind == "year":
        return str(year - 1)
    return None
