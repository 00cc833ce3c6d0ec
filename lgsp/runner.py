"""The pipeline runner: extract -> validate -> load, each step a library call.

The Airflow DAGs (dags/) call these three functions as tasks; `lgsp run`
calls them in-process. Data flows one way: connector -> schema/quality ->
warehouse. Each step leaves its result on disk (the lake) or in the store,
so a step can be retried, and a killed run can be rerun, without loss.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from catalog import Catalog, DatasetSpec, PipelineSpec, SystemSpec, load_catalog
from lgsp.settings import Settings, load_settings
from warehouse import Lake, Warehouse, to_json
from warehouse.lake import PAGES_PRUNED
from schemas.arrow import EXTRAS_COLUMN
from warehouse.rowhash import row_hashes
from warehouse.store import ON_MERGING, rows_of, utc

if TYPE_CHECKING:
    from connectors.source import Records

log = logging.getLogger("lgsp.runner")

if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
    # Arrow's default pool (mimalloc) keeps what a chunk freed for reuse: about 60 MB more
    # peak memory for a streamed batch than the system allocator, for no measurable speed.
    pa.set_memory_pool(pa.system_memory_pool())


class BatchBalanceError(RuntimeError):
    """Rows pulled != rows landed + quarantined + superseded: something was lost."""


class InPeakHours(RuntimeError):
    """A bulk pull (full refresh, backfill) of a system in its peak hours (`limits.peak.bulk: wait`): `until`
    (UTC) is when it may start."""

    def __init__(self, pipeline: str, system: SystemSpec, until: datetime) -> None:
        from catalog.models import LOCAL_TZ

        self.until = until
        assert system.limits.peak is not None
        super().__init__(
            f"{pipeline}: a full refresh or a backfill does not start in {system.name}'s peak hours, which end at "
            f"{until.astimezone(LOCAL_TZ):%H:%M} local time ({until:%Y-%m-%d %H:%M} UTC; limits.peak.bulk: wait in "
            f"catalog/systems.yaml): `--off-peak` waits for their end (on Airflow the extract task is rescheduled "
            f"to it), `--in-peak` runs it now at the peak rate ({system.limits.peak.rate_per_s:g}/s)")


def check_off_peak(ctx: "PipelineContext", bulk: bool) -> None:
    """Raise InPeakHours when a bulk pull of the pipeline's system would start in its peak hours."""
    from connectors.limits import bulk_wait

    until = bulk_wait(ctx.system) if bulk else None
    if until is not None:
        raise InPeakHours(ctx.pipeline.name, ctx.system, until)


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
    """`<pipeline>-<UTC time to the microsecond>-<random>`: a pipeline's batch ids sort in the order they
    were made (the lake's batch files too), even several in one second."""
    return f"{pipeline}-{_now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def slice_batch_id(run: str) -> str:
    """`<run>.<random>`: the batch of one slice of a partitioned run (`run`: a `new_batch_id` made when the run
    was planned). All of a run's slice batches begin with its id, so a full refresh's merge can tell the rows
    this run wrote from an earlier run's (`store._update_when`)."""
    return f"{run}.{uuid.uuid4().hex[:8]}"


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


def _start_batch(ctx: PipelineContext, mode: str, since: datetime | None, until: datetime | None,
                 run: str | None = None) -> str:
    batch_id = slice_batch_id(run) if run else new_batch_id(ctx.pipeline.name)
    with ctx.warehouse.transaction() as conn:
        conn.execute(ctx.warehouse.system["lgsp_batch"].insert().values(
            batch_id=batch_id, pipeline=ctx.pipeline.name, dataset=ctx.pipeline.dataset,
            source_system=ctx.system.name, status="extracting", started_at=_now(), cursor_from=since,
            cursor_until=until, mode=mode, pages=0, rows_pulled=0))
    return batch_id


def _window(ctx: PipelineContext, full_refresh: bool, since: datetime | None,
            until: datetime | None, run: str | None = None) -> tuple[str, datetime | None, datetime | None]:
    """(mode, since, until) of a new batch: incremental from the cursor minus the look-back, full, or backfill.

    A full refresh reads everything up to now, or, a slice of a partitioned `run`, up to the run's start."""
    if full_refresh and (run is not None or (since is None and until is None)):
        return "full_refresh", None, until
    if since is not None or until is not None:
        return "backfill", since, until
    cursor = ctx.warehouse.get_cursor(ctx.pipeline.name)
    if cursor is not None and ctx.pipeline.lookback_s:
        cursor -= timedelta(seconds=ctx.pipeline.lookback_s)
    return "incremental", cursor, None


@dataclass
class BatchStart:
    """Where an extract starts: a new batch, or the resumed half-pulled one (`runner.begin_extract`)."""

    batch_id: str
    mode: str
    since: datetime | None
    until: datetime | None
    pages: int = 0
    rows: int = 0
    state: dict[str, Any] | None = None
    run: str | None = None  # the partitioned run the batch is a slice of (`slice_batch_id`)


