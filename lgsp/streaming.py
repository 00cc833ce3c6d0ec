"""Extract, validate and load one batch at the same time (in-process runs: `lgsp run --inline`, the demo).

The three steps are the same functions the Airflow tasks run one after another
(`lgsp.runner`); here they overlap, each on its own core where it can:

    extract    this process pulls and lands the first page (one JSON line, as always); if
               more follow, a forked child pulls them (a batch of one page, most
               incremental runs, forks nothing);
    validate   this process validates the landed pages as they appear, chunk after
               chunk, into the batch's Parquet file and quarantine;
    load       a thread writes each chunk's good rows into the warehouse (PostgreSQL:
               the COPY runs in the server while the next chunk is validated), in one
               transaction that commits, with the cursor and the batch record, only
               after the whole batch passed its checks.

Nothing about what lands changes: the lake, quarantine, Parquet file, expectations
and warehouse end exactly as after the three steps run apart, and a run killed at any
point leaves a batch the next run finishes (`runner.run_pipeline`). The child dies
with its parent (PR_SET_PDEATHSIG), so a killed run never leaves an extract behind.

On SQLite (one writer at a time) the load waits for the validation to finish: a load
transaction held open would block the extract's page bookkeeping.

`LGSP_STREAMING=0` turns it off (the steps then run one after another).
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import pyarrow as pa

from connectors.source import field_values
from lgsp import runner
from lgsp.runner import LandedChunk, PipelineContext
from warehouse import rowhash

log = logging.getLogger("lgsp.streaming")
POLL_S = 0.05  # the longest the validator waits for the child's word before looking for a page again
FAST_SWITCH_S = 0.0005  # switch interval while a thread waiting on sockets shares the GIL with a busy one
_DONE = object()


def enabled() -> bool:
    return os.environ.get("LGSP_STREAMING", "1") != "0"


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the child then finishes its extract on its own
        pass


def _extract_child(ctx: PipelineContext, start: runner.BatchStart, pipe: Any) -> None:
    """The child: its own warehouse connections, then `runner.extract` into `start`, reporting through `pipe`."""
    _die_with_parent()
    ctx.warehouse.engine.dispose(close=False)  # the parent's pooled connections are not ours to use
    child = PipelineContext(ctx.catalog, ctx.pipeline, ctx.settings)
    # the parent has just brought the tables up to date: new connections, the same table definitions
    child.__dict__["warehouse"] = ctx.warehouse.reconnected()
    try:
        start = runner.pull_pages(child, start, on_page=lambda number, last: pipe.send(("page", number, last)))
        manifest = runner.finish_extract(child, start)
        pipe.send(("done", manifest))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        try:
            pickle.loads(pickle.dumps(exc))  # what the parent will receive, or a stand-in that keeps the message
        except Exception:  # noqa: BLE001
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        pipe.send(("error", exc))
    finally:
        pipe.close()


class _Extract:
    """The extract child process and what it has said so far."""

    def __init__(self, ctx: PipelineContext, start: runner.BatchStart) -> None:
        mp = multiprocessing.get_context("fork")
        self._pipe, child_end = mp.Pipe(duplex=False)
        self.process = mp.Process(target=_extract_child, args=(ctx, start, child_end), daemon=True,
                                  name=f"lgsp-extract-{ctx.pipeline.name}")
        self.process.start()
        child_end.close()
        self.batch_id = start.batch_id
        self.last_page: int | None = None  # the number of the batch's last page, once it has landed
        self.manifest: dict[str, Any] | None = None

    def poll(self, timeout: float = 0.0) -> bool:
        """Read what the child said (waiting up to `timeout` for a word); True once the extract is over.

        Raises the extract's error.
        """
        while self.manifest is None and self._pipe.poll(timeout):
            try:
                kind, *value = self._pipe.recv()
            except EOFError:
                self.process.join()
                raise RuntimeError(f"the extract process exited (code {self.process.exitcode}) "
                                   "without finishing; rerun the pipeline: it resumes after the last landed page")
            if kind == "page":
                number, last = value
                if last:
                    self.last_page = number
            elif kind == "done":
                self.manifest = value[0]
            else:
                self.process.join()
                raise value[0]
            timeout = 0.0
        return self.manifest is not None

    def wait(self) -> dict[str, Any]:
        while not self.poll(timeout=1.0):
            pass
        self.process.join()
        assert self.manifest is not None
        return self.manifest

    def alive(self) -> bool:
        return self.process.is_alive()


class _Extracted:
    """An extract that finished in this process (its first page was its last): nothing to wait for."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.batch_id, self.last_page, self.manifest = manifest["batch_id"], manifest["pages"], manifest

    def poll(self, timeout: float = 0.0) -> bool:
        return True

    def wait(self) -> dict[str, Any]:
        return self.manifest

    def alive(self) -> bool:
        return False


