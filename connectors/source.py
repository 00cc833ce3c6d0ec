"""What every connector offers the pipeline: pages of records since a cursor."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from catalog.models import SourceSpec, SystemSpec
from connectors.limits import CircuitBreaker
from connectors.paging import dig, make_paginator
from connectors.retry import call_with_retry


VN_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")


class Transport(Protocol):
    """One request/response exchange with a system (REST or SOAP)."""

    def call(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def send(self, payload: dict[str, Any], idempotency_key: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class Page:
    """One page of source records, as plain dicts, with the request that produced it.

    `next_params` is the request for the following page (None after the last),
    so a killed sync can resume from the page after its last landed one.
    """

    number: int
    params: dict[str, Any]
    records: list[dict[str, Any]]
    next_params: dict[str, Any] | None = None


def extract_records(response: dict[str, Any], field: str,
                    rename: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The list of records under `field` (a dotted path); tolerates SOAP array wrappers and empty arrays.

    `rename` maps source field names to dataset columns (`{"MaTTHC": "procedure_code"}`).
    """
    records = dig(response, field)
    if records is None:
        return []
    if isinstance(records, dict) and len(records) == 1:
        (records,) = records.values()
        records = records or []
    if not isinstance(records, list):
        raise TypeError(f"'{field}' is a {type(records).__name__}, expected a list of records")
    if not rename:  # a parser's fresh dicts are used as they are
        return [r if type(r) is dict else dict(r) for r in records]
    return [{rename.get(k, k): v for k, v in dict(r).items()} for r in records]


def format_cursor(value: datetime, style: str) -> Any:
    """A cursor as the source wants it: a datetime (ISO), ISO with Z, or DVCQG's yyyyMMddHHmmss in +07:00."""
    if style == "iso_z":
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == "dvcqg":
        return value.astimezone(VN_TZ).strftime("%Y%m%d%H%M%S")
    return value


def first_request(source: SourceSpec, since: datetime | None, until: datetime | None = None) -> dict[str, Any]:
    """The parameters of the first page of a sync of the window [since, until)."""
    params = {**source.params, **make_paginator(source.paginator.type, source.paginator.params).first()}
    if since is not None and source.cursor_param:
        params[source.cursor_param] = format_cursor(since, source.cursor_format)
    if until is not None:
        if not source.until_param:
            raise ValueError(f"source {source.system}.{source.operation} has no until_param: "
                             "it cannot be backfilled for a closed date range")
        params[source.until_param] = format_cursor(until, source.cursor_format)
    return params


def iter_pages(system: SystemSpec, source: SourceSpec, transport: Transport, since: datetime | None,
               until: datetime | None = None, start: dict[str, Any] | None = None, first_number: int = 1,
               breaker: CircuitBreaker | None = None) -> Iterator[Page]:
    """Yield every page of `source` changed in [since, until) (None: unbounded).

    `start` resumes at a request a previous (killed) run saved as `Page.next_params`.
    Each request is retried per the system's retry policy; a repeated page
    request is refused rather than looped on.
    """
    paginator = make_paginator(source.paginator.type, source.paginator.params)
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
        response = call_with_retry(lambda: transport.call(dict(request)), system.retry, system.name,
                                   source.operation, breaker=breaker)
        records = extract_records(response, source.records_field, source.fields)
        try:
            params = paginator.next(request, response, len(records))
        except RuntimeError as exc:
            raise RuntimeError(f"{system.name} {source.operation}: {exc}") from None
        yield Page(number=number, params=request, records=records, next_params=params)
        number += 1
