"""Match the same citizen or enterprise across the legacy systems.

Citizens, in this order (docs/merger.md, "Matching"):

1. **CCCD**: records with the same valid 12-digit personal ID are one person,
   whatever their names say. If they carry different birth dates and not
   exactly one of them fits the CCCD (century digit and birth year), the
   group goes to review (``birth_date_conflict``).
2. **Name + birth date**, for records without a valid CCCD only: the
   normalised name (NFC, lowercase, accents stripped, whitespace collapsed)
   and the birth date must point to exactly one group; two or more is
   ``ambiguous_name_birth`` (review). Records that match no CCCD group match
   each other the same way, one per system at most.

Enterprises: the tax code (MST) only; a record without a valid one is
``invalid_tax_code`` (review). Dossiers are never in two systems: each is
its own group.

Example:
    >>> clusters, reviews = match_citizens(records)
    >>> clusters[0].rule, [r.ref for r in clusters[0].members]
    ('personal_id', ['legacy_ninh_binh:NB-CD-000001', 'legacy_ha_nam:HN-CD-000412'])
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from consolidation.normalise import cccd_agrees, fold_name, personal_id_key, tax_code_key
from consolidation.records import SourceRecord

__all__ = ["Cluster", "Review", "match_citizens", "match_dossiers", "match_enterprises"]


@dataclass
class Cluster:
    """Records found to be one entity, and the rule that matched them (``single`` for one record)."""

    kind: str
    key: str
    rule: str
    members: list[SourceRecord] = field(default_factory=list)
    why: str = ""


@dataclass(frozen=True)
class Review:
    """A record sent to review: a reason code, a sentence, and the records it was confused with."""

    record: SourceRecord
    reason_code: str
    reason: str
    candidates: tuple[str, ...] = ()


def _name_key(record: SourceRecord) -> tuple[str, date | None]:
    return fold_name(record.fields.get("full_name")), record.fields.get("birth_date")


def _cccd_groups(records: list[SourceRecord]) -> tuple[list[Cluster], list[Review], list[SourceRecord]]:
    """Groups by CCCD (birth dates checked), the reviews they cause, and the records without a CCCD."""
    by_id: dict[str, list[SourceRecord]] = defaultdict(list)
    without: list[SourceRecord] = []
    for record in records:
        pid = personal_id_key(record.fields.get("personal_id"))
        (by_id[pid] if pid else without).append(record)
    clusters, reviews = [], []
    for pid, members in by_id.items():
        births = {m.fields.get("birth_date") for m in members}
        fitting = {b for b in births if b is not None and cccd_agrees(pid, b)}
        if len(births) > 1 and len(fitting) != 1:
            refs = tuple(m.ref for m in members)
            reviews += [Review(m, "birth_date_conflict", f"CCCD {pid} carries birth dates "
                               f"{', '.join(sorted(str(b) for b in births))} and {len(fitting)} of them fit the CCCD",
                               refs) for m in members]
            continue
        rule = "personal_id" if len(members) > 1 else "single"
        clusters.append(Cluster("citizen", pid, rule, members, f"{len(members)} records share CCCD {pid}"))
    return clusters, reviews, without


def match_citizens(records: list[SourceRecord]) -> tuple[list[Cluster], list[Review]]:
    """Group citizen records into persons (see the module docstring); the rest go to review."""
    clusters, reviews, without = _cccd_groups(records)
    index: dict[tuple[str, date | None], list[Cluster]] = defaultdict(list)
    for cluster in clusters:
        for key in {_name_key(m) for m in cluster.members}:
            index[key].append(cluster)
    in_review = {r.record.ref for r in reviews}
    for review in reviews:
        index[_name_key(review.record)].append(Cluster("citizen", "", "review", [review.record]))
    leftovers: dict[tuple[str, date | None], list[SourceRecord]] = defaultdict(list)
    for record in without:
        found = index.get(_name_key(record), [])
        if len(found) == 1 and found[0].rule != "review":
            found[0].members.append(record)
            found[0].rule = "name_birth" if found[0].rule == "single" else "personal_id+name_birth"
            found[0].why += f"; {record.ref} has no CCCD and matches by normalised name + birth date"
        elif found:
            refs = tuple(m.ref for c in found for m in c.members)
            why = ("matches records under review" if any(c.rule == "review" for c in found)
                   else f"normalised name + birth date fit {len(found)} different persons")
            reviews.append(Review(record, "ambiguous_name_birth", why, refs))
        else:
            leftovers[_name_key(record)].append(record)
    for key, members in leftovers.items():
        if len({m.system for m in members}) < len(members):
            refs = tuple(m.ref for m in members)
            reviews += [Review(m, "ambiguous_name_birth", "records of one system without CCCD share a normalised "
                               "name + birth date: cannot tell whether they are one person", refs) for m in members]
            continue
        rule = "name_birth" if len(members) > 1 else "single"
        clusters.append(Cluster("citizen", f"{key[0]}|{key[1]}", rule, members,
                                f"{len(members)} records without CCCD share name {key[0]!r} and birth date {key[1]}"))
    assert not in_review & {m.ref for c in clusters for m in c.members}
    return clusters, reviews


def match_enterprises(records: list[SourceRecord]) -> tuple[list[Cluster], list[Review]]:
    """Group enterprise records by tax code; records without a valid one go to review."""
    by_code: dict[str, list[SourceRecord]] = defaultdict(list)
    reviews: list[Review] = []
    for record in records:
        code = tax_code_key(record.fields.get("tax_code"))
        if code is None:
            reviews.append(Review(record, "invalid_tax_code", f"tax code {record.fields.get('tax_code')!r} is not "
                                  "10 digits (or 10 + '-NNN'): enterprises are matched by tax code only"))
        else:
            by_code[code].append(record)
    clusters = [Cluster("enterprise", code, "tax_code" if len(m) > 1 else "single", m,
                        f"{len(m)} records share tax code {code}") for code, m in by_code.items()]
    return clusters, reviews


def match_dossiers(records: list[SourceRecord]) -> tuple[list[Cluster], list[Review]]:
    """Each dossier is its own group, keyed by its old province and legacy id."""
    return [Cluster("dossier", f"{r.fields.get('province_code')}/{r.key}", "single", [r], "one legacy dossier")
            for r in records], []