def begin_extract(ctx: PipelineContext, full_refresh: bool = False, since: datetime | None = None,
                  until: datetime | None = None, partition: dict[str, Any] | None = None,
                  run: str | None = None) -> BatchStart:
    """The batch an extract pulls into: the half-pulled one a killed or failed run left, or a new one (recorded).

    `run`: the partitioned run whose slice this is (`lgsp.partitions.plan`)."""
    resume = None if (full_refresh or since or until or partition) else _resumable(ctx)
    if resume is None:
        mode, since, until = _window(ctx, full_refresh, since, until, run)
        return BatchStart(_start_batch(ctx, mode, since, until, run), mode, since, until, run=run)
    state = _load_state(resume.paging_state) if resume.paging_state else None
    start = BatchStart(resume.batch_id, resume.mode or "incremental", utc(resume.cursor_from),
                       utc(resume.cursor_until), int(resume.pages or 0), int(resume.rows_pulled or 0), state)
    log.info("%s: resuming batch %s after page %d (%d rows landed)", ctx.pipeline.name, start.batch_id,
             start.pages, start.rows)
    _update_batch(ctx, start.batch_id, status="extracting", message=None)
    return start


def extract(ctx: PipelineContext, full_refresh: bool = False, since: datetime | None = None,
            until: datetime | None = None, partition: dict[str, Any] | None = None,
            start: BatchStart | None = None, run: str | None = None,
            on_page: Callable[[int, bool], None] | None = None) -> dict[str, Any]:
    """Pull every page changed since the pipeline's cursor and land it as received.

    Each landed page is checkpointed (the request for the next page is saved
    with the batch), so a run killed or failed half-way resumes from the page
    after its last landed one instead of starting again. `since`/`until` pull
    a closed window (a backfill) without moving the cursor.

    `start` is the batch to pull into when the caller already began it
    (`begin_extract`); `on_page(number, last)` is called as each page has landed,
    before its bookkeeping (the streaming runner validates pages as they land).

    `partition` (lgsp.partitions) adds a slice's filter to every request; such
    a batch is never resumed by another run. `run` is the partitioned run the slice
    belongs to: its load leaves the cursor to the run's `publish` step.

    Returns the batch manifest (batch id, pages, rows pulled, window used).
    """
    start = pull_pages(ctx, start or begin_extract(ctx, full_refresh, since, until, partition, run), partition,
                       on_page)
    return finish_extract(ctx, start, partition)


def pull_pages(ctx: PipelineContext, start: BatchStart, partition: dict[str, Any] | None = None,
               on_page: Callable[[int, bool], None] | None = None, max_pages: int | None = None,
               on_records: Callable[[Records], None] | None = None) -> BatchStart:
    """Pull and land pages from `start` on: all of them, or `max_pages`; returns where the pulling stopped.

    Each landed page is recorded with the request for the next one, so the returned
    `BatchStart` (or a rerun, if this process dies) continues from there. `on_records`
    sees each page's records as they landed: a list, or a REST page's own JSON (`RawRecords`:
    landed as sent, parsed once, by the validation).
    """
    from connectors import MessageLog, iter_pages, limits_for, open_transport
    from lgsp.exchanges import breaker_for, flush_log

    wh, pipeline = ctx.warehouse, ctx.pipeline
    source = pipeline.source.model_copy(update={"params": {**pipeline.source.params, **partition}}) \
        if partition else pipeline.source
    batch_id, since, until = start.batch_id, start.since, start.until
    pages, rows, state = start.pages, start.rows, start.state or {"next": None, "done": False}
    if state["done"]:
        return start
    message_log = MessageLog(ctx.system.name, ctx.system.message_log, context=batch_id)
    transport = open_transport(ctx.system, pipeline.source, log=message_log)
    peak = limits_for(ctx.system).peak
    held = (peak.calls, peak.waited_s) if peak is not None else (0, 0.0)
    try:
        for page in iter_pages(ctx.system, source, transport, since, until, start=state["next"],
                               first_number=pages + 1, breaker=breaker_for(wh, ctx.system), raw=True,
                               paging=state.get("paging")):
            ctx.lake.write_page(pipeline.name, batch_id, page.number, page.records)
            if on_records is not None:
                on_records(page.records)
            if on_page is not None:
                on_page(page.number, page.next_params is None)
            pages, rows = page.number, rows + len(page.records)
            state = {"next": page.next_params, "done": page.next_params is None, "paging": page.paging}
            with wh.transaction() as conn:
                _update_batch(ctx, batch_id, conn, pages=pages, rows_pulled=rows, paging_state=_dump_state(state))
                flush_log(wh, message_log, conn)
            log.info("%s: page %d, %d rows so far", pipeline.name, page.number, rows)
            if max_pages is not None and pages - start.pages >= max_pages:
                break
        else:  # the pages ended: so too when the page asked past a short one repeated it (connectors.paging.ShortPages)
            state = {**state, "next": None, "done": True}
    except Exception as exc:
        flush_log(wh, message_log)
        _update_batch(ctx, batch_id, status="failed", finished_at=_now(), rows_pulled=rows,
                      message=f"extract failed after {pages} page(s): {exc}. A rerun resumes after page {pages}")
        raise
    finally:
        transport.close()
        if peak is not None and peak.calls > held[0]:
            log.info("%s: %d call(s) in %s's peak hours waited %.1f s in all for its peak rate (%g/s)", pipeline.name,
                     peak.calls - held[0], ctx.system.name, peak.waited_s - held[1], peak.rate_per_s)
    return BatchStart(batch_id, start.mode, since, until, pages, rows, state, start.run)


