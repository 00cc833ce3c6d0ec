"""Synthetic data of the three legacy provincial systems (before the 2025-07-01 merger), with ground truth.

Each former province (Ninh Bình 37, Nam Định 36, Hà Nam 35) kept citizens,
enterprises and dossiers with the old three-level codes (province, district,
commune; see :mod:`consolidation.mapping` for which identifiers). The same
person or enterprise may sit in two or three systems, with small differences:

* citizens copied into another province's system (about 10%, a few into all
  three) with the name without accents, in capitals with doubled spaces, or in
  NFD; a different address, commune and phone; a different ``updated_at``;
  some copies without their CCCD (an old 9-digit CMND or nothing), so only the
  normalised name + birth date can match them;
* enterprises with the same tax code in two provinces and a different status.

Planted cases that must not be merged silently (``LegacyTruth.review``):
records in an old commune that was split or dissolved, or with a commune code
and names nobody knows (``unmapped_commune``); a record without CCCD whose name
and birth date fit two different people (``ambiguous_name_birth``); two records
with one CCCD and two birth dates that both fit it (``birth_date_conflict``);
enterprises without a valid tax code (``invalid_tax_code``). Also planted but
resolvable: a wrong commune code whose names are right (mapped by names), a
birth-date typo that the CCCD settles, a citizen without CCCD matching nobody.

Example citizen (JSON form)::

    {"citizen_id": "ND-CD-000042", "personal_id": "036190012345", "full_name": "Trần Thị Lan",
     "birth_date": "1990-04-02", "sex": "female", "province_code": "36", "district_code": "306",
     "commune_code": "65814", "province_name": "Nam Định", "district_name": "Thành Phố Nam Định",
     "commune_name": "Phường Vị Xuyên", "address": "12 Trần Hưng Đạo", "phone": "0912345678",
     "updated_at": "2024-03-05T10:00:00+07:00"}
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from faker import Faker

from consolidation.mapping import CommuneTable, OldCommune, commune_table
from consolidation.normalise import fold_name
from sandbox.citizens import BIRTH_FIRST, BIRTH_LAST, MOBILE_PREFIXES, century_sex_digit, vietnamese_name
from sandbox.common import random_date, random_instant, seeded_sources
from sandbox.enterprises import BRANDS, TRADES

LEGACY_SYSTEMS: dict[str, tuple[str, str]] = {
    "legacy_ninh_binh": ("37", "NB"), "legacy_nam_dinh": ("36", "ND"), "legacy_ha_nam": ("35", "HN")}
"""Legacy system -> (old GSO province code, record-key prefix), in source-priority order."""
KINDS = ("citizen", "enterprise", "dossier")
KEY_FIELDS = {"citizen": "citizen_id", "enterprise": "enterprise_id", "dossier": "dossier_id"}
KEY_PREFIXES = {"citizen": "CD", "enterprise": "DN", "dossier": "HS"}
"""Record keys: ``NB-CD-000001`` (citizen), ``ND-DN-000001`` (enterprise), ``HN-HS-000001`` (dossier)."""
LEGACY_FIRST = datetime(2022, 1, 1, tzinfo=UTC)
LEGACY_LAST = datetime(2025, 6, 30, 16, 59, 59, tzinfo=UTC)
"""``updated_at`` range: the legacy systems were frozen at the merger (2025-07-01 +07:00)."""
COPY_SHARE = 0.10
TRIPLE_SHARE = 0.02
ENTERPRISE_COPY_SHARE = 0.12
ENTERPRISE_STATUSES = ("active", "suspended", "dissolved")
TAX_PREFIXES = {"37": "27", "36": "06", "35": "07"}
PROCEDURES = ("1.001612", "1.000894", "2.000528", "1.004227", "2.001023")
NAME_VARIANTS = ("no_accents", "capitals_spaces", "nfd")
UNMAPPED = "unmapped_commune"

__all__ = ["KEY_FIELDS", "KINDS", "LEGACY_SYSTEMS", "LegacyData", "LegacyTruth", "generate_legacy", "iter_records"]


@dataclass
class LegacyTruth:
    """What a correct consolidation must produce.

    Attributes:
        entity_of: ``(system, kind, record key) -> entity`` for every record that must end in a
            consolidated record; records sharing an entity must end in the same one.
        review: ``(system, kind, record key) -> reason code`` for every record that must go to review.
    """

    entity_of: dict[tuple[str, str, str], str] = field(default_factory=dict)
    review: dict[tuple[str, str, str], str] = field(default_factory=dict)


@dataclass
class LegacyData:
    """``records[system][kind]``: the rows each legacy system serves (``updated_at`` aware), and the truth."""

    records: dict[str, dict[str, list[dict[str, Any]]]]
    truth: LegacyTruth

    def count(self, system: str | None = None) -> int:
        """Records in one system (or all)."""
        return sum(len(rows) for name, kinds in self.records.items() if system in (None, name)
                   for rows in kinds.values())


def strip_accents(text: str) -> str:
    """``'Nguyễn Đức Anh'`` -> ``'Nguyen Duc Anh'`` (case kept)."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn").replace("đ", "d").replace("Đ", "D")


