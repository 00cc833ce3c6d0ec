"""The reconciliation report: a static HTML page read back from the warehouse's ``merger_*`` tables.

Sections: the per-system reconciliation (records in, mapped, merged, conflicts,
in review; balanced or not), the new province's communes present against the
official list, the review queue by reason, the decisions by field and rule,
and the old communes that do not map, with the reason.

Example:
    >>> path = write_report("sqlite:///var/warehouse.db", Path("var/reports/merger.html"))
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from consolidation.mapping import commune_table
from consolidation.tables import merger_tables
from warehouse.store import make_engine

RECONCILIATION_COLUMNS = ("legacy_system", "entity", "records_in", "mapped", "mapped_by_names", "consolidated",
                          "merged", "conflicts", "in_review", "balanced")
STYLE = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}"
         "td.t{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}")

__all__ = ["report_data", "write_report"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f"<td class='t'>{escape(str(v))}</td>" if isinstance(v, str) else f"<td>{escape(str(v))}</td>" for v in row)
        + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_data(database_url: str) -> dict[str, Any]:
    """What the report shows, read from the warehouse (raises LookupError if no run wrote it yet)."""
    engine = make_engine(database_url)
    tables = merger_tables(sa.MetaData())
    if not sa.inspect(engine).has_table("merger_reconciliation"):
        raise LookupError(f"no consolidation in {database_url.split('@')[-1]}: run `lgsp merger run` first")
    with engine.connect() as conn:
        recon = [dict(r._mapping) for r in conn.execute(sa.select(tables["merger_reconciliation"]).order_by(
            "legacy_system", "entity"))]
        review = conn.execute(sa.select(tables["merger_review"].c.reason_code, sa.func.count()).group_by(
            tables["merger_review"].c.reason_code).order_by(sa.func.count().desc())).all()
        decisions = conn.execute(sa.select(tables["merger_decision"].c.entity, tables["merger_decision"].c.field,
                                           tables["merger_decision"].c.rule, sa.func.count()).group_by(
            tables["merger_decision"].c.entity, tables["merger_decision"].c.field,
            tables["merger_decision"].c.rule).order_by(tables["merger_decision"].c.entity,
                                                       tables["merger_decision"].c.field)).all()
        communes: set[str] = set()
        for name in ("merger_citizen", "merger_enterprise", "merger_dossier"):
            communes |= {c for (c,) in conn.execute(sa.select(tables[name].c.commune_code).distinct())}
    engine.dispose()
    return {"reconciliation": recon, "review": [tuple(r) for r in review], "decisions": [tuple(d) for d in decisions],
            "communes": communes}


def _commune_section(present: set[str]) -> str:
    table = commune_table()
    official = set(table.new_communes)
    verdict = "ok" if present == official else "bad"
    lines = [f"<p class='{verdict}'>{len(present)} communes in the consolidated records; "
             f"{len(official)} official communes of the new province (vietnam-provinces); "
             f"missing: {sorted(official - present) or 'none'}; not official: {sorted(present - official) or 'none'}</p>"]
    unmapped = [m for m in table.mappings.values() if m.status != "mapped"]
    lines.append(f"<p>{len(table.mappings)} old communes of the three former provinces; "
                 f"{len(table.mappings) - len(unmapped)} map to one new commune; these do not:</p>")
    lines.append(_table(("province", "district", "commune", "status", "reason"),
                        [(m.old.province_name, m.old.district_name, m.old.commune_name, m.status, m.reason)
                         for m in sorted(unmapped, key=lambda m: m.old.key)]))
    return "".join(lines)


def write_report(database_url: str, path: Path) -> Path:
    """Write the HTML report to ``path`` (parent folders created); returns ``path``."""
    data = report_data(database_url)
    recon = data["reconciliation"]
    totals = [sum(r[c] for r in recon) for c in RECONCILIATION_COLUMNS[2:-1]]
    balanced = all(r["balanced"] for r in recon)
    rows = [[r[c] if c != "balanced" else ("yes" if r[c] else "NO") for c in RECONCILIATION_COLUMNS] for r in recon]
    rows.append(["all systems", "all", *totals, "yes" if balanced else "NO"])
    html = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Province-merger reconciliation</title>"
            f"<style>{STYLE}</style></head><body><h1>Province-merger reconciliation</h1>"
            f"<p>Ninh Bình, Nam Định and Hà Nam into the new Ninh Bình. Written "
            f"{datetime.now(UTC).isoformat(timespec='seconds')} from the warehouse tables merger_*.</p>"
            f"<h2>Per legacy system</h2><p class='{'ok' if balanced else 'bad'}'>records in = consolidated + in review: "
            f"{'balanced for every system' if balanced else 'NOT balanced'}</p>"
            + _table(RECONCILIATION_COLUMNS, rows)
            + "<h2>Communes</h2>" + _commune_section(data["communes"])
            + "<h2>Review queue by reason</h2>" + _table(("reason", "records"), data["review"])
            + "<h2>Decisions by field and rule</h2>" + _table(("entity", "field", "rule", "decisions"), data["decisions"])
            + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
