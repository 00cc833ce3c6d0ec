"""Old communes of Ninh Binh, Nam Dinh and Ha Nam -> the new Ninh Binh's communes, from real package data.

Two packages, joined by names:

* ``vietnam-address-converter`` carries the old (pre-2025-07-01, three-level)
  units (``oldProvinces``, ``oldDistricts``, ``oldWards``) and the official
  old-to-new mapping table (``admin_mapping_old_to_new``, one row per old
  ward and new ward it went into, matched by names). Its codes are its own
  identifiers, not the GSO codes: old Ninh Bình is ``52``, Nam Định ``50``,
  Hà Nam ``36``; new Ninh Bình ``34``.
* ``vietnam-provinces`` carries the official 2025 codes (province 37, its
  communes with 5-digit GSO codes).

The join: a mapping row's new ward name, folded (accents stripped, lowercase,
type word kept: ``'phuong nguyen uy'``), equals exactly one official commune
name of province 37 folded the same way (``'Phường Nguyễn Uý'`` and
``'Phường Nguyễn Úy'`` fold alike).

Old units are identified as the legacy systems hold them: the old GSO province
code (Ninh Bình 37, Nam Định 36, Hà Nam 35) and the converter's district and
commune identifiers (neither package carries the old GSO district/commune
codes). Every old commune gets a :class:`CommuneMapping`:

* ``mapped``: exactly one new commune;
* ``split``: the old commune went into several new ones (the record's commune
  cannot be told from the code: review);
* ``dissolved``: listed among the converter's old units but absent from its
  mapping (it had been merged away before the 2025 mapping was drawn up);
* ``unjoined``: the new ward name has no official 2025 commune (none today; kept
  so that a package update cannot silently drop a commune).

Example:
    >>> table = commune_table()
    >>> len(table.new_communes)          # from vietnam-provinces, not hard-coded
    129
    >>> m = table.lookup("35", "292", "327972")   # Xã Phù Vân, TP Phủ Lý, Hà Nam
    >>> m.status, m.new_code, m.new_name
    ('mapped', '13318', 'Phường Phù Vân')
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from typing import Any

from consolidation.normalise import fold_name, nfc

OLD_PROVINCES: dict[str, tuple[str, str]] = {"37": ("Ninh Bình", "52"), "36": ("Nam Định", "50"),
                                             "35": ("Hà Nam", "36")}
"""Old GSO province code -> (name, the converter's code for it)."""
NEW_PROVINCE_CODE = 37
"""The merged province's official 2025 code (Ninh Bình)."""
CONVERTER_NEW_PROVINCE = "34"
"""The converter's code for the new Ninh Bình."""

STATUSES = ("mapped", "split", "dissolved", "unjoined")

__all__ = ["CONVERTER_NEW_PROVINCE", "NEW_PROVINCE_CODE", "OLD_PROVINCES", "STATUSES", "CommuneMapping",
           "CommuneTable", "OldCommune", "commune_table"]


@dataclass(frozen=True)
class OldCommune:
    """A commune-level unit before 2025-07-01, e.g. ``OldCommune('35', '292', '327972', 'Hà Nam',
    'Thành Phố Phủ Lý', 'Xã Phù Vân')``."""

    province_code: str
    district_code: str
    commune_code: str
    province_name: str
    district_name: str
    commune_name: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.province_code, self.district_code, self.commune_code


@dataclass(frozen=True)
class CommuneMapping:
    """Where one old commune went: ``status``, the new code (when ``mapped``), the candidates and why."""

    old: OldCommune
    status: str
    new_code: str | None
    new_name: str | None
    candidates: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class CommuneTable:
    """Every old commune of the three provinces with its mapping, and the new province's official communes."""

    mappings: dict[tuple[str, str, str], CommuneMapping]
    new_communes: dict[str, str]
    by_names: dict[tuple[str, str, str], CommuneMapping]

    def lookup(self, province_code: str, district_code: str, commune_code: str) -> CommuneMapping | None:
        """The mapping of an old commune by its codes, or ``None`` if no such old commune."""
        return self.mappings.get((province_code, district_code, commune_code))

    def lookup_names(self, province_code: str, district_name: str, commune_name: str) -> CommuneMapping | None:
        """The mapping of an old commune by its names (folded; ``Xã``/``Phường`` kept), or ``None``."""
        return self.by_names.get((province_code, fold_name(district_name), fold_name(commune_name)))

    def old_communes(self, province_code: str) -> list[OldCommune]:
        """The old communes of one old province, in code order."""
        return sorted((m.old for m in self.mappings.values() if m.old.province_code == province_code),
                      key=lambda o: (int(o.district_code), int(o.commune_code)))

    def rows(self) -> list[dict[str, Any]]:
        """One row per old commune, as ``merger_commune_map`` stores it."""
        return [{"old_province_code": m.old.province_code, "old_district_code": m.old.district_code,
                 "old_commune_code": m.old.commune_code, "old_province_name": m.old.province_name,
                 "old_district_name": m.old.district_name, "old_commune_name": m.old.commune_name,
                 "status": m.status, "new_commune_code": m.new_code, "new_commune_name": m.new_name,
                 "candidates": ",".join(m.candidates), "reason": m.reason}
                for m in sorted(self.mappings.values(), key=lambda m: m.old.key)]


def _official_communes() -> dict[str, str]:
    from vietnam_provinces import ProvinceCode, Ward

    return {f"{int(w.code):05d}": nfc(w.name)  # NFC, whitespace collapsed ('Xã  Xuân Giang' has two spaces)
            for w in Ward.iter_by_province(ProvinceCode(NEW_PROVINCE_CODE))}


def _old_communes(data: dict[str, Any]) -> tuple[dict[tuple[str, str, str], OldCommune], dict[str, set[str]]]:
    """Old communes of the three provinces (mapping rows + the converter's old-unit list) and their new names."""
    official_of = {conv: gso for gso, (_, conv) in OLD_PROVINCES.items()}
    communes: dict[tuple[str, str, str], OldCommune] = {}
    targets: dict[str, set[str]] = defaultdict(set)
    for row in data["mapping"]["rows"]:
        old, new = row["old"], row["new"]
        if old["province_code"] not in official_of:
            continue
        if new["province_code"] != CONVERTER_NEW_PROVINCE:
            raise ValueError(f"vietnam-address-converter maps {old['ward_name']} ({old['province_name']}) outside "
                             f"the new Ninh Bình: the package changed; review consolidation/mapping.py")
        unit = OldCommune(official_of[old["province_code"]], old["district_code"], old["ward_code"],
                          OLD_PROVINCES[official_of[old["province_code"]]][0], _nfc(old["district_name"]),
                          _nfc(old["ward_name"]))
        communes[unit.key] = unit
        targets[old["ward_code"]].add(_nfc(new["ward_name"]))
    mapped_codes = {key[2] for key in communes}
    for ward in data["oldWards"].values():
        district = data["oldDistricts"].get(ward["parent_code"], {})
        gso = official_of.get(district.get("parent_code", ""))
        if gso is None or ward["code"] in mapped_codes:
            continue
        unit = OldCommune(gso, district["code"], ward["code"], OLD_PROVINCES[gso][0],
                          _nfc(district["name_with_type"]), _nfc(ward["name_with_type"]))
        communes[unit.key] = unit
    return communes, targets


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _mapping_of(old: OldCommune, new_names: set[str], official_by_name: dict[str, str],
                official: dict[str, str]) -> CommuneMapping:
    if not new_names:
        return CommuneMapping(old, "dissolved", None, None, (), "listed among the converter's old units but absent "
                              "from its old-to-new mapping (merged away before the 2025 mapping was drawn up)")
    codes = sorted({official_by_name.get(fold_name(name), "") for name in new_names})
    if "" in codes:
        missing = sorted(n for n in new_names if fold_name(n) not in official_by_name)
        return CommuneMapping(old, "unjoined", None, None, tuple(c for c in codes if c),
                              f"new ward {', '.join(missing)} has no official 2025 commune in vietnam-provinces")
    if len(codes) > 1:
        names = ", ".join(f"{official[c]} ({c})" for c in codes)
        return CommuneMapping(old, "split", None, None, tuple(codes),
                              f"split between {names}: the new commune cannot be told from the old code")
    return CommuneMapping(old, "mapped", codes[0], official[codes[0]], tuple(codes),
                          f"{old.commune_name} -> {official[codes[0]]}")


@cache
def commune_table() -> CommuneTable:
    """Build the old-to-new commune table from the two packages (cached; about 0.5 s the first time).

    Raises:
        ValueError: A folded official commune name is not unique in province 37 (the join by
            names would be ambiguous), or the converter maps an old commune outside the new province.
    """
    from vietnam_address_converter.data import DEFAULT_DATA

    official = _official_communes()
    official_by_name: dict[str, str] = {}
    for code, name in official.items():
        if fold_name(name) in official_by_name:
            raise ValueError(f"two official communes of province {NEW_PROVINCE_CODE} fold to {fold_name(name)!r}: "
                             "the join by names is ambiguous")
        official_by_name[fold_name(name)] = code
    communes, targets = _old_communes(DEFAULT_DATA)
    mappings = {key: _mapping_of(old, targets.get(old.commune_code, set()), official_by_name, official)
                for key, old in communes.items()}
    by_names = _name_index(mappings)
    return CommuneTable(mappings, official, by_names)


def _name_index(mappings: dict[tuple[str, str, str], CommuneMapping]) -> dict[tuple[str, str, str], CommuneMapping]:
    """``(province, folded district name, folded commune name)`` -> mapping, keeping only unique names."""
    seen: dict[tuple[str, str, str], list[CommuneMapping]] = defaultdict(list)
    for m in mappings.values():
        seen[(m.old.province_code, fold_name(m.old.district_name), fold_name(m.old.commune_name))].append(m)
    return {key: found[0] for key, found in seen.items() if len(found) == 1}
