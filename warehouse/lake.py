"""The lake: raw pages as received (landing) and validated batches as Parquet.

Layout under the lake root:
    landing/<pipeline>/<batch_id>/page-00001.json    a page's records as received, one line:
                                                     {"rows": N, "records": [...]}
    landing/<pipeline>/<batch_id>/manifest.json      what the extract step saw
    raw/<dataset>/ingest_date=YYYY-MM-DD/<batch_id>.parquet   typed, checked rows
    removed/<dataset>/<batch_id>.parquet             rows a full refresh removed from the store
                                                     (`--delete-missing`), as they were

Every file is written to a temporary name and renamed into place, so a reader
(or a process killed mid-write) never sees half a file.

Compaction (`Lake.compact`) merges a partition's batch files into a few files of about
`target_rows` rows. It never changes a partition folder's contents file by file: it builds
the new partition in `.staging/` (outside every dataset folder, so no reader looks there),
then swaps the two folders in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`), then
deletes the old folder, now in `.staging/`. A reader that lists a partition sees either
every batch file or the compacted files, never both and never neither; a crash at any point
leaves the lake readable with every row once, and the next compaction clears the debris.
Batch writes and compaction exclude each other through a lock file per dataset
(`.locks/<dataset>.lock`: shared for writes, exclusive for compaction).

Landed pages are kept until `lgsp lake prune` deletes those of batches loaded long enough
ago (`Lake.prune_pages`, `lgsp.retention`); their manifests stay.

When a dataset's definition changes a column's type, or declares a field older files keep in
`_extras`, `Lake.conform` rewrites those files in the declared shape (same names, partitions
swapped whole as compaction does), so the dataset reads as one again (`lgsp lake conform`, run
by `lgsp warehouse migrate`).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

DEFAULT_TARGET_ROWS = 1_000_000
PROVENANCE_KEY = b"lgsp.batches"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
PAGES_PRUNED = "pages_pruned"  # in a manifest: when `prune_pages` deleted the batch's landed pages, how many


def _page_number(path: Path) -> int:
    return int(path.name.split(".")[0].removeprefix("page-"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot store {type(value).__name__} in the landing zone")


def to_json(value: Any) -> str:
    """Stable JSON for a source record (dates as ISO 8601, keys sorted)."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, sort_keys=True)


