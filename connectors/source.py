"""What every connector offers the pipeline: pages of records since a cursor."""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Protocol

import msgspec
import orjson

from catalog.models import SourceSpec, SystemSpec
from connectors.errors import FatalError
from connectors.limits import CircuitBreaker
from connectors.paging import dig, make_paginator
from connectors.retry import call_with_retry


VN_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")


class Transport(Protocol):
    """One request/response exchange with a system (REST or SOAP)."""

    def call(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def send(self, payload: dict[str, Any], idempotency_key: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


class RawRecords:
    """A page's records as the peer sent them: the bytes of a JSON array of objects, and how many.

    A REST page's records are landed as they came (`Lake.write_page`) and parsed once, by the
    validation, straight into typed columns. Turning 10,000 records into Python dicts only to
    write them out again cost the extract half its time (orjson: ~8 ms to parse a 2 MB page,
    ~2 ms to write it, ~2 ms to free the objects; this path: ~2 ms). Iterating parses them.
    """

    __slots__ = ("json", "count")

    def __init__(self, json: bytes, count: int) -> None:
        self.json, self.count = json, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(orjson.loads(self.json))

    def __repr__(self) -> str:
        return f"RawRecords({self.count} records, {len(self.json)} bytes)"

    def values(self, field: str) -> list[Any]:
        """Each record's `field` (None where it has none), read without building the records."""
        return [r.value for r in _one_field(field).decode(self.json)]


Records = list[dict[str, Any]] | RawRecords


def field_values(records: Records, field: str) -> list[Any]:
    """Each record's `field`: what a page's keys are (the read-ahead of a one-page batch)."""
    if isinstance(records, RawRecords):
        return records.values(field)
    return [r.get(field) if isinstance(r, dict) else None for r in records]


@functools.lru_cache(maxsize=64)
def _one_field(field: str) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(list[msgspec.defstruct("OneField", [("value", Any, None)],  # type: ignore[valid-type]
                                                       rename={"value": field})])


class _AnyObject(msgspec.Struct):
    """A JSON object, its fields skipped: decoding a list of them counts the records and checks their type."""


_OBJECT_OF_RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])
_LIST_OF_OBJECTS = msgspec.json.Decoder(list[_AnyObject])


def _utf8(body: bytes) -> bool:
    import pyarrow as pa  # not at import: a DAG file parses without it

    try:
        pa.array([body], pa.large_binary()).cast(pa.large_string())  # Arrow's SIMD check: ~4x Python's decode
        return True
    except pa.ArrowInvalid:
        return False


def raw_page(body: bytes, records_field: str) -> dict[str, Any] | None:
    """A JSON page parsed but for its records (under the dotted `records_field`): a `RawRecords` there.

    None when the page is not for this path (not UTF-8, not a JSON object, no array of
    objects at `records_field`): the caller parses it whole, as before, and reports what is
    wrong with it. Every other field is parsed as usual (the paginator reads them).
    """
    if not _utf8(body):
        return None
    try:
        top = node = _OBJECT_OF_RAW.decode(body)
        *parents, last = records_field.split(".")
        for part in parents:
            if part not in node:
                return None
            node[part] = node = _OBJECT_OF_RAW.decode(node[part])
        if last not in node:
            return None
        records = bytes(node[last])
        count = len(_LIST_OF_OBJECTS.decode(records))
        node[last] = RawRecords(records, count)
        _parse_all_but_records(top)
    except (msgspec.DecodeError, msgspec.ValidationError, orjson.JSONDecodeError):
        return None
    return top


def _parse_all_but_records(node: dict[str, Any]) -> None:
    for name, value in node.items():
        if isinstance(value, dict):
            _parse_all_but_records(value)
        elif isinstance(value, msgspec.Raw):
            node[name] = orjson.loads(bytes(value))  # as the whole page was parsed before


