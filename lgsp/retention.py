"""Retention: what lgsp may delete once it is no longer needed (`lgsp lake prune`).

Two things grow with every batch and are not needed for long:

- the landing zone (`lake/landing/<pipeline>/<batch>/page-*.json`), the pages as received:
  a full sync of a million citizens lands ~200 MB of them. Once a batch is loaded its rows
  are in its Parquet file (good rows) and in quarantine (bad rows, with the record as
  received), so its pages are only needed to validate it again;
- Great Expectations' stored result (~16 KB) and Data Docs page (~36 KB) of every run; each
  batch's outcomes are also in the store (`lgsp_expectation_result`).

`prune` deletes the pages of batches **loaded** before the cut-off (a failed, half-pulled or
unloaded batch keeps its pages: a rerun resumes or replays from them), keeping each batch's
manifest, and the GX results and pages of runs before it, except the newest ones, which the
Data Docs index lists (`quality.expectations.prune_results`), and the deletions that writes
committed before the cut-off recorded for the gateway's change feed (`lgsp_tombstone`; a feed
token from before them is then refused with 410, and the agency reads the dataset afresh), and the
record of webhook deliveries attempted before it (`gateway_webhook_delivery`; each webhook's own
state stays), and the tables migrations applied before it kept as they were (`<table>__before_<time>`,
`warehouse.migrate.drop_previous`). Parquet files, quarantine, the store's rows and
the keys of records sources marked deleted (`lgsp_source_deleted`, `lgsp reconcile`'s) are never touched.
`dry_run` reports what would go.

`maintain` is the daily housekeeping the `lgsp_maintenance` DAG runs (02:00 Vietnam time):
compact every dataset's Parquet partitions, then prune what is older than
`LGSP_RETENTION_DAYS` (default `DEFAULT_RETENTION_DAYS`; `off` keeps everything).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog import load_catalog
from lgsp.settings import Settings, load_settings
from warehouse import Lake, Warehouse
from warehouse.migrate import drop_previous

log = logging.getLogger("lgsp.retention")
RETENTION_ENV = "LGSP_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 90.0
COMPACT_MIN_AGE = timedelta(hours=1)  # a partition with a younger file may have a load pending: left alone


def retention_days() -> float | None:
    """The days `maintain` keeps: `LGSP_RETENTION_DAYS`, `DEFAULT_RETENTION_DAYS` if unset, None if `off`."""
    text = os.environ.get(RETENTION_ENV, "").strip()
    if not text:
        return DEFAULT_RETENTION_DAYS
    if text.lower() == "off":
        return None
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        raise ValueError(f"{RETENTION_ENV}={text!r} is not a number of days (30, 0.5) or 'off'")
    return days


@dataclass(frozen=True)
class Pruned:
    before: datetime
    batches: int  # loaded batches whose pages were deleted
    pages: int
    page_bytes: int
    results: int  # GX results deleted
    result_pages: int  # their Data Docs pages
    result_bytes: int
    dry_run: bool
    tombstones: int = 0  # deletions kept for the gateway's change feed, of writes committed before `before`
    webhook_deliveries: int = 0  # attempts to tell agencies' webhooks (gateway.webhooks), made before `before`
    previous_tables: int = 0  # tables as they were before a migration applied before `before` (warehouse.migrate)


def prune(older_than: timedelta, dry_run: bool = False, settings: Settings | None = None,
          now: datetime | None = None) -> Pruned:
    """Delete the landed pages of batches loaded more than `older_than` ago, and GX's older results and pages."""
    from quality.expectations import GxPaths, prune_results

    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    settings = settings or load_settings()
    before = (now or datetime.now(timezone.utc)) - older_than
    wh, lake = Warehouse(settings.database_url, load_catalog()), Lake(settings.lake_root)
    wh.create_all(check_shapes=False)  # no core table is touched: a table awaiting a migration is no matter
    batch = wh.table("lgsp_batch")
    with wh.engine.connect() as conn:
        loaded = conn.execute(sa.select(batch.c.pipeline, batch.c.batch_id).where(
            batch.c.status == "loaded", batch.c.finished_at < before).order_by(batch.c.finished_at)).all()
    batches = pages = page_bytes = 0
    for pipeline, batch_id in loaded:
        count, size = lake.prune_pages(pipeline, batch_id, dry_run=dry_run)
        if count:
            batches, pages, page_bytes = batches + 1, pages + count, page_bytes + size
    results = prune_results(before, GxPaths.of_home(settings.home), dry_run=dry_run)
    tombstones = _prune_tombstones(wh, before, dry_run)
    deliveries = _prune_deliveries(wh.engine, before, dry_run)
    previous = drop_previous(wh, before, dry_run)
    pruned = Pruned(before, batches, pages, page_bytes, results.results, results.pages, results.bytes, dry_run,
                    tombstones, deliveries, len(previous))
    log.info("%s: %s", "would prune" if dry_run else "pruned", pruned)
    return pruned


def _prune_tombstones(wh: Any, before: datetime, dry_run: bool) -> int:
    """Delete the deletions recorded for the change feed by writes committed before `before`; mark those writes,
    so that a feed token from before them is refused (410: read the dataset afresh) instead of silently
    missing a deletion."""
    tombstone, change = wh.table("lgsp_tombstone"), wh.table("lgsp_change")
    with wh.engine.begin() as conn:
        old = sa.select(change.c.batch_id).where(change.c.committed_at < before,
                                                 change.c.tombstones_pruned_at.is_(None))
        counted = dict(conn.execute(sa.select(tombstone.c.batch_id, sa.func.count()).where(
            tombstone.c.batch_id.in_(old)).group_by(tombstone.c.batch_id)).all())
        if counted and not dry_run:
            conn.execute(tombstone.delete().where(tombstone.c.batch_id.in_(old)))
            conn.execute(change.update().where(change.c.batch_id.in_(list(counted)))
                         .values(tombstones_pruned_at=datetime.now(timezone.utc)))
    return sum(counted.values())


def _prune_deliveries(engine: sa.Engine, before: datetime, dry_run: bool) -> int:
    """Delete the record of webhook deliveries attempted before `before` (none if the gateway never ran)."""
    if not sa.inspect(engine).has_table("gateway_webhook_delivery"):
        return 0
    from gateway.tables import webhook_delivery

    old = webhook_delivery.c.attempted_at < before
    with engine.begin() as conn:
        if dry_run:
            return int(conn.execute(sa.select(sa.func.count()).select_from(webhook_delivery).where(old)).scalar() or 0)
        return int(conn.execute(webhook_delivery.delete().where(old)).rowcount or 0)


def maintain(settings: Settings | None = None, compact_min_age: timedelta = COMPACT_MIN_AGE) -> dict[str, Any]:
    """Compact every dataset's lake partitions, then prune by `retention_days()`; what was done, as plain data."""
    settings = settings or load_settings()
    days = retention_days()  # a bad setting fails before anything is touched
    lake = Lake(settings.lake_root)
    compacted = [{"dataset": r.dataset, "ingest_date": r.ingest_date.isoformat(), "files_before": r.files_before,
                  "files_after": r.files_after, "rows": r.rows}
                 for name in lake.datasets() for r in lake.compact(name, min_age=compact_min_age)]
    pruned = None
    if days is not None:
        done = prune(timedelta(days=days), settings=settings)
        pruned = {**asdict(done), "before": done.before.isoformat()}
    log.info("maintenance: %d partition(s) compacted; pruned: %s", len(compacted), pruned or "off")
    return {"compacted": compacted, "retention_days": days, "pruned": pruned}