def finish_extract(ctx: PipelineContext, start: BatchStart, partition: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a fully pulled batch as extracted: its manifest in the lake, its status in the store."""
    since, until = start.since, start.until
    manifest = {"batch_id": start.batch_id, "pipeline": ctx.pipeline.name, "dataset": ctx.pipeline.dataset,
                "system": ctx.system.name, "pages": start.pages, "rows_pulled": start.rows, "mode": start.mode,
                "cursor_from": since.isoformat() if since else None,
                "cursor_until": until.isoformat() if until else None, "extracted_at": _now().isoformat(),
                "partition": partition, "run": start.run,
                "source_total": ((start.state or {}).get("paging") or {}).get("total")}
    ctx.lake.write_manifest(ctx.pipeline.name, start.batch_id, manifest)
    _update_batch(ctx, start.batch_id, status="extracted", rows_pulled=start.rows)
    return manifest


# --- validate --------------------------------------------------------------------------------

def _record_key(record: dict[str, Any], key: list[str]) -> str:
    return "|".join(str(record.get(k)) for k in key)


def quarantine_row(dataset: DatasetSpec, pipeline: str, batch_id: str, record: dict[str, Any], rule: str,
                   reason: str, now: datetime | None = None, origin: str = "") -> dict[str, Any]:
    """The `lgsp_quarantine` row of one rejected record, as received.

    Its id is a digest of dataset, rule and payload, so a pipeline's row seen again is the same row;
    `origin` (a live lookup's `lookup:<system>.<operation>`) keeps rows from elsewhere apart from
    the pipeline's own, which `lgsp quarantine replay <pipeline>` re-checks.
    """
    payload = to_json(record)
    prefix = f"{origin}\x1f" if origin else ""
    qid = hashlib.sha256(f"{prefix}{dataset.name}\x1f{rule}\x1f{payload}".encode()).hexdigest()[:32]
    return {"quarantine_id": qid, "dataset": dataset.name, "pipeline": pipeline, "batch_id": batch_id,
            "last_batch_id": batch_id, "rule": rule, "reason": reason, "record_key": _record_key(record, dataset.key),
            "payload": payload, "status": "open", "quarantined_at": now or _now()}


def _quarantine_rows(ctx: PipelineContext, batch_id: str, records: Mapping[int, dict[str, Any]] | list[Any],
                     rejections: list[Any]) -> list[dict[str, Any]]:
    now = _now()
    return [quarantine_row(ctx.dataset, ctx.pipeline.name, batch_id, records[rej.position], rej.rule, rej.reason, now)
            for rej in rejections]


def _store_quarantine(ctx: PipelineContext, rows: list[dict[str, Any]]) -> None:
    """Keep every rejected row; a row seen again only gets its last_batch_id updated."""
    wh = ctx.warehouse
    table = wh.system["lgsp_quarantine"]
    with wh.transaction() as conn:
        wh.insert_ignore(conn, table, rows, ["quarantine_id"])
        for batch_id in {row["last_batch_id"] for row in rows}:
            ids = [row["quarantine_id"] for row in rows if row["last_batch_id"] == batch_id]
            for start in range(0, len(ids), 5000):
                conn.execute(table.update().where(table.c.quarantine_id.in_(ids[start:start + 5000]))
                             .values(last_batch_id=batch_id))


def _store_expectations(ctx: PipelineContext, batch_id: str, outcomes: list[Any]) -> None:
    wh, now = ctx.warehouse, _now()
    rows = [{"batch_id": batch_id, "expectation": o.expectation, "column_name": o.column or "",
             "dataset": ctx.dataset.name, "success": o.success, "unexpected_count": o.unexpected_count,
             "checked_at": now} for o in outcomes]
    with wh.transaction() as conn:
        wh.upsert(conn, wh.system["lgsp_expectation_result"], rows, ["batch_id", "expectation", "column_name"])


def _trim() -> None:
    """Hand the memory a chunk freed back to the system (glibc keeps it otherwise, and RSS stays high)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _latest_per_key(frame: pd.DataFrame, ds: DatasetSpec) -> pd.DataFrame:
    """If a record appears twice in one batch (changed while paging), keep its latest version."""
    if not frame.duplicated(subset=ds.key).any():  # the usual case: no copy, no sort
        return frame
    ordered = frame.sort_values(ds.cursor_field, kind="stable") if ds.cursor_field else frame
    return ordered.drop_duplicates(subset=ds.key, keep="last").sort_index()


CHUNK_ROWS = int(os.environ.get("LGSP_CHUNK_ROWS", "50000"))  # rows validated (and loaded) at a time


@dataclass
class LandedChunk:
    """Consecutive landed pages of a batch, validated together: one line per page (`Lake.read_page`)."""

    body: bytes
    rows: int

    def records(self) -> list[Any]:
        return [record for line in self.body.splitlines() for record in Lake.page_records(line)]

    def originals(self, positions: Iterable[int]) -> dict[int, Any]:
        """The records at `positions` (in the chunk), as received; only their pages are parsed."""
        wanted, found, first, at = sorted(set(positions)), {}, 0, 0
        for line in self.body.splitlines():
            rows = Lake.page_rows(line)
            if at < len(wanted) and wanted[at] < first + rows:
                records = Lake.page_records(line)
                while at < len(wanted) and wanted[at] < first + rows:
                    found[wanted[at]] = records[wanted[at] - first]
                    at += 1
            first += rows
        return found

    def typed(self, ds: DatasetSpec) -> tuple[Any, list[dict[str, Any]] | None]:
        """(typed batch, the records as dicts if they had to be parsed in Python).

        The fast path reads the pages with `pyarrow.json` straight into typed columns (each
        page a row whose `records` list is flattened); a chunk it cannot read exactly (a value
        of the wrong JSON type, an undeclared field, a required field with no value anywhere)
        goes through `schemas.coerce`.
        """
        import pyarrow.json as pj

        from schemas import coerce, coerce_arrow, json_schema

        if self.rows:
            # one thread: Arrow's pool made a 50,000-row chunk slower (0.055 s against 0.037 s),
            # more so while the extract and PostgreSQL take the other core; a block holds every page
            single = pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(self.body) + 1))
            try:
                pages = pj.read_json(io.BytesIO(self.body), read_options=single, parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema([("records", pa.list_(pa.struct(list(json_schema(ds)))))]),
                    unexpected_field_behavior="infer"))
                records = pages.column("records")
                table = pa.Table.from_struct_array(pa.concat_arrays([c.flatten() for c in records.chunks])) \
                    if records.null_count == 0 else None
                typed = coerce_arrow(table, ds) if table is not None and table.num_rows == self.rows else None
                if typed is not None:
                    return typed, None
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                pass
        records = self.records()
        return coerce(records, ds), records


