"""Live lookups: one record of a shared dataset asked of its source system now, by its key.

A clerk at the one-stop desk has a citizen's CCCD and needs the population database's record
now, not as of last night's sync. `GET /api/v1/datasets/citizen/lookup?personal_id=...` (an
agency with a grant on `citizen`) makes the gateway call the source's operation named in
`catalog/sharing.yaml` (`lookup:`), through the same connectors the pipelines use: the
system's auth, its rate limit and concurrency cap, a circuit breaker shared with the
pipelines (`lgsp_circuit`), the message log (`lgsp_message_log`). The answer is typed and
checked with the dataset's row rules, then protected for the reader as a records read is.

The national systems are slow and unstable, so a lookup never waits long and never fails
when lgsp holds a copy. When the source cannot give a usable answer (down, slower than
`timeout_s` per attempt, circuit open, every connection busy, or an answer that fails the
checks), the warehouse's copy answers instead, marked `source: warehouse` with the source's
failure (`live_error`) and when the dataset was last loaded (`as_of`). Without a copy (or
with `fallback: none`) the lookup fails: 503 with Retry-After for an unavailable source,
502 for an unusable answer. "No such record" from the source (`not_found`) is a 404.

Nothing received is lost: an answer that fails the checks is quarantined (`lgsp_quarantine`,
pipeline `lookup:<system>.<operation>`) for the data team, as a pipeline's bad row is. A
usable answer is not written to the warehouse (the scheduled sync lands every change with
its batch, cursor and history); it is reused for `cache_s` seconds in the gateway process.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from catalog.models import Catalog, DatasetSpec, LookupSpec, RetrySpec, SystemSpec
from connectors import ConnectorError, FatalError, open_transport
from connectors.limits import CircuitBreaker, CircuitOpen, limits_for
from connectors.paging import dig
from connectors.retry import call_with_retry
from connectors.secrets import SecretNotFound
from connectors.source import Transport
from gateway.records import QueryError, Reader, clean_text, coerce
from gateway.settings import GatewaySettings

log = logging.getLogger("lgsp.gateway")
CACHE_ENTRIES = 10_000  # live answers kept per process (least recently used dropped first)
BREAKER_REFRESH_S = 5.0  # how often a process re-reads the breaker's state the pipelines keep in lgsp_circuit


class LookupFailed(RuntimeError):
    """The lookup cannot be answered: `status` 404 (no such record), 502 (an unusable answer), 503 (unavailable)."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after_s = status, retry_after_s


class SourceFailure(Exception):
    """The source gave no usable record: `kind` not_found (it has none), refused, unavailable (down, too slow,
    circuit open, every connection busy) or unusable (an answer that failed the checks, quarantined)."""

    def __init__(self, kind: str, problem: str, retry_after_s: float | None = None) -> None:
        super().__init__(problem)
        self.kind, self.problem, self.retry_after_s = kind, problem, retry_after_s


class _Unusable(Exception):
    """The source answered, but not with a record lgsp can serve (the reason is the message)."""


class _NoRecord(Exception):
    """The source answered without the asked record (an empty list, an empty answer)."""


@dataclass(frozen=True)
class Answer:
    """A looked-up record (the shared columns, typed, not yet protected) and where it came from."""

    record: dict[str, Any]
    source: str  # "live" (the source system, now or from the cache) or "warehouse" (lgsp's copy)
    as_of: datetime | None  # live: when the source answered; warehouse: when the dataset was last loaded
    cached: bool = False
    live_error: str | None = None  # why the source did not answer (warehouse answers only)


