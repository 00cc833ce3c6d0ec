"""Dataset definition -> Arrow schema, and source records -> a typed batch.

Coercion is vectorised per column (pandas). A value of the wrong type does not
fail the batch: its row is marked with the reason and goes to quarantine. A
required column missing from the whole batch does fail it: that is a contract
break, not a bad row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from catalog.models import ColumnSpec, DatasetSpec

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


class SchemaError(ValueError):
    """The batch breaks the dataset's contract (e.g. a required field is missing)."""


def arrow_schema(dataset: DatasetSpec) -> pa.Schema:
    """The Arrow schema of the dataset's declared columns, in declaration order."""
    return pa.schema([pa.field(name, ARROW_TYPES[col.type], nullable=not col.required)
                      for name, col in dataset.columns.items()])


@dataclass
class TypedBatch:
    """Records coerced to the dataset's types.

    `frame` has one row per source record (same order); `type_errors` maps a
    row position to the reason its value could not be coerced.
    """

    frame: pd.DataFrame
    type_errors: dict[int, str] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    extras: pd.Series | None = None
    unzoned: list[str] = field(default_factory=list)  # timestamp columns without a `timezone` sent zone-less times


def _coerce_column(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    kind = spec.type
    if kind == "string":
        is_text = values.map(lambda v: isinstance(v, str), na_action="ignore").fillna(True).astype(bool)
        text = values.where(is_text)
        return text.astype("string").str.normalize("NFC")
    if kind in ("date", "timestamp"):
        return parse_times(values, spec)
    if kind == "boolean":
        return values.map(lambda v: v if isinstance(v, bool) else None, na_action="ignore").astype("boolean")
    if kind == "integer":
        return pd.to_numeric(values, errors="coerce").astype("Int64")
    return pd.to_numeric(values, errors="coerce").astype("Float64")


def coerce(records: list[dict[str, Any]], dataset: DatasetSpec) -> TypedBatch:
    """Coerce source records to the dataset's declared types.

    Raises:
        SchemaError: a required column is absent from every record.
    """
    raw = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    missing = [n for n, c in dataset.columns.items() if c.required and n not in raw.columns]
    if records and missing:
        raise SchemaError(f"dataset {dataset.name}: required field(s) {missing} missing from the batch; "
                          "the source changed its contract: update catalog/datasets.yaml or the source")
    typed: dict[str, pd.Series] = {}
    errors: dict[int, str] = {}
    zoneless: list[str] = []
    for name, spec in dataset.columns.items():
        values = raw[name] if name in raw.columns else pd.Series([None] * len(raw), dtype="object")
        values = values.astype("object").where(values.notna(), None)
        if unzoned(values, spec):
            zoneless.append(name)
        converted = _coerce_column(values, spec)
        bad = values.notna().to_numpy() & converted.isna().to_numpy()
        for pos in bad.nonzero()[0]:
            errors.setdefault(int(pos), not_valid(name, values.iloc[pos], spec))
        typed[name] = converted
    frame = pd.DataFrame(typed, index=range(len(raw)))
    extra = [c for c in raw.columns if c not in dataset.columns]
    return TypedBatch(frame=frame, type_errors=errors, extra_columns=extra, extras=_extras(raw, extra),
                      unzoned=zoneless)


JSON_TYPES: dict[str, pa.DataType] = {  # how each declared type arrives in JSON on the fast path
    "string": pa.string(), "date": pa.string(), "timestamp": pa.string(),
    "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(),
}


def json_schema(dataset: DatasetSpec) -> pa.Schema:
    """The Arrow schema landed JSON lines are read with (`pyarrow.json`) on the fast path."""
    return pa.schema([(name, JSON_TYPES[col.type]) for name, col in dataset.columns.items()])


ZONED_TEXT = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)\s*$")
"""A time written with its zone (`...09:30:00+07:00`, `...09:30Z`); a date's `-15` is not a zone."""