def _landed_chunks(ctx: PipelineContext, batch_id: str, chunk_rows: int) -> Iterator[LandedChunk]:
    """The batch's landed pages grouped into chunks of at least `chunk_rows` rows (the last may be smaller)."""
    pages: list[bytes] = []
    rows = 0
    for path in ctx.lake.page_paths(ctx.pipeline.name, batch_id):
        count, line = ctx.lake.read_page(path)
        pages.append(line)
        rows += count
        if rows >= chunk_rows:
            yield LandedChunk(b"".join(pages), rows)
            pages, rows = [], 0
    if pages or rows == 0:
        yield LandedChunk(b"".join(pages), rows)


@dataclass
class _ChunkResult:
    good: pa.Table
    quarantined: int
    superseded: int
    cursor_to: Any
    cursor_min: Any  # the oldest cursor value the chunk holds: one before the window means the source ignored it
    extra_columns: list[str]
    expect: Callable[[], None]  # runs the batch's expectations on the chunk (after its good rows went on)
    unzoned: list[str]  # timestamp columns that got times without a zone (read as UTC)


def _validate_chunk(ctx: PipelineContext, batch_id: str, chunk: LandedChunk, expectations: Any) -> _ChunkResult:
    """Type and row-check one chunk; its bad rows are in quarantine when this returns.

    The chunk's expectations run when the caller calls `expect()` on the result: after it
    handed the good rows on, so a load need not wait for them (it commits only once the
    whole batch's expectations are known).
    """
    from quality import run_row_checks
    from schemas import to_arrow

    ds = ctx.dataset
    typed, records = chunk.typed(ds)
    checked = run_row_checks(typed.frame, ds, typed.type_errors)
    if checked.rejections:
        if records is None:
            originals = chunk.originals(r.position for r in checked.rejections)
        else:
            originals = {r.position: records[r.position] for r in checked.rejections}
        _store_quarantine(ctx, _quarantine_rows(ctx, batch_id, originals, checked.rejections))
    passed = checked.passed
    good = _latest_per_key(typed.frame if bool(np.all(passed)) else typed.frame[passed], ds)
    cursor = typed.frame[ds.cursor_field] if ds.cursor_field and len(typed.frame) else None
    cursor_to, cursor_min = (cursor.max(), cursor.min()) if cursor is not None else (None, None)
    extras = typed.extras.loc[good.index] if typed.extras is not None else None
    return _ChunkResult(good=to_arrow(good, ds, extras).replace_schema_metadata(None),
                        quarantined=len(checked.rejections), superseded=int(checked.passed.sum()) - len(good),
                        cursor_to=None if cursor_to is None or pd.isna(cursor_to) else cursor_to,
                        cursor_min=None if cursor_min is None or pd.isna(cursor_min) else cursor_min,
                        extra_columns=typed.extra_columns, expect=lambda: expectations.add(typed.frame, passed),
                        unzoned=typed.unzoned)


def validate(ctx: PipelineContext, batch_id: str) -> dict[str, Any]:
    """Type, check and split a landed batch: good rows to Parquet, bad rows to quarantine.

    The batch streams through in chunks of `CHUNK_ROWS` rows (consecutive pages), so memory
    does not grow with the batch: each chunk becomes one row group of the batch's Parquet
    file, which appears only when every chunk passed. A record that appears twice in one
    chunk (it changed while being paged) keeps its latest version; further apart, both land
    in the lake and the load keeps the newer one (see `Warehouse.write_chunks`).

    Raises:
        SchemaError: the batch breaks the dataset's contract.
        QualityError: a dataset-level expectation failed (bad rows are already in quarantine).
    """
    manifest = ctx.lake.read_manifest(ctx.pipeline.name, batch_id)
    if PAGES_PRUNED in manifest:  # raised before the batch could be marked failed: it was loaded
        pruned = manifest[PAGES_PRUNED]
        raise FileNotFoundError(
            f"batch {batch_id} of {ctx.pipeline.name}: its {pruned.get('pages')} landed page(s) were deleted on "
            f"{pruned.get('at')} by `lgsp lake prune` (the batch had been loaded: its rows are in the lake's Parquet "
            "files and in quarantine), so it cannot be validated again; run the pipeline for a new batch")
    try:
        checked = _check_chunks(ctx, batch_id, _landed_chunks(ctx, batch_id, CHUNK_ROWS))
        return _validated(ctx, batch_id, manifest, checked)
    except Exception as exc:
        _failed_validation(ctx, batch_id, exc)
        raise


