"""Synthetic household membership (thành viên hộ gia đình) as the civil-status registry holds it.

Each row is one person's membership of one household (hộ): who they are, how
they relate to the head (chủ hộ), when they joined and, once they left, when
and why. A person who moved to another household has a row in each (the old
one with ``left_on``), so the key is the pair ``(household_id, personal_id)``.
Example row (exactly these 12 keys; ``updated_at`` is UTC-aware)::

    {'household_id': 'HK37-14464-000012', 'personal_id': '037325004211', 'full_name': 'Trần Ngọc Anh',
     'sex': 'female', 'birth_date': date(2025, 7, 30), 'relation': 'child', 'joined_on': date(2025, 8, 14),
     'left_on': None, 'leave_reason': None, 'head_personal_id': '037088001234', 'commune_code': '14464',
     'updated_at': datetime(2025, 8, 14, 2, 41, 7, tzinfo=UTC)}

The registry records a household event with the civil-status event behind it:
given the registry's events (:mod:`sandbox.civil_status`), each registered
birth's child joins a household of the registering commune on the day of
registration, and each registered death ends the deceased's membership on the
day of death (``leave_reason`` ``died``); the other households are drawn at
random, some with a member who moved out (``moved``) to head a household of
their own.

Rules good rows keep: ``relation`` in :data:`RELATIONS`; ``personal_id`` a
valid CCCD consistent with ``sex`` and ``birth_date``; ``birth_date <=
joined_on <= left_on``; ``leave_reason`` in :data:`LEAVE_REASONS` exactly when
``left_on`` is set; ``head_personal_id`` is the household head's CCCD (the
head's own row names itself); ``commune_code`` is a Ninh Bình commune; every
household has exactly one ``head`` row, except those :func:`two_heads` picks.

Not a row's defect but a household's: in about :data:`TWO_HEADS_SHARE` of the households with a current
spouse, the spouse is recorded as ``head`` too (as some old paper books were carried over), still naming the
real head in ``head_personal_id``. Each row is valid; the household breaks the rule "exactly one current
head", which lgsp checks across rows (``group_checks`` in catalog/datasets.yaml, ``lgsp checks``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from faker import Faker

from sandbox.citizens import vietnamese_name
from sandbox.civil_status import (FIRST_REGISTRATION, LAST_REGISTRATION, _break_personal_id, _office_instant,
                                  _updated_at, make_personal_id)
from sandbox.common import GeneratedRows, pick_defects, random_date, seeded_sources
from sandbox.communes import UNKNOWN_COMMUNE, ninh_binh_communes

HOUSEHOLD_FIELDS = (
    "household_id", "personal_id", "full_name", "sex", "birth_date", "relation", "joined_on", "left_on",
    "leave_reason", "head_personal_id", "commune_code", "updated_at",
)
"""The fields of a household membership, in WSDL order."""

RELATIONS = ("head", "spouse", "child", "parent", "grandchild", "sibling", "other")
LEGACY_RELATIONS = {"head": "Chủ hộ", "spouse": "Vợ", "child": "Con", "parent": "Mẹ", "grandchild": "Cháu",
                    "sibling": "Em", "other": "Khác"}
"""Relations as the old paper household books wrote them; sent instead of ``relation`` by ``relation_unknown``."""
LEAVE_REASONS = ("moved", "died")

HOUSEHOLD_DEFECT_KINDS = ("relation_unknown", "cccd_invalid", "commune_unknown", "left_before_joined")
"""Injected defect kinds, assigned round-robin to the defective rows."""

TWO_HEADS_SHARE = 0.05
"""About this share of the households with a current spouse record the spouse as head too (:func:`two_heads`)."""

EARLIEST_HOUSEHOLD = date(1990, 1, 1)
MOVED_SHARE = 0.3
"""Share of random households a grown child has left to head a household of their own."""


def household_key(row: dict[str, Any]) -> str:
    """The record key lgsp gives a membership: ``'HK37-14464-000012|037325004211'``."""
    return f"{row['household_id']}|{row['personal_id']}"


def two_heads(household_id: str) -> bool:
    """Whether household ``household_id`` records its current spouse as head too: fixed by a digest of the id,
    consuming no randomness (the rest of the data is what it was before)."""
    return int(hashlib.sha256(household_id.encode()).hexdigest()[:8], 16) / 16**8 < TWO_HEADS_SHARE


class _Households:
    """Builds households one by one, numbering them per commune."""

    def __init__(self, rng: random.Random, fake: Faker) -> None:
        self.rng, self.fake = rng, fake
        self.rows: list[dict[str, Any]] = []
        self.serial: dict[str, int] = {}

    def person(self, sex: str, born: date, prefix: str | None = None) -> dict[str, Any]:
        return {"personal_id": make_personal_id(self.rng, sex, born, prefix), "full_name":
                vietnamese_name(self.fake, sex), "sex": sex, "birth_date": born}

    def adult(self, latest_birth: date, sex: str | None = None) -> dict[str, Any]:
        sex = sex or self.rng.choice(("male", "female"))
        return self.person(sex, random_date(self.rng, date(1940, 1, 1), latest_birth))

    def open(self, commune: str, founded: date, head: dict[str, Any]) -> tuple[str, str]:
        """Start a household headed by ``head`` on ``founded``; returns (household_id, head's CCCD)."""
        self.serial[commune] = self.serial.get(commune, 0) + 1
        household = f"HK37-{commune}-{self.serial[commune]:06d}"
        self.add(household, head["personal_id"], commune, head, "head", founded)
        return household, head["personal_id"]

    def add(self, household: str, head_id: str, commune: str, who: dict[str, Any], relation: str, joined: date,
            left: date | None = None, reason: str | None = None) -> dict[str, Any]:
        row = {"household_id": household, **who, "relation": relation, "joined_on": max(joined, who["birth_date"]),
               "left_on": left, "leave_reason": reason, "head_personal_id": head_id, "commune_code": commune}
        self.rows.append(row)
        return row

    def family(self, commune: str, founded: date) -> tuple[str, str, dict[str, Any]]:
        """A head, often a spouse, and sometimes a parent; returns (household_id, head's CCCD, head)."""
        head = self.adult(founded - timedelta(days=18 * 366))
        household, head_id = self.open(commune, founded, head)
        if self.rng.random() < 0.75:
            spouse_sex = "female" if head["sex"] == "male" else "male"
            married = min(founded + timedelta(days=self.rng.randint(0, 400)), LAST_REGISTRATION)
            self.add(household, head_id, commune, self.adult(founded - timedelta(days=18 * 366), spouse_sex),
                     "spouse", married)
        if self.rng.random() < 0.2:
            parent = self.person(self.rng.choice(("male", "female")),
                                 random_date(self.rng, date(1905, 1, 1), head["birth_date"] - timedelta(days=20 * 366)))
            self.add(household, head_id, commune, parent, "parent", founded)
        return household, head_id, head


def _linked(builder: _Households, events: Sequence[dict[str, Any]], budget: int) -> None:
    """Households behind the registry's births and deaths, until ``budget`` rows."""
    for event in sorted(events, key=lambda e: e["event_id"]):
        if len(builder.rows) >= budget or event["event_type"] not in ("birth", "death"):
            continue
        commune = event["commune_code"]
        founded = random_date(builder.rng, EARLIEST_HOUSEHOLD, date(2024, 12, 31))
        household, head_id, _ = builder.family(commune, founded)
        who = {k: event[k] for k in ("personal_id", "full_name", "sex", "birth_date")}
        if event["event_type"] == "birth":
            builder.add(household, head_id, commune, who, "child", event["registered_on"])
        else:
            joined = random_date(builder.rng, founded, min(event["event_date"], date(2024, 12, 31)))
            builder.add(household, head_id, commune, who, builder.rng.choice(("parent", "sibling", "other")),
                        joined, event["event_date"], "died")


def _random(builder: _Households, communes: list[str], count: int) -> None:
    """Households drawn at random, until ``count`` rows."""
    rng = builder.rng
    while len(builder.rows) < count:
        commune = rng.choice(communes)
        founded = random_date(rng, EARLIEST_HOUSEHOLD, date(2015, 12, 31))
        household, head_id, head = builder.family(commune, founded)
        for _ in range(rng.randint(0, 3)):
            born = random_date(rng, max(founded, head["birth_date"] + timedelta(days=18 * 366)), date(2025, 6, 30))
            child = builder.person(rng.choice(("male", "female")), born, "037")
            row = builder.add(household, head_id, commune, child, "child", born + timedelta(days=rng.randint(0, 60)))
            if born < date(2004, 1, 1) and rng.random() < MOVED_SHARE:
                moved = random_date(rng, FIRST_REGISTRATION, LAST_REGISTRATION)
                row["left_on"], row["leave_reason"] = moved, "moved"
                builder.open(rng.choice(communes), moved, child)
        if rng.random() < 0.1:
            builder.add(household, head_id, commune, builder.adult(date(2007, 1, 1)), rng.choice(("sibling", "other")),
                        random_date(rng, founded, date(2025, 6, 30)))


def _stamp(rng: random.Random, row: dict[str, Any]) -> datetime:
    """When the registry last changed the row: its latest recorded day in the window, else the day its paper
    book was carried over (within the same window)."""
    days = [d for d in (row["joined_on"], row["left_on"]) if d is not None and d >= FIRST_REGISTRATION]
    day = max(days) if days else random_date(rng, FIRST_REGISTRATION, LAST_REGISTRATION)
    return _updated_at(rng, _office_instant(rng, min(day, LAST_REGISTRATION)))


def _apply_defect(rng: random.Random, row: dict[str, Any], kind: str) -> None:
    if kind == "relation_unknown":
        row["relation"] = LEGACY_RELATIONS[row["relation"]]
    elif kind == "cccd_invalid":
        _break_personal_id(rng, row)
    elif kind == "commune_unknown":
        row["commune_code"] = UNKNOWN_COMMUNE
    elif kind == "left_before_joined":
        row["left_on"] = row["joined_on"] - timedelta(days=rng.randint(1, 30))
        row["leave_reason"] = row["leave_reason"] or "moved"


def make_household_members_with_defects(seed: int, count: int, defect_rate: float = 0.01,
                                        events: Sequence[dict[str, Any]] = ()) -> GeneratedRows:
    """Generate ``count`` household memberships deterministically (same arguments => same rows).

    Args:
        seed: Seed of the private ``random.Random`` and the Faker instance.
        count: Number of membership rows.
        defect_rate: Fraction of rows carrying exactly one defect (one of :data:`HOUSEHOLD_DEFECT_KINDS`).
        events: The registry's good civil-status events (none the sandbox made defective); up to half the rows
            are the households behind its births and deaths (see the module docstring).

    Returns:
        Rows sorted by ``(updated_at, household_id, personal_id)`` and ``{household_key: defect_kind}``, e.g.
        ``{'HK37-14464-000012|037325004211': 'relation_unknown'}``.
    """
    rng, fake = seeded_sources(seed)
    communes = [code for code, _ in ninh_binh_communes()]
    builder = _Households(rng, fake)
    _linked(builder, events, count // 2)
    _random(builder, communes, count)
    rows = builder.rows[:count]
    for row in rows:
        row["updated_at"] = _stamp(rng, row)
        if row["relation"] == "spouse" and row["left_on"] is None and two_heads(row["household_id"]):
            row["relation"] = "head"
    defect_by_key: dict[str, str] = {}
    for index, kind in pick_defects(rng, len(rows), defect_rate, HOUSEHOLD_DEFECT_KINDS).items():
        _apply_defect(rng, rows[index], kind)
        defect_by_key[household_key(rows[index])] = kind
    ordered = sorted(rows, key=lambda r: (r["updated_at"], r["household_id"], r["personal_id"]))
    return [{k: r[k] for k in HOUSEHOLD_FIELDS} for r in ordered], defect_by_key


__all__ = ["HOUSEHOLD_DEFECT_KINDS", "HOUSEHOLD_FIELDS", "LEAVE_REASONS", "RELATIONS", "TWO_HEADS_SHARE",
           "household_key", "make_household_members_with_defects", "two_heads"]
