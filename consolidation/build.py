"""From matched clusters to the rows of the consolidated, decision, review and reconciliation tables.

Example consolidated citizen (lineage: every source record)::

    {"consolidated_id": "CD-036190012345", "personal_id": "036190012345", "full_name": "Trần Thị Lan",
     "birth_date": date(1990, 4, 2), "sex": "female", "commune_code": "13318", "commune_name": "Phường Phù Vân",
     "address": "12 Trần Hưng Đạo", "phone": "0912345678",
     "sources": '["legacy_ha_nam:HN-CD-000412", "legacy_nam_dinh:ND-CD-000042"]',
     "source_systems": "legacy_nam_dinh,legacy_ha_nam", "source_count": 2, "match_rule": "personal_id",
     "source_updated_at": datetime(2024, 11, 2, 3, 0, tzinfo=UTC)}
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from consolidation.matching import Cluster, Review
from consolidation.rules import FIELD_RULES, Decision, resolve_field
from consolidation.records import SourceRecord

ID_PREFIX = {"citizen": "CD", "enterprise": "DN", "dossier": "HS"}
PASSED_THROUGH = {"dossier": ("dossier_id", "procedure_code", "applicant_citizen_id", "applicant_personal_id",
                              "received_at", "status", "channel")}
"""Fields a one-source kind copies as they are (no conflict is possible)."""

__all__ = ["Built", "build_rows", "consolidated_id", "reconciliation_rows"]


@dataclass
class Built:
    """The rows of one run, per table, and which consolidated record each source record ended in."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    home: dict[str, str] = field(default_factory=dict)
    conflicted: set[str] = field(default_factory=set)


def consolidated_id(cluster: Cluster) -> str:
    """``CD-<CCCD>``, ``CD-N<hash of name|birth date>``, ``DN-<tax code>`` or ``HS-<province>/<dossier id>``."""
    prefix = ID_PREFIX[cluster.kind]
    if cluster.kind == "citizen" and not cluster.key.isdigit():
        return f"{prefix}-N{hashlib.sha1(cluster.key.encode()).hexdigest()[:12]}"
    return f"{prefix}-{cluster.key}"