def _failed_validation(ctx: PipelineContext, batch_id: str, exc: Exception) -> None:
    from quality import QualityError
    from schemas import SchemaError

    if isinstance(exc, (SchemaError, QualityError)):
        _update_batch(ctx, batch_id, status="failed", finished_at=_now(), message=str(exc))


@dataclass
class _Checked:
    """What validating a batch's chunks found, before it is judged."""

    valid: int
    quarantined: int
    superseded: int
    cursor_to: Any
    extra_columns: list[str]
    expectations: Any  # the batch's quality.expectations.BatchCheck
    parquet: str
    cursor_min: Any = None
    unzoned: list[str] = field(default_factory=list)


def chunk_schema(ds: DatasetSpec) -> pa.Schema:
    """The Arrow schema of a validated chunk (and of the batch's Parquet file)."""
    from schemas import arrow_schema

    return pa.schema([f.with_nullable(True) for f in arrow_schema(ds).append(pa.field(EXTRAS_COLUMN, pa.string()))])


def _check_chunks(ctx: PipelineContext, batch_id: str, chunks: Iterator[LandedChunk],
                  on_good: Callable[[pa.Table], None] | None = None,
                  before_expect: Callable[[], None] | None = None) -> _Checked:
    """Validate chunk after chunk into the batch's Parquet file; `on_good(table)` also gets each chunk's good rows.

    `before_expect()`, if given, is called after `on_good` and before the chunk's expectations run
    (the streaming load of a one-chunk batch: wait until PostgreSQL is merging the chunk, so that
    GX's pure Python does not slow the loading thread's own Python before it).

    GX and pandas leave each chunk's frames in reference cycles: from the second chunk on,
    they are collected after each chunk. What existed before the first chunk (imports, GX's
    context: ~300,000 objects, no garbage to speak of) is frozen out of the collections,
    which keeps each ~1 ms; a full collection before freezing took ~100-170 ms of a 1M-row
    sync's validating thread, for next to nothing (~1,800 objects).
    """
    from quality.expectations import BatchCheck

    ds = ctx.dataset
    expectations = BatchCheck(ds, batch_id)
    quarantined = superseded = valid = 0
    cursor_to, cursor_min, extra_columns, unzoned = None, None, [], []
    schema = chunk_schema(ds)
    ingest_date = _now().date()
    path = ctx.lake.parquet_path(ds.name, ingest_date, batch_id)
    gc.freeze()
    try:
        with ctx.lake.parquet_writer(schema, ds.name, ingest_date, batch_id) as writer:
            for part, chunk in enumerate(chunks, start=1):
                done = _validate_chunk(ctx, batch_id, chunk, expectations)
                good = done.good.cast(schema)
                if on_good is not None:  # first: the load goes on while this chunk is expected and written
                    on_good(good)
                if before_expect is not None:
                    before_expect()
                done.expect()
                writer.write_table(good)
                valid, quarantined, superseded = (valid + done.good.num_rows, quarantined + done.quarantined,
                                                  superseded + done.superseded)
                if done.cursor_to is not None and (cursor_to is None or done.cursor_to > cursor_to):
                    cursor_to = done.cursor_to
                if done.cursor_min is not None and (cursor_min is None or done.cursor_min < cursor_min):
                    cursor_min = done.cursor_min
                extra_columns += [c for c in done.extra_columns if c not in extra_columns]
                unzoned += [c for c in done.unzoned if c not in unzoned]
                del done, chunk, good
                if part >= 2:  # a one-chunk batch (most incremental runs) leaves it to the next run
                    gc.collect()
                    _trim()
    finally:
        gc.unfreeze()
    return _Checked(valid, quarantined, superseded, cursor_to, extra_columns, expectations, str(path), cursor_min,
                    unzoned)


