"""Shared constants and helpers for the synthetic data generators.

Example:
    >>> to_vn_iso(datetime(2025, 8, 15, 2, 30, tzinfo=UTC))
    '2025-08-15T09:30:00+07:00'
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from faker import Faker

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

GeneratedRows = tuple[list[dict[str, Any]], dict[str, str]]
"""What a dataset generator returns: rows in service order and ``{key: defect_kind}``."""
RowBuilder = Callable[[int, str | None, list[dict[str, Any]]], dict[str, Any]]
"""Makes row ``index`` carrying defect ``kind`` (``None``: clean), given the rows made before it."""


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


def seeded_sources(seed: int) -> tuple[random.Random, Faker]:
    """The private random source and the ``vi_VN`` Faker of one generator run, both seeded with ``seed``."""
    rng = random.Random(seed)
    fake = Faker("vi_VN")
    fake.seed_instance(seed)
    return rng, fake


def updated_at_with_ties(rng: random.Random, earlier: list[dict[str, Any]], tie_rate: float) -> datetime:
    """A row's ``updated_at``, sometimes equal to an earlier row's.

    With chance ``tie_rate`` (and some row before) it copies a random earlier
    row's, a tie that paging must break on the key; otherwise it is a random
    instant in ``[WINDOW_START_UTC, WINDOW_END_UTC]``.
    """
    if earlier and rng.random() < tie_rate:
        return rng.choice(earlier)["updated_at"]  # type: ignore[no-any-return]
    return random_instant(rng, WINDOW_START_UTC, WINDOW_END_UTC)


def in_service_order(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``rows`` sorted by ``(updated_at, key)``, the order every sandbox service serves them in."""
    return sorted(rows, key=lambda r: (r["updated_at"], r[key]))


def generate_with_defects(seed: int, count: int, defect_rate: float, kinds: tuple[str, ...], key: str,
                          start: Callable[[random.Random, Faker], RowBuilder]) -> GeneratedRows:
    """Generate ``count`` rows of one dataset deterministically, some carrying one defect each.

    Seeds the run's sources (:func:`seeded_sources`), picks the defective rows
    (:func:`pick_defects`), builds the rows in index order, notes each
    defective row's key and returns the rows in service order.

    Args:
        seed: Seed of the private ``random.Random`` and the Faker instance.
        count: Number of rows.
        defect_rate: Fraction of rows carrying exactly one defect.
        kinds: The dataset's defect kinds, in round-robin order.
        key: The dataset's key field, e.g. ``"servant_id"``.
        start: Given the run's ``(rng, fake)``, returns its :data:`RowBuilder`.

    Returns:
        Rows sorted by ``(updated_at, key)`` and ``{key: defect_kind}``, e.g.
        ``{'CB37-000042': 'category_unknown'}``.
    """
    rng, fake = seeded_sources(seed)
    defects = pick_defects(rng, count, defect_rate, kinds)
    build = start(rng, fake)
    rows: list[dict[str, Any]] = []
    defect_by_key: dict[str, str] = {}
    for index in range(count):
        kind = defects.get(index)
        row = build(index, kind, rows)
        if kind:
            defect_by_key[row[key]] = kind
        rows.append(row)
    return in_service_order(rows, key), defect_by_key
