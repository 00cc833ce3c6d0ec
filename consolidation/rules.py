"""Conflict rules: which source's value a consolidated record keeps, field by field, and why.

A rule is a small function registered by name (:data:`RULES`); :data:`FIELD_RULES`
says which rule settles which field of which kind (docs/merger.md, "Conflict
rules"). Values are compared in normal form (NFC, whitespace collapsed); equal
values are no conflict and record no decision. Every conflict gives a
:class:`Decision`: the field, the winning source and value, the losing
sources and values, the rule and a sentence saying why.

Ties (same ``updated_at``) go to the source listed first in
``catalog/merger.yaml`` (Ninh Bình, whose system the new province kept).

Example:
    >>> value, decision = resolve_field(cluster, "address")
    >>> decision.rule, decision.winner
    ('latest_update', 'legacy_nam_dinh:ND-CD-000042')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from consolidation.matching import Cluster
from consolidation.normalise import accent_count, cccd_agrees, nfc, personal_id_key
from consolidation.records import SourceRecord

Candidate = tuple[SourceRecord, Any]
"""A source record and its (normalised) value of the field being settled."""
Rule = Callable[[list[Candidate], Cluster], tuple[Candidate, str]]
"""Picks the winning candidate and says why."""

RULES: dict[str, Rule] = {}

__all__ = ["FIELD_RULES", "RULES", "Decision", "resolve_field", "rule"]


def rule(name: str) -> Callable[[Rule], Rule]:
    """Register a conflict rule under ``name``."""
    def _add(function: Rule) -> Rule:
        RULES[name] = function
        return function
    return _add


@dataclass(frozen=True)
class Decision:
    """One settled conflict: ``field`` of ``entity`` took ``winner``'s value by ``rule``."""

    kind: str
    field: str
    winner: str
    value: Any
    losers: tuple[tuple[str, Any], ...]
    rule: str
    why: str


def _recency(candidate: Candidate) -> tuple[datetime, int]:
    record = candidate[0]
    return record.updated_at, -record.priority


@rule("latest_update")
def latest_update(candidates: list[Candidate], cluster: Cluster) -> tuple[Candidate, str]:
    """The most recently updated source wins (a tie goes to the higher-priority source)."""
    best = max(candidates, key=_recency)
    return best, f"{best[0].ref} is the most recently updated source ({best[0].updated_at.isoformat()})"


@rule("best_written_form")
def best_written_form(candidates: list[Candidate], cluster: Cluster) -> tuple[Candidate, str]:
    """The form with the most Vietnamese diacritics, then not all in capitals, then the latest update."""
    best = max(candidates, key=lambda c: (accent_count(c[1]), not str(c[1]).isupper(), _recency(c)))
    return best, (f"{best[0].ref} writes it with full diacritics and normal case "
                  f"({accent_count(best[1])} accented letters); the values fold to the same name")


@rule("cccd_consistent")
def cccd_consistent(candidates: list[Candidate], cluster: Cluster) -> tuple[Candidate, str]:
    """The value that fits the CCCD (century/sex digit and birth year) wins; else the latest update."""
    pid = next((p for p in (personal_id_key(c[0].fields.get("personal_id")) for c in candidates) if p), None)
    if pid is not None:
        fitting = [c for c in candidates if _fits(pid, c, cluster)]
        if fitting:
            best = max(fitting, key=_recency)
            return best, f"{best[1]} fits CCCD {pid} (century/sex digit and birth year); the others do not"
    best, why = latest_update(candidates, cluster)
    return best, f"no value is settled by a CCCD; {why}"


def _fits(pid: str, candidate: Candidate, cluster: Cluster) -> bool:
    value = candidate[1]
    if isinstance(value, date):
        return cccd_agrees(pid, value)
    births = [m.fields["birth_date"] for m in cluster.members if m.fields.get("birth_date")]
    return any(cccd_agrees(pid, b, str(value)) for b in births)


FIELD_RULES: dict[str, dict[str, str]] = {
    "citizen": {"full_name": "best_written_form", "birth_date": "cccd_consistent", "sex": "cccd_consistent",
                "commune_code": "latest_update", "address": "latest_update", "phone": "latest_update"},
    "enterprise": {"name": "best_written_form", "status": "latest_update", "registered_on": "latest_update",
                   "commune_code": "latest_update", "address": "latest_update"},
    "dossier": {},
}
"""Kind -> field -> the rule that settles it (address and commune use one rule, so they come from one source)."""


def _normal(value: Any) -> Any:
    return nfc(value) if isinstance(value, str) else value


def _value(record: SourceRecord, field: str) -> Any:
    return record.new_commune if field == "commune_code" else _normal(record.fields.get(field))


def resolve_field(cluster: Cluster, field: str) -> tuple[Any, Decision | None]:
    """The consolidated value of ``field`` and, if the sources disagree, the decision taken.

    Missing values (``None``/empty) never win over a present one and are no conflict.
    """
    candidates = [(m, _value(m, field)) for m in cluster.members]
    present = [c for c in candidates if c[1] not in (None, "")]
    if not present:
        return None, None
    if len({c[1] for c in present}) == 1:
        return present[0][1], None
    name = FIELD_RULES[cluster.kind][field]
    (winner, value), why = RULES[name](present, cluster)
    losers = tuple((record.ref, other) for record, other in present if other != value)
    return value, Decision(cluster.kind, field, winner.ref, value, losers, name, why)