def _validated(ctx: PipelineContext, batch_id: str, manifest: dict[str, Any], checked: _Checked,
               publish: bool = True) -> dict[str, Any]:
    """Judge a checked batch: expectations stored and enforced, rows balanced, manifest and batch record updated.

    The Data Docs page is rendered here when `publish` is set or the batch failed (the error
    names the page); otherwise the caller renders it (`checked.expectations.publish()`).
    """
    from quality.expectations import check_outcomes

    ds, pipeline = ctx.dataset, ctx.pipeline
    outcomes = checked.expectations.outcomes()
    page = checked.expectations.publish() if publish or not all(o.success for o in outcomes) else None
    _store_expectations(ctx, batch_id, outcomes)
    check_outcomes(ds, batch_id, outcomes, page)
    valid, quarantined, superseded = checked.valid, checked.quarantined, checked.superseded
    result = {**manifest, "rows_valid": valid, "rows_quarantined": quarantined,
              "rows_superseded": superseded, "parquet": checked.parquet, "extra_columns": checked.extra_columns,
              "cursor_to": checked.cursor_to.isoformat() if checked.cursor_to is not None else None}
    if valid + quarantined + superseded != manifest["rows_pulled"]:
        raise BatchBalanceError(f"batch {batch_id}: pulled {manifest['rows_pulled']} != valid {valid}"
                                f" + quarantined {quarantined} + superseded {superseded}")
    extra_columns = checked.extra_columns
    drift = (f"schema drift: new source field(s) {extra_columns} kept in _extras; declare them in "
             f"catalog/datasets.yaml ({ds.name}) to load them as columns, then `lgsp warehouse migrate {ds.name}` "
             "moves the values loaded before") if extra_columns else None
    zoneless = (f"times written without a zone in {checked.unzoned}, read as UTC: if the source writes its own "
                f"local time, say `timezone: Asia/Ho_Chi_Minh` on the column(s) in catalog/datasets.yaml ({ds.name}), "
                f"then `lgsp run {pipeline.name} --full-refresh` reads the rows, and the cursor, again"
                ) if checked.unzoned else None
    said = "; ".join(s for s in (drift, zoneless, _before_window(ctx, manifest, checked.cursor_min)) if s) or None
    result["notes"] = said  # kept in lgsp_batch.message when the batch is loaded
    ctx.lake.write_manifest(pipeline.name, batch_id, result)
    if said:
        log.warning("%s: %s", pipeline.name, said)
    _update_batch(ctx, batch_id, status="validated", rows_quarantined=quarantined,
                  rows_superseded=superseded, lake_path=checked.parquet, message=said)
    return result


def _before_window(ctx: PipelineContext, manifest: dict[str, Any], oldest: Any) -> str | None:
    """Said when the source answered a record changed before the window it was asked for: it did not filter by
    the cursor parameter (renamed, dropped), so every incremental sync reads everything (nothing is lost, the
    peer is burdened), or the cursor parameter filters on another field than `cursor_field`."""
    since = manifest.get("cursor_from")
    source = ctx.pipeline.source
    if not since or oldest is None or getattr(oldest, "tzinfo", None) is None or not source.cursor_param:
        return None
    from connectors.source import cursor_as_read

    start = cursor_as_read(datetime.fromisoformat(since), source)  # a source asked by the day reads from its start
    if oldest >= start:
        return None
    return (f"the source answered records changed before the window asked for ({ctx.dataset.cursor_field} "
            f"{oldest.isoformat()} < {source.cursor_param} {start.isoformat()}): it may no longer filter by "
            f"{source.cursor_param}, so each sync reads everything; see `lgsp discover --compare {ctx.pipeline.name}`")


# --- load ------------------------------------------------------------------------------------

def _with_lineage(table: pa.Table, ctx: PipelineContext, batch_id: str, loaded_at: datetime | None = None) -> pa.Table:
    """A validated chunk plus the lineage columns (batch, source system, load time, content hash)."""
    hashes, n = row_hashes(table), table.num_rows
    return (table.append_column("_batch_id", pa.repeat(pa.scalar(batch_id), n))  # type: ignore[attr-defined]
            .append_column("_source_system", pa.repeat(pa.scalar(ctx.system.name), n))  # type: ignore
            .append_column("_loaded_at", pa.repeat(pa.scalar(loaded_at or _now(), pa.timestamp("us", "UTC")), n))  # type: ignore
            .append_column("_row_hash", hashes))


def load(ctx: PipelineContext, batch_id: str, delete_missing: float | None = None) -> dict[str, Any]:
    """Write a validated batch by the dataset's write mode; data, batch record and cursor in one transaction.

    The batch's Parquet file is read a row group (a validated chunk) at a time. `delete_missing`: see
    `_delete_missing` (a full refresh only).
    """
    result = ctx.lake.read_manifest(ctx.pipeline.name, batch_id)
    if "parquet" not in result:
        raise RuntimeError(f"batch {batch_id} of {ctx.pipeline.name} was not validated; run validate first")
    try:
        return _load_chunks(ctx, batch_id, ctx.lake.iter_batch(result["parquet"]), lambda: result,
                            refresh=(result.get("run") or batch_id) if result.get("mode") == "full_refresh" else None,
                            delete_missing=delete_missing)
    except Exception as exc:
        failed_load(ctx, batch_id, exc)
        raise


