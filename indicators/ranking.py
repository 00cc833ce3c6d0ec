"""Rank units (communes, departments) by a composite score with documented weights (catalog/rankings.yaml).

A unit's score is 100 x the weighted mean of its indicator scores in one period:
an indicator's score is its rate, or 1 - rate when lower is better (overdue
dossiers). An indicator with fewer than `min_denominator` rows for the unit is
left out and the other weights renormalised; a unit left with less than
`min_weight_share` of the weight is not ranked.

Example:
    >>> rank_units(wh, catalog, catalog.rankings["commune_service_index"])[0]
    {'rank': 1, 'unit_code': '14464', 'unit_name': 'Xã Gia Viễn', 'score': 91.37, 'period': '2025',
     'weight_share': 1.0, 'components': {'online_submission_rate': 0.84, ...}}
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from catalog import Catalog
from catalog.models import RankingSpec
from indicators.compute import read_indicator
from warehouse import Warehouse


def unit_names(wh: Warehouse, level: str) -> dict[str, str]:
    """Code -> name of the units of a level: communes from the official list, agencies and procedures
    as the dossiers name them (`000.00.31.H42` -> `Sở Tư pháp`), a procedure's level (DVCQG's CapThucHien) by
    its own name."""
    if level == "province":
        return {"37": "Ninh Bình"}
    if level == "procedure_level":
        return {"Tỉnh": "Cấp tỉnh", "Xã": "Cấp xã"}
    if level == "commune":
        from quality.reference import province_communes

        return province_communes(37)
    dossier = wh.core.get("dossier")
    if dossier is None:
        return {}
    code, name = ((dossier.c.receiving_agency_code, dossier.c.receiving_agency) if level == "agency"
                  else (dossier.c.procedure_code, dossier.c.procedure_name))
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(code, sa.func.max(name)).where(code.is_not(None)).group_by(code)).all()
    return {str(r[0]): str(r[1]) for r in rows if r[1] is not None}


def latest_period(wh: Warehouse, catalog: Catalog, ranking: RankingSpec) -> str | None:
    """The newest period of the ranking's type any of its indicators has a value for."""
    found = [r["period"] for name in ranking.weights
             for r in read_indicator(wh, name, version=catalog.indicators[name].version, unit_level="province",
                                     period_type=ranking.period_type)]
    return max(found) if found else None


def _component_scores(wh: Warehouse, catalog: Catalog, ranking: RankingSpec,
                      period: str) -> dict[str, dict[str, float]]:
    """unit -> {indicator: score 0..1} for the units and indicators with enough rows."""
    scores: dict[str, dict[str, float]] = {}
    for name in ranking.weights:
        spec = catalog.indicators[name]
        for row in read_indicator(wh, name, version=spec.version, unit_level=ranking.unit_level,
                                  period_type=ranking.period_type):
            if (row["period"] != period or row["value"] is None or row["denominator"] < ranking.min_denominator
                    or not row["unit_code"].startswith(ranking.unit_prefix)):
                continue
            value = float(row["value"])
            scores.setdefault(row["unit_code"], {})[name] = 1.0 - value if spec.lower_is_better else value
    return scores


def rank_units(wh: Warehouse, catalog: Catalog, ranking: RankingSpec,
               period: str | None = None) -> list[dict[str, Any]]:
    """Units ranked by composite score, best first (ties share a rank); `period` defaults to the latest."""
    period = period or latest_period(wh, catalog, ranking)
    if period is None:
        return []
    total_weight = sum(ranking.weights.values())
    names = unit_names(wh, ranking.unit_level)
    ranked = []
    for unit, components in _component_scores(wh, catalog, ranking, period).items():
        weight = sum(ranking.weights[n] for n in components)
        if weight / total_weight < ranking.min_weight_share:
            continue
        score = 100.0 * sum(ranking.weights[n] * s for n, s in components.items()) / weight
        ranked.append({"unit_code": unit, "unit_name": names.get(unit, unit), "score": round(score, 2),
                       "period": period, "weight_share": round(weight / total_weight, 3),
                       "components": {n: round(s, 4) for n, s in sorted(components.items())}})
    ranked.sort(key=lambda r: (-r["score"], r["unit_code"]))
    for position, row in enumerate(ranked):
        same = position and ranked[position - 1]["score"] == row["score"]
        row["rank"] = ranked[position - 1]["rank"] if same else position + 1
    return [{"rank": r.pop("rank"), **r} for r in ranked]