def lookup_key(catalog: Catalog, name: str, params: Any) -> dict[str, Any]:
    """The key a lookup asks for, from the request's query parameters, typed (QueryError names the parameter)."""
    dataset = catalog.datasets[name]
    unknown = sorted(set(params.keys()) - set(dataset.key))
    if unknown:
        raise QueryError(f"{unknown[0]}: a lookup takes the key of '{name}' only ({', '.join(dataset.key)})")
    key = {}
    for column in dataset.key:
        values = params.getlist(column) if hasattr(params, "getlist") else [params[column]] if column in params else []
        if len(values) != 1 or not str(values[0]).strip():
            raise QueryError(f"{column}: give exactly one value (the lookup's key: {', '.join(dataset.key)})")
        raw = clean_text(str(values[0]).strip(), column)
        if len(raw) > 200:
            raise QueryError(f"{column}: longer than 200 characters")
        key[column] = coerce(dataset.columns[column].type, raw, column)
    return key


def _key_problem(dataset: DatasetSpec, key: dict[str, Any]) -> str | None:
    """Why `key` cannot be any record's key by the dataset's row rules on its key columns (`cccd`: 12 digits
    and a province code, the digits that depend on sex and birth year unchecked), or None."""
    from quality.checks import row_checks
    from quality.rules import RULES
    from schemas.arrow import coerce as coerce_records

    checks = [c for c in row_checks(dataset) if c.params.get("column") in key and c.rule in RULES]
    used = {v for c in checks for v in c.params.values() if isinstance(v, str) and v in dataset.columns}
    only = dataset.model_copy(update={"columns": {c: dataset.columns[c] for c in dataset.columns if c in used}})
    frame = coerce_records([{c: key.get(c) for c in only.columns}], only).frame  # the columns the rules read
    for check in checks:
        rule = RULES[check.rule]
        if not bool(np.asarray(rule.check(frame, **check.params), dtype=bool)[0]):
            return str(rule.explain(frame.iloc[0], **check.params))
    return None


