"""What the demo prints: batches, table counts, the indicator table, outbox, drift, freshness."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from catalog import Catalog
from warehouse import Warehouse


def latest_batches(conn: sa.Connection, batch: sa.Table, pipelines: list[str]) -> list[dict[str, Any]]:
    """The latest batch of each of `pipelines` that has run, in their order: one probe of
    `ix_lgsp_batch_pipeline_started` a pipeline in one statement, not a pass over every batch ever run."""
    if not pipelines:
        return []
    rows = conn.execute(sa.union_all(*(sa.select(latest).select_from(latest) for latest in (
        sa.select(batch).where(batch.c.pipeline == name).order_by(batch.c.started_at.desc()).limit(1).subquery()
        for name in pipelines)))).mappings().all()
    return sorted((dict(r) for r in rows), key=lambda r: pipelines.index(r["pipeline"]))


def last_batches(wh: Warehouse, catalog: Catalog) -> list[dict[str, Any]]:
    """The most recent batch of every pipeline."""
    with wh.engine.connect() as conn:
        return latest_batches(conn, wh.system["lgsp_batch"], list(catalog.pipelines))


def last_failure(wh: Warehouse, pipeline: str) -> str | None:
    """The message of the pipeline's most recent batch, if that batch failed or its load was refused."""
    batch = wh.system["lgsp_batch"]
    with wh.engine.connect() as conn:
        row = conn.execute(sa.select(batch.c.status, batch.c.message).where(batch.c.pipeline == pipeline)
                           .order_by(batch.c.started_at.desc()).limit(1)).first()
    return row.message if row is not None and row.status in ("failed", "validated") else None


def table_counts(wh: Warehouse, catalog: Catalog) -> dict[str, int]:
    names = [wh.core[d].name for d in wh.core] + ["lgsp_quarantine", "mart_indicator_value"]
    return {n: wh.count(n) for n in names}


def print_summary(console: Console, wh: Warehouse, catalog: Catalog, max_indicator_rows: int = 5) -> None:
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
    if catalog.indicators:
        from indicators.summary import print_indicators

        print_indicators(console, wh, catalog)
    print_outbox(console, wh)
    print_drift(console, wh, catalog)
    from lgsp.scorecard import quality_line, scorecards
    from lgsp.status import freshness_line, status_report

    report = status_report(wh, catalog)
    console.print(freshness_line(report))
    console.print(quality_line(scorecards(wh.engine, wh.metadata.tables, catalog, profile=False,
                                          references=report["references"],
                                          groups=report["group_checks"])))


def print_drift(console: Console, wh: Warehouse, catalog: Catalog) -> None:
    """The last drift check of each dataset that has one (`lgsp drift`)."""
    from lgsp.drift import last_checks

    checks = last_checks(wh.engine, wh.system)
    if not checks:
        return
    table = Table(title="Last drift check: a sample of the copy asked of its source (lgsp drift)")
    for col in ("dataset", "system", "sampled", "same", "behind", "silent", "gone_at_source"):
        table.add_column(col, justify="left" if col in ("dataset", "system") else "right")
    for name, check in sorted(checks.items()):
        table.add_row(name, check["system"], *(str(check[k]) for k in
                                               ("sampled", "same", "behind", "silent", "gone_at_source")))
    console.print(table)


def print_reconciliation(console: Console, results: list[Any]) -> None:
    """`lgsp reconcile`'s figures: records at the source and in lgsp (copy + open quarantine), and what they mean."""
    table = Table(title="Completeness: records at the source and in lgsp (lgsp reconcile)")
    marked = any(r.deleted_at_source for r in results)
    for col in ("pipeline", "source", "changed since cursor", "in copy", "quarantined only",
                *(["deleted at source"] if marked else []), "status"):
        table.add_column(col, justify="left" if col in ("pipeline", "status") else "right")
    for r in results:
        colour = {"complete": "green", "pending": "yellow"}.get(r.status, "red")
        table.add_row(r.pipeline, f"{r.source_total:,}", "-" if r.source_changed_since_cursor is None
                      else f"{r.source_changed_since_cursor:,}", f"{r.in_copy:,}", f"{r.in_quarantine_only:,}",
                      *([f"{r.deleted_at_source:,}"] if marked else []), f"[{colour}]{r.status}[/]")
    console.print(table)
    for r in results:  # what to do, where something is
        if r.status == "lost":
            console.print(f"{r.pipeline}: records in neither the copy nor the quarantine: "
                          f"`lgsp run {r.pipeline} --full-refresh` (merges are idempotent: nothing doubles)")
        elif r.status == "extra":
            console.print(f"{r.pipeline}: lgsp holds more records than the source counts (deleted there without a "
                          f"marker?): `lgsp drift {r.dataset}` finds which, `lgsp run {r.pipeline} --full-refresh "
                          "--delete-missing` removes them (kept in the lake's removed/)")


def print_outbox(console: Console, wh: Warehouse) -> None:
    """Messages per push feed and status (acked, pending, failed, dead)."""
    from lgsp.outbox import counts_by_status

    counts = counts_by_status(wh)
    if not counts:
        return
    table = Table(title="Push outbox (lgsp outbox list)")
    for col in ("feed", "acked", "pending", "failed", "dead"):
        table.add_column(col, justify="left" if col == "feed" else "right")
    for feed in sorted({f for f, _ in counts}):
        table.add_row(feed, *(str(counts.get((feed, s), 0)) for s in ("acked", "pending", "failed", "dead")))
    console.print(table)
