"""Synthetic enterprises as held by the business registration system (đăng ký doanh nghiệp).

Example row (``updated_at`` is UTC-aware; ``phone`` is ``None`` for ~10%)::

    {'tax_code': '2700123456', 'name': 'Công ty TNHH Xây dựng Tràng An',
     'enterprise_type': 'llc_multi', 'status': 'active',
     'registered_on': date(2012, 5, 3), 'commune_code': '14464',
     'address': '81 Khóm 16 Phạm Thế Hiển, Xã Gia Viễn',
     'legal_representative': 'Trần Văn Minh', 'email': 'info@xaydungtrangan.com.vn',
     'phone': '0912345678', 'updated_at': datetime(2025, 8, 15, 2, 30, tzinfo=UTC)}

About 15% are branches (``enterprise_type='branch'``) whose tax code is the
parent's plus ``-NNN`` (``'2700123456-001'``). Defects (one per defective row):
``tax_code_invalid`` (9 digits, or branch ``-000``), ``email_invalid`` (no ``@``
or no top-level domain), ``status_unknown`` (``'closed'``), ``commune_unknown``.
"""

from __future__ import annotations

import random
import unicodedata
from datetime import date, timedelta
from typing import Any

from faker import Faker

from sandbox.citizens import MOBILE_PREFIXES, vietnamese_name
from sandbox.common import GeneratedRows, generate_with_defects, random_date, updated_at_with_ties
from sandbox.communes import UNKNOWN_COMMUNE, ninh_binh_communes

ENTERPRISE_FIELDS = (
    "tax_code", "name", "enterprise_type", "status", "registered_on", "commune_code", "address",
    "legal_representative", "email", "phone", "updated_at",
)
"""The fields of an enterprise, in JSON order."""

ENTERPRISE_DEFECT_KINDS = ("tax_code_invalid", "email_invalid", "status_unknown", "commune_unknown")
ENTERPRISE_TYPES: dict[str, tuple[int, str]] = {
    "llc_one": (35, "Công ty TNHH MTV"), "llc_multi": (25, "Công ty TNHH"), "jsc": (15, "Công ty Cổ phần"),
    "private": (9, "Doanh nghiệp tư nhân"), "partnership": (1, "Công ty Hợp danh"),
}
"""Non-branch type -> (weight, name prefix); branches are drawn separately (BRANCH_SHARE)."""
STATUSES = ("active", "suspended", "dissolving", "dissolved")
STATUS_WEIGHTS = (82, 6, 4, 8)
UNKNOWN_STATUS = "closed"
BRANCH_SHARE = 0.15
PHONE_MISSING_SHARE = 0.10
TAX_PREFIXES = (("27", 60), ("06", 25), ("07", 15))
"""Tax office prefixes (Ninh Bình, former Nam Định, former Hà Nam) with weights."""
TRADES = ("Xây dựng", "Thương mại", "Dịch vụ", "Vận tải", "Du lịch", "Nông sản", "May mặc",
          "Cơ khí", "Đá mỹ nghệ", "Vật liệu xây dựng", "Thực phẩm", "Công nghệ")
BRANDS = ("Tràng An", "Hoa Lư", "Tam Cốc", "Bái Đính", "Cúc Phương", "Vân Long", "Kim Sơn", "Gia Viễn",
          "Hoàng Long", "Thành Nam", "Phủ Lý", "Kim Bảng", "Phát Đạt", "Thịnh Vượng", "An Phát",
          "Minh Khang", "Hưng Thịnh", "Đại Phong", "Sông Đáy", "Nam Sơn")
MAIL_HOSTS = ("gmail.com", "yahoo.com", "{slug}.com.vn", "{slug}.vn")
REGISTERED_FIRST = date(1995, 1, 1)
TIE_RATE = 0.12


def ascii_slug(text: str) -> str:
    """ASCII, lower-case, alphanumerics only: ``'Đá mỹ nghệ Tràng An'`` -> ``'damynghetrangan'``."""
    stripped = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in stripped if c.isascii() and c.isalnum()).lower()


def _new_tax_code(rng: random.Random, taken: set[str]) -> str:
    prefixes, weights = [p for p, _ in TAX_PREFIXES], [w for _, w in TAX_PREFIXES]
    while True:
        code = f"{rng.choices(prefixes, weights)[0]}{rng.randrange(10**8):08d}"
        if code not in taken:
            return code