def _atomic_write(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _ChunkWriter:
    """A Parquet writer opened on the first chunk, dictionary-encoding only the columns that repeat.

    Dictionary encoding pays for codes, names and enumerations, not for identifiers or
    addresses: trying it on every column made the write twice as slow and the file larger.
    The choice is made from the first chunk (distinct values under half its rows).
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema, self.writer = path, schema, None

    def write_table(self, table: pa.Table) -> None:
        if self.writer is None:
            import pyarrow.compute as pc

            repeating = [f.name for f in table.schema if table.num_rows == 0
                         or pc.count_distinct(table.column(f.name)).as_py() * 2 < table.num_rows]
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd", use_dictionary=repeating)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # no chunk at all: an empty file with the schema
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self.writer.close()


class Lake:
    """A lake rooted at a folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def batch_dir(self, pipeline: str, batch_id: str) -> Path:
        return self.root / "landing" / pipeline / batch_id

    def write_page(self, pipeline: str, batch_id: str, number: int, records: Any) -> Path:
        """Land one page of source records, atomically, as one line: `{"rows": N, "records": [...]}`.

        One line per page, not per record: orjson writes the page in one call (a call per
        record took five times as long), `pyarrow.json` reads the lines of a batch's pages
        as a list column, and the row count up front tells a reader how many records a page
        holds without parsing it (`read_page`). `records` is a list, or the peer's own JSON
        array (`connectors.source.RawRecords`: its `json` bytes and their count), landed as
        sent but for its line breaks between values (JSON has none inside a string).
        """
        path = self.batch_dir(pipeline, batch_id) / f"page-{number:05d}.json"
        raw = getattr(records, "json", None)
        if isinstance(raw, bytes):
            if b"\n" in raw or b"\r" in raw:
                raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
            line = b'{"rows":%d,"records":%s}\n' % (len(records), raw)
            return _atomic_write(path, lambda tmp: tmp.write_bytes(line))
        page = {"rows": len(records), "records": records}
        try:  # string keys (JSON, most SOAP answers): orjson's plain path, a third faster
            body = orjson.dumps(page, default=_json_default)
        except TypeError:  # a dict with non-string keys somewhere in the page
            body = orjson.dumps(page, default=_json_default, option=_ORJSON_OPTIONS)
        return _atomic_write(path, lambda tmp: tmp.write_bytes(body + b"\n"))

    def page_paths(self, pipeline: str, batch_id: str) -> list[Path]:
        """The landed pages of a batch, in page order.

        `page-N.json`, and `page-N.jsonl` (one record per line) as earlier versions landed them.
        """
        folder = self.batch_dir(pipeline, batch_id)
        return sorted([*folder.glob("page-*.json"), *folder.glob("page-*.jsonl")], key=_page_number)

    def landed_page(self, pipeline: str, batch_id: str, number: int) -> Path | None:
        """Page `number` of a batch if it has landed, else None."""
        folder = self.batch_dir(pipeline, batch_id)
        for name in (f"page-{number:05d}.json", f"page-{number:05d}.jsonl"):
            if (folder / name).exists():
                return folder / name
        return None

    @staticmethod
    def read_page(path: Path) -> tuple[int, bytes]:
        """(rows, the page as one `{"rows": N, "records": [...]}` line) of a landed page.

        A page landed one record per line (`.jsonl`, by earlier versions) is rewrapped on the fly:
        its lines joined with commas are the records array, nothing is parsed.
        """
        body = path.read_bytes()
        if path.suffix == ".jsonl":
            lines = body.splitlines()
            return len(lines), b'{"rows":%d,"records":[%s]}\n' % (len(lines), b",".join(lines))
        return Lake.page_rows(body, path), body

    @staticmethod
    def page_rows(line: bytes, path: Path | None = None) -> int:
        """The row count at the head of a page line (`{"rows": N, ...`), read without parsing the page."""
        head = line[:40]
        try:
            if not head.startswith(b'{"rows":'):
                raise ValueError
            return int(head[len(b'{"rows":'):head.index(b",")])
        except ValueError:
            raise ValueError(f"landed page {path or ''} does not start with {{\"rows\": N, ...}} "
                             f"(starts {head[:20]!r}): it was damaged or written by another tool; "
                             "delete the batch's landing folder and rerun the pipeline to pull it again") from None

    @staticmethod
    def page_records(line: bytes) -> list[Any]:
        """The records of one page line (`read_page`)."""
        return orjson.loads(line)["records"]  # type: ignore[no-any-return]

    def write_removed(self, dataset: str, batch_id: str, rows: pa.Table) -> Path:
        """Keep the rows a full refresh removed from the store (records deleted at the source without a marker),
        as they were, in `removed/<dataset>/<batch_id>.parquet`: readable, and restorable, for ever."""
        path = self.root / "removed" / dataset / f"{batch_id}.parquet"
        return _atomic_write(path, lambda tmp: pq.write_table(rows, tmp, compression="zstd"))

    def write_manifest(self, pipeline: str, batch_id: str, manifest: dict[str, Any]) -> Path:
        path = self.batch_dir(pipeline, batch_id) / "manifest.json"
        return _atomic_write(path, lambda tmp: tmp.write_text(to_json(manifest), encoding="utf-8"))

    def read_manifest(self, pipeline: str, batch_id: str) -> dict[str, Any]:
        path = self.batch_dir(pipeline, batch_id) / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"batch {batch_id} of {pipeline} has no manifest at {path}: "
                                    "its extract step did not finish; rerun the pipeline")
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def prune_pages(self, pipeline: str, batch_id: str, dry_run: bool = False) -> tuple[int, int]:
        """Delete a batch's landed pages; (pages, bytes) deleted, or that would be with `dry_run`.

        For a batch that was loaded: its rows are in its Parquet file and in quarantine. The
        manifest stays and records the pruning (`PAGES_PRUNED`) before any page goes, so a
        later validation of the batch says why its pages are missing; pruning again finds
        nothing to delete.
        """
        pages = self.page_paths(pipeline, batch_id)
        size = sum(path.stat().st_size for path in pages)
        if pages and not dry_run:
            try:
                manifest = self.read_manifest(pipeline, batch_id)
            except FileNotFoundError:
                manifest = {"batch_id": batch_id, "pipeline": pipeline}
            manifest[PAGES_PRUNED] = {"at": datetime.now(timezone.utc).isoformat(), "pages": len(pages),
                                      "bytes": size}
            self.write_manifest(pipeline, batch_id, manifest)
            for path in pages:
                path.unlink(missing_ok=True)
        return len(pages), size

    def read_records(self, pipeline: str, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every landed record of a batch, in page order."""
        for path in self.page_paths(pipeline, batch_id):
            yield from self.page_records(self.read_page(path)[1])

    def parquet_path(self, dataset: str, ingest_date: date, batch_id: str) -> Path:
        return self.root / "raw" / dataset / f"ingest_date={ingest_date.isoformat()}" / f"{batch_id}.parquet"

    def write_parquet(self, table: pa.Table, dataset: str, ingest_date: date, batch_id: str) -> Path:
        """Write a checked batch under raw/<dataset>/ingest_date=.../<batch_id>.parquet, atomically."""
        path = self.parquet_path(dataset, ingest_date, batch_id)
        with self._dataset_lock(dataset, exclusive=False):
            return _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    @contextmanager
    def parquet_writer(self, schema: pa.Schema, dataset: str, ingest_date: date, batch_id: str) -> Iterator[Any]:
        """A Parquet writer for a batch written chunk by chunk (one row group per chunk).

        The file appears under its final name only when the block exits without error.
        """
        path = self.parquet_path(dataset, ingest_date, batch_id)
        with self._dataset_lock(dataset, exclusive=False):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            writer = _ChunkWriter(tmp, schema)
            try:
                yield writer
                writer.close()
                os.replace(tmp, path)
            finally:
                writer.close()
                tmp.unlink(missing_ok=True)

    def dataset_path(self, dataset: str) -> Path:
        return self.root / "raw" / dataset

    def datasets(self) -> list[str]:
        """The datasets that have a folder under raw/."""
        raw = self.root / "raw"
        if not raw.is_dir():
            return []
        return sorted(p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def partitions(self, dataset: str, ingest_date: date | None = None) -> list[Path]:
        """The dataset's partition folders (`ingest_date=YYYY-MM-DD`), oldest first."""
        pattern = f"ingest_date={ingest_date.isoformat()}" if ingest_date else "ingest_date=*"
        return sorted(p for p in self.dataset_path(dataset).glob(pattern) if p.is_dir())

    def read_dataset(self, dataset: str) -> pa.Table:
        """Every row of a dataset as one table, with its `ingest_date` (date32) partition column.

        The files' schemas are unified: a column the definition declared later (`lgsp warehouse
        migrate`) is null in the files written before, where pyarrow alone would take the first
        file's columns and drop it. A column whose type changed cannot be unified: the error names it.
        """
        partition = pa.field("ingest_date", pa.date32())
        files = sorted(self.dataset_path(dataset).glob("ingest_date=*/*.parquet"))
        try:
            schema = pa.unify_schemas([pq.read_schema(f).remove_metadata() for f in files]) if files else None
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"lake dataset {dataset}: its files disagree on a column's type ({exc}); "
                             f"`lgsp lake conform {dataset}` rewrites the older files in the declared type") from None
        return pads.dataset(self.dataset_path(dataset), format="parquet",
                            schema=schema.append(partition) if schema is not None else None,
                            partitioning=pads.partitioning(pa.schema([partition]), flavor="hive")).to_table()

    def read_batch(self, path: Path | str) -> pa.Table:
        """The rows of one written batch, found in its own file or, once compacted, in the file holding it.

        `path` is what `write_parquet` returned; compacted files record, in their Parquet key-value
        metadata (`lgsp.batches`), which batches they hold in which order.
        """
        path = Path(path)
        try:
            return pq.ParquetFile(path).read()
        except FileNotFoundError:
            pass
        for candidate in sorted(path.parent.glob("*.parquet")):
            parquet = pq.ParquetFile(candidate)
            offset = 0
            for batch, rows in _provenance(candidate, parquet):
                if batch == path.stem:
                    return parquet.read().slice(offset, rows)
                offset += rows
        raise FileNotFoundError(f"batch {path.stem} is neither at {path} nor in a compacted file beside it")

    def iter_batch(self, path: Path | str) -> Iterator[pa.Table]:
        """The rows of one written batch, a row group (a validated chunk) at a time; see `read_batch`."""
        path = Path(path)
        try:
            parquet = pq.ParquetFile(path)
        except FileNotFoundError:
            yield self.read_batch(path)  # compacted: the batch is a slice of a bigger file
            return
        for group in range(parquet.num_row_groups):
            yield parquet.read_row_group(group)

    def batch_ids(self, dataset: str) -> set[str]:
        """The batches whose rows the dataset's files hold (a batch file's name; a compacted file's list)."""
        with self.steady(dataset) if self.dataset_path(dataset).is_dir() else nullcontext():
            return {batch for path in self.dataset_path(dataset).glob("ingest_date=*/*.parquet")
                    for batch, _ in _provenance(path, pq.ParquetFile(path))}

    def info(self, dataset: str | None = None) -> list[PartitionInfo]:
        """Files, rows and bytes per partition of one dataset (or of every dataset)."""
        found = []
        for name in [dataset] if dataset else self.datasets():
            for part in self.partitions(name):
                files = sorted(part.glob("*.parquet"))
                found.append(PartitionInfo(
                    dataset=name, ingest_date=_partition_date(part), files=len(files),
                    rows=sum(pq.ParquetFile(f).metadata.num_rows for f in files),
                    bytes=sum(f.stat().st_size for f in files)))
        return found

    def compact(self, dataset: str, ingest_date: date | None = None, target_rows: int = DEFAULT_TARGET_ROWS,
                min_age: timedelta = timedelta(hours=1)) -> list[Compaction]:
        """Merge each partition's small files into files of at most ~`target_rows` rows.

        A partition is left alone if it is already compact or if one of its files is younger than
        `min_age` (its batch may still be waiting for its load step). Batches are never split: a
        batch larger than `target_rows` keeps a file of its own. Running it again changes nothing.
        Safe against readers and crashes: see the module docstring.
        """
        if target_rows < 1:
            raise ValueError(f"target_rows must be at least 1, not {target_rows}")
        done = []
        with self._dataset_lock(dataset, exclusive=True):
            _discard(self.root / ".staging" / dataset)  # debris of an interrupted compaction
            for part in self.partitions(dataset, ingest_date):
                result = self._compact_partition(dataset, part, target_rows, min_age)
                if result is not None:
                    done.append(result)
        return done

    def _compact_partition(self, dataset: str, part: Path, target_rows: int,
                           min_age: timedelta) -> Compaction | None:
        files = sorted(part.glob("*.parquet"))
        newest = max((f.stat().st_mtime for f in files), default=0.0)
        if time.time() - newest < min_age.total_seconds():
            return None
        groups = _pack(files, target_rows)
        if len(groups) == len(files):
            return None
        staging = self.root / ".staging" / dataset / uuid.uuid4().hex / part.name
        staging.mkdir(parents=True)
        token = uuid.uuid4().hex[:12]
        for number, group in enumerate(groups):
            _write_group(group, staging / f"compacted-{token}-{number:04d}.parquet")
        _fsync(staging)
        _exchange_dirs(staging, part)  # readers now see the compacted files and only them
        _fsync(part.parent)
        _discard(staging.parent)  # the old batch files, already invisible to readers
        return Compaction(dataset=dataset, ingest_date=_partition_date(part), files_before=len(files),
                          files_after=len(groups), rows=sum(pq.ParquetFile(f).metadata.num_rows
                                                            for f in part.glob("*.parquet")))

    def conform(self, dataset: str, rewrite: Callable[[pa.Table], pa.Table | None],
                refusal: Callable[[], str | None] = lambda: None, dry_run: bool = False) -> Conformed:
        """Rewrite the dataset's files that `rewrite` changes (it returns None for a file left as it is).

        Used after `lgsp warehouse migrate` changed a column's type or declared a field kept in `_extras`
        (warehouse.migrate.conform_lake): every file is read, each changed one written under the same
        name (its batches' provenance kept), the others hard-linked, into `.staging/`; if `refusal()`
        then says why not (values that do not convert), nothing changes and ValueError says so.
        Otherwise each partition that changed is swapped in whole (`renameat2`), as compaction does,
        under the dataset's exclusive lock: readers see every row once, before or after.
        """
        changed: list[Path] = []
        with self._dataset_lock(dataset, exclusive=True):
            _discard(self.root / ".staging" / dataset)
            staging_root = self.root / ".staging" / dataset / uuid.uuid4().hex
            try:
                staged = []
                for part in self.partitions(dataset):
                    staging, touched = staging_root / part.name, False
                    staging.mkdir(parents=True)
                    for path in sorted(part.glob("*.parquet")):
                        table = pq.read_table(path)
                        new = rewrite(table)
                        if new is None:
                            os.link(path, staging / path.name)
                            continue
                        pq.write_table(new.replace_schema_metadata(table.schema.metadata), staging / path.name,
                                       compression="zstd")
                        _fsync(staging / path.name)
                        changed.append(path)
                        touched = True
                    if touched:
                        staged.append((staging, part))
                reason = refusal()
                if reason:
                    raise ValueError(f"lake dataset {dataset}: {reason}; no file was changed")
                if not dry_run:
                    for staging, part in staged:
                        _fsync(staging)
                        _exchange_dirs(staging, part)  # readers now see the rewritten partition whole
                        _fsync(part.parent)
            finally:
                _discard(staging_root)  # the old partitions (swapped out) or the unused copies
        return Conformed(dataset=dataset, files=len(changed), partitions=len({p.parent for p in changed}),
                         rows=sum(pq.ParquetFile(p).metadata.num_rows for p in changed), dry_run=dry_run)

    def steady(self, dataset: str) -> Any:
        """Hold off the compaction of `dataset` (batches go on being written): for a consistent copy of its files."""
        return self._dataset_lock(dataset, exclusive=False)

    def held_alone(self, dataset: str) -> Any:
        """Hold `dataset`'s files still: no batch written and no compaction until the block exits."""
        return self._dataset_lock(dataset, exclusive=True)

    @contextmanager
    def _dataset_lock(self, dataset: str, exclusive: bool) -> Iterator[None]:
        """Writers share the dataset's lock; compaction holds it alone."""
        path = self.root / ".locks" / f"{dataset}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield


