"""See, replay and close quarantined rows.

A rejected row keeps its raw payload; after a fix (to the rule, the catalog or
the source system's data, re-sent into quarantine by a later pull), `replay`
runs the open rows of a dataset through the same typing and row rules again:
the rows that now pass are merged into the core table (batch `replay-...`,
with lineage), the others stay open with their current reason.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from lgsp.runner import PipelineContext, _latest_per_key, _with_lineage, new_batch_id
from warehouse import Warehouse


def list_quarantine(wh: Warehouse, dataset: str | None = None, status: str = "open",
                    limit: int = 50) -> list[dict[str, Any]]:
    q = wh.system["lgsp_quarantine"]
    stmt = sa.select(q.c.quarantine_id, q.c.dataset, q.c.rule, q.c.reason, q.c.record_key, q.c.batch_id,
                     q.c.status).order_by(q.c.dataset, q.c.rule, q.c.record_key).limit(limit)
    if dataset:
        stmt = stmt.where(q.c.dataset == dataset)
    if status != "all":
        stmt = stmt.where(q.c.status == status)
    with wh.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def summary(wh: Warehouse) -> list[dict[str, Any]]:
    """Open rows per dataset and rule."""
    q = wh.system["lgsp_quarantine"]
    stmt = (sa.select(q.c.dataset, q.c.rule, q.c.status, sa.func.count().label("rows"))
            .group_by(q.c.dataset, q.c.rule, q.c.status).order_by(q.c.dataset, q.c.rule))
    with wh.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def show(wh: Warehouse, quarantine_id: str) -> dict[str, Any] | None:
    """One quarantined row, its payload decoded; a unique id prefix is enough."""
    q = wh.system["lgsp_quarantine"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(q).where(q.c.quarantine_id.startswith(quarantine_id, autoescape=True))
                            .limit(2)).mappings().all()
    if len(rows) != 1:
        return None
    row = dict(rows[0])
    row["payload"] = json.loads(row["payload"])
    return row


def close(wh: Warehouse, quarantine_id: str) -> dict[str, Any] | None:
    """Mark one open row `closed` (dealt with; kept, never deleted): a live lookup's rejected answer, say, which
    no pipeline replays. A unique id prefix is enough. Returns the row as it was, or None (no single open row)."""
    q = wh.system["lgsp_quarantine"]
    with wh.transaction() as conn:
        rows = conn.execute(sa.select(q).where(q.c.quarantine_id.startswith(quarantine_id, autoescape=True),
                                               q.c.status == "open").limit(2)).mappings().all()
        if len(rows) != 1:
            return None
        conn.execute(q.update().where(q.c.quarantine_id == rows[0]["quarantine_id"]).values(status="closed"))
    return dict(rows[0])


def replay(ctx: PipelineContext, dataset_rows: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Re-check the pipeline's open quarantined rows; land those that pass now.

    Returns counts: replayed (looked at), landed (passed now; a record rejected twice lands once, its latest
    version), still_rejected, changed (rows written).
    """
    from quality import run_row_checks
    from schemas import coerce, to_arrow

    wh, ds = ctx.warehouse, ctx.dataset
    q = wh.system["lgsp_quarantine"]
    with wh.engine.connect() as conn:
        open_rows = dataset_rows or [dict(r) for r in conn.execute(
            sa.select(q).where(q.c.dataset == ds.name, q.c.pipeline == ctx.pipeline.name, q.c.status == "open")
            .order_by(q.c.quarantined_at, q.c.quarantine_id)).mappings()]
    if not open_rows:
        return {"replayed": 0, "landed": 0, "still_rejected": 0}
    records = [json.loads(r["payload"]) for r in open_rows]
    typed = coerce(records, ds)
    checked = run_row_checks(typed.frame, ds, typed.type_errors)
    passing = [i for i, ok in enumerate(checked.passed) if ok]
    batch_id = new_batch_id(f"replay-{ctx.pipeline.name}")
    # a record rejected more than once (by two batches, or a batch and a migration) lands once: its latest version
    latest = _latest_per_key(typed.frame.iloc[passing], ds)
    rows = _with_lineage(to_arrow(latest, ds).replace_schema_metadata(None), ctx, batch_id)
    now = datetime.now(timezone.utc)
    with wh.transaction() as conn:
        conn.execute(wh.system["lgsp_batch"].insert().values(
            batch_id=batch_id, pipeline=ctx.pipeline.name, dataset=ds.name, source_system=ctx.system.name,
            status="loaded", started_at=now, finished_at=now, rows_pulled=len(records), rows_landed=len(rows),
            rows_quarantined=len(records) - len(passing), rows_superseded=len(passing) - len(rows),
            message="replay of quarantined rows"))
        # replayed rows are a few records, not a full refresh: a replace dataset merges them
        changed = wh.write_batch(conn, ds, rows, mode="merge" if ds.write_mode == "replace" else None)
        conn.execute(wh.system["lgsp_batch"].update().where(wh.system["lgsp_batch"].c.batch_id == batch_id)
                     .values(rows_changed=changed))
        ids = [open_rows[i]["quarantine_id"] for i in passing]
        if ids:
            conn.execute(q.update().where(q.c.quarantine_id.in_(ids))
                         .values(status="replayed", last_batch_id=batch_id))
        for rejection in checked.rejections:
            conn.execute(q.update().where(q.c.quarantine_id == open_rows[rejection.position]["quarantine_id"])
                         .values(reason=rejection.reason, last_batch_id=batch_id))
        wh.stamp_change(conn, batch_id, ds.name, changed)
    return {"replayed": len(records), "landed": len(passing), "still_rejected": len(records) - len(passing),
            "changed": changed}