@dataclass
class Page:
    """One page of source records, as plain dicts (or as the peer sent them), with the request that produced it.

    `next_params` is the request for the following page (None after the last),
    so a killed sync can resume from the page after its last landed one. `records` is a
    `RawRecords` when `iter_pages` was asked for them raw and the page allowed it.
    `paging` is what the paging knows so far (JSON: the largest page, whether the next
    request probes past a short page, this page's mark, the source's count of the window from its
    first page, where the pipeline has a `total_field`); `iter_pages(paging=...)` resumes with it.
    """

    number: int
    params: dict[str, Any]
    records: Records
    next_params: dict[str, Any] | None = None
    paging: dict[str, Any] | None = None


def extract_records(response: dict[str, Any], field: str, rename: dict[str, str] | None = None) -> Records:
    """The list of records under `field` (a dotted path); tolerates SOAP array wrappers and empty arrays.

    `rename` maps source field names to dataset columns (`{"MaTTHC": "procedure_code"}`).
    """
    records = dig(response, field)
    if records is None:
        return []
    if isinstance(records, RawRecords):
        return records
    if isinstance(records, dict) and len(records) == 1:
        (records,) = records.values()
        records = records or []
    if not isinstance(records, list):
        raise TypeError(f"'{field}' is a {type(records).__name__}, expected a list of records")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) and not hasattr(record, "keys"):  # a dict, or a SOAP object
            raise TypeError(f"record {number} under '{field}' is a {type(record).__name__}, expected an object")
    if not rename:  # a parser's fresh dicts are used as they are
        return [r if type(r) is dict else dict(r) for r in records]
    return [{rename.get(k, k): v for k, v in dict(r).items()} for r in records]


CURSOR_STYLES: dict[str, tuple[str, tzinfo]] = {"iso_z": ("%Y-%m-%dT%H:%M:%SZ", timezone.utc),
                                                 "dvcqg": ("%Y%m%d%H%M%S", VN_TZ)}
"""The named `cursor_format`s written as text: (strptime pattern, zone written in). `iso` sends the datetime."""


def _cursor_form(style: str, zone: str | None) -> tuple[str, tzinfo] | None:
    """(pattern, zone) a cursor is written in, or None for ISO (the datetime itself)."""
    if style in CURSOR_STYLES:
        return CURSOR_STYLES[style]
    if "%" in style:
        from zoneinfo import ZoneInfo

        return style, ZoneInfo(zone) if zone else timezone.utc
    return None


def format_cursor(value: datetime, style: str, zone: str | None = None) -> Any:
    """A cursor as the source wants it: a datetime (ISO), ISO with Z, DVCQG's yyyyMMddHHmmss in +07:00,
    or a strptime pattern written in `zone` (UTC if None): `%d/%m/%Y %H:%M:%S` gives `01/08/2025 07:00:00`."""
    form = _cursor_form(style, zone)
    return value if form is None else value.astimezone(form[1]).strftime(form[0])


def cursor_as_read(value: datetime, source: SourceSpec) -> datetime:
    """The instant the source reads from `value` as the request writes it: a pattern of whole days, or of seconds,
    asks from the start of that day or second (`%d/%m/%Y` asks 01/08/2025 for any time of 1 August)."""
    form = _cursor_form(source.cursor_format, source.cursor_timezone)
    if form is None:
        return value
    pattern, zone = form
    read = datetime.strptime(value.astimezone(zone).strftime(pattern), pattern)
    return read if read.tzinfo is not None else read.replace(tzinfo=zone)


def first_request(source: SourceSpec, since: datetime | None, until: datetime | None = None) -> dict[str, Any]:
    """The parameters of the first page of a sync of the window [since, until)."""
    params = {**source.params, **make_paginator(source.paginator.type, source.paginator.params).first()}
    if since is not None and source.cursor_param:
        params[source.cursor_param] = format_cursor(since, source.cursor_format, source.cursor_timezone)
    if until is not None:
        if not source.until_param:
            raise ValueError(f"source {source.system}.{source.operation} has no until_param: "
                             "it cannot be backfilled for a closed date range")
        params[source.until_param] = format_cursor(until, source.cursor_format, source.cursor_timezone)
    return params