def failed_load(ctx: PipelineContext, batch_id: str, exc: BaseException) -> None:
    """Record why a validated batch's load was rolled back; it stays validated, so the next run loads it."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()  # the server's words, not the SQL
    message = (f"the load was refused and rolled back ({type(exc).__name__}: {reason[0] if reason else ''}); "
               "the batch stays validated: the next run loads it again once the cause is fixed")
    try:
        _update_batch(ctx, batch_id, message=message)
    except Exception:  # noqa: BLE001 - the warehouse itself may be what failed; the load's error is raised
        log.warning("%s: could not record the failed load of batch %s", ctx.pipeline.name, batch_id)


def _load_chunks(ctx: PipelineContext, batch_id: str, chunks: Iterable[pa.Table],
                 validated: Callable[[], dict[str, Any]],
                 on_merging: Callable[[], None] | None = None, refresh: str | None = None,
                 delete_missing: float | None = None) -> dict[str, Any]:
    """Write validated chunks, then, once `validated()` gives the batch's result, the cursor and batch record.

    One transaction: if `validated()` raises (the batch failed its checks), nothing is written.
    `on_merging()` is called whenever PostgreSQL starts merging a staged chunk (`store.ON_MERGING`).
    `refresh`, a full refresh's run id (the batch's own, or its partitioned run's): the batch read the whole
    source; its rows replace an earlier run's (`write_chunks`) and its newest cursor value is the watermark,
    even an earlier one (`set_cursor(exact=True)`). A slice of a partitioned run leaves the cursor to the
    run's `publish` step, which moves it once for all slices.
    `delete_missing` (a full refresh's): remove the records the source no longer has (`_delete_missing`).
    """
    wh, ds, pipeline = ctx.warehouse, ctx.dataset, ctx.pipeline
    loaded_at = _now()
    if delete_missing is not None and refresh is None:
        raise ValueError("only a full refresh reads every record the source has: --delete-missing needs it")
    seen: list[pa.Table] = []
    if delete_missing is not None:
        chunks = _keys_kept(chunks, ds.key, seen)
    removed, noted = 0, None
    with wh.transaction() as conn:
        if on_merging is not None:
            conn.info[ON_MERGING] = on_merging
        try:
            landed, changed = wh.write_chunks(conn, ds, (_with_lineage(c, ctx, batch_id, loaded_at) for c in chunks),
                                              refresh=refresh)
        finally:
            conn.info.pop(ON_MERGING, None)  # the connection goes back to the pool without it
        result = validated()
        pulled = (result.get("rows_pulled"), result.get("source_total"))
        if delete_missing is not None:
            removed, noted = _delete_missing(ctx, conn, batch_id, seen, delete_missing, loaded_at, pulled=pulled)
            changed += removed
        if refresh == batch_id and landed:
            _forget_unmarked(ctx, conn, batch_id, pulled)
        cursor_to = datetime.fromisoformat(result["cursor_to"]) if result.get("cursor_to") else None
        if result.get("mode") != "backfill" and not result.get("run"):
            wh.set_cursor(conn, pipeline.name, cursor_to, batch_id, synced=True, exact=refresh is not None)
        _update_batch(ctx, batch_id, conn, status="loaded", finished_at=_now(), rows_landed=landed,
                      rows_changed=changed, cursor_to=cursor_to,
                      message="; ".join(n for n in (result.get("notes"), noted) if n) or None)  # a refusal's: gone
        wh.stamp_change(conn, batch_id, ds.name, changed)  # last: the change feed's order is the commit order
    log.info("%s: batch %s loaded: %d rows, %d changed", pipeline.name, batch_id, landed, changed)
    return {**result, "rows_landed": landed, "rows_changed": changed,
            **({"rows_deleted": removed} if delete_missing is not None else {})}


def _forget_unmarked(ctx: PipelineContext, conn: sa.Connection, batch_id: str,
                     pulled: tuple[int | None, int | None]) -> None:
    """After a full refresh that received the whole source: the records an earlier batch of the pipeline received
    with their deletion marker and this one did not receive marked are no longer served marked (purged, or
    restored), so `lgsp_source_deleted` forgets them and `lgsp reconcile` stops counting them. A refresh that
    stopped short (fewer records than the source counted) forgets nothing."""
    received, counted = pulled
    if not ctx.dataset.delete_field or (received is not None and counted is not None and received < counted):
        return
    flagged = ctx.warehouse.system["lgsp_source_deleted"]
    conn.execute(flagged.delete().where(flagged.c.dataset == ctx.dataset.name, flagged.c.batch_id != batch_id,
                                        flagged.c.batch_id.in_(ctx.warehouse.batch_ids(pipeline=ctx.pipeline.name))))


def _keys_kept(chunks: Iterable[pa.Table], key: Sequence[str], seen: list[pa.Table]) -> Iterator[pa.Table]:
    """The chunks, keeping each one's key columns in `seen` as it passes."""
    for chunk in chunks:
        seen.append(chunk.select(list(key)))
        yield chunk


def _delete_missing(ctx: PipelineContext, conn: sa.Connection, batch_id: str, seen: list[pa.Table],
                    max_share: float, loaded_at: datetime, batches: Sequence[str] | None = None,
                    pulled: tuple[int | None, int | None] = (None, None)) -> tuple[int, str | None]:
    """After a full refresh: remove the records this source gave before and no longer has (deleted without a
    marker); (how many, a note when none was removed for safety).

    `seen`: the refresh's keys; a record it quarantined is still at the source, and stays. Removing
    deletes a merge table's row or closes a history table's current version, each recorded as deleted
    by this batch (the change feed tells mirrors). The rows are kept first as they were, in the lake
    (`removed/<dataset>/<batch_id>.parquet`). Nothing is removed when the refresh received no record, or
    when more than `max_share` of the source's records would go: a source answering part of its records
    looks the same as one that deleted them; nor when the refresh received fewer records than the source
    counted when it began (`pulled`: (records received, the source's count or None)): a pull that stopped
    short looks the same too. `batches`: the refresh's batches, when several (a partitioned run's slices;
    `batch_id` then only names the removal), else `batch_id`. When other pipelines of the same system load the
    dataset too (two endpoints, say), only the rows this pipeline's batches wrote last are its to remove.
    """
    wh, ds, system = ctx.warehouse, ctx.dataset, ctx.system.name
    rerun = f"`lgsp run {ctx.pipeline.name} --full-refresh --delete-missing --delete-max 1`"
    if not any(t.num_rows for t in seen):
        return 0, "the full refresh received no record, so none was deleted as missing: if the source really " \
                  f"holds none, {rerun}"
    received, counted = pulled
    if received is not None and counted is not None and received < counted:
        return 0, (f"the full refresh received {received} records and {system} counted {counted} when it began, so "
                   "none was deleted as missing (a pull that stopped short looks the same as deletions): run "
                   f"`lgsp run {ctx.pipeline.name} --full-refresh --delete-missing` again once it answers them all")
    q = wh.system["lgsp_quarantine"]
    held = conn.execute(sa.select(q.c.record_key).where(q.c.dataset == ds.name,
                                                        q.c.last_batch_id.in_(batches or [batch_id]))
                        .distinct()).scalars().all()
    siblings = rows_of(ctx.catalog, ctx.pipeline)[1]
    absent, total = wh.missing(conn, ds, pa.concat_tables(seen), held, system, loaded_at, siblings)
    count = int(conn.execute(sa.select(sa.func.count()).select_from(absent.subquery())).scalar_one())
    if count > max_share * total:
        giver = f"{system} ({ctx.pipeline.name})" if siblings else system
        return 0, (f"{count} of the {total} records {giver} gave before are not in this full refresh, more than "
                   f"{max_share:.0%}, so none was deleted (a source answering part of its records looks the same): "
                   f"if the source really deleted them, {rerun}")
    rows = [dict(r) for r in conn.execute(absent).mappings()]
    if rows:
        path = ctx.lake.write_removed(ds.name, batch_id, pa.Table.from_pylist(rows))
        log.info("%s: %d record(s) the source no longer has removed; kept in %s", ctx.pipeline.name, len(rows), path)
    return wh.remove(conn, ds, rows, batch_id, loaded_at), None


def delete_missing_of_run(ctx: PipelineContext, run: str, batch_ids: Sequence[str],
                          max_share: float) -> dict[str, Any]:
    """A partitioned full refresh's `_delete_missing`, once every slice has loaded: the records missing from all
    of `batch_ids` (the slices' batches, read back from the lake) go, recorded as deleted by `<run>.missing`.

    A note (nothing removed, and why) is added to the message of the run's last-started slice, which
    `lgsp status` reads. Returns {"rows_deleted": n, "note": note or None}.
    """
    key, wh = list(ctx.dataset.key), ctx.warehouse
    manifests = [ctx.lake.read_manifest(ctx.pipeline.name, batch_id) for batch_id in batch_ids]
    seen = [chunk.select(key) for manifest in manifests for chunk in ctx.lake.iter_batch(manifest["parquet"])]
    counts = [m.get("source_total") for m in manifests]
    pulled = (sum(int(m["rows_pulled"]) for m in manifests), None if None in counts else sum(counts))
    removal, batch = f"{run}.missing", wh.system["lgsp_batch"]
    with wh.transaction() as conn:
        removed, noted = _delete_missing(ctx, conn, removal, seen, max_share, _now(), batch_ids, pulled)
        if noted:
            last = conn.execute(sa.select(batch.c.batch_id, batch.c.message).where(batch.c.batch_id.in_(batch_ids))
                                .order_by(batch.c.started_at.desc()).limit(1)).one()
            _update_batch(ctx, last.batch_id, conn, message="; ".join(m for m in (last.message, noted) if m))
        wh.stamp_change(conn, removal, ctx.dataset.name, removed)
    return {"rows_deleted": removed, "note": noted}


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
                 until: datetime | None = None, delete_missing: float | None = None,
                 in_peak: bool = False) -> dict[str, Any]:
    """Run extract -> validate -> load from this process (what one DAG run does, its tasks in one go).

    A batch a killed run left behind is finished first: a half-pulled one is
    resumed from its last landed page, a pulled or validated one is validated
    and loaded. A new batch runs its three steps overlapping (`lgsp.streaming`;
    `LGSP_STREAMING=0` runs them one after another).
    `delete_missing` (with `full_refresh`): remove the records the source no longer has, unless more
    than that share of them would go (`_delete_missing`).
    A full refresh or a backfill in the system's peak hours raises InPeakHours (`limits.peak.bulk: wait`)
    unless `in_peak`.
    """
    from lgsp import streaming

    ctx = context(name, catalog, settings)
    fresh = full_refresh or since is not None or until is not None
    if not in_peak:
        check_off_peak(ctx, fresh)
    pending = None if fresh else _unfinished(ctx)
    if pending is not None:
        batch_id, status = pending
        log.info("%s: finishing batch %s left %s by an earlier run", name, batch_id, status)
    elif streaming.enabled():
        return streaming.run_streaming(ctx, full_refresh=full_refresh, since=since, until=until,
                                       delete_missing=delete_missing)
    else:
        batch_id, status = extract(ctx, full_refresh=full_refresh, since=since, until=until)["batch_id"], "extracted"
    if status == "extracted":
        validate(ctx, batch_id)
    return load(ctx, batch_id, delete_missing if fresh else None)