@dataclass(frozen=True)
class PartitionInfo:
    """What one partition of the lake holds."""

    dataset: str
    ingest_date: date
    files: int
    rows: int
    bytes: int


@dataclass(frozen=True)
class Compaction:
    """One partition merged by `Lake.compact`."""

    dataset: str
    ingest_date: date
    files_before: int
    files_after: int
    rows: int


@dataclass(frozen=True)
class Conformed:
    """What `Lake.conform` rewrote (or, with `dry_run`, would rewrite)."""

    dataset: str
    files: int
    partitions: int
    rows: int
    dry_run: bool


def _partition_date(part: Path) -> date:
    return date.fromisoformat(part.name.removeprefix("ingest_date="))


def _pack(files: list[Path], target_rows: int) -> list[list[Path]]:
    """Consecutive files grouped so no group passes `target_rows` (a bigger file stays alone).

    A file whose columns cannot be unified with its group's (a column's type changed between
    them: `lgsp warehouse migrate`) starts a new group. Each group plus the next group's first
    file passes `target_rows` or does not unify, so packing the output again gives one file per
    group: compaction is idempotent.
    """
    groups: list[list[Path]] = []
    rows, schema = 0, None
    for path in files:
        parquet = pq.ParquetFile(path)
        count, own = parquet.metadata.num_rows, parquet.schema_arrow.remove_metadata()
        unified = _unified(schema, own) if groups and rows + count <= target_rows else None
        if unified is not None:
            groups[-1].append(path)
            rows, schema = rows + count, unified
        else:
            groups.append([path])
            rows, schema = count, own
    return groups