def page_mark(records: Records) -> str | None:
    """A page told apart from the page before by its count and its first and last records (None if empty).

    Enough to see a source answering one page again, and cheap: a full sync's pages are megabytes.
    """
    if not len(records):
        return None
    if isinstance(records, RawRecords):
        ends = records.json[:512] + records.json[-512:]
    else:
        ends = orjson.dumps([records[0], records[-1]], default=str)
    return f"{len(records)}:{hashlib.blake2b(ends, digest_size=12).hexdigest()}"


def iter_pages(system: SystemSpec, source: SourceSpec, transport: Transport, since: datetime | None,
               until: datetime | None = None, start: dict[str, Any] | None = None, first_number: int = 1,
               breaker: CircuitBreaker | None = None, raw: bool = False,
               paging: dict[str, Any] | None = None) -> Iterator[Page]:
    """Yield every page of `source` changed in [since, until) (None: unbounded).

    `start` resumes at a request a previous (killed) run saved as `Page.next_params`, and
    `paging` with what its paging knew then (`Page.paging`).
    Each request is retried per the system's retry policy; a repeated page
    request, or a page answering the records of the page before, is refused
    rather than looped on (unless it was asked past a short page that may have
    been the source's cap: then the page before was the last, `ShortPages`). `raw`: the records as the peer sent them
    (`RawRecords`) where the transport can (REST, no field renaming), for a caller that
    only lands them.
    """
    paginator = make_paginator(source.paginator.type, source.paginator.params)
    carried = dict(paging or {})
    for known in ("largest", "probing"):
        if known in carried and hasattr(paginator, known):
            setattr(paginator, known, carried[known])
    previous, counted = carried.get("mark"), carried.get("total")
    call_page = getattr(transport, "call_page", None) if raw and not source.fields else None
    params: dict[str, Any] | None = dict(start) if start is not None else first_request(source, since, until)
    seen: set[str] = set()
    number = first_number
    while params is not None:
        fingerprint = repr(sorted(params.items(), key=lambda kv: kv[0]))
        if fingerprint in seen:
            raise RuntimeError(f"{system.name} {source.operation}: paginator asked for the same page twice "
                               f"({params}); refusing to loop")
        seen.add(fingerprint)
        request = params
        response = call_with_retry(lambda: call_page(dict(request), source.records_field) if call_page is not None
                                   else transport.call(dict(request)), system.retry, system.name,
                                   source.operation, breaker=breaker)
        try:
            records = extract_records(response, source.records_field, source.fields)
        except TypeError as exc:
            raise FatalError(system.name, source.operation, str(exc),
                             "the peer sent a malformed page; nothing was landed from it") from None
        mark = page_mark(records)
        if mark is not None and mark == previous:
            if getattr(paginator, "probing", False):
                return  # asked past a short page, the source answered it again: that page was the last
            raise RuntimeError(f"{system.name} {source.operation}: the peer answered the same {len(records)} records "
                               f"for {request} as for the page before; it ignores the paging parameters? refusing "
                               "to loop (check the pipeline's paginator)")
        try:
            params = paginator.next(request, response, len(records))
        except RuntimeError as exc:
            raise RuntimeError(f"{system.name} {source.operation}: {exc}") from None
        previous = mark
        if counted is None and source.total_field:  # the count the source gave when the pulling began
            total = dig(response, source.total_field)
            counted = int(total) if isinstance(total, int | str) and str(total).isdigit() else None
        yield Page(number=number, params=request, records=records, next_params=params,
                   paging={"largest": getattr(paginator, "largest", 0), "probing": getattr(paginator, "probing", False),
                           "mark": mark, "total": counted})
        number += 1