def _following_chunks(ctx: PipelineContext, extract: _Extract | _Extracted, chunk_rows: int) -> Iterator[LandedChunk]:
    """The batch's pages as they land, grouped into chunks of at least `chunk_rows` rows.

    A page is read once its file is there (pages a killed run landed are there from the
    start); the last chunk is handed on as soon as the last page has landed, while the
    child still records it.
    """
    lake, pipeline = ctx.lake, ctx.pipeline.name
    number, pages, rows, yielded = 1, [], 0, False
    while True:
        over = extract.poll()  # asked before looking: once over, every page is there
        path = lake.landed_page(pipeline, extract.batch_id, number)
        if path is not None:
            count, line = lake.read_page(path)
            pages.append(line)
            rows += count
            number += 1
            if rows >= chunk_rows:
                yield LandedChunk(b"".join(pages), rows)
                pages, rows, yielded = [], 0, True
        elif over or (extract.last_page is not None and number > extract.last_page):
            break
        else:
            extract.poll(timeout=POLL_S)  # until the child's next word (a page landed, or the end)
    if pages or not yielded:
        yield LandedChunk(b"".join(pages), rows)


class _Loader(threading.Thread):
    """Loads validated chunks as they come, commits once the batch's result is known."""

    def __init__(self, ctx: PipelineContext, batch_id: str, full_refresh: bool = False,
                 delete_missing: float | None = None) -> None:
        super().__init__(name=f"lgsp-load-{ctx.pipeline.name}", daemon=True)
        self.ctx, self.batch_id, self.refresh = ctx, batch_id, batch_id if full_refresh else None
        self.delete_missing = delete_missing
        self.chunks: queue.Queue[Any] = queue.Queue(maxsize=1)  # memory: at most one chunk waiting
        self.validated: Future[dict[str, Any]] = Future()
        self.outcome: Future[dict[str, Any]] = Future()
        self.merging = threading.Event()  # the last chunk given is being merged by PostgreSQL, or is written

    def _chunks(self) -> Iterator[pa.Table]:
        while (chunk := self.chunks.get()) is not _DONE:
            yield chunk
            self.merging.set()  # written (whichever way it went)

    def wait_merging(self) -> None:
        """Wait until PostgreSQL is merging the chunk last given (or it is written, or the loader is gone)."""
        while not self.merging.wait(0.5) and self.is_alive() and not self.outcome.done():
            pass

    def _offer(self, item: Any) -> bool:
        """Queue `item` for the loader; False if the loader is gone."""
        while self.is_alive():
            try:
                self.chunks.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def put(self, chunk: pa.Table) -> None:
        self.merging.clear()
        if not self._offer(chunk):
            self.outcome.result()  # the loader died: raise its error

    def run(self) -> None:
        try:
            self.outcome.set_result(runner._load_chunks(self.ctx, self.batch_id, self._chunks(),
                                                        lambda: self.validated.result(), self.merging.set,
                                                        self.refresh, self.delete_missing))
        except BaseException as exc:  # noqa: BLE001 - handed to the validating thread
            self.outcome.set_exception(exc)
            self.merging.set()  # nobody waits on a loader that failed
            while True:  # let the producer finish without blocking
                try:
                    if self.chunks.get(timeout=0.5) is _DONE:
                        return
                except queue.Empty:
                    if self.validated.done():
                        return

    def hand_over(self, result: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        """Hand over the batch's result (the loader commits) or its error (it rolls back)."""
        if error is not None:
            self.validated.set_exception(error)
        else:
            self.validated.set_result(result or {})
        self._offer(_DONE)

    def finish(self, result: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        """`hand_over`, then wait for the loader."""
        self.hand_over(result, error)
        self.join()


def run_streaming(ctx: PipelineContext, full_refresh: bool = False, since: datetime | None = None,
                  until: datetime | None = None, delete_missing: float | None = None) -> dict[str, Any]:
    """Extract, validate and load a new batch with the three steps overlapping; returns the load's result.

    `delete_missing`: see `runner._delete_missing`."""
    from quality.expectations import GxPaths, _cached_context
    from quality.rules import commune_value_set

    # The row hashes' DuckDB, the reference codes the row rules check and GX's context, while this thread
    # checks the tables, records the batch and waits for the source. No other thread may run at the fork
    # below: the child would inherit locks nobody releases (DuckDB's own threads only wait for work,
    # and a child leaves its copy alone).
    warming = threading.Thread(target=lambda: (rowhash.warm(runner.chunk_schema(ctx.dataset)), commune_value_set(),
                                               _cached_context(GxPaths.from_env(), ctx.dataset)),
                               name="lgsp-warm", daemon=True)
    # While it warms (pure Python, ~30 ms), this thread waits on PostgreSQL and the source; at the default
    # 5 ms switch interval each of its many reads of the page got the interpreter lock back late
    switching = sys.getswitchinterval()
    sys.setswitchinterval(FAST_SWITCH_S)
    warming.start()
    extract: _Extract | _Extracted | None = None
    loader: _Loader | None = None
    keys: list[Any] = []
    key = ctx.dataset.key[0] if len(ctx.dataset.key) == 1 else None
    try:
        ctx.warehouse.dialect  # noqa: B018 - the tables are created or checked here, once, before the fork
        start = runner.begin_extract(ctx, full_refresh=full_refresh, since=since, until=until)
        # the first page is pulled here: a batch of one page (most incremental runs) needs no child. Once
        # that page has landed the batch is known whole: the rows it will update are read ahead from then
        # on, beside the page's bookkeeping and the wait below rather than beside the validation, and are
        # in memory when the merge begins (docs/performance.md, sixth session: 284 against 302 ms cold)
        start = runner.pull_pages(ctx, start, max_pages=1, on_records=None if key is None else
                                  lambda records: keys.extend(field_values(records, key)),
                                  on_page=lambda _number, last: ctx.warehouse.read_ahead(ctx.dataset, keys)
                                  if last else None)
    finally:
        warming.join()
        sys.setswitchinterval(switching)
    batch_id = start.batch_id
    try:
        if start.state and start.state["done"]:
            extract = _Extracted(runner.finish_extract(ctx, start))
        else:
            extract = _Extract(ctx, start)
        del keys
        if ctx.warehouse.dialect == "postgresql":
            loader = _Loader(ctx, batch_id, full_refresh=start.mode == "full_refresh", delete_missing=delete_missing)
            loader.start()
        # A batch of one page is one chunk (most incremental runs): its expectations wait until PostgreSQL
        # merges it. Run at once, GX's pure Python took the interpreter lock from the loading thread's
        # own (row hashes, staging): the upsert started ~20 ms later (A/B in docs/performance.md)
        wait = loader.wait_merging if loader is not None and isinstance(extract, _Extracted) else None
        checked = runner._check_chunks(ctx, batch_id, _following_chunks(ctx, extract, runner.CHUNK_ROWS),
                                       on_good=loader.put if loader else None, before_expect=wait)
        manifest = extract.wait()
        result = runner._validated(ctx, batch_id, manifest, checked, publish=loader is None)
    except BaseException as exc:
        if extract is not None and extract.alive():  # let the extract finish landing: its batch record is final
            try:
                extract.wait()
            except BaseException:  # noqa: BLE001 - the validation error is the one to report
                pass
        runner._failed_validation(ctx, batch_id, exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        if loader is not None:
            loader.finish(error=exc)
        raise
    if loader is None:
        return runner.load(ctx, batch_id, delete_missing)
    loader.hand_over(result)  # the load commits while this thread renders the batch's Data Docs page
    sys.setswitchinterval(FAST_SWITCH_S)  # the loader's many short steps between waits on PostgreSQL get the GIL
    try:  # back quickly from the rendering (pure Python): at the default 5 ms they queued behind it
        checked.expectations.publish()
    finally:
        loader.join()
        sys.setswitchinterval(switching)
    try:
        return loader.outcome.result()
    except Exception as exc:
        runner.failed_load(ctx, batch_id, exc)
        raise
