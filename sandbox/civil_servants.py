"""Synthetic civil servants (cán bộ, công chức, viên chức) as held by the provincial HR database.

Example row (``updated_at`` is UTC-aware)::

    {'servant_id': 'CB37-000123', 'full_name': 'Nguyễn Thị Lan',
     'personal_id': '037190012345', 'sex': 'female', 'birth_date': date(1990, 4, 2),
     'agency_code': '000.00.31.H42', 'agency_name': 'Sở Tư pháp',
     'position': 'Chuyên viên', 'category': 'civil_servant', 'rank_code': '01.003',
     'email': 'nguyenthilan@ninhbinh.gov.vn',
     'updated_at': datetime(2025, 8, 15, 2, 30, tzinfo=UTC)}

Defects (one per defective row): ``cccd_invalid`` (4th CCCD digit contradicts
sex and birth century), ``category_unknown`` (``'contractor'``) and
``email_invalid`` (no ``@``, or no top-level domain).
"""

from __future__ import annotations

import random
from datetime import date
from typing import Any

from faker import Faker

from sandbox.citizens import vietnamese_name
from sandbox.common import GeneratedRows, generate_with_defects, random_date, updated_at_with_ties
from sandbox.communes import ninh_binh_communes
from sandbox.enterprises import ascii_slug
from sandbox.land import person_cccd

CIVIL_SERVANT_FIELDS = (
    "servant_id", "full_name", "personal_id", "sex", "birth_date", "agency_code", "agency_name",
    "position", "category", "rank_code", "email", "updated_at",
)
"""The fields of a civil servant, in JSON order."""

CIVIL_SERVANT_DEFECT_KINDS = ("cccd_invalid", "category_unknown", "email_invalid")
CATEGORIES = ("cadre", "civil_servant", "public_employee")
UNKNOWN_CATEGORY = "contractor"
MAIL_DOMAIN = "ninhbinh.gov.vn"
BIRTH_FIRST = date(1965, 1, 1)
BIRTH_LAST = date(2003, 12, 31)
TIE_RATE = 0.12

DEPARTMENTS: tuple[tuple[str, str, str], ...] = (
    ("000.00.01.H42", "Văn phòng UBND tỉnh Ninh Bình", "office"),
    ("000.00.31.H42", "Sở Tư pháp", "office"),
    ("000.00.33.H42", "Sở Tài chính", "office"),
    ("000.00.35.H42", "Sở Y tế", "health"),
    ("000.00.37.H42", "Sở Giáo dục và Đào tạo", "education"),
    ("000.00.39.H42", "Sở Nội vụ", "office"),
)
"""Provincial agencies ``(agency_code, name, kind)``; codes match :mod:`sandbox.documents`."""
COMMUNE_AGENCIES = 6
"""The first communes of :func:`ninh_binh_communes` whose People's Committee employs staff."""

POSITIONS: dict[str, tuple[tuple[str, str, str, int], ...]] = {
    "office": (("Chuyên viên", "civil_servant", "01.003", 50), ("Chuyên viên chính", "civil_servant", "01.002", 20),
               ("Cán sự", "civil_servant", "01.004", 8), ("Phó Trưởng phòng", "civil_servant", "01.002", 10),
               ("Trưởng phòng", "civil_servant", "01.002", 6), ("Kế toán viên", "civil_servant", "06.031", 6)),
    "health": (("Bác sĩ", "public_employee", "V.08.01.03", 40), ("Điều dưỡng", "public_employee", "V.08.05.12", 40),
               ("Chuyên viên", "civil_servant", "01.003", 20)),
    "education": (("Giáo viên trung học phổ thông hạng II", "public_employee", "V.07.05.14", 45),
                  ("Giáo viên trung học phổ thông hạng I", "public_employee", "V.07.05.13", 25),
                  ("Chuyên viên", "civil_servant", "01.003", 30)),
    "commune": (("Chủ tịch UBND", "cadre", "01.003", 8), ("Phó Chủ tịch UBND", "cadre", "01.003", 12),
                ("Công chức Tư pháp - Hộ tịch", "civil_servant", "01.003", 30),
                ("Công chức Địa chính - Xây dựng", "civil_servant", "01.003", 30),
                ("Công chức Văn phòng - Thống kê", "civil_servant", "01.004", 20)),
}
"""Agency kind -> ``(position, category, rank_code, weight)``."""


def agencies() -> list[tuple[str, str, str]]:
    """Every employing agency as ``(agency_code, agency_name, kind)``.

    Example: ``('000.00.31.H42', 'Sở Tư pháp', 'office')``, ``('000.40.00.H42', 'UBND Xã Gia Viễn', 'commune')``.
    """
    communes = ninh_binh_communes()[:COMMUNE_AGENCIES]
    return [*DEPARTMENTS, *((f"000.{40 + i:02d}.00.H42", f"UBND {name}", "commune")
                            for i, (_, name) in enumerate(communes))]


def _email(rng: random.Random, full_name: str, taken: set[str], kind: str | None) -> str:
    local = base = ascii_slug(full_name)
    while local in taken:
        local = f"{base}{rng.randint(1, 999)}"
    taken.add(local)
    if kind != "email_invalid":
        return f"{local}@{MAIL_DOMAIN}"
    return rng.choice((f"{local}.{MAIL_DOMAIN}", f"{local}@ninhbinh"))


class _ServantRows:
    """Makes civil servants one by one, keeping personal ids and mailboxes unique."""

    def __init__(self, rng: random.Random, fake: Faker) -> None:
        self.rng, self.fake = rng, fake
        self.employers = agencies()
        self.ids: set[str] = set()
        self.mailboxes: set[str] = set()

    def __call__(self, index: int, kind: str | None, earlier: list[dict[str, Any]]) -> dict[str, Any]:
        rng = self.rng
        code, agency, agency_kind = rng.choice(self.employers)
        options = POSITIONS[agency_kind]
        position, category, rank, _ = rng.choices(options, [o[3] for o in options])[0]
        sex, born = rng.choice(("male", "female")), random_date(rng, BIRTH_FIRST, BIRTH_LAST)
        personal_id = person_cccd(rng, sex, born, invalid=kind == "cccd_invalid")
        while personal_id in self.ids:
            personal_id = person_cccd(rng, sex, born, invalid=kind == "cccd_invalid")
        self.ids.add(personal_id)
        full_name = vietnamese_name(self.fake, sex)
        updated = updated_at_with_ties(rng, earlier, TIE_RATE)
        return {
            "servant_id": f"CB37-{index + 1:06d}", "full_name": full_name, "personal_id": personal_id,
            "sex": sex, "birth_date": born, "agency_code": code, "agency_name": agency, "position": position,
            "category": UNKNOWN_CATEGORY if kind == "category_unknown" else category, "rank_code": rank,
            "email": _email(rng, full_name, self.mailboxes, kind), "updated_at": updated,
        }


def make_civil_servants_with_defects(seed: int, count: int, defect_rate: float = 0.01) -> GeneratedRows:
    """Generate ``count`` civil servants deterministically, with ``{servant_id: defect_kind}``.

    Arguments as for :func:`sandbox.common.generate_with_defects`. Rows come
    sorted by ``(updated_at, servant_id)`` (see the module docstring); the
    defects are e.g. ``{'CB37-000042': 'category_unknown'}``.
    """
    return generate_with_defects(seed, count, defect_rate, CIVIL_SERVANT_DEFECT_KINDS, "servant_id", _ServantRows)
