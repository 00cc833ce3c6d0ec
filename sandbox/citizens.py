"""Synthetic citizen records as held by the national population database.

Example row (exactly these 8 keys; ``updated_at`` is UTC-aware)::

    {'personal_id': '037190012345', 'full_name': 'Nguyễn Thị Lan',
     'birth_date': date(1990, 4, 2), 'sex': 'female', 'commune_code': '14464',
     'address': '81 Khóm 16 Phạm Thế Hiển', 'phone': '0912345678',
     'updated_at': datetime(2025, 8, 15, 2, 30, tzinfo=UTC)}

CCCD layout: ``PPP`` birth-registration province + ``G`` sex/century digit
(1900s: male 0 / female 1; 2000s: male 2 / female 3) + ``YY`` birth year +
6 random digits.
"""

from __future__ import annotations

import random
import unicodedata
from datetime import date
from typing import Any

from faker import Faker

from sandbox.common import WINDOW_END_UTC, WINDOW_START_UTC, pick_defects, random_date, random_instant
from sandbox.communes import UNKNOWN_COMMUNE, ninh_binh_communes

CITIZEN_FIELDS = (
    "personal_id", "full_name", "birth_date", "sex",
    "commune_code", "address", "phone", "updated_at",
)
"""The fields of a citizen, in WSDL order."""

CITIZEN_DEFECT_KINDS = ("cccd_length", "cccd_century_sex", "commune_unknown", "phone_format")
"""Injected defect kinds, assigned round-robin to the defective rows."""

BIRTH_PROVINCES = (("037", 70), ("036", 15), ("035", 10), ("001", 5))
"""CCCD province prefixes (Ninh Bình, Nam Định, Hà Nam, Hà Nội) with weights in %."""

MOBILE_PREFIXES = "35789"
BIRTH_FIRST = date(1940, 1, 1)
BIRTH_LAST = date(2024, 12, 31)
BAD_PHONE = "12345"
TIE_RATE = 0.15
"""Share of rows reusing an earlier row's ``updated_at`` (exercises inclusive cursors)."""


def century_sex_digit(sex: str, birth_year: int) -> str:
    """Return the CCCD 4th digit, e.g. ``century_sex_digit('female', 1990) == '1'``."""
    base = 0 if birth_year < 2000 else 2
    return str(base + (1 if sex == "female" else 0))


MALE_MIDDLE_NAMES = ("Văn", "Văn", "Đức", "Quang", "Hữu", "Thế", "Tấn", "Xuân", "Hoàng", "Minh")
FEMALE_MIDDLE_NAMES = ("Thị", "Thị", "Thị", "Ngọc", "Thu", "Mai", "Xuân", "Bảo", "Hồng")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def vietnamese_name(fake: Faker, sex: str) -> str:
    """Register-style name (family, middle, given), e.g. ``'Nguyễn Thị Lan'``.

    Faker's own ``vi_VN`` ``name_male()``/``name_female()`` use Western order and
    add honorifics ("Quý cô Hải Nguyễn"), which no civil register holds, so the
    name is composed from Faker's vi_VN family/given names instead.
    """
    if sex == "male":
        middle, given = fake.random_element(MALE_MIDDLE_NAMES), fake.first_name_male()
    else:
        middle = fake.random_element(FEMALE_MIDDLE_NAMES)
        given = fake.first_name_female() if fake.random_int(0, 3) else fake.first_name_unisex()
    return _nfc(f"{fake.last_name()} {middle} {given}")


def make_citizens(seed: int, count: int, defect_rate: float = 0.01) -> list[dict[str, Any]]:
    """Generate ``count`` citizens deterministically (same arguments => same list).

    Args:
        seed: Seed for the private ``random.Random`` and the Faker instance.
        count: Number of rows.
        defect_rate: Fraction of rows carrying exactly one defect.

    Returns:
        Rows sorted by ``(updated_at, personal_id)``; see the module docstring.
        Use :func:`make_citizens_with_defects` to also learn which rows are defective.
    """
    return make_citizens_with_defects(seed, count, defect_rate)[0]


def make_citizens_with_defects(
    seed: int, count: int, defect_rate: float = 0.01
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Like :func:`make_citizens`, also returning ``{personal_id: defect_kind}``.

    Example second value: ``{'03719001234': 'cccd_length', '037290123456': 'phone_format'}``.
    """
    rng = random.Random(seed)
    fake = Faker("vi_VN")
    fake.seed_instance(seed)
    communes = [code for code, _ in ninh_binh_communes()]
    prefixes = [p for p, _ in BIRTH_PROVINCES]
    weights = [w for _, w in BIRTH_PROVINCES]
    defects = pick_defects(rng, count, defect_rate, CITIZEN_DEFECT_KINDS)

    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    defect_by_id: dict[str, str] = {}
    for index in range(count):
        sex = rng.choice(("male", "female"))
        birth = random_date(rng, BIRTH_FIRST, BIRTH_LAST)
        prefix = rng.choices(prefixes, weights)[0]
        kind = defects.get(index)
        while True:
            digit = century_sex_digit(sex, birth.year)
            if kind == "cccd_century_sex":
                digit = rng.choice([d for d in "0123" if d != digit])
            pid = f"{prefix}{digit}{birth.year % 100:02d}{rng.randrange(10**6):06d}"
            if kind == "cccd_length":
                pid = pid[:11]
            if pid not in seen_ids:
                break
        seen_ids.add(pid)
        if rows and rng.random() < TIE_RATE:
            updated = rng.choice(rows)["updated_at"]
        else:
            updated = random_instant(rng, WINDOW_START_UTC, WINDOW_END_UTC)
        phone = f"0{rng.choice(MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"
        row = {
            "personal_id": pid,
            "full_name": vietnamese_name(fake, sex),
            "birth_date": birth,
            "sex": sex,
            "commune_code": rng.choice(communes),
            "address": _nfc(fake.street_address()),
            "phone": phone,
            "updated_at": updated,
        }
        if kind == "commune_unknown":
            row["commune_code"] = UNKNOWN_COMMUNE
        elif kind == "phone_format":
            row["phone"] = BAD_PHONE
        if kind:
            defect_by_id[pid] = kind
        rows.append(row)
    rows.sort(key=lambda r: (r["updated_at"], r["personal_id"]))
    return rows, defect_by_id