def name_variant(name: str, kind: str) -> str:
    """The name as another office typed it: ``no_accents``, ``capitals_spaces`` or ``nfd``."""
    if kind == "no_accents":
        return strip_accents(name)
    if kind == "capitals_spaces":
        return "  ".join(name.upper().split(" ")) + " "
    return unicodedata.normalize("NFD", name)


def _place(commune: OldCommune) -> dict[str, str]:
    return {"province_code": commune.province_code, "district_code": commune.district_code,
            "commune_code": commune.commune_code, "province_name": commune.province_name,
            "district_name": commune.district_name, "commune_name": commune.commune_name}


class _Generator:
    """One deterministic run: persons, enterprises and dossiers of the three systems."""

    def __init__(self, seed: int, table: CommuneTable) -> None:
        self.rng, self.fake = seeded_sources(seed)
        self.table = table
        self.records: dict[str, dict[str, list[dict[str, Any]]]] = {s: {k: [] for k in KINDS} for s in LEGACY_SYSTEMS}
        self.truth = LegacyTruth()
        self.counters: dict[tuple[str, str], int] = {}
        self.used_ids: set[str] = set()
        self.clean = {p: [o for o in table.old_communes(p) if table.lookup(*o.key).status == "mapped"]  # type: ignore[union-attr]
                      for p, _ in LEGACY_SYSTEMS.values()}
        self.turn = {p: 0 for p in self.clean}
        self.name_keys: Counter[tuple[str, date]] = Counter()

    def key(self, system: str, kind: str) -> str:
        prefix = LEGACY_SYSTEMS[system][1]
        number = self.counters[(system, kind)] = self.counters.get((system, kind), 0) + 1
        return f"{prefix}-{KEY_PREFIXES[kind]}-{number:06d}"

    def next_commune(self, system: str) -> OldCommune:
        """Mapped old communes in turn (each is used before any twice), so every new commune gets records."""
        province = LEGACY_SYSTEMS[system][0]
        self.turn[province] += 1
        return self.clean[province][self.turn[province] % len(self.clean[province])]

    def stamp(self) -> datetime:
        return random_instant(self.rng, LEGACY_FIRST, LEGACY_LAST)

    def personal_id(self, system: str, sex: str, birth: date) -> str:
        while True:
            pid = f"0{LEGACY_SYSTEMS[system][0]}{century_sex_digit(sex, birth.year)}{birth.year % 100:02d}" \
                  f"{self.rng.randrange(10**6):06d}"
            if pid not in self.used_ids:
                self.used_ids.add(pid)
                return pid

    def add(self, system: str, kind: str, row: dict[str, Any], entity: str | None, review: str | None = None) -> str:
        key = self.key(system, kind)
        self.records[system][kind].append({KEY_FIELDS[kind]: key, **row})
        if review:
            self.truth.review[(system, kind, key)] = review
        elif entity:
            self.truth.entity_of[(system, kind, key)] = entity
        return key

    def citizen_row(self, system: str, commune: OldCommune | None = None, **fixed: Any) -> dict[str, Any]:
        sex = fixed.get("sex") or self.rng.choice(("male", "female"))
        birth = fixed.get("birth_date") or random_date(self.rng, BIRTH_FIRST, BIRTH_LAST)
        row = {"personal_id": self.personal_id(system, sex, birth), "full_name": vietnamese_name(self.fake, sex),
               "birth_date": birth, "sex": sex, **_place(commune or self.next_commune(system)),
               "address": unicodedata.normalize("NFC", self.fake.street_address()),
               "phone": f"0{self.rng.choice(MOBILE_PREFIXES)}{self.rng.randrange(10**8):08d}",
               "updated_at": self.stamp()}
        return {**row, **fixed}


def _copy_citizen(gen: _Generator, row: dict[str, Any], system: str, variant: str, with_id: bool) -> dict[str, Any]:
    """``row`` as another province's system holds it: its own place, address, phone and update time."""
    fresh = gen.citizen_row(system, sex=row["sex"], birth_date=row["birth_date"])
    personal_id = row["personal_id"] if with_id else gen.rng.choice((None, f"{gen.rng.randrange(10**9):09d}"))
    return {**fresh, "personal_id": personal_id, "full_name": name_variant(row["full_name"], variant),
            "phone": gen.rng.choice((row["phone"], fresh["phone"]))}