def _unified(first: pa.Schema | None, second: pa.Schema) -> pa.Schema | None:
    """The two schemas as one (columns of either, null where absent), or None if a column's types differ."""
    try:
        return pa.unify_schemas([first, second]) if first is not None else second
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _provenance(path: Path, parquet: pq.ParquetFile) -> list[tuple[str, int]]:
    """The batches a file holds, in row order: [(batch_id, rows)]."""
    metadata = parquet.schema_arrow.metadata or {}
    if PROVENANCE_KEY in metadata:
        return [(batch, rows) for batch, rows in json.loads(metadata[PROVENANCE_KEY])]
    return [(path.stem, parquet.metadata.num_rows)]


def _write_group(files: list[Path], target: Path) -> None:
    """One compacted file from several batch files (columns a later batch added are null before it)."""
    tables, batches = [], []
    for path in files:
        parquet = pq.ParquetFile(path)
        batches += _provenance(path, parquet)
        tables.append(parquet.read().replace_schema_metadata(None))
    table = pa.concat_tables(tables, promote_options="default")
    table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(batches).encode()})
    pq.write_table(table, target, compression="zstd")
    _fsync(target)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (so a power cut cannot undo a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange_dirs(first: Path, second: Path) -> None:
    """Swap two folders in one atomic step (Linux renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "lake compaction needs renameat2 (Linux, glibc 2.28+)")
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot swap {first} and {second}: {os.strerror(code)}")


def _discard(path: Path) -> None:
    """Remove a folder that no reader looks at (staging debris, swapped-out batch files)."""
    shutil.rmtree(path, ignore_errors=True)