def parse_times(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    """A date or timestamp column's values parsed as the column says (ColumnSpec `format`, `timezone`).

    `values` holds text, or the date and time objects SOAP gives. Dates come back as naive
    midnights, timestamps in UTC; a value that is not one is NaT (its row goes to quarantine).
    A `format` reads text only: a date or time object is one already.
    """
    if spec.format is None:
        return _parse_iso(values, spec)
    objects = _where(values, lambda v: not isinstance(v, str), text=False)
    if not objects.any():
        return _parse_pattern(values, spec)
    parsed = _parse_iso(values.where(objects), spec)
    parsed[~objects] = _parse_pattern(values[~objects], spec)
    return parsed


def _where(values: pd.Series, test: Any, text: bool) -> np.ndarray:
    """Which values are present and pass `test`; `text` is its answer for every string of a string column."""
    if isinstance(values.dtype, pd.StringDtype):
        return values.notna().to_numpy() & text
    return values.notna().to_numpy() & np.fromiter((bool(test(v)) for v in values), bool, len(values))


def _parse_pattern(texts: pd.Series, spec: ColumnSpec) -> pd.Series:
    zoned = "%z" in str(spec.format)
    parsed = pd.to_datetime(texts, format=spec.format, errors="coerce", utc=zoned)
    if spec.type == "date":
        return _midnight(parsed).astype("datetime64[us]")
    return parsed.astype("datetime64[us, UTC]") if zoned else _localize(parsed, spec.timezone)


def _parse_iso(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    if spec.type == "date":
        return _midnight(pd.to_datetime(values.map(lambda v: str(v) if v is not None else v, na_action="ignore"),
                                        errors="coerce", format="ISO8601"))
    if spec.timezone is None:
        return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    naive = _naive(values)
    parsed = pd.to_datetime(values.where(~naive), utc=True, errors="coerce", format="ISO8601")
    parsed = parsed.astype("datetime64[us, UTC]")
    if naive.any():
        parsed[naive] = _localize(pd.to_datetime(values[naive], errors="coerce", format="ISO8601"), spec.timezone)
    return parsed


def _naive(values: pd.Series) -> np.ndarray:
    """Which values are times written without a zone: text without one, or a date or time object without one."""
    try:
        zoned = values.str.contains(ZONED_TEXT.pattern)  # not text: NA
    except AttributeError:  # no text at all (SOAP's dateTimes)
        zoned = pd.Series(pd.NA, index=values.index, dtype="boolean")
    texts = zoned.notna().to_numpy(bool)
    naive = texts & ~zoned.fillna(True).to_numpy(bool)
    others = values.notna().to_numpy(bool) & ~texts
    if others.any():
        naive[others] = [isinstance(v, date) and getattr(v, "tzinfo", None) is None for v in values[others]]
    return naive


def _localize(parsed: pd.Series, zone: str | None) -> pd.Series:
    """Naive times read as wall-clock times of `zone` (UTC if None), in UTC; a time the zone skips is NaT."""
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize(zone or "UTC", ambiguous="NaT", nonexistent="NaT")
    return parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


def _midnight(parsed: pd.Series) -> pd.Series:
    return parsed.dt.tz_localize(None).dt.normalize() if parsed.dt.tz is not None else parsed.dt.normalize()


def unzoned(values: pd.Series, spec: ColumnSpec) -> bool:
    """A timestamp column without a `timezone` got a time written without a zone, so read as UTC: seven hours
    off if the source wrote Vietnam's time (the batch says so; `timezone` on the column reads it right)."""
    if spec.type != "timestamp" or spec.timezone is not None or not bool(values.notna().any()):
        return False
    if spec.format is not None:
        return "%z" not in spec.format
    return bool(_naive(values).any())


def not_valid(name: str, value: Any, spec: ColumnSpec) -> str:
    """Why a value went to quarantine: `born_on: '1990-08-15' is not a valid date (format %d/%m/%Y)`."""
    return f"{name}: {value!r} is not a valid {spec.type}" + (f" (format {spec.format})" if spec.format else "")


def is_nfc(column: pa.ChunkedArray | pa.Array) -> bool:
    """True if every value of a string column is in Unicode NFC already (False may also mean: cannot tell).

    Vietnamese text arrives precomposed almost always; normalising it anyway (utf8proc)
    took half the time of typing a chunk. The check reads each chunk's UTF-8 bytes as one
    string: ASCII is NFC; otherwise Python's quick check runs over the whole text at once.
    A value boundary can only make the text look unnormalised (a value ending in a base
    letter, the next starting with a combining mark), never the reverse, so a True is exact.
    """
    import unicodedata

    import pyarrow.compute as pc

    if pc.all(pc.string_is_ascii(column)).as_py() is not False:
        return True
    for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        width = 8 if pa.types.is_large_string(chunk.type) else 4
        first, last = (int.from_bytes(offsets[(chunk.offset + i) * width:(chunk.offset + i + 1) * width], "little")
                       for i in (0, len(chunk)))
        text = memoryview(data)[first:last] if data is not None else b""
        try:
            if not unicodedata.is_normalized("NFC", bytes(text).decode("utf-8")):
                return False
        except UnicodeDecodeError:
            return False
    return True


def _cast_text(column: pa.ChunkedArray, spec: ColumnSpec) -> pd.Series | None:
    """A date or timestamp column of strict ISO 8601 strings, parsed by Arrow; None if any value is not.

    Arrow reads `YYYY-MM-DD` dates and timestamps with a zone (`Z`, `+07:00`) exactly as
    `parse_times` does, about twenty times faster; so are timestamps that all lack a zone, in a
    column with a `timezone`. Anything else (a `format`, zones on some values only, other date
    forms, impossible dates) is left to `parse_times`, which knows them and names the bad ones.
    """
    import pyarrow.compute as pc

    def attempt(cast: Any) -> pd.Series | None:
        try:
            return cast()  # type: ignore[no-any-return]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None

    if spec.format is not None:
        return None
    if spec.type == "date":
        return attempt(lambda: pc.cast(column, pa.date32()).to_pandas(date_as_object=False).astype("datetime64[us]"))
    utc = pa.timestamp("us", "UTC")
    zoned = attempt(lambda: pc.cast(column, utc).to_pandas().astype("datetime64[us, UTC]"))
    if zoned is not None or spec.timezone is None:
        return zoned
    return attempt(lambda: pc.cast(pc.assume_timezone(pc.cast(column, pa.timestamp("us")), spec.timezone,
                                                      ambiguous="raise", nonexistent="raise"), utc)
                   .to_pandas().astype("datetime64[us, UTC]"))


def coerce_arrow(table: pa.Table, dataset: DatasetSpec) -> TypedBatch | None:
    """Coerce records read by `pyarrow.json` with `json_schema` (the fast path of `coerce`).

    Returns None when the table holds something only `coerce` handles exactly: a field the
    dataset does not declare (schema drift, kept in `_extras`), or a required column with
    no value in any record (which may be a contract break). Values of the wrong JSON type
    never get here: reading them fails, and the caller falls back to `coerce`.
    """
    import pyarrow.compute as pc

    if set(table.column_names) - set(dataset.columns):
        return None
    if any(col.required and table.column(name).null_count == len(table) for name, col in dataset.columns.items()):
        return None
    typed: dict[str, pd.Series] = {}
    errors: dict[int, str] = {}
    zoneless: list[str] = []
    for name, spec in dataset.columns.items():
        column = table.column(name)
        if spec.type == "string" and not is_nfc(column):
            column = pc.utf8_normalize(column, "NFC")
        parsed = _cast_text(column, spec) if spec.type in ("date", "timestamp") else None
        if parsed is not None:
            typed[name] = parsed
            continue
        values = column.to_pandas(types_mapper={pa.string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype(),
                                                pa.float64(): pd.Float64Dtype(),
                                                pa.bool_(): pd.BooleanDtype()}.get)
        if spec.type in ("date", "timestamp"):
            if unzoned(values, spec):
                zoneless.append(name)
            converted = parse_times(values, spec)
            for pos in (values.notna().to_numpy() & converted.isna().to_numpy()).nonzero()[0]:
                errors.setdefault(int(pos), not_valid(name, values.iloc[pos], spec))
            values = converted
        typed[name] = values
    frame = pd.DataFrame(typed, index=range(len(table)))
    return TypedBatch(frame=frame, type_errors=dict(sorted(errors.items())), extra_columns=[],
                      extras=pd.Series([None] * len(table), index=range(len(table)), dtype="object"), unzoned=zoneless)


def _extras(raw: pd.DataFrame, extra: list[str]) -> pd.Series:
    """Per row, the fields the contract does not declare, as JSON (None when there are none).

    Schema drift is not data loss: a field a source starts sending is kept in
    the `_extras` column until the dataset definition declares it.
    """
    if not extra:
        return pd.Series([None] * len(raw), index=range(len(raw)), dtype="object")
    return pd.Series([extras_json(r) for r in raw[extra].to_dict("records")], index=range(len(raw)), dtype="object")


def extras_json(values: dict[str, Any]) -> str | None:
    """One row's undeclared fields as `_extras` holds them: JSON, keys sorted, empty values left out."""
    import json

    kept = {k: v for k, v in values.items() if v is not None and not (isinstance(v, float) and v != v)}
    return json.dumps(kept, ensure_ascii=False, sort_keys=True, default=str) if kept else None


def to_arrow(frame: pd.DataFrame, dataset: DatasetSpec, extras: pd.Series | None = None) -> pa.Table:
    """A typed frame (from `coerce`) as an Arrow table with the dataset's schema (plus `_extras`)."""
    schema = arrow_schema(dataset)
    relaxed = pa.schema([f.with_nullable(True) for f in schema])
    table = pa.Table.from_pandas(frame[list(dataset.columns)], schema=relaxed, preserve_index=False)
    if extras is not None:
        table = table.append_column(pa.field(EXTRAS_COLUMN, pa.string()),
                                    pa.array(extras.tolist(), type=pa.string()))
    return table


EXTRAS_COLUMN = "_extras"
