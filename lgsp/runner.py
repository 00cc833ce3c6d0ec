"""The pipeline runner: extract -> validate -> load, each step a library call.

The Airflow DAGs (dags/) call these three functions as tasks; `lgsp run`
calls them in-process. Data flows one way: connector -> schema/quality ->
warehouse. Each step leaves its result on disk (the lake) or in the store,
so a step can be retried, and a killed run can be rerun, without loss.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from catalog import Catalog, DatasetSpec, PipelineSpec, SystemSpec, load_catalog
from lgsp.settings import Settings, load_settings
from warehouse import Lake, Warehouse, to_json
from warehouse.store import utc

log = logging.getLogger("lgsp.runner")


class BatchBalanceError(RuntimeError):
    """Rows pulled != rows landed + quarantined + superseded: something was lost."""


@dataclass
class PipelineContext:
    """Everything a step needs about one pipeline."""

    catalog: Catalog
    pipeline: PipelineSpec
    settings: Settings

    @property
    def system(self) -> SystemSpec:
        return self.catalog.systems[self.pipeline.source.system]

    @property
    def dataset(self) -> DatasetSpec:
        return self.catalog.datasets[self.pipeline.dataset]

    @cached_property
    def lake(self) -> Lake:
        return Lake(self.settings.lake_root)

    @cached_property
    def warehouse(self) -> Warehouse:
        wh = Warehouse(self.settings.database_url, self.catalog)
        wh.create_all()
        return wh


def open_warehouse(catalog: Catalog | None = None, settings: Settings | None = None) -> Warehouse:
    """The warehouse of the current settings, tables created or brought up to date."""
    wh = Warehouse((settings or load_settings()).database_url, catalog or load_catalog())
    wh.create_all()
    return wh


def context(pipeline: str, catalog: Catalog | None = None, settings: Settings | None = None) -> PipelineContext:
    catalog = catalog or load_catalog()
    return PipelineContext(catalog, catalog.pipeline(pipeline), settings or load_settings())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_batch_id(pipeline: str) -> str:
    return f"{pipeline}-{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _update_batch(ctx: PipelineContext, batch_id: str, conn: sa.Connection | None = None, **values: Any) -> None:
    table = ctx.warehouse.system["lgsp_batch"]
    stmt = table.update().where(table.c.batch_id == batch_id).values(**values)
    if conn is not None:
        conn.execute(stmt)
    else:
        with ctx.warehouse.transaction() as own:
            own.execute(stmt)


# --- extract ---------------------------------------------------------------------------------

def _dump_state(value: Any) -> str:
    """JSON for a paging state; datetimes survive the round trip."""
    def _default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return {"__datetime__": obj.isoformat()}
        raise TypeError(f"cannot save {type(obj).__name__} in a paging state")
    return json.dumps(value, default=_default)


def _load_state(text: str) -> Any:
    return json.loads(text, object_hook=lambda d: datetime.fromisoformat(d["__datetime__"])
                      if set(d) == {"__datetime__"} else d)


def _resumable(ctx: PipelineContext) -> Any:
    """The pipeline's latest batch if a killed or failed extract left it half-pulled, else None."""
    table = ctx.warehouse.system["lgsp_batch"]
    with ctx.warehouse.engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.pipeline == ctx.pipeline.name)
                           .order_by(table.c.started_at.desc()).limit(1)).first()
    if row is None or row.status not in ("extracting", "failed") or row.lake_path:
        return None
    if row.status == "failed" and not row.paging_state:
        return None
    state = _load_state(row.paging_state) if row.paging_state else {"next": None, "done": False}
    return None if (row.status == "failed" and state.get("done")) else row


def _start_batch(ctx: PipelineContext, mode: str, since: datetime | None, until: datetime | None) -> str:
    batch_id = new_batch_id(ctx.pipeline.name)
    with ctx.warehouse.transaction() as conn:
        conn.execute(ctx.warehouse.system["lgsp_batch"].insert().values(
            batch_id=batch_id, pipeline=ctx.pipeline.name, dataset=ctx.pipeline.dataset,
            source_system=ctx.system.name, status="extracting", started_at=_now(), cursor_from=since,
            cursor_until=until, mode=mode, pages=0, rows_pulled=0))
    return batch_id