def _citizens(gen: _Generator, per_system: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Own citizens of each system, and copies in the others; returns ``{system: [(entity, row)]}`` of own ones.

    A copy without CCCD is only made of a person whose folded name + birth date no one else has.
    """
    own: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for s_index, system in enumerate(LEGACY_SYSTEMS):
        own[system] = [(f"C-{s_index}-{i:05d}", gen.citizen_row(system)) for i in range(per_system)]
        for entity, row in own[system]:
            gen.add(system, "citizen", row, entity)
    seen = Counter(_name_key(row) for rows in own.values() for _, row in rows)
    gen.name_keys.update(seen)
    systems = list(LEGACY_SYSTEMS)
    for s_index, system in enumerate(systems):
        others = systems[:s_index] + systems[s_index + 1:]
        for i, (entity, row) in enumerate(own[system]):
            draw = gen.rng.random()
            if draw >= COPY_SHARE:
                continue
            for target in (others if draw < TRIPLE_SHARE else [gen.rng.choice(others)]):
                with_id = i % 4 != 0 or seen[_name_key(row)] > 1
                variant = NAME_VARIANTS[i % len(NAME_VARIANTS)]
                gen.add(target, "citizen", _copy_citizen(gen, row, target, variant, with_id), entity)
    return own


def _name_key(row: dict[str, Any]) -> tuple[str, date]:
    return fold_name(row["full_name"]), row["birth_date"]


def _fresh_person(gen: _Generator, system: str) -> dict[str, Any]:
    """A citizen whose folded name + birth date no generated record has."""
    while True:
        row = gen.citizen_row(system)
        if _name_key(row) not in gen.name_keys:
            gen.name_keys[_name_key(row)] += 1
            return row


def _plant_citizens(gen: _Generator) -> None:
    """The hard cases: ambiguous name + birth date, birth-date conflicts, a lone citizen without CCCD."""
    nb, nd, hn = LEGACY_SYSTEMS
    first = _fresh_person(gen, nb)
    twin = {**gen.citizen_row(nd, sex=first["sex"], birth_date=first["birth_date"]), "full_name": first["full_name"]}
    gen.add(nb, "citizen", first, "C-twin-a")
    gen.add(nd, "citizen", twin, "C-twin-b")
    gen.add(hn, "citizen", {**gen.citizen_row(hn, sex=first["sex"], birth_date=first["birth_date"]),
                            "full_name": name_variant(first["full_name"], "no_accents"), "personal_id": None},
            None, "ambiguous_name_birth")
    settled = _fresh_person(gen, nb)
    born = settled["birth_date"]
    typo = born.replace(year=born.year - 10 if born.year > 1950 else born.year + 10, day=min(born.day, 28))
    gen.add(nb, "citizen", settled, "C-typo")
    gen.add(hn, "citizen", {**_copy_citizen(gen, settled, hn, "nfd", True), "birth_date": typo}, "C-typo")
    unsettled = _fresh_person(gen, nd)
    other_day = unsettled["birth_date"].replace(day=1 if unsettled["birth_date"].day > 1 else 2)
    gen.add(nd, "citizen", unsettled, None, "birth_date_conflict")
    gen.add(nb, "citizen", {**_copy_citizen(gen, unsettled, nb, "no_accents", True), "birth_date": other_day},
            None, "birth_date_conflict")
    gen.add(hn, "citizen", {**_fresh_person(gen, hn), "personal_id": None}, "C-lone")


def _plant_places(gen: _Generator, kind: str, make: Any) -> None:
    """Records whose old commune cannot be mapped (split, dissolved, unknown) and one mapped by its names."""
    for system, (province, _) in LEGACY_SYSTEMS.items():
        for old in gen.table.old_communes(province):
            status = gen.table.lookup(*old.key).status  # type: ignore[union-attr]
            if status in ("split", "dissolved"):
                gen.add(system, kind, make(system, _place(old)), None, UNMAPPED)
        unknown = {**_place(gen.next_commune(system)), "commune_code": "999999", "commune_name": "Xã Không Rõ"}
        gen.add(system, kind, make(system, unknown), None, UNMAPPED)
        by_names = {**_place(gen.next_commune(system)), "commune_code": "0"}
        gen.add(system, kind, make(system, by_names), f"{kind}-by-names-{system}")


def _enterprise_row(gen: _Generator, system: str, place: dict[str, str] | None = None) -> dict[str, Any]:
    province = LEGACY_SYSTEMS[system][0]
    while True:
        tax_code = f"{TAX_PREFIXES[province]}{gen.rng.randrange(10**8):08d}"
        if tax_code not in gen.used_ids:
            gen.used_ids.add(tax_code)
            break
    name = f"Công ty TNHH {gen.rng.choice(TRADES)} {gen.rng.choice(BRANDS)} {gen.rng.randrange(1, 99)}"
    return {"tax_code": tax_code, "name": name, "status": gen.rng.choices(ENTERPRISE_STATUSES, (85, 8, 7))[0],
            "registered_on": random_date(gen.rng, date(1995, 1, 1), date(2024, 12, 31)),
            **(place or _place(gen.next_commune(system))),
            "address": unicodedata.normalize("NFC", gen.fake.street_address()), "updated_at": gen.stamp()}


def _enterprises(gen: _Generator, per_system: int) -> None:
    """Own enterprises, the same tax code in another province with another status, and invalid tax codes."""
    systems = list(LEGACY_SYSTEMS)
    for s_index, system in enumerate(systems):
        for i in range(per_system):
            entity, row = f"E-{s_index}-{i:05d}", _enterprise_row(gen, system)
            gen.add(system, "enterprise", row, entity)
            if gen.rng.random() < ENTERPRISE_COPY_SHARE:
                target = gen.rng.choice(systems[:s_index] + systems[s_index + 1:])
                copy = {**_enterprise_row(gen, target), "tax_code": row["tax_code"],
                        "status": gen.rng.choice([s for s in ENTERPRISE_STATUSES if s != row["status"]]),
                        "name": row["name"].upper() if i % 2 else strip_accents(row["name"]),
                        "registered_on": row["registered_on"]}
                gen.add(target, "enterprise", copy, entity)
        for bad in ("12345", None):
            gen.add(system, "enterprise", {**_enterprise_row(gen, system), "tax_code": bad}, None, "invalid_tax_code")


def _dossiers(gen: _Generator, per_system: int) -> None:
    """Dossiers of each system's own citizens (no dossier is in two systems)."""
    for system in LEGACY_SYSTEMS:
        applicants = [row for row in gen.records[system]["citizen"]
                      if (system, "citizen", row["citizen_id"]) in gen.truth.entity_of]
        for _ in range(per_system):
            applicant = gen.rng.choice(applicants)
            row = _dossier_row(gen, system, applicant, {k: applicant[k] for k in _place_fields()})
            key = gen.add(system, "dossier", row, None)
            gen.truth.entity_of[(system, "dossier", key)] = f"D-{system}-{key}"


def _place_fields() -> tuple[str, ...]:
    return ("province_code", "district_code", "commune_code", "province_name", "district_name", "commune_name")


def _dossier_row(gen: _Generator, system: str, applicant: dict[str, Any] | None,
                 place: dict[str, str] | None = None) -> dict[str, Any]:
    received = gen.stamp()
    return {"procedure_code": gen.rng.choice(PROCEDURES),
            "applicant_citizen_id": applicant["citizen_id"] if applicant else None,
            "applicant_personal_id": applicant["personal_id"] if applicant else None,
            "received_at": received, "status": gen.rng.choice(("received", "processing", "returned")),
            "channel": gen.rng.choice(("online", "online", "online", "paper")),
            **(place or _place(gen.next_commune(system))), "updated_at": received}


def generate_legacy(seed: int = 37, citizens: int = 400, enterprises: int = 150, dossiers: int = 600) -> LegacyData:
    """Generate the three legacy systems' records deterministically (same arguments => same data).

    Args:
        seed: Seed of the private random source and the ``vi_VN`` Faker.
        citizens: Own citizens per system (copies from the other systems come on top).
        enterprises: Own enterprises per system (copies on top).
        dossiers: Dossiers per system (planted ones on top).

    Returns:
        :class:`LegacyData`; ``truth`` says which records are one entity and which must go to review.
    """
    gen = _Generator(seed, commune_table())
    _citizens(gen, citizens)
    _plant_citizens(gen)
    _plant_places(gen, "citizen", lambda system, place: {**_fresh_person(gen, system), **place})
    _enterprises(gen, enterprises)
    _plant_places(gen, "enterprise", lambda system, place: _enterprise_row(gen, system, place))
    _dossiers(gen, dossiers)
    _plant_places(gen, "dossier", lambda system, place: _dossier_row(gen, system, None, place))
    return LegacyData(gen.records, gen.truth)


def iter_records(data: LegacyData) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every ``(system, kind, row)``."""
    for system, kinds in data.records.items():
        for kind, rows in kinds.items():
            for row in rows:
                yield system, kind, row
