"""Partitioned syncs: one big pull split into slices that mapped Airflow tasks extract side by side.

A pipeline declares `partition:` in catalog/pipelines.yaml (see
catalog.models.PartitionSpec). The slices are half-open ranges of one
field, the first open below and the last open above, so together they
cover every row exactly once, rows with an unknown commune included.
Every slice reads the same closed window `[since, until)`, fixed once per
run by `plan`, and the pipeline's cursor moves once, in `publish`, after
every slice has landed: the warehouse ends exactly as after one
unpartitioned task.

Example plan for `land_parcels` (4 slices of Ninh Binh's 129 communes)::

    [{"since": "2025-09-30T16:00:00+00:00", "until": "2026-01-05T03:00:00+00:00", "incremental": true,
      "filter": {"commune_from": null, "commune_to": "14545"}}, ...,
     {..., "filter": {"commune_from": "14863", "commune_to": null}}]
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from catalog.models import PartitionSpec

Bounds = list[str]


def commune_bounds(spec: PartitionSpec) -> Bounds:
    """Split points cutting the province's official commune codes into `spec.partitions` ranges of equal size."""
    from vietnam_provinces import ProvinceCode, Ward

    try:
        codes = sorted(f"{int(w.code):05d}" for w in Ward.iter_by_province(ProvinceCode(spec.province)))
    except ValueError:
        raise ValueError(f"partition by commune: {spec.province} is not a province code (2025 list, 34 provinces)"
                         ) from None
    size = len(codes) / spec.partitions
    return [codes[round(i * size)] for i in range(1, spec.partitions)]


def key_range_bounds(spec: PartitionSpec) -> Bounds:
    """The split points the catalog lists."""
    return list(spec.bounds)


PARTITIONERS: dict[str, Callable[[PartitionSpec], Bounds]] = {
    "commune": commune_bounds,
    "key_range": key_range_bounds,
}
"""Partitioning strategies by name (PartitionSpec.by)."""


def slices(spec: PartitionSpec) -> list[dict[str, str | None]]:
    """The request filters of every slice: `{from_param: low, to_param: high}`, None meaning open."""
    bounds = PARTITIONERS[spec.by](spec)
    edges: list[str | None] = [None, *bounds, None]
    return [{spec.from_param: low, spec.to_param: high} for low, high in zip(edges, edges[1:])]


def request_filter(partition: dict[str, str | None]) -> dict[str, str]:
    """The slice's parameters to add to each request (open ends are left out)."""
    return {name: value for name, value in partition.items() if value is not None}


def plan(cursor: datetime | None, lookback_s: float, spec: PartitionSpec, full_refresh: bool = False,
         since: datetime | None = None, until: datetime | None = None,
         now: datetime | None = None, run: str | None = None) -> list[dict[str, Any]]:
    """One entry per slice, all with the same window: the given `since`/`until` (a backfill), or
    `[cursor - lookback, now)` for an incremental run (`[-inf, now)` without a cursor or on a full refresh).

    `run` (the run's id, `runner.new_batch_id`) is what every slice's batch id begins with. On a full refresh
    (`full_refresh: true` in each entry) the slices' rows replace an earlier run's even where the stored cursor
    value is later, and `publish` sets the cursor to the slices' newest value, even an earlier one.
    """
    incremental = since is None and until is None
    full_refresh = full_refresh and incremental
    if incremental:
        since = None if full_refresh or cursor is None else cursor - timedelta(seconds=lookback_s)
        until = now or datetime.now(timezone.utc)
    window = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
              "incremental": incremental, "full_refresh": full_refresh, "run": run}
    return [{**window, "filter": part} for part in slices(spec)]


def landed_cursor(results: list[dict[str, Any]]) -> datetime | None:
    """The cursor one unpartitioned batch would have left: the latest `cursor_to` of all slices."""
    stamps = [datetime.fromisoformat(r["cursor_to"]) for r in results if r.get("cursor_to")]
    return max(stamps) if stamps else None
