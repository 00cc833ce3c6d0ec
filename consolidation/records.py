"""A legacy record as the consolidation handles it, and the remapping of its old commune.

Example:
    >>> record = SourceRecord.from_json("legacy_ha_nam", "citizen", 2, {"citizen_id": "HN-CD-000001",
    ...     "province_code": "35", "district_code": "292", "commune_code": "327972",
    ...     "district_name": "Thành Phố Phủ Lý", "commune_name": "Xã Phù Vân",
    ...     "updated_at": "2024-03-05T10:00:00+07:00"})
    >>> record.ref, remap(record, commune_table()).new_code
    ('legacy_ha_nam:HN-CD-000001', '13318')
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from consolidation.mapping import CommuneTable, commune_table

KEY_FIELDS = {"citizen": "citizen_id", "enterprise": "enterprise_id", "dossier": "dossier_id"}
"""Record kind -> the legacy systems' key field."""
DATE_FIELDS = frozenset({"birth_date", "registered_on"})
INSTANT_FIELDS = frozenset({"updated_at", "received_at"})

__all__ = ["DATE_FIELDS", "INSTANT_FIELDS", "KEY_FIELDS", "Remapped", "SourceRecord", "commune_table", "remap"]


@dataclass
class SourceRecord:
    """One legacy record: where it came from, its typed fields and (after :func:`remap`) its new commune.

    Attributes:
        system: e.g. ``"legacy_ha_nam"``.
        kind: ``"citizen"``, ``"enterprise"`` or ``"dossier"``.
        priority: The system's position in ``catalog/merger.yaml`` (0 = first; breaks ties).
        key: The record's key in its system, e.g. ``"HN-CD-000001"``.
        fields: The record with dates and instants typed.
        new_commune: The new province's commune code, once remapped.
    """

    system: str
    kind: str
    priority: int
    key: str
    fields: dict[str, Any]
    new_commune: str | None = None

    @property
    def ref(self) -> str:
        """``system:key``, the record's name in lineage columns and decisions."""
        return f"{self.system}:{self.key}"

    @property
    def updated_at(self) -> datetime:
        return self.fields["updated_at"]  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, system: str, kind: str, priority: int, row: dict[str, Any]) -> SourceRecord:
        """Type a record as received (ISO dates and instants); raises ValueError naming a bad field."""
        fields = dict(row)
        for name in DATE_FIELDS & fields.keys():
            fields[name] = _typed(system, row, name, date.fromisoformat)
        for name in INSTANT_FIELDS & fields.keys():
            fields[name] = _typed(system, row, name, datetime.fromisoformat)
        key = row.get(KEY_FIELDS[kind])
        if not key:
            raise ValueError(f"{system}: a {kind} record has no {KEY_FIELDS[kind]}: {str(row)[:120]}")
        return cls(system, kind, priority, str(key), fields)


def _typed(system: str, row: dict[str, Any], name: str, parse: Any) -> Any:
    value = row.get(name)
    if value in (None, ""):
        return None
    try:
        return parse(value)
    except (TypeError, ValueError):
        raise ValueError(f"{system}: field {name} of {row.get('citizen_id') or row.get('enterprise_id') or row.get('dossier_id')}"
                         f" is not an ISO date/instant: {value!r}") from None


@dataclass(frozen=True)
class Remapped:
    """The outcome of remapping: ``new_code`` and ``how`` (``code``/``names``), or ``problem`` (review reason)."""

    new_code: str | None
    how: str | None
    problem: str | None


def remap(record: SourceRecord, table: CommuneTable) -> Remapped:
    """The new commune of a record's old (province, district, commune).

    By code first; if the code is unknown, by the district and commune names
    (folded) within the province. A split, dissolved or unknown commune is a
    ``problem`` and the record goes to review.
    """
    f = record.fields
    province = str(f.get("province_code") or "")
    mapping = table.lookup(province, str(f.get("district_code") or ""), str(f.get("commune_code") or ""))
    how = "code"
    if mapping is None:
        mapping = table.lookup_names(province, f.get("district_name") or "", f.get("commune_name") or "")
        how = "names"
    if mapping is None:
        return Remapped(None, None, f"old commune {province}/{f.get('district_code')}/{f.get('commune_code')} "
                                    f"({f.get('commune_name')}, {f.get('district_name')}) is in neither the mapping's "
                                    "codes nor its names")
    if mapping.status != "mapped":
        return Remapped(None, None, f"old commune {mapping.old.commune_name} ({mapping.old.district_name}, "
                                    f"{mapping.old.province_name}) is {mapping.status}: {mapping.reason}")
    return Remapped(mapping.new_code, how, None)
