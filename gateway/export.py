"""Streamed exports of a query's rows: CSV, JSON lines, Parquet.

Rows arrive in keyset chunks (`Reader.chunks`); each chunk is encoded and sent as it
comes, so memory stays at one chunk whatever the export's size (capped by
LGSP_GATEWAY_MAX_EXPORT_ROWS). Parquet is written one row group per chunk.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, timezone
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from catalog.models import DatasetSpec, SharedDatasetSpec
from schemas.arrow import ARROW_TYPES

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson",
               "parquet": "application/vnd.apache.parquet"}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_stream(columns: list[str], chunks: Iterable[list[dict[str, Any]]]) -> Iterator[bytes]:
    """A header line, then the rows (RFC 4180 quoting, UTF-8, ISO dates, UTC timestamps with Z)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    yield buffer.getvalue().encode()
    for chunk in chunks:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([[_text(r[c]) for c in columns] for r in chunk])
        yield buffer.getvalue().encode()


def jsonl_stream(columns: list[str], chunks: Iterable[list[dict[str, Any]]]) -> Iterator[bytes]:
    """One JSON object per line."""
    option = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
    for chunk in chunks:
        yield b"".join(orjson.dumps(r, option=option) for r in chunk)


class _Sink(io.RawIOBase):
    """A write-only file that hands over what was written since the last `take`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def parquet_schema(dataset: DatasetSpec, shared: SharedDatasetSpec, columns: list[str]) -> pa.Schema:
    """Arrow types of the exported columns; protected personal columns are strings."""
    return pa.schema([(c, pa.string() if c in shared.personal else ARROW_TYPES[dataset.columns[c].type])
                      for c in columns])


def parquet_stream(schema: pa.Schema, chunks: Iterable[list[dict[str, Any]]]) -> Iterator[bytes]:
    """A Parquet file, one row group per chunk, sent as each row group is written."""
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        for chunk in chunks:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()


def encoder(fmt: str) -> Callable[..., Iterator[bytes]]:
    return {"csv": csv_stream, "jsonl": jsonl_stream, "parquet": parquet_stream}[fmt]