class LiveLookups:
    """The gateway process's lookups: transports per dataset, the answer cache, the breakers.

    `background`: no person waits for these answers (`lgsp drift` asks through them), so in the system's peak
    hours they wait for its peak rate (`limits.peak`); a gateway's lookups do not."""

    def __init__(self, settings: GatewaySettings, catalog: Catalog, reader: Reader,
                 loaded_at: Callable[[str], datetime | None], background: bool = False) -> None:
        self.settings, self.catalog, self.reader, self.loaded_at = settings, catalog, reader, loaded_at
        self.background = background
        self._warehouse: Any = None
        self._idle: dict[str, list[Transport]] = {}
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, dict[str, Any], datetime]] = OrderedDict()
        self._breakers: dict[str, tuple[float, CircuitBreaker]] = {}
        self._lock = threading.Lock()

    @property
    def warehouse(self) -> Any:
        """The warehouse (message log, quarantine, breaker state), opened at the first lookup."""
        with self._lock:
            if self._warehouse is None:
                from warehouse import Warehouse

                self._warehouse = Warehouse(self.settings.database_url, self.catalog)
            return self._warehouse

    def spec(self, name: str) -> LookupSpec:
        spec = self.catalog.sharing[name].lookup
        if spec is None:
            raise LookupFailed(404, f"'{name}' has no live lookup (its records are read at "
                                    f"/api/v1/datasets/{name}/records)")
        return spec

    def lookup(self, name: str, key: dict[str, Any], reader_label: str) -> Answer:
        """The record with `key`: the source's (or this process's recent answer), or, when the source cannot
        answer usably, the warehouse's copy.

        Raises:
            QueryError: the key breaks the dataset's rules for its key columns (never sent).
            LookupFailed: 404 no such record at the source; 502/503 the source failed and there is no copy.
        """
        spec, dataset = self.spec(name), self.catalog.datasets[name]
        cache_key = (name, *(key[c] for c in dataset.key))
        cached = self._cached(cache_key)
        if cached is not None:
            return Answer(cached[0], "live", cached[1], cached=True)
        try:
            record = self.fetch(name, key, reader_label)
        except SourceFailure as failure:
            if failure.kind == "not_found":
                raise LookupFailed(404, failure.problem) from None
            return self._fallback(name, spec, key, failure)
        fetched = datetime.now(timezone.utc)
        if spec.cache_s > 0:
            with self._lock:
                self._cache[cache_key] = (time.monotonic() + spec.cache_s, record, fetched)
                self._cache.move_to_end(cache_key)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return Answer(record, "live", fetched)

    def fetch(self, name: str, key: dict[str, Any], reader_label: str) -> dict[str, Any]:
        """The source's record with `key` now (the shared columns, typed): no cache, no fallback.

        Raises:
            QueryError: the key breaks the dataset's rules for its key columns (never sent).
            SourceFailure: the source has no such record, refused, is unavailable, or answered unusably.
        """
        spec, dataset = self.spec(name), self.catalog.datasets[name]
        system = self.catalog.systems[spec.system]
        problem = _key_problem(dataset, key)  # here, not before `lookup`'s cache: pandas, ~5 ms a key
        if problem:
            raise QueryError(f"{problem} (the dataset's rules for its key; nothing was asked of the source)")
        try:
            return self._live(spec, system, dataset, key, reader_label)
        except _NoRecord:
            raise SourceFailure("not_found", f"{system.name} has no {name} with {_describe(key)} "
                                             f"({spec.operation} answered without it)") from None
        except FatalError as exc:
            if _code(exc.code) in {_code(c) for c in spec.not_found}:
                raise SourceFailure("not_found", f"{system.name} has no {name} with {_describe(key)} "
                                                 f"({spec.operation} answered {exc.code})") from None
            raise SourceFailure("refused", f"{_problem(exc)} (the source refused the lookup)") from None
        except ConnectorError as exc:  # retries exhausted, circuit open, every connection busy
            retry_after = system.limits.breaker_reset_s if isinstance(exc, CircuitOpen) else max(1.0, spec.timeout_s)
            raise SourceFailure("unavailable", _problem(exc), retry_after) from None
        except _Unusable as exc:
            raise SourceFailure("unusable", f"{system.name} {spec.operation}: {exc}") from None

    def _cached(self, cache_key: tuple[Any, ...]) -> tuple[dict[str, Any], datetime] | None:
        with self._lock:
            entry = self._cache.get(cache_key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._cache[cache_key]
                return None
            self._cache.move_to_end(cache_key)
            return entry[1], entry[2]

    # --- the source ------------------------------------------------------------------------

    def _live(self, spec: LookupSpec, system: SystemSpec, dataset: DatasetSpec, key: dict[str, Any],
              reader_label: str) -> dict[str, Any]:
        """Call the source (bounded wait for a connection, retries, breaker); the checked record."""
        limits = limits_for(system)
        transport = self._transport(spec, system, dataset.name)  # no I/O yet: a WSDL loads at the first call
        if not limits.slots.acquire(timeout=spec.timeout_s):
            self._flush(transport, True, dataset.name)
            raise ConnectorError(system.name, spec.operation, f"all {system.limits.max_concurrency} connections "
                                 f"to {system.name} stayed busy for {spec.timeout_s:g}s")
        transport.log.context = f"gateway lookup of {dataset.name} for {reader_label}"  # type: ignore[attr-defined]
        arguments = {**spec.params, **{spec.key_params.get(c, c): _argument(v) for c, v in key.items()}}
        retry = RetrySpec(attempts=spec.attempts, backoff_s=min(system.retry.backoff_s, 0.2), max_backoff_s=0.5)
        reusable = True
        try:
            answer = call_with_retry(lambda: transport.call(dict(arguments)), retry, system.name, spec.operation,
                                     breaker=self._breaker(system))
        except ConnectorError:
            reusable = False  # a half-read connection or a WSDL that never loaded: start afresh next time
            raise
        finally:
            limits.slots.release()
            self._flush(transport, reusable, dataset.name)
        return self._checked(spec, system, dataset, key, answer)

    def _transport(self, spec: LookupSpec, system: SystemSpec, name: str) -> Transport:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            if idle:
                return idle.pop()
        try:
            transport = open_transport(system, operation=spec.operation, method="GET")
        except SecretNotFound as exc:  # the reference and how to set it, never a value: for the data team only
            log.error("lookup of %s: cannot call %s: %s", name, system.name, exc)
            raise ConnectorError(system.name, spec.operation, "lgsp has no credential for this system "
                                 "(the gateway's log says which)") from None
        session = getattr(transport, "session", None)
        if session is not None:
            session.background = self.background  # a clerk waiting is spared the system's peak-hour rate
        current = getattr(transport, "timeout", None)  # a clerk is waiting: the lookup's budget, not the sync's
        transport.timeout = ((min(current[0], spec.timeout_s), spec.timeout_s)  # type: ignore[attr-defined]
                             if isinstance(current, tuple) else spec.timeout_s)
        return transport

    def _flush(self, transport: Transport, reusable: bool, name: str) -> None:
        from lgsp.exchanges import flush_log

        try:
            flush_log(self.warehouse, transport.log)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the answer still goes out; the log line says what was lost
            log.error("lookup of %s: its message-log records could not be written (%s)", name, type(exc).__name__)
        if reusable:
            with self._lock:
                self._idle.setdefault(name, []).append(transport)
        else:
            transport.close()

    def _breaker(self, system: SystemSpec) -> CircuitBreaker:
        """The system's breaker in this process, re-read from lgsp_circuit every few seconds (the pipelines
        and the other gateway workers open it too)."""
        from lgsp.exchanges import breaker_for

        with self._lock:
            known = self._breakers.get(system.name)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        breaker = breaker_for(self.warehouse, system)
        with self._lock:
            self._breakers[system.name] = (time.monotonic() + BREAKER_REFRESH_S, breaker)
        return breaker

    def _checked(self, spec: LookupSpec, system: SystemSpec, dataset: DatasetSpec, key: dict[str, Any],
                 answer: dict[str, Any]) -> dict[str, Any]:
        """The answer's record, typed and checked; an unusable one is quarantined and raises _Unusable."""
        record = _record_in(answer, spec, key)
        if record is None:
            raise _NoRecord()
        if spec.fields:
            record = {spec.fields.get(k, k): v for k, v in record.items()}
        typed, rejection = _check(record, dataset, key)
        if rejection is not None:
            qid = self._quarantine(spec, dataset, record, *rejection)
            raise _Unusable(f"the answer failed lgsp's checks ({rejection[0]}: {rejection[1]}); "
                            f"it was quarantined as {qid[:12]} (`lgsp quarantine show {qid[:12]}`)")
        return {column: typed.get(column) for column in self.catalog.sharing[dataset.name].columns}

    def _quarantine(self, spec: LookupSpec, dataset: DatasetSpec, record: dict[str, Any], rule: str,
                    reason: str) -> str:
        from lgsp.runner import quarantine_row

        now = datetime.now(timezone.utc)
        batch = f"lookup-{dataset.name}-{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        origin = f"lookup:{spec.system}.{spec.operation}"
        row = quarantine_row(dataset, origin, batch, record, rule, reason, now, origin=origin)
        warehouse = self.warehouse
        table = warehouse.system["lgsp_quarantine"]
        with warehouse.transaction() as conn:
            warehouse.insert_ignore(conn, table, [row], ["quarantine_id"])
            conn.execute(table.update().where(table.c.quarantine_id == row["quarantine_id"])
                         .values(last_batch_id=batch))
        log.warning("lookup of %s: the answer of %s %s failed rule %s; quarantined as %s", dataset.name,
                    spec.system, spec.operation, rule, row["quarantine_id"][:12])
        return str(row["quarantine_id"])

    # --- the warehouse's copy ----------------------------------------------------------------

    def _fallback(self, name: str, spec: LookupSpec, key: dict[str, Any], failure: SourceFailure) -> Answer:
        """The warehouse's copy, or LookupFailed saying what failed and what to do (503 unavailable, else 502)."""
        status = 503 if failure.kind == "unavailable" else 502
        log.warning("lookup of %s: the source gave no usable answer (%s)", name, failure.kind)
        copy = self.reader.row_by_key(name, key) if spec.fallback == "warehouse" else None
        if copy is None:
            where = ("and lgsp has no copy of this record" if spec.fallback == "warehouse"
                     else "and this lookup has no fallback to lgsp's copy")
            advice = {"unavailable": "try again later",
                      "unusable": "the data team can see the answer in the quarantine",
                      "refused": "check the key; if it is right, tell the data team"}[failure.kind]
            raise LookupFailed(status, f"{failure.problem}; {where}; {advice}", failure.retry_after_s)
        return Answer(copy, "warehouse", self.loaded_at(name), live_error=failure.problem)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
            warehouse, self._warehouse = self._warehouse, None
        for transports in idle.values():
            for transport in transports:
                transport.close()
        if warehouse is not None:
            warehouse.engine.dispose()


def _code(code: str) -> str:
    """A refusal's code without its namespace prefix (`soap11env:Client.NotFound` -> `Client.NotFound`)."""
    return code.rsplit(":", 1)[-1].strip() if not code.startswith("HTTP") else code


def _describe(key: dict[str, Any]) -> str:
    return ", ".join(f"{column} {value}" for column, value in key.items())


def _argument(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _problem(exc: ConnectorError) -> str:
    """What went wrong at the source, for the reader (the connector's hint is for the data team)."""
    return f"{exc.system} {exc.operation}: {exc.problem}"


def _record_in(answer: dict[str, Any], spec: LookupSpec, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record under `record_field`; in a list, the one whose key is the asked key (None: not there)."""
    found: Any = dig(answer, spec.record_field) if spec.record_field else answer
    if isinstance(found, dict) and len(found) == 1 and isinstance(next(iter(found.values())), list):
        found = next(iter(found.values()))  # a SOAP array wrapper
    if isinstance(found, list):
        column_source = {column: source for source, column in spec.fields.items()}
        source_key = {column_source.get(c, c): v for c, v in key.items()}
        matches = [r for r in found if isinstance(r, dict)
                   and all(str(r.get(c)) == str(_argument(v)) for c, v in source_key.items())]
        if len(matches) > 1:
            raise _Unusable(f"the answer holds {len(matches)} records with the asked key")
        return matches[0] if matches else None
    if found is None or (isinstance(found, dict) and all(v is None for v in found.values())):
        return None  # nothing, {}, or an operation that answered nothing (the transport's {"items": None})
    if not isinstance(found, dict):
        raise _Unusable(f"the answer's record is a {type(found).__name__}, expected an object")
    return found


def _check(record: dict[str, Any], dataset: DatasetSpec,
           key: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The record in the dataset's types as Python values (dates, aware timestamps), and the rule and
    reason it fails (types, required columns, the row rules, the asked key), or None."""
    from quality.checks import run_row_checks
    from schemas.arrow import SchemaError, coerce as coerce_records, to_arrow

    try:
        batch = coerce_records([record], dataset)
    except SchemaError as exc:
        return {}, ("schema", str(exc))
    result = run_row_checks(batch.frame, dataset, batch.type_errors)
    if result.rejections:
        return {}, (result.rejections[0].rule, result.rejections[0].reason)
    typed: dict[str, Any] = to_arrow(batch.frame, dataset).to_pylist()[0]
    if any(typed.get(c) != v for c, v in key.items()):
        answered = _describe({c: typed.get(c) for c in key})
        return typed, ("key", f"asked for {_describe(key)}, the answer is for {answered}")
    return typed, None
