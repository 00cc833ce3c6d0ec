"""Synthetic civil-status events (hộ tịch) as held by the civil-status registry.

Each event is one registration in a commune's register: a birth (khai sinh),
a marriage (kết hôn) or a death (khai tử). Example row (exactly these 12 keys;
``updated_at`` is UTC-aware)::

    {'event_id': 'HT37-2025-000412', 'event_type': 'birth', 'registration_no': '17/2025',
     'registered_on': date(2025, 8, 14), 'event_date': date(2025, 7, 30),
     'personal_id': '037325004211', 'full_name': 'Trần Ngọc Anh', 'sex': 'female',
     'birth_date': date(2025, 7, 30), 'spouse_personal_id': None, 'commune_code': '14464',
     'updated_at': datetime(2025, 8, 14, 2, 41, 7, tzinfo=UTC)}

Rules good rows keep: ``event_type`` in :data:`EVENT_TYPES`; ``personal_id`` a
valid CCCD consistent with ``sex`` and ``birth_date`` (see ``sandbox.citizens``);
``birth_date <= event_date <= registered_on``; a birth has ``birth_date ==
event_date`` in 2025 and is registered within 60 days, a death within 15 days,
a marriage on its ``event_date``; ``spouse_personal_id`` is a valid CCCD for
marriages and ``None`` otherwise; ``commune_code`` is a Ninh Bình commune.
``event_id`` numbers follow registration order; ``registration_no`` is the
entry number in the commune's register of that event type for the year.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sandbox.citizens import BIRTH_PROVINCES, century_sex_digit, vietnamese_name
from sandbox.common import (VN_TZ, WINDOW_END_UTC, GeneratedRows, in_service_order, pick_defects, random_date,
                            seeded_sources)
from sandbox.communes import UNKNOWN_COMMUNE, ninh_binh_communes

CIVIL_STATUS_FIELDS = (
    "event_id", "event_type", "registration_no", "registered_on", "event_date", "personal_id",
    "full_name", "sex", "birth_date", "spouse_personal_id", "commune_code", "updated_at",
)
"""The fields of a civil-status event, in WSDL order."""

EVENT_TYPES = ("birth", "marriage", "death")
EVENT_TYPE_WEIGHTS = (50, 25, 25)
LEGACY_EVENT_CODES = {"birth": "KS", "marriage": "KH", "death": "KT"}
"""Codes of the old paper registers; sent instead of ``event_type`` by ``event_type_unknown`` rows."""

CIVIL_STATUS_DEFECT_KINDS = ("event_type_unknown", "cccd_invalid", "commune_unknown", "registered_before_event")
"""Injected defect kinds, assigned round-robin to the defective rows."""

FIRST_REGISTRATION = date(2025, 7, 1)
LAST_REGISTRATION = date(2025, 10, 31)
BIRTH_REGISTRATION_DAYS = 60
DEATH_REGISTRATION_DAYS = 15
CORRECTION_SHARE = 0.10
"""Share of events corrected (and so updated) some days after registration."""
NIGHTLY_SYNC_SHARE = 0.12
"""Share of events last touched by the 23:00 nightly sync (many equal ``updated_at``)."""


def make_personal_id(rng: random.Random, sex: str, born: date, prefix: str | None = None) -> str:
    """A valid CCCD for ``sex`` and ``born``, e.g. ``'037325004211'`` (female, 2025)."""
    if prefix is None:
        prefix = rng.choices([p for p, _ in BIRTH_PROVINCES], [w for _, w in BIRTH_PROVINCES])[0]
    return f"{prefix}{century_sex_digit(sex, born.year)}{born.year % 100:02d}{rng.randrange(10**6):06d}"


def _adult_birth(rng: random.Random, on: date, min_age: int, max_age: int) -> date:
    return random_date(rng, date(on.year - max_age, 1, 1), date(on.year - min_age, 1, 1))


def _subject(rng: random.Random, kind: str, registered: date) -> dict[str, Any]:
    """Event date, subject (sex, birth date, CCCD) and spouse for one event type."""
    sex = rng.choice(("male", "female"))
    spouse = None
    if kind == "birth":
        event = registered - timedelta(days=rng.randint(0, BIRTH_REGISTRATION_DAYS))
        born, prefix = event, "037"  # the number is issued by the registering province
    elif kind == "marriage":
        event, prefix = registered, None
        born = _adult_birth(rng, event, 20 if sex == "male" else 18, 45)
        spouse_sex = "female" if sex == "male" else "male"
        spouse = make_personal_id(rng, spouse_sex, _adult_birth(rng, event, 20 if spouse_sex == "male" else 18, 45))
    else:
        event, prefix = registered - timedelta(days=rng.randint(0, DEATH_REGISTRATION_DAYS)), None
        born = random_date(rng, date(1925, 1, 1), min(event, date(2024, 12, 31)))
    return {"event_date": event, "personal_id": make_personal_id(rng, sex, born, prefix),
            "sex": sex, "birth_date": born, "spouse_personal_id": spouse}


def _office_instant(rng: random.Random, day: date) -> datetime:
    """An instant during office hours (07:30-17:00 Vietnam time) on ``day``, in UTC."""
    minute = rng.randint(7 * 60 + 30, 16 * 60 + 59)
    local = datetime.combine(day, time(minute // 60, minute % 60, rng.randint(0, 59)), VN_TZ)
    return local.astimezone(UTC)


def _updated_at(rng: random.Random, registered_at: datetime) -> datetime:
    updated = registered_at
    if rng.random() < CORRECTION_SHARE:
        updated += timedelta(days=rng.randint(1, 20), seconds=rng.randint(0, 8 * 3600))
    if rng.random() < NIGHTLY_SYNC_SHARE:
        nightly = datetime.combine(updated.astimezone(VN_TZ).date(), time(23, 0), VN_TZ).astimezone(UTC)
        updated = max(updated, nightly)
    return min(updated, WINDOW_END_UTC)


def _break_personal_id(rng: random.Random, row: dict[str, Any]) -> None:
    """Make ``personal_id`` fail the CCCD rule in one of three ways."""
    pid = row["personal_id"]
    how = rng.choice(("length", "century_sex", "birth_year"))
    if how == "length":
        row["personal_id"] = pid[:11]
    elif how == "century_sex":
        row["personal_id"] = pid[:3] + rng.choice([d for d in "0123" if d != pid[3]]) + pid[4:]
    else:
        year = f"{(int(pid[4:6]) + rng.randint(1, 98)) % 100:02d}"
        row["personal_id"] = pid[:4] + year + pid[6:]


def _apply_defect(rng: random.Random, row: dict[str, Any], kind: str) -> None:
    if kind == "event_type_unknown":
        row["event_type"] = LEGACY_EVENT_CODES[row["event_type"]]
    elif kind == "cccd_invalid":
        _break_personal_id(rng, row)
    elif kind == "commune_unknown":
        row["commune_code"] = UNKNOWN_COMMUNE
    elif kind == "registered_before_event":
        late = row["registered_on"] + timedelta(days=rng.randint(1, 10))
        if row["event_type"] == "birth":
            row["birth_date"] = late  # still 2025, so the CCCD stays consistent
        row["event_date"] = late


def _number_events(rows: list[dict[str, Any]], registered_at: list[datetime]) -> None:
    """Assign ``event_id`` and ``registration_no`` in registration order."""
    order = sorted(range(len(rows)), key=lambda i: (registered_at[i], i))
    books: dict[tuple[str, str, int], int] = defaultdict(int)
    for serial, i in enumerate(order, start=1):
        row = rows[i]
        year = row["registered_on"].year
        book = (row["commune_code"], row["event_type"], year)
        books[book] += 1
        row["event_id"] = f"HT37-{year}-{serial:06d}"
        row["registration_no"] = f"{books[book]}/{year}"


def make_civil_status_events_with_defects(seed: int, count: int, defect_rate: float = 0.01) -> GeneratedRows:
    """Generate ``count`` civil-status events deterministically (same arguments => same rows).

    Arguments as for :func:`sandbox.common.generate_with_defects`; unlike there,
    defects are applied once every event is numbered in registration order.

    Returns:
        Rows sorted by ``(updated_at, event_id)`` (see the module docstring) and
        ``{event_id: defect_kind}``, e.g. ``{'HT37-2025-000093': 'cccd_invalid'}``.
    """
    rng, fake = seeded_sources(seed)
    communes = [code for code, _ in ninh_binh_communes()]
    defects = pick_defects(rng, count, defect_rate, CIVIL_STATUS_DEFECT_KINDS)
    rows: list[dict[str, Any]] = []
    registered_at: list[datetime] = []
    for _ in range(count):
        kind = rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS)[0]
        registered = random_date(rng, FIRST_REGISTRATION, LAST_REGISTRATION)
        subject = _subject(rng, kind, registered)
        row: dict[str, Any] = {
            "event_id": "", "event_type": kind, "registration_no": "", "registered_on": registered,
            "event_date": subject["event_date"], "personal_id": subject["personal_id"],
            "full_name": vietnamese_name(fake, subject["sex"]), "sex": subject["sex"],
            "birth_date": subject["birth_date"], "spouse_personal_id": subject["spouse_personal_id"],
            "commune_code": rng.choice(communes),
        }
        registered_at.append(_office_instant(rng, registered))
        row["updated_at"] = _updated_at(rng, registered_at[-1])
        rows.append(row)
    _number_events(rows, registered_at)
    defect_by_id: dict[str, str] = {}
    for index, kind in defects.items():
        _apply_defect(rng, rows[index], kind)
        defect_by_id[rows[index]["event_id"]] = kind
    return [{k: r[k] for k in CIVIL_STATUS_FIELDS} for r in in_service_order(rows, "event_id")], defect_by_id