def _email(rng: random.Random, slug: str, kind: str | None) -> str:
    host = rng.choice(MAIL_HOSTS).format(slug=slug)
    local = f"{slug}{rng.randint(1, 99)}" if slug not in host else rng.choice(("info", "lienhe", "ketoan"))
    if kind != "email_invalid":
        return f"{local}@{host}"
    return rng.choice((f"{local}.{host}", f"{local}@{host.split('.')[0]}"))


class _Register:
    """Tax codes handed out so far, and the parents branches may attach to."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.parents: list[dict[str, Any]] = []
        self.branches: dict[str, int] = {}
        self.slugs: dict[str, str] = {}

    def identity(self, rng: random.Random, commune_name: str) -> dict[str, Any]:
        """Tax code, type, name, mail slug and earliest registration; a branch reuses a parent."""
        if self.parents and rng.random() < BRANCH_SHARE:
            parent = rng.choice(self.parents)
            number = self.branches[parent["tax_code"]] = self.branches.get(parent["tax_code"], 0) + 1
            return {"tax_code": f"{parent['tax_code']}-{number:03d}", "enterprise_type": "branch",
                    "name": f"Chi nhánh {parent['name']} tại {commune_name}",
                    "slug": self.slugs[parent["tax_code"]], "earliest": parent["registered_on"]}
        kinds = list(ENTERPRISE_TYPES)
        kind = rng.choices(kinds, [ENTERPRISE_TYPES[k][0] for k in kinds])[0]
        trade, brand = rng.choice(TRADES), rng.choice(BRANDS)
        return {"tax_code": _new_tax_code(rng, self.taken), "enterprise_type": kind,
                "name": f"{ENTERPRISE_TYPES[kind][1]} {trade} {brand}",
                "slug": ascii_slug(trade + brand), "earliest": REGISTERED_FIRST}

    def invalid_code(self, rng: random.Random, code: str) -> str:
        """A taken-free code failing the tax_code rule: branch ``-000`` or 9 digits."""
        bad = code.split("-")[0] + "-000" if "-" in code else code[:9]
        while bad in self.taken:
            bad = f"{rng.randrange(10**9):09d}"
        return bad


class _EnterpriseRows:
    """Makes enterprises one by one; the register keeps tax codes unique and finds branch parents."""

    def __init__(self, rng: random.Random, fake: Faker) -> None:
        self.rng, self.fake = rng, fake
        self.communes = ninh_binh_communes()
        self.register = _Register()

    def __call__(self, index: int, kind: str | None, earlier: list[dict[str, Any]]) -> dict[str, Any]:
        rng, fake, register = self.rng, self.fake, self.register
        commune_code, commune_name = rng.choice(self.communes)
        who = register.identity(rng, commune_name)
        updated = updated_at_with_ties(rng, earlier, TIE_RATE)
        last_day = updated.date() - timedelta(days=1)
        row: dict[str, Any] = {
            "tax_code": who["tax_code"], "name": who["name"], "enterprise_type": who["enterprise_type"],
            "status": UNKNOWN_STATUS if kind == "status_unknown" else rng.choices(STATUSES, STATUS_WEIGHTS)[0],
            "registered_on": random_date(rng, min(who["earliest"], last_day), last_day),
            "commune_code": UNKNOWN_COMMUNE if kind == "commune_unknown" else commune_code,
            "address": unicodedata.normalize("NFC", f"{fake.street_address()}, {commune_name}"),
            "legal_representative": vietnamese_name(fake, rng.choice(("male", "female"))),
            "email": _email(rng, who["slug"], kind),
            "phone": None if rng.random() < PHONE_MISSING_SHARE
            else f"0{rng.choice(MOBILE_PREFIXES)}{rng.randrange(10**8):08d}",
            "updated_at": updated,
        }
        if kind == "tax_code_invalid":
            row["tax_code"] = register.invalid_code(rng, who["tax_code"])
        elif row["enterprise_type"] != "branch":
            register.parents.append(row)
            register.slugs[row["tax_code"]] = who["slug"]
        register.taken.add(row["tax_code"])
        return row


def make_enterprises_with_defects(seed: int, count: int, defect_rate: float = 0.01) -> GeneratedRows:
    """Generate ``count`` enterprises deterministically, with ``{tax_code: defect_kind}``.

    Arguments as for :func:`sandbox.common.generate_with_defects`. Rows come
    sorted by ``(updated_at, tax_code)`` (see the module docstring); the defects
    are e.g. ``{'270012345': 'tax_code_invalid'}``.
    """
    return generate_with_defects(seed, count, defect_rate, ENTERPRISE_DEFECT_KINDS, "tax_code", _EnterpriseRows)
