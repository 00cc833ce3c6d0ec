"""What the demo and `lgsp status` print: batches, table counts, the indicator table."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from catalog import Catalog
from indicators import read_indicator
from warehouse import Warehouse


def last_batches(wh: Warehouse, catalog: Catalog) -> list[dict[str, Any]]:
    """The most recent batch of every pipeline."""
    batch = wh.system["lgsp_batch"]
    rows = []
    with wh.engine.connect() as conn:
        for name in catalog.pipelines:
            row = conn.execute(sa.select(batch).where(batch.c.pipeline == name)
                               .order_by(batch.c.started_at.desc()).limit(1)).mappings().first()
            if row:
                rows.append(dict(row))
    return rows


def table_counts(wh: Warehouse, catalog: Catalog) -> dict[str, int]:
    names = [wh.core[d].name for d in catalog.datasets] + ["lgsp_quarantine", "mart_indicator_value"]
    return {n: wh.count(n) for n in names}


def print_summary(console: Console, wh: Warehouse, catalog: Catalog, max_indicator_rows: int = 12) -> None:
    batches = Table(title="Last batch per pipeline")
    for col in ("pipeline", "status", "pulled", "landed", "quarantined", "changed"):
        batches.add_column(col, justify="right" if col not in ("pipeline", "status") else "left")
    for b in last_batches(wh, catalog):
        batches.add_row(b["pipeline"], b["status"], str(b["rows_pulled"]), str(b["rows_landed"]),
                        str(b["rows_quarantined"]), str(b["rows_changed"]))
    console.print(batches)
    counts = Table(title="Warehouse tables")
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    for name, n in table_counts(wh, catalog).items():
        counts.add_row(name, f"{n:,}")
    console.print(counts)
    for spec in catalog.indicators.values():
        rows = read_indicator(wh, spec.name)
        latest = max((r["period"] for r in rows), default=None)
        shown = sorted((r for r in rows if r["period"] == latest), key=lambda r: -(r["value"] or 0))
        table = Table(title=f"{spec.name_en} ({spec.name_vi}), v{spec.version}, {latest}, "
                            f"top {max_indicator_rows} of {len(shown)} communes")
        for col in ("commune", "period", "numerator", "denominator", "rate"):
            table.add_column(col, justify="left" if col in ("commune", "period") else "right")
        for r in shown[:max_indicator_rows]:
            table.add_row(r["unit_code"], r["period"], str(r["numerator"]), str(r["denominator"]),
                          f"{r['value']:.1%}" if r["value"] is not None else "-")
        num = sum(r["numerator"] for r in rows)
        den = sum(r["denominator"] for r in rows)
        table.caption = f"all periods, province: {num:,}/{den:,} = {num / den:.1%}" if den else "no data"
        console.print(table)