def _window(ctx: PipelineContext, full_refresh: bool, since: datetime | None,
            until: datetime | None) -> tuple[str, datetime | None, datetime | None]:
    """(mode, since, until) of a new batch: incremental from the cursor minus the look-back, full, or backfill."""
    if since is not None or until is not None:
        return "backfill", since, until
    if full_refresh:
        return "full_refresh", None, None
    cursor = ctx.warehouse.get_cursor(ctx.pipeline.name)
    if cursor is not None and ctx.pipeline.lookback_s:
        cursor -= timedelta(seconds=ctx.pipeline.lookback_s)
    return "incremental", cursor, None


def extract(ctx: PipelineContext, full_refresh: bool = False, since: datetime | None = None,
            until: datetime | None = None, partition: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pull every page changed since the pipeline's cursor and land it as received.

    Each landed page is checkpointed (the request for the next page is saved
    with the batch), so a run killed or failed half-way resumes from the page
    after its last landed one instead of starting again. `since`/`until` pull
    a closed window (a backfill) without moving the cursor.

    `partition` (lgsp.partitions) adds a slice's filter to every request; such
    a batch is never resumed by another run.

    Returns the batch manifest (batch id, pages, rows pulled, window used).
    """
    from connectors import MessageLog, iter_pages, open_transport
    from lgsp.exchanges import breaker_for, flush_log

    wh, pipeline, table = ctx.warehouse, ctx.pipeline, ctx.warehouse.system["lgsp_batch"]
    resume = None if (full_refresh or since or until or partition) else _resumable(ctx)
    source = pipeline.source.model_copy(update={"params": {**pipeline.source.params, **partition}}) \
        if partition else pipeline.source
    if resume is not None:
        batch_id, mode = resume.batch_id, resume.mode or "incremental"
        since, until = utc(resume.cursor_from), utc(resume.cursor_until)
        pages, rows = int(resume.pages or 0), int(resume.rows_pulled or 0)
        state = _load_state(resume.paging_state) if resume.paging_state else {"next": None, "done": False}
        log.info("%s: resuming batch %s after page %d (%d rows landed)", pipeline.name, batch_id, pages, rows)
        _update_batch(ctx, batch_id, status="extracting", message=None)
    else:
        mode, since, until = _window(ctx, full_refresh, since, until)
        batch_id, pages, rows, state = _start_batch(ctx, mode, since, until), 0, 0, {"next": None, "done": False}
    message_log = MessageLog(ctx.system.name, ctx.system.message_log, context=batch_id)
    transport = open_transport(ctx.system, pipeline.source, log=message_log)
    try:
        if not state["done"]:
            for page in iter_pages(ctx.system, source, transport, since, until,
                                   start=state["next"], first_number=pages + 1,
                                   breaker=breaker_for(wh, ctx.system)):
                ctx.lake.write_page(pipeline.name, batch_id, page.number, page.records)
                pages, rows = page.number, rows + len(page.records)
                state = {"next": page.next_params, "done": page.next_params is None}
                with wh.transaction() as conn:
                    _update_batch(ctx, batch_id, conn, pages=pages, rows_pulled=rows,
                                  paging_state=_dump_state(state))
                    flush_log(wh, message_log, conn)
                log.info("%s: page %d, %d rows so far", pipeline.name, page.number, rows)
    except Exception as exc:
        flush_log(wh, message_log)
        _update_batch(ctx, batch_id, status="failed", finished_at=_now(), rows_pulled=rows,
                      message=f"extract failed after {pages} page(s): {exc}. A rerun resumes after page {pages}")
        raise
    finally:
        transport.close()
    manifest = {"batch_id": batch_id, "pipeline": pipeline.name, "dataset": pipeline.dataset,
                "system": ctx.system.name, "pages": pages, "rows_pulled": rows, "mode": mode,
                "cursor_from": since.isoformat() if since else None,
                "cursor_until": until.isoformat() if until else None, "extracted_at": _now().isoformat(),
                "partition": partition}
    ctx.lake.write_manifest(pipeline.name, batch_id, manifest)
    _update_batch(ctx, batch_id, status="extracted", rows_pulled=rows)
    return manifest


# --- validate --------------------------------------------------------------------------------

def _record_key(record: dict[str, Any], key: list[str]) -> str:
    return "|".join(str(record.get(k)) for k in key)


def _quarantine_rows(ctx: PipelineContext, batch_id: str, records: list[dict[str, Any]],
                     rejections: list[Any]) -> list[dict[str, Any]]:
    now, ds = _now(), ctx.dataset
    rows = []
    for rej in rejections:
        payload = to_json(records[rej.position])
        qid = hashlib.sha256(f"{ds.name}\x1f{rej.rule}\x1f{payload}".encode()).hexdigest()[:32]
        rows.append({"quarantine_id": qid, "dataset": ds.name, "pipeline": ctx.pipeline.name,
                     "batch_id": batch_id, "last_batch_id": batch_id, "rule": rej.rule, "reason": rej.reason,
                     "record_key": _record_key(records[rej.position], ds.key), "payload": payload,
                     "status": "open", "quarantined_at": now})
    return rows


def _store_quarantine(ctx: PipelineContext, rows: list[dict[str, Any]]) -> None:
    """Keep every rejected row; a row seen again only gets its last_batch_id updated."""
    wh = ctx.warehouse
    table = wh.system["lgsp_quarantine"]
    with wh.transaction() as conn:
        wh.insert_ignore(conn, table, rows, ["quarantine_id"])
        for row in rows:
            conn.execute(table.update().where(table.c.quarantine_id == row["quarantine_id"])
                         .values(last_batch_id=row["last_batch_id"]))


def _store_expectations(ctx: PipelineContext, batch_id: str, outcomes: list[Any]) -> None:
    wh, now = ctx.warehouse, _now()
    rows = [{"batch_id": batch_id, "expectation": o.expectation, "column_name": o.column or "",
             "dataset": ctx.dataset.name, "success": o.success, "unexpected_count": o.unexpected_count,
             "checked_at": now} for o in outcomes]
    with wh.transaction() as conn:
        wh.upsert(conn, wh.system["lgsp_expectation_result"], rows, ["batch_id", "expectation", "column_name"])


def _latest_per_key(frame: pd.DataFrame, ds: DatasetSpec) -> pd.DataFrame:
    """If a record appears twice in one batch (changed while paging), keep its latest version."""
    ordered = frame.sort_values(ds.cursor_field, kind="stable") if ds.cursor_field else frame
    return ordered.drop_duplicates(subset=ds.key, keep="last").sort_index()


def validate(ctx: PipelineContext, batch_id: str) -> dict[str, Any]:
    """Type, check and split a landed batch: good rows to Parquet, bad rows to quarantine.

    Raises:
        SchemaError: the batch breaks the dataset's contract.
        QualityError: a dataset-level expectation failed (bad rows are already in quarantine).
    """
    from quality import QualityError, run_row_checks, validate_dataset
    from schemas import SchemaError, coerce, to_arrow

    ds, pipeline = ctx.dataset, ctx.pipeline
    manifest = ctx.lake.read_manifest(pipeline.name, batch_id)
    records = list(ctx.lake.read_records(pipeline.name, batch_id))
    try:
        typed = coerce(records, ds)
        checked = run_row_checks(typed.frame, ds, typed.type_errors)
        quarantine = _quarantine_rows(ctx, batch_id, records, checked.rejections)
        _store_quarantine(ctx, quarantine)
        outcomes = validate_dataset(typed.frame, checked.passed, ds, batch_id)
    except (SchemaError, QualityError) as exc:
        _update_batch(ctx, batch_id, status="failed", finished_at=_now(), message=str(exc))
        raise
    _store_expectations(ctx, batch_id, outcomes)
    good = _latest_per_key(typed.frame[checked.passed], ds)
    cursor_to = typed.frame[ds.cursor_field].max() if ds.cursor_field and len(typed.frame) else None
    extras = typed.extras.loc[good.index] if typed.extras is not None else None
    table = to_arrow(good, ds, extras).replace_schema_metadata(None)
    path = ctx.lake.write_parquet(table, ds.name, _now().date(), batch_id)
    result = {**manifest, "rows_valid": len(good), "rows_quarantined": len(quarantine),
              "rows_superseded": int(checked.passed.sum()) - len(good), "parquet": str(path),
              "extra_columns": typed.extra_columns,
              "cursor_to": None if cursor_to is None or pd.isna(cursor_to) else cursor_to.isoformat()}
    if result["rows_valid"] + result["rows_quarantined"] + result["rows_superseded"] != manifest["rows_pulled"]:
        raise BatchBalanceError(f"batch {batch_id}: pulled {manifest['rows_pulled']} != valid {result['rows_valid']}"
                                f" + quarantined {result['rows_quarantined']} + superseded {result['rows_superseded']}")
    ctx.lake.write_manifest(pipeline.name, batch_id, result)
    drift = (f"schema drift: new source field(s) {typed.extra_columns} kept in _extras; declare them in "
             f"catalog/datasets.yaml ({ds.name}) to load them as columns") if typed.extra_columns else None
    if drift:
        log.warning("%s: %s", pipeline.name, drift)
    _update_batch(ctx, batch_id, status="validated", rows_quarantined=len(quarantine),
                  rows_superseded=result["rows_superseded"], lake_path=str(path), message=drift)
    return result


# --- load ------------------------------------------------------------------------------------

def _with_lineage(table: pa.Table, ctx: PipelineContext, batch_id: str) -> list[dict[str, Any]]:
    frame = table.to_pandas(types_mapper=pd.ArrowDtype) if table.num_rows else None
    if frame is None:
        return []
    hashes = pd.util.hash_pandas_object(frame.astype("string"), index=False).to_numpy().view("int64")
    now = _now()
    rows = table.to_pylist()
    for row, row_hash in zip(rows, hashes):
        row.update(_batch_id=batch_id, _source_system=ctx.system.name, _loaded_at=now, _row_hash=int(row_hash))
    return rows


def load(ctx: PipelineContext, batch_id: str) -> dict[str, Any]:
    """Write a validated batch by the dataset's write mode; data, batch record and cursor in one transaction."""
    wh, ds, pipeline = ctx.warehouse, ctx.dataset, ctx.pipeline
    result = ctx.lake.read_manifest(pipeline.name, batch_id)
    if "parquet" not in result:
        raise RuntimeError(f"batch {batch_id} of {pipeline.name} was not validated; run validate first")
    rows = _with_lineage(ctx.lake.read_batch(result["parquet"]), ctx, batch_id)
    cursor_to = datetime.fromisoformat(result["cursor_to"]) if result.get("cursor_to") else None
    with wh.transaction() as conn:
        changed = wh.write_batch(conn, ds, rows)
        if result.get("mode") != "backfill":
            wh.set_cursor(conn, pipeline.name, cursor_to, batch_id)
        _update_batch(ctx, batch_id, conn, status="loaded", finished_at=_now(), rows_landed=len(rows),
                      rows_changed=changed, cursor_to=cursor_to)
    log.info("%s: batch %s loaded: %d rows, %d changed", pipeline.name, batch_id, len(rows), changed)
    return {**result, "rows_landed": len(rows), "rows_changed": changed}


def _unfinished(ctx: PipelineContext) -> tuple[str, str] | None:
    """(batch_id, status) of the pipeline's latest batch if a killed run left it between steps."""
    table = ctx.warehouse.system["lgsp_batch"]
    with ctx.warehouse.engine.connect() as conn:
        row = conn.execute(sa.select(table.c.batch_id, table.c.status).where(table.c.pipeline == ctx.pipeline.name)
                           .order_by(table.c.started_at.desc()).limit(1)).first()
    if row is not None and row.status in ("extracted", "validated"):
        return row.batch_id, row.status
    return None


def run_pipeline(name: str, full_refresh: bool = False, catalog: Catalog | None = None,
                 settings: Settings | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> dict[str, Any]:
    """Run extract -> validate -> load in this process (what one DAG run does).

    A batch a killed run left behind is finished first: a half-pulled one is
    resumed from its last landed page, a pulled or validated one is validated
    and loaded.
    """
    ctx = context(name, catalog, settings)
    fresh = full_refresh or since is not None or until is not None
    pending = None if fresh else _unfinished(ctx)
    if pending is not None:
        batch_id, status = pending
        log.info("%s: finishing batch %s left %s by an earlier run", name, batch_id, status)
    else:
        batch_id, status = extract(ctx, full_refresh=full_refresh, since=since, until=until)["batch_id"], "extracted"
    if status == "extracted":
        validate(ctx, batch_id)
    return load(ctx, batch_id)
