"""What every connector offers the pipeline: pages of records since a cursor."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from catalog.models import SourceSpec, SystemSpec
from connectors.paging import make_paginator
from connectors.retry import call_with_retry


class Transport(Protocol):
    """One request/response exchange with a system (REST or SOAP)."""

    def call(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class Page:
    """One page of source records, as plain dicts, with the request that produced it."""

    number: int
    params: dict[str, Any]
    records: list[dict[str, Any]]


def extract_records(response: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """The list of records under `field`; tolerates SOAP array wrappers and empty arrays."""
    records = response.get(field)
    if records is None:
        return []
    if isinstance(records, dict) and len(records) == 1:
        (records,) = records.values()
        records = records or []
    if not isinstance(records, list):
        raise TypeError(f"'{field}' is a {type(records).__name__}, expected a list of records")
    return [dict(r) for r in records]


def iter_pages(system: SystemSpec, source: SourceSpec, transport: Transport,
               since: datetime | None) -> Iterator[Page]:
    """Yield every page of `source` changed since `since` (None: everything).

    Each request is retried per the system's retry policy; a repeated page
    request is refused rather than looped on.
    """
    paginator = make_paginator(source.paginator.type, source.paginator.params)
    params: dict[str, Any] | None = {**source.params, **paginator.first()}
    if since is not None and source.cursor_param:
        params = {**params, source.cursor_param: since}
    seen: set[str] = set()
    number = 0
    while params is not None:
        fingerprint = repr(sorted(params.items(), key=lambda kv: kv[0]))
        if fingerprint in seen:
            raise RuntimeError(f"{system.name} {source.operation}: paginator asked for the same page twice "
                               f"({params}); refusing to loop")
        seen.add(fingerprint)
        request = params
        response = call_with_retry(lambda: transport.call(request), system.retry, system.name, source.operation)
        records = extract_records(response, source.records_field)
        number += 1
        yield Page(number=number, params=request, records=records)
        params = paginator.next(request, response, len(records))
