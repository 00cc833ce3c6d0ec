"""Shared constants and helpers for the synthetic data generators.

Example:
    >>> to_vn_iso(datetime(2025, 8, 15, 2, 30, tzinfo=UTC))
    '2025-08-15T09:30:00+07:00'
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone

VN_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
"""Asia/Ho_Chi_Minh as a fixed +07:00 offset (Vietnam has had no DST since 1975)."""

WINDOW_START_UTC = datetime(2025, 7, 1, tzinfo=UTC)
"""First instant a citizen's ``updated_at`` may take."""
WINDOW_END_UTC = datetime(2025, 10, 31, 23, 59, 59, tzinfo=UTC)
"""Last instant a citizen's ``updated_at`` may take."""

WINDOW_START_VN = datetime(2025, 7, 1, tzinfo=VN_TZ)
"""First local day on which a dossier may be received."""
WINDOW_END_VN = datetime(2025, 10, 31, 23, 59, 59, tzinfo=VN_TZ)
"""Snapshot time of the TTHC system: every dossier timestamp except ``due_at`` is <= this."""


def pick_defects(rng: random.Random, count: int, rate: float, kinds: tuple[str, ...]) -> dict[int, str]:
    """Choose which row indices carry a defect, and which kind.

    ``round(count * rate)`` distinct indices are sampled; sorted ascending,
    they get the kinds round-robin, so every row has at most one defect.

    Args:
        rng: The generator's private random source.
        count: Number of rows.
        rate: Fraction of defective rows, 0.0..1.0.
        kinds: Defect kinds in round-robin order.

    Returns:
        ``{row_index: kind}``, e.g. ``{17: 'cccd_length', 203: 'phone_format'}``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"defect_rate must be within [0, 1], got {rate!r}")
    n = min(count, round(count * rate))
    chosen = sorted(rng.sample(range(count), n))
    return {idx: kinds[i % len(kinds)] for i, idx in enumerate(chosen)}


def random_date(rng: random.Random, first: date, last: date) -> date:
    """Return a uniformly random date in ``[first, last]``."""
    return first + timedelta(days=rng.randint(0, (last - first).days))


def random_instant(rng: random.Random, first: datetime, last: datetime) -> datetime:
    """Return a uniformly random whole-second instant in ``[first, last]``."""
    return first + timedelta(seconds=rng.randint(0, int((last - first).total_seconds())))


def add_working_days(start: datetime, days: int) -> datetime:
    """Add ``days`` Monday-Friday days to ``start``, keeping the time of day.

    Example: Friday 2025-08-15 10:00 + 1 working day -> Monday 2025-08-18 10:00.
    """
    current = start
    step = 1 if days >= 0 else -1
    remaining = abs(days)
    while remaining:
        current += timedelta(days=step)
        if current.weekday() < 5:
            remaining -= 1
    return current


def to_vn_iso(value: datetime | None) -> str | None:
    """Serialise an aware datetime as ISO 8601 in +07:00 (``None`` stays ``None``)."""
    if value is None:
        return None
    return value.astimezone(VN_TZ).isoformat()


def parse_instant(text: str, *, assume_utc: bool = False) -> datetime:
    """Parse an ISO 8601 instant such as ``'2025-08-01T00:00:00Z'``.

    Tolerates a ``'+'`` that was decoded to a space in a query string
    (``'2025-08-01T00:00:00 07:00'``).

    Args:
        text: ISO 8601 date-time, with ``Z`` or a ``±HH:MM`` offset.
        assume_utc: Treat a value without offset as UTC instead of rejecting it.

    Raises:
        ValueError: Unparseable, or naive while ``assume_utc`` is false.
    """
    value = text.strip()
    if len(value) > 6 and value[-6] == " " and value[-3] == ":" and "T" in value[:-6]:
        value = value[:-6] + "+" + value[-5:]
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        if not assume_utc:
            raise ValueError("a UTC offset is required, e.g. '2025-08-01T00:00:00+07:00' or '...Z'")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
