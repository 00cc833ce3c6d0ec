"""Synthetic land parcels (thửa đất) as held by the provincial land information system.

Example row (``updated_at`` is UTC-aware; ``holder_sex``/``holder_birth_date``
make the holder's CCCD checkable)::

    {'parcel_id': '14464-12-345', 'commune_code': '14464', 'map_sheet': 12,
     'parcel_no': 345, 'area_m2': 187.5, 'land_use': 'ONT',
     'holder_name': 'Nguyễn Văn Hùng', 'holder_personal_id': '037078012345',
     'holder_sex': 'male', 'holder_birth_date': date(1978, 3, 9),
     'certificate_no': 'DA 123456',
     'updated_at': datetime(2025, 8, 15, 2, 30, tzinfo=UTC)}

``certificate_no`` is null for the parcels not certified yet (about 12%, :func:`certified`).

Defects (one per defective row): ``area_not_positive`` (``area_m2 <= 0``),
``land_use_unknown`` (``land_use='XYZ'``), ``commune_unknown`` (commune
``'99999'``, also in the parcel id) and ``holder_cccd_invalid`` (4th CCCD digit
contradicts the holder's sex and birth century).
"""

from __future__ import annotations

import hashlib
import random
from datetime import date
from typing import Any

from faker import Faker

from sandbox.citizens import BIRTH_PROVINCES, century_sex_digit, vietnamese_name
from sandbox.common import GeneratedRows, generate_with_defects, random_date, updated_at_with_ties
from sandbox.communes import UNKNOWN_COMMUNE, ninh_binh_communes

LAND_PARCEL_FIELDS = (
    "parcel_id", "commune_code", "map_sheet", "parcel_no", "area_m2", "land_use", "holder_name",
    "holder_personal_id", "holder_sex", "holder_birth_date", "certificate_no", "updated_at",
)
"""The fields of a parcel, in JSON order."""

LAND_PARCEL_DEFECT_KINDS = ("area_not_positive", "land_use_unknown", "commune_unknown", "holder_cccd_invalid")
LAND_USES: dict[str, tuple[int, float, float]] = {
    "ODT": (12, 40.0, 300.0),      # urban residential
    "ONT": (30, 100.0, 800.0),     # rural residential
    "LUC": (20, 300.0, 5000.0),    # specialised wet rice
    "LUK": (8, 200.0, 3000.0),     # other rice
    "CLN": (10, 200.0, 4000.0),    # perennial crops
    "RSX": (6, 2000.0, 60000.0),   # production forest
    "SKC": (4, 500.0, 20000.0),    # non-agricultural production
    "TMD": (4, 100.0, 5000.0),     # trade and services
    "NTS": (6, 300.0, 10000.0),    # aquaculture
}
"""Land-use code -> (weight %, min m², max m²)."""
UNKNOWN_LAND_USE = "XYZ"
CERTIFICATE_SERIES = ("AA", "AB", "BA", "BC", "CA", "CD", "CS", "DA", "DB", "DC")
HOLDER_BIRTH_FIRST = date(1940, 1, 1)
HOLDER_BIRTH_LAST = date(2006, 12, 31)
TIE_RATE = 0.12
"""Share of rows reusing an earlier row's ``updated_at`` (exercises inclusive cursors)."""


def person_cccd(rng: random.Random, sex: str, birth: date, invalid: bool = False) -> str:
    """A CCCD consistent with sex and birth year (``invalid``: wrong 4th digit)."""
    prefix = rng.choices([p for p, _ in BIRTH_PROVINCES], [w for _, w in BIRTH_PROVINCES])[0]
    digit = century_sex_digit(sex, birth.year)
    if invalid:
        digit = rng.choice([d for d in "0123" if d != digit])
    return f"{prefix}{digit}{birth.year % 100:02d}{rng.randrange(10**6):06d}"


def _unique_position(rng: random.Random, commune: str, taken: set[str]) -> tuple[str, int, int]:
    while True:
        sheet, number = rng.randint(1, 120), rng.randint(1, 999)
        parcel_id = f"{commune}-{sheet}-{number}"
        if parcel_id not in taken:
            taken.add(parcel_id)
            return parcel_id, sheet, number


def _area(rng: random.Random, land_use: str) -> float:
    _, low, high = LAND_USES[land_use]
    return round(rng.uniform(low, high), 2)


class _ParcelRows:
    """Makes parcels one by one, keeping ``(commune, map sheet, parcel no)`` unique."""

    def __init__(self, rng: random.Random, fake: Faker) -> None:
        self.rng, self.fake = rng, fake
        self.communes = [code for code, _ in ninh_binh_communes()]
        self.uses, self.weights = list(LAND_USES), [w for w, _, _ in LAND_USES.values()]
        self.taken: set[str] = set()

    def __call__(self, index: int, kind: str | None, earlier: list[dict[str, Any]]) -> dict[str, Any]:
        rng = self.rng
        commune = UNKNOWN_COMMUNE if kind == "commune_unknown" else rng.choice(self.communes)
        parcel_id, sheet, number = _unique_position(rng, commune, self.taken)
        land_use = rng.choices(self.uses, self.weights)[0]
        sex = rng.choice(("male", "female"))
        born = random_date(rng, HOLDER_BIRTH_FIRST, HOLDER_BIRTH_LAST)
        updated = updated_at_with_ties(rng, earlier, TIE_RATE)
        row: dict[str, Any] = {
            "parcel_id": parcel_id, "commune_code": commune, "map_sheet": sheet, "parcel_no": number,
            "area_m2": _area(rng, land_use),
            "land_use": UNKNOWN_LAND_USE if kind == "land_use_unknown" else land_use,
            "holder_name": vietnamese_name(self.fake, sex),
            "holder_personal_id": person_cccd(rng, sex, born, invalid=kind == "holder_cccd_invalid"),
            "holder_sex": sex, "holder_birth_date": born,
            "certificate_no": f"{rng.choice(CERTIFICATE_SERIES)} {rng.randrange(10**6):06d}",
            "updated_at": updated,
        }
        if not certified(parcel_id):  # drawn all the same: the other parcels' values do not move
            row["certificate_no"] = None
        if kind == "area_not_positive":
            row["area_m2"] = rng.choice((0.0, -row["area_m2"]))
        return row


UNCERTIFIED_SHARE = 0.12
"""About this share of the parcels has no land-use right certificate yet (:func:`certified`)."""


def certified(parcel_id: str) -> bool:
    """Whether parcel ``parcel_id`` has a certificate: fixed by a digest of the id (about 88% do), so that the
    data of every other field, and of every other parcel, is what it was before parcels could lack one."""
    return int(hashlib.sha256(parcel_id.encode()).hexdigest()[:8], 16) / 16**8 >= UNCERTIFIED_SHARE


def make_land_parcels_with_defects(seed: int, count: int, defect_rate: float = 0.01) -> GeneratedRows:
    """Generate ``count`` parcels deterministically, with ``{parcel_id: defect_kind}``.

    Arguments as for :func:`sandbox.common.generate_with_defects`. Rows come
    sorted by ``(updated_at, parcel_id)`` (see the module docstring); the
    defects are e.g. ``{'99999-7-81': 'commune_unknown'}``.
    """
    return generate_with_defects(seed, count, defect_rate, LAND_PARCEL_DEFECT_KINDS, "parcel_id", _ParcelRows)
