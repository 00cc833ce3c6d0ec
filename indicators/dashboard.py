"""The operations dashboard: one static HTML file that opens from disk, with no server and no network.

`write_dashboard(wh, catalog, path)` reads the mart and writes `path`: the data
as inline JSON and an inline script (indicators/dashboard_template.html) that
draws SVG charts in the browser:

- the latest month of every indicator against the month before (cards with a two-bar chart);
- the trend per month of each indicator for the province (a line chart each);
- the ranking of communes in the latest month for a chosen indicator (horizontal bars);
- the composite rankings (catalog/rankings.yaml) of communes and departments;
- how fresh each pipeline's data is and each report's deadlines, when the page was made (`lgsp status`).

Each chart is an `<svg class="chart" id="...">`; once drawn, the script sets
`data-marks` (bars, points drawn) and `data-box` (its position on the page) on it,
which the headless-browser test reads. The page says when the data is synthetic.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catalog import Catalog
from catalog.models import IndicatorSpec
from indicators.compute import read_indicator
from indicators.periods import previous_period
from indicators.ranking import rank_units, unit_names
from warehouse import Warehouse

TEMPLATE = Path(__file__).with_name("dashboard_template.html")
SYNTHETIC_NOTE = ("Synthetic data: every figure on this page is computed from the lgsp sandbox's generated "
                  "records (seed-deterministic, calibrated to look like the published Ninh Bình figures); "
                  "it is not real data of any agency.")
RANKING_TOP = 15


def _point(row: dict[str, Any]) -> dict[str, Any]:
    return {"period": row["period"], "value": row["value"], "numerator": row["numerator"],
            "denominator": row["denominator"]}


def _indicator_payload(wh: Warehouse, spec: IndicatorSpec, communes: dict[str, str]) -> dict[str, Any]:
    """Province trend, latest and previous month, year, the communes of the latest month and the year per
    procedure level (when the indicator has that unit level)."""
    trend = [_point(r) for r in read_indicator(wh, spec.name, version=spec.version, unit_level="province")]
    by_period = {p["period"]: p for p in trend}
    latest = trend[-1] if trend else None
    previous = by_period.get(previous_period(latest["period"]) or "") if latest else None
    years = read_indicator(wh, spec.name, version=spec.version, unit_level="province", period_type="year")
    commune_rows = [r for r in read_indicator(wh, spec.name, version=spec.version, unit_level="commune")
                    if latest and r["period"] == latest["period"] and r["value"] is not None]
    commune_rows.sort(key=lambda r: (r["value"] if spec.lower_is_better else -r["value"], -r["denominator"],
                                     r["unit_code"]))
    year = _point(years[-1]) if years else None
    levels = [r for r in read_indicator(wh, spec.name, version=spec.version, unit_level="procedure_level",
                                        period_type="year") if year and r["period"] == year["period"]]
    level_names = unit_names(wh, "procedure_level") if levels else {}
    return {"id": spec.name, "version": spec.version, "name_vi": spec.name_vi, "name_en": spec.name_en,
            "description": spec.description, "measure": spec.measure, "value_unit": spec.value_unit,
            "lower_is_better": spec.lower_is_better, "trend": trend, "latest": latest, "previous": previous,
            "year": year,
            "communes": [{"code": r["unit_code"], "name": communes.get(r["unit_code"], r["unit_code"]),
                          **_point(r)} for r in commune_rows],
            "levels": [{"code": r["unit_code"], "name": level_names.get(r["unit_code"], r["unit_code"]), **_point(r)}
                       for r in levels]}


def dashboard_payload(wh: Warehouse, catalog: Catalog, synthetic: bool = True) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    communes = unit_names(wh, "commune")
    rankings = []
    for ranking in catalog.rankings.values():
        ranked = rank_units(wh, catalog, ranking)
        rankings.append({"id": ranking.name, "title_vi": ranking.title_vi, "title_en": ranking.title_en,
                         "period": ranked[0]["period"] if ranked else None, "units_ranked": len(ranked),
                         "weights": ranking.weights, "top": ranked[:RANKING_TOP]})
    return {"title": "lgsp: service-quality indicators, province 37 (Ninh Bình)",
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "synthetic": synthetic, "note": SYNTHETIC_NOTE if synthetic else "",
            "indicators": [_indicator_payload(wh, spec, communes) for spec in catalog.indicators.values()],
            "rankings": rankings, "freshness": _freshness_payload(wh, catalog)}


def _freshness_payload(wh: Warehouse, catalog: Catalog) -> dict[str, Any]:
    """Each pipeline's freshness and its dataset's quality score (lgsp quality), each feed's report deadlines and each
    reference's orphans now (lgsp status), for the IOC's screen."""
    from lgsp.scorecard import scorecards
    from lgsp.status import status_report

    report = status_report(wh, catalog)
    quality = {c["dataset"]: c for c in scorecards(wh.engine, wh.metadata.tables, catalog, profile=False,
                                                    references=report["references"],
                                                    groups=report["group_checks"])}
    keep = ("pipeline", "owner", "state", "synced_at", "age_s", "warn_after_s", "error_after_s")
    return {"pipelines": [{**{k: p[k] for k in keep}, "quality": quality[p["dataset"]]["overall"],
                           "weakest": quality[p["dataset"]]["weakest"]} for p in report["pipelines"]],
            "feeds": [{"feed": f["feed"], "periods_due": f["deadlines"]["periods_due"],
                       "overdue": len(f["deadlines"]["overdue"]),
                       "last_delivered": (f["deadlines"]["last_delivered"] or {}).get("period")}
                      for f in report["feeds"] if f["deadlines"]],
            "references": [{k: r[k] for k in ("reference", "references", "state", "rows", "orphans")}
                           for r in report["references"]],
            "group_checks": [{k: g[k] for k in ("check", "description", "description_vi", "state", "groups",
                                                "breaking")} for g in report["group_checks"]]}


def render_dashboard(payload: dict[str, Any]) -> str:
    """The HTML page: the template with the data inlined (safe inside <script>: no '</' sequence)."""
    data = json.dumps(payload, ensure_ascii=False, default=str).replace("</", "<\\/")
    return TEMPLATE.read_text(encoding="utf-8").replace("/*__LGSP_DATA__*/null", data)


def write_dashboard(wh: Warehouse, catalog: Catalog, path: Path, synthetic: bool = True) -> Path:
    """Write the dashboard to `path` atomically; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_dashboard(dashboard_payload(wh, catalog, synthetic)), encoding="utf-8")
    os.replace(tmp, path)
    return path
