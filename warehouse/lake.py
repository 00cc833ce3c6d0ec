"""The lake: raw pages as received (landing) and validated batches as Parquet.

Layout under the lake root:
    landing/<pipeline>/<batch_id>/page-00001.jsonl   records exactly as received
    landing/<pipeline>/<batch_id>/manifest.json      what the extract step saw
    raw/<dataset>/ingest_date=YYYY-MM-DD/<batch_id>.parquet   typed, checked rows

Every file is written to a temporary name and renamed into place, so a reader
(or a process killed mid-write) never sees half a file.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


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


class Lake:
    """A lake rooted at a folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def batch_dir(self, pipeline: str, batch_id: str) -> Path:
        return self.root / "landing" / pipeline / batch_id

    def write_page(self, pipeline: str, batch_id: str, number: int, records: list[dict[str, Any]]) -> Path:
        """Land one page of source records as JSON lines, atomically."""
        path = self.batch_dir(pipeline, batch_id) / f"page-{number:05d}.jsonl"
        text = "".join(to_json(r) + "\n" for r in records)
        return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_manifest(self, pipeline: str, batch_id: str, manifest: dict[str, Any]) -> Path:
        path = self.batch_dir(pipeline, batch_id) / "manifest.json"
        return _atomic_write(path, lambda tmp: tmp.write_text(to_json(manifest), encoding="utf-8"))

    def read_manifest(self, pipeline: str, batch_id: str) -> dict[str, Any]:
        path = self.batch_dir(pipeline, batch_id) / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"batch {batch_id} of {pipeline} has no manifest at {path}: "
                                    "its extract step did not finish; rerun the pipeline")
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def read_records(self, pipeline: str, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every landed record of a batch, in page order."""
        for path in sorted(self.batch_dir(pipeline, batch_id).glob("page-*.jsonl")):
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    yield json.loads(line)

    def parquet_path(self, dataset: str, ingest_date: date, batch_id: str) -> Path:
        return self.root / "raw" / dataset / f"ingest_date={ingest_date.isoformat()}" / f"{batch_id}.parquet"

    def write_parquet(self, table: pa.Table, dataset: str, ingest_date: date, batch_id: str) -> Path:
        """Write a checked batch under raw/<dataset>/ingest_date=.../<batch_id>.parquet, atomically."""
        path = self.parquet_path(dataset, ingest_date, batch_id)
        return _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def dataset_path(self, dataset: str) -> Path:
        return self.root / "raw" / dataset