def _json(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _lineage(cluster: Cluster) -> dict[str, Any]:
    members = sorted(cluster.members, key=lambda m: (m.priority, m.key))
    systems = list(dict.fromkeys(m.system for m in members))
    return {"sources": json.dumps([m.ref for m in members]), "source_systems": ",".join(systems),
            "source_count": len(members), "match_rule": cluster.rule,
            "source_updated_at": max(m.updated_at for m in members)}


def _decision_row(cid: str, decision: Decision) -> dict[str, Any]:
    return {"decision_id": hashlib.sha1(f"{decision.kind}|{cid}|{decision.field}".encode()).hexdigest()[:20],
            "entity": decision.kind, "consolidated_id": cid, "field": decision.field,
            "winning_source": decision.winner, "winning_value": None if decision.value is None else str(_json(decision.value)),
            "losing_values": json.dumps([{"source": s, "value": _json(v)} for s, v in decision.losers], ensure_ascii=False),
            "rule": decision.rule, "why": decision.why}


def _match_decision(cid: str, cluster: Cluster) -> dict[str, Any]:
    members = sorted(cluster.members, key=lambda m: (m.priority, m.key))
    return _decision_row(cid, Decision(cluster.kind, "_match", members[0].ref, cluster.key,
                                       tuple((m.ref, m.key) for m in members[1:]), cluster.rule, cluster.why))


def _entity_row(cluster: Cluster, cid: str, communes: dict[str, str],
                decisions: list[dict[str, Any]], built: Built) -> dict[str, Any]:
    row: dict[str, Any] = {"consolidated_id": cid}
    for name in FIELD_RULES[cluster.kind]:
        value, decision = resolve_field(cluster, name)
        row[name] = value
        if decision is not None:
            decisions.append(_decision_row(cid, decision))
            built.conflicted.update([decision.winner, *(ref for ref, _ in decision.losers)])
    first = cluster.members[0]
    for name in PASSED_THROUGH.get(cluster.kind, ()):
        row[name] = first.fields.get(name)
    if cluster.kind == "dossier":
        row["commune_code"] = first.new_commune
    row["commune_name"] = communes[row["commune_code"]]
    return row


def build_rows(clusters: dict[str, list[Cluster]], communes: dict[str, str]) -> Built:
    """Consolidated rows per kind (``merger_<kind>``) and ``merger_decision`` rows."""
    built = Built()
    decisions: list[dict[str, Any]] = []
    for kind, found in clusters.items():
        rows = []
        for cluster in found:
            cid = consolidated_id(cluster)
            row = {**_entity_row(cluster, cid, communes, decisions, built), **_lineage(cluster)}
            if kind == "citizen":
                row["personal_id"] = cluster.key if cluster.key.isdigit() else None
            if kind == "enterprise":
                row["tax_code"] = cluster.key
            if len(cluster.members) > 1:
                decisions.append(_match_decision(cid, cluster))
            built.home.update({m.ref: cid for m in cluster.members})
            rows.append(row)
        built.rows[f"merger_{kind}"] = rows
    for row in built.rows.get("merger_dossier", []):
        system, _, _ = json.loads(row["sources"])[0].partition(":")
        applicant = row.pop("applicant_citizen_id", None)
        row["applicant_consolidated_id"] = built.home.get(f"{system}:{applicant}") if applicant else None
    built.rows["merger_decision"] = decisions
    return built


def review_rows(reviews: list[Review]) -> list[dict[str, Any]]:
    """``merger_review`` rows: the record as received, the reason, the records it was confused with."""
    return [{"review_id": f"{r.record.system}:{r.record.kind}:{r.record.key}", "legacy_system": r.record.system,
             "entity": r.record.kind, "record_key": r.record.key, "reason_code": r.reason_code, "reason": r.reason,
             "candidates": json.dumps(list(r.candidates)), "status": "open",
             "payload": json.dumps({k: _json(v) for k, v in r.record.fields.items()}, ensure_ascii=False)}
            for r in reviews]


def reconciliation_rows(records: list[SourceRecord], mapped_how: dict[str, str | None], built: Built,
                        reviews: list[Review], merged_refs: set[str]) -> list[dict[str, Any]]:
    """Per legacy system and kind: records in, mapped (by names), consolidated, merged, conflicts, in review.

    Raises:
        RuntimeError: A record ended nowhere or twice (``records_in != consolidated + in_review``).
    """
    reviewed = Counter(r.record.ref for r in reviews)
    twice = [ref for ref, n in reviewed.items() if n > 1 or ref in built.home]
    lost = [r.ref for r in records if r.ref not in built.home and r.ref not in reviewed]
    if twice or lost:
        raise RuntimeError(f"consolidation does not balance: ended twice {twice[:5]}, ended nowhere {lost[:5]}")
    table: dict[tuple[str, str], Counter[str]] = {}
    for record in records:
        counts = table.setdefault((record.system, record.kind), Counter())
        counts["records_in"] += 1
        counts["mapped"] += mapped_how.get(record.ref) is not None
        counts["mapped_by_names"] += mapped_how.get(record.ref) == "names"
        counts["consolidated"] += record.ref in built.home
        counts["merged"] += record.ref in merged_refs
        counts["conflicts"] += record.ref in built.conflicted
        counts["in_review"] += record.ref in reviewed
    names = ("records_in", "mapped", "mapped_by_names", "consolidated", "merged", "conflicts", "in_review")
    return [{"legacy_system": system, "entity": kind, **{n: counts[n] for n in names},
             "balanced": counts["records_in"] == counts["consolidated"] + counts["in_review"]}
            for (system, kind), counts in sorted(table.items())]
