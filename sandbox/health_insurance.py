"""Synthetic health insurance cards (thẻ BHYT) issued to residents of Ninh Bình.

Example row (``updated_at`` is UTC-aware)::

    {'card_no': 'GD4370123456789', 'personal_id': '037190012345',
     'full_name': 'Nguyễn Thị Lan', 'sex': 'female', 'birth_date': date(1990, 4, 2),
     'commune_code': '14464', 'valid_from': date(2025, 3, 1), 'valid_to': date(2026, 2, 28),
     'updated_at': datetime(2025, 8, 15, 2, 30, tzinfo=UTC)}

Card number layout (15 characters): 2-letter beneficiary group (``GD`` household,
``TE`` child under 6, ``HT`` retiree, ...) + 1-digit benefit level + 2-digit
province (``37``) + 10 digits (the insured person's social insurance number).

Defects (one per defective row): ``validity_reversed`` (``valid_to < valid_from``),
``cccd_invalid`` (11 digits, or a 4th digit that contradicts sex and birth century),
``commune_unknown`` (``commune_code='99999'``).
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

from faker import Faker

from sandbox.citizens import BIRTH_PROVINCES, century_sex_digit, vietnamese_name
from sandbox.common import GeneratedRows, generate_with_defects, random_date, updated_at_with_ties
from sandbox.communes import PROVINCE_CODE, UNKNOWN_COMMUNE, ninh_binh_communes

CARD_FIELDS = (
    "card_no", "personal_id", "full_name", "sex", "birth_date",
    "commune_code", "valid_from", "valid_to", "updated_at",
)
"""The fields of a card, in JSON order."""

CARD_DEFECT_KINDS = ("validity_reversed", "cccd_invalid", "commune_unknown")
BIRTH_FIRST = date(1940, 1, 1)
BIRTH_LAST = date(2024, 12, 31)
AGE_ON = date(2025, 7, 1)
VALID_FROM_FIRST = date(2025, 1, 1)
VALID_FROM_LAST = date(2025, 10, 31)
TERMS_MONTHS = (3, 6, 12, 12, 12)
TIE_RATE = 0.15
"""Share of rows reusing an earlier row's ``updated_at`` (exercises inclusive cursors)."""

ADULT_GROUPS = (("GD", 4, 50), ("DN", 4, 25), ("HN", 3, 6), ("CN", 2, 4), ("BT", 2, 3), ("HC", 4, 12))
"""Working-age beneficiary groups: ``(code, benefit level, weight)``."""


def _age(birth: date) -> int:
    return AGE_ON.year - birth.year - ((AGE_ON.month, AGE_ON.day) < (birth.month, birth.day))


def beneficiary_group(rng: random.Random, birth: date) -> str:
    """Group code and benefit level consistent with the age, e.g. ``'TE1'`` for a 4-year-old."""
    age = _age(birth)
    if age < 6:
        return "TE1"
    if age < 18:
        return "HS4"
    if age < 23 and rng.random() < 0.6:
        return "SV4"
    if age >= 60 and rng.random() < 0.7:
        return "HT3"
    code, level, _ = rng.choices(ADULT_GROUPS, [w for *_, w in ADULT_GROUPS])[0]
    return f"{code}{level}"


def _valid_to(valid_from: date, months: int) -> date:
    """Last day of a term of ``months`` starting on ``valid_from`` (1 Mar + 12 -> 28 Feb)."""
    month_index = valid_from.month - 1 + months
    year, month = valid_from.year + month_index // 12, month_index % 12 + 1
    day = min(valid_from.day, 28)
    return date(year, month, day) - timedelta(days=1)


def _personal_id(rng: random.Random, sex: str, birth: date, invalid: bool) -> str:
    """A CCCD consistent with sex and birth year (or, if ``invalid``, one that is not)."""
    prefix = rng.choices([p for p, _ in BIRTH_PROVINCES], [w for _, w in BIRTH_PROVINCES])[0]
    digit = century_sex_digit(sex, birth.year)
    tail = f"{birth.year % 100:02d}{rng.randrange(10**6):06d}"
    if not invalid:
        return f"{prefix}{digit}{tail}"
    if rng.random() < 0.5:
        return f"{prefix}{digit}{tail}"[:11]
    return f"{prefix}{rng.choice([d for d in '0123' if d != digit])}{tail}"


def _card(rng: random.Random, fake: Faker, communes: list[str], kind: str | None) -> dict[str, Any]:
    """One card without ``card_no`` and ``updated_at``."""
    sex = rng.choice(("male", "female"))
    birth = random_date(rng, BIRTH_FIRST, BIRTH_LAST)
    valid_from = random_date(rng, VALID_FROM_FIRST, VALID_FROM_LAST)
    valid_to = _valid_to(valid_from, rng.choice(TERMS_MONTHS))
    if kind == "validity_reversed":
        valid_from, valid_to = valid_to, valid_from
    return {
        "group": beneficiary_group(rng, birth),
        "personal_id": _personal_id(rng, sex, birth, kind == "cccd_invalid"),
        "full_name": vietnamese_name(fake, sex),
        "sex": sex,
        "birth_date": birth,
        "commune_code": UNKNOWN_COMMUNE if kind == "commune_unknown" else rng.choice(communes),
        "valid_from": valid_from,
        "valid_to": valid_to,
    }


def make_cards(seed: int, count: int, defect_rate: float = 0.01) -> list[dict[str, Any]]:
    """Generate ``count`` cards deterministically (see :func:`make_cards_with_defects`)."""
    return make_cards_with_defects(seed, count, defect_rate)[0]


class _CardRows:
    """Makes cards one by one: one card per person, card numbers unique."""

    def __init__(self, rng: random.Random, fake: Faker) -> None:
        self.rng, self.fake = rng, fake
        self.communes = [code for code, _ in ninh_binh_communes()]
        self.seen: set[str] = set()

    def __call__(self, index: int, kind: str | None, earlier: list[dict[str, Any]]) -> dict[str, Any]:
        rng, seen = self.rng, self.seen
        card = _card(rng, self.fake, self.communes, kind)
        while card["personal_id"] in seen:  # one card per person
            card = _card(rng, self.fake, self.communes, kind)
        seen.add(card["personal_id"])
        group = card.pop("group")
        card_no = f"{group}{PROVINCE_CODE}{rng.randrange(10**10):010d}"
        while card_no in seen:
            card_no = f"{group}{PROVINCE_CODE}{rng.randrange(10**10):010d}"
        seen.add(card_no)
        return {"card_no": card_no, **card, "updated_at": updated_at_with_ties(rng, earlier, TIE_RATE)}


def make_cards_with_defects(seed: int, count: int, defect_rate: float = 0.01) -> GeneratedRows:
    """Generate ``count`` cards (one per person) and the injected defects, deterministically.

    Arguments as for :func:`sandbox.common.generate_with_defects`. Rows come
    sorted by ``(updated_at, card_no)`` (see the module docstring); the defects
    are e.g. ``{'HT3370412345678': 'validity_reversed'}``.
    """
    return generate_with_defects(seed, count, defect_rate, CARD_DEFECT_KINDS, "card_no", _CardRows)
