"""Reading a shared view: filters, sorting, field selection, keyset (and CKAN offset) pagination.

Every value reaches the database as a bound parameter; column names only ever come
from the catalog (a requested name is looked up among the view's columns, never
pasted into SQL). Filters: equality, ranges (`gte`, `gt`, `lte`, `lt`) and in-lists
on the dataset's `filterable` columns; sorting on its key and on its filterable
columns that never hold null (keyset pagination needs a total order). A filter, sort
or search on a personal column needs a grant that includes that column (otherwise a
reader could find a person by ID while seeing only masked IDs).

A page's `next_cursor` holds the last row's sort values, sealed (AES-256-GCM, keyed from
LGSP_GATEWAY_PSEUDONYM_KEY), so it neither leaks a personal ID nor can be forged.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from catalog.models import Catalog, DatasetSpec
from gateway.agencies import Grant
from gateway.policy import keyed, protections
from gateway.settings import GatewaySettings
from warehouse.shared import shared_views

OPS = ("eq", "in", "gte", "gt", "lte", "lt")
RANGE_TYPES = {"integer", "float", "date", "timestamp"}
INT64 = (-(2**63), 2**63 - 1)
_deadline = threading.local()


class QueryError(ValueError):
    """The request cannot be answered as asked (400); the message says which parameter and why."""


class QueryTimeout(RuntimeError):
    """The query ran past LGSP_GATEWAY_QUERY_TIMEOUT_S and was cancelled."""


@dataclass(frozen=True)
class Filter:
    """`column op value`: op is eq, in (value is a list), gte, gt, lte or lt."""

    column: str
    op: str
    value: Any


@dataclass
class RecordQuery:
    """What a reader asks of one dataset."""

    filters: list[Filter] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    fields: list[str] | None = None
    q: str | None = None

    def describe(self, personal: set[str], key: bytes) -> dict[str, Any]:
        """The query for the audit: filter values on personal columns replaced by their pseudonym."""
        from gateway.policy import pseudonym

        def shown(f: Filter) -> Any:
            if f.column not in personal:
                return f.value
            return [pseudonym(v, key) for v in f.value] if isinstance(f.value, list) else pseudonym(f.value, key)

        return {"filters": [[f.column, f.op, shown(f)] for f in self.filters],
                "sort": [f"-{c}" if d else c for c, d in self.sort], "fields": self.fields,
                "q": "<search on personal columns>" if self.q and personal else self.q}


def clean_text(value: str, where: str) -> str:
    """`value` unless it holds a NUL character (no database column can hold one)."""
    if "\x00" in value:
        raise QueryError(f"{where}: text may not contain NUL characters")
    return value


def coerce(column_type: str, raw: Any, where: str) -> Any:
    """A value from a URL or a CKAN body, typed as the column's type; QueryError names `where`."""
    if raw is None:
        return None
    try:
        if column_type == "string":
            return clean_text(raw if isinstance(raw, str) else str(raw), where)
        if column_type == "integer":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            if not INT64[0] <= int(raw) <= INT64[1]:
                raise ValueError
            return int(raw)
        if column_type == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if column_type == "boolean":
            if isinstance(raw, bool):
                return raw
            return {"true": True, "false": False, "1": True, "0": False}[str(raw).lower()]
        if column_type == "date":
            return raw if isinstance(raw, date) and not isinstance(raw, datetime) else date.fromisoformat(str(raw))
        value = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except (ValueError, KeyError, TypeError, OverflowError):
        raise QueryError(f"{where}: {str(raw)[:40]!r} is not a valid {column_type}") from None


def exact_values(kind: str, values: Iterable[Any], column: str, label: str, allowed: tuple[str, ...]) -> list[Any]:
    """`values` as a `kind` column's, distinct and sorted, for what names rows by exact values (a grant's scope, a
    restore's `--where`, the `label` of messages): QueryError when `kind` is not one of `allowed` (no ranges, no
    instants), a value is not of it, or none is left."""
    if kind not in allowed:
        raise QueryError(f"{label}: '{column}' is a {kind} column; {'a ' if label == 'scope' else ''}{label} names "
                         f"exact values of a {', '.join(allowed)} column")
    typed = sorted({coerce(kind, v, f"{label}: {column}") for v in values if v is not None})
    if not typed:
        raise QueryError(f"{label}: '{column}' needs a value that is not null")
    return typed


def read_engine(url: str, timeout_s: float) -> sa.Engine:
    """A read-only engine for the gateway: statement timeout, no parameters in error messages."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                                  hide_parameters=True, pool_size=40, max_overflow=20)

        @sa.event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA query_only=ON")
            dbapi_conn.set_progress_handler(_past_deadline, 1000)

        return engine
    url = "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url
    options = f"-c statement_timeout={max(1, round(timeout_s * 1000))} -c default_transaction_read_only=on"
    # at most 10 per worker process: the threaded routes (exports, CKAN, catalog); the records route has its own
    # async connections (gateway.fast); PostgreSQL's default max_connections is 100 (docs/gateway.md, Safety)
    return sa.create_engine(url, hide_parameters=True, pool_size=10, max_overflow=0, isolation_level="AUTOCOMMIT",
                            connect_args={"options": options})  # one statement per read: no BEGIN/ROLLBACK trips


def _past_deadline() -> int:
    deadline = getattr(_deadline, "at", None)
    return 1 if deadline is not None and time.monotonic() > deadline else 0


@contextmanager
def _timed(timeout_s: float) -> Iterator[None]:
    """Bound a SQLite query by time (PostgreSQL uses statement_timeout); map cancellation to QueryTimeout."""
    _deadline.at = time.monotonic() + timeout_s
    try:
        yield
    except sa.exc.OperationalError as exc:
        text = type(exc.orig).__name__ + str(exc.orig)
        if "interrupted" in text or "QueryCanceled" in text or "statement timeout" in text:
            raise QueryTimeout(f"the query ran longer than {timeout_s:g} s: narrow the filters") from None
        raise
    finally:
        _deadline.at = None


@dataclass(frozen=True)
class PagePlan:
    """One keyset page to read: the statement (cached per query shape), its bound values, how to finish the rows."""

    name: str
    granted: frozenset[str]
    stmt: sa.Select
    shown: list[str]
    order: list[tuple[str, bool]]
    params: dict[str, Any]
    limit: int


@lru_cache(maxsize=1024)
def _records_of(columns: tuple[tuple[str, str], ...]) -> Callable[..., list[dict[str, Any]]]:
    """A function making the records of rows whose first columns are `columns`, each `plain` (the value),
    `call` (`t[i](value)`: a personal column's policy) or `none` (withheld): one dict display per row,
    compiled once per column list (names are literals, written with repr), instead of a dict(zip(...))
    per row and a pass per personal column: about three times faster."""
    def item(i: int, name: str, how: str) -> str:
        value = {"plain": f"r[{i}]", "call": f"t[{i}](r[{i}])", "none": "None"}[how]
        return f"{name!r}: {value}"

    items = ", ".join(item(i, name, how) for i, (name, how) in enumerate(columns))
    return eval(f"lambda rows, t: [{{{items}}} for r in rows]", {})  # noqa: S307 - repr() of names only


class Reader:
    """Answers record queries from the shared views."""

    def __init__(self, engine: sa.Engine, catalog: Catalog, settings: GatewaySettings) -> None:
        self.engine = engine
        self.catalog = catalog
        self.settings = settings
        self.views = shared_views(catalog)
        self._statements: dict[tuple[Any, ...], tuple[sa.Select, list[str]]] = {}
        self._builders: dict[tuple[Any, ...], Callable[[list[Any]], list[dict[str, Any]]]] = {}
        self._sealer = AESGCM(hashlib.sha256(b"lgsp-gateway-cursor:" + settings.pseudonym_key).digest())

    def sortable(self, name: str) -> list[str]:
        """Columns a reader may sort by: the key and the filterable columns that are never null."""
        dataset, shared = self.catalog.datasets[name], self.catalog.sharing[name]
        return [*dataset.key, *(c for c in shared.filterable
                                if dataset.columns[c].required and c not in dataset.key)]

    def check(self, name: str, grant: Grant, query: RecordQuery) -> None:
        """Refuse what the reader may not ask: unknown fields, unfilterable or personal columns."""
        dataset, shared = self.catalog.datasets[name], self.catalog.sharing[name]
        hidden = set(shared.personal) - grant.personal
        for column in query.fields or []:
            if column not in shared.columns:
                raise QueryError(f"fields: '{column}' is not a column of '{name}' (columns: {', '.join(shared.columns)})")
        for f in query.filters:
            if f.column not in shared.filterable:
                raise QueryError(f"filter on '{f.column}': not a filterable column of '{name}' "
                                 f"(filterable: {', '.join(shared.filterable)})")
            if f.op not in OPS or (f.op in ("gte", "gt", "lte", "lt")
                                   and dataset.columns[f.column].type not in RANGE_TYPES):
                raise QueryError(f"filter on '{f.column}': '{f.op}' is not allowed on a "
                                 f"{dataset.columns[f.column].type} column")
        for column, _ in query.sort:
            if column not in self.sortable(name):
                raise QueryError(f"sort: '{column}' is not sortable (sortable: {', '.join(self.sortable(name))})")
        used = {f.column for f in query.filters} | {c for c, _ in query.sort if c not in dataset.key}
        if used & hidden:
            raise QueryError(f"filtering or sorting on personal column(s) {sorted(used & hidden)} needs a grant "
                             "that includes them (ask the data owner)")

    @staticmethod
    def scoped(query: RecordQuery, grant: Grant) -> RecordQuery:
        """`query` within the grant's rows: each scope column an in-list filter, after the reader's own (a filter
        the reader did not write: added after `check`, so a scope column need not be filterable)."""
        if not grant.scope:
            return query
        return dataclasses.replace(query, filters=[*query.filters, *(Filter(column, "in", list(values))
                                                                     for column, values in grant.scope)])

    def _order(self, name: str, query: RecordQuery) -> list[tuple[str, bool]]:
        order = list(query.sort)
        order += [(k, False) for k in self.catalog.datasets[name].key if k not in {c for c, _ in order}]
        return order

    def _select(self, name: str, granted: frozenset[str], query: RecordQuery, order: list[tuple[str, bool]],
                after: bool = False, paged: str = "") -> tuple[sa.Select, list[str]]:
        """The statement for a query's shape, built once and cached; values go in as bound parameters.

        Filter values bind as `f0`, `f1`, ... (in-lists as expanding parameters), the search
        as `q`, the keyset values of the previous page as `k0`, `k1`, ..., and `limit` /
        `offset` when `paged` says so ("keyset" or "offset").
        """
        shape = (name, tuple(query.fields or ()), tuple((f.column, f.op) for f in query.filters), tuple(order),
                 granted if query.q else None, after, paged)
        cached = self._statements.get(shape)
        if cached is None:
            cached = self._build(name, granted, query, order, after, paged)
            if len(self._statements) > 2048:
                self._statements.clear()
            self._statements[shape] = cached
        return cached

    def _build(self, name: str, granted: frozenset[str], query: RecordQuery, order: list[tuple[str, bool]],
               after: bool, paged: str) -> tuple[sa.Select, list[str]]:
        view, shared = self.views[name], self.catalog.sharing[name]
        dataset = self.catalog.datasets[name]
        shown = list(query.fields or shared.columns)
        wanted = shown + [c for c, _ in order if c not in shown]
        stmt = sa.select(*(view.c[c] for c in wanted))
        for i, f in enumerate(query.filters):
            stmt = stmt.where(self._condition(view.c[f.column], f.op, f"f{i}"))
        if query.q:
            searchable = [c for c in shared.columns if dataset.columns[c].type == "string"
                          and (c not in shared.personal or c in granted)]
            stmt = stmt.where(sa.or_(*(sa.func.lower(view.c[c]).like(sa.bindparam("q"), escape="\\")
                                       for c in searchable)))
        if after:
            stmt = stmt.where(self.after(view, order))
        if paged:
            stmt = stmt.order_by(*(view.c[c].desc() if d else view.c[c].asc() for c, d in order))
            stmt = stmt.limit(sa.bindparam("limit", type_=sa.Integer))
            if paged == "offset":
                stmt = stmt.offset(sa.bindparam("offset", type_=sa.Integer))
        return stmt, shown

    @staticmethod
    def _condition(column: sa.ColumnElement[Any], op: str, param: str) -> sa.ColumnElement[bool]:
        if op == "in":
            return column.in_(sa.bindparam(param, expanding=True))
        value = sa.bindparam(param, type_=column.type)
        return {"eq": column.__eq__, "gte": column.__ge__, "gt": column.__gt__,
                "lte": column.__le__, "lt": column.__lt__}[op](value)

    @staticmethod
    def _params(query: RecordQuery, keyset: list[Any] | None = None, **paging: int) -> dict[str, Any]:
        """The bound values of a query (see `_select` for the names)."""
        params: dict[str, Any] = {f"f{i}": f.value for i, f in enumerate(query.filters)}
        if query.q:
            escaped = query.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params["q"] = f"%{escaped}%"
        for i, value in enumerate(keyset or []):
            params[f"k{i}"] = value
        return {**params, **paging}

    def _fetch(self, stmt: sa.Select, params: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """Column names and row tuples of `stmt`."""
        with _timed(self.settings.query_timeout_s), self.engine.connect() as conn:
            result = conn.execute(stmt, params)
            return list(result.keys()), result.all()

    def finish(self, name: str, granted: frozenset[str], rows: list[Any], shown: list[str]) -> list[dict[str, Any]]:
        """Records of the shown columns (they come first in each row), personal columns protected."""
        build = self._builders.get((name, granted, tuple(shown)))
        if build is None:
            transforms = protections(self.catalog.sharing[name], granted)
            key = self.settings.pseudonym_key
            keyed_by_column = {column: keyed(transforms[column], key) for column in shown if column in transforms}
            template = _records_of(tuple((c, "plain" if c not in transforms else "none" if keyed_by_column[c] is None
                                          else "call") for c in shown))
            functions = tuple(keyed_by_column.get(c) for c in shown)
            build = functools.partial(template, t=functions)
            if len(self._builders) > 4096:
                self._builders.clear()
            self._builders[(name, granted, tuple(shown))] = build
        return build(rows)

    def row_by_key(self, name: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The shared columns of the record with this key, unprotected (None: no such record): for a live
        lookup's fallback, which protects it as it would a live answer (`protect`)."""
        query = RecordQuery(filters=[Filter(column, "eq", value) for column, value in key.items()])
        stmt, shown = self._select(name, frozenset(), query, self._order(name, query), paged="keyset")
        names, rows = self._fetch(stmt, self._params(query, limit=1))
        return {column: value for column, value in zip(names, rows[0]) if column in shown} if rows else None

    def protect(self, name: str, granted: frozenset[str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records of the shared columns, personal columns protected as a records read protects them."""
        shown = list(self.catalog.sharing[name].columns)
        return self.finish(name, granted, [tuple(r.get(c) for c in shown) for r in records], shown)

    def page(self, name: str, grant: Grant, query: RecordQuery, limit: int,
             cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page in keyset order and the cursor of the next (None at the end)."""
        plan = self.plan_page(name, grant, query, limit, cursor)
        names, rows = self._fetch(plan.stmt, plan.params)
        return self.finish_page(plan, names, rows)

    def plan_page(self, name: str, grant: Grant, query: RecordQuery, limit: int,
                  cursor: str | None = None) -> PagePlan:
        """The statement and bound values of a page (QueryError if the reader may not ask it, or a bad cursor)."""
        self.check(name, grant, query)
        order = self._order(name, query)
        keyset = self._unseal(name, order, cursor) if cursor else None
        query = self.scoped(query, grant)
        stmt, shown = self._select(name, grant.personal, query, order, after=keyset is not None, paged="keyset")
        return PagePlan(name, grant.personal, stmt, shown, order, self._params(query, keyset, limit=limit + 1), limit)

    def finish_page(self, plan: PagePlan, names: list[str], rows: list[Any]) -> tuple[list[dict[str, Any]], str | None]:
        """The records of a page's rows (personal columns protected) and the cursor of the next page."""
        next_cursor = None
        if len(rows) > plan.limit:
            rows = rows[:plan.limit]
            next_cursor = self._seal(plan.name, plan.order, [rows[-1][names.index(c)] for c, _ in plan.order])
        return self.finish(plan.name, plan.granted, rows, plan.shown), next_cursor

    def offset_page(self, name: str, grant: Grant, query: RecordQuery, limit: int,
                    offset: int) -> list[dict[str, Any]]:
        """A page by offset (the CKAN datastore_search way)."""
        self.check(name, grant, query)
        order = self._order(name, query)
        query = self.scoped(query, grant)
        stmt, shown = self._select(name, grant.personal, query, order, paged="offset")
        _, rows = self._fetch(stmt, self._params(query, limit=limit, offset=offset))
        return self.finish(name, grant.personal, rows, shown)

    def count(self, name: str, grant: Grant, query: RecordQuery) -> int:
        """How many rows the grant covers match the query's filters and search."""
        query = self.scoped(query, grant)
        stmt, _ = self._select(name, grant.personal, query, [])
        with _timed(self.settings.query_timeout_s), self.engine.connect() as conn:
            counted = sa.select(sa.func.count()).select_from(stmt.subquery())
            return int(conn.execute(counted, self._params(query)).scalar_one())

    def chunks(self, name: str, grant: Grant, query: RecordQuery, max_rows: int,
               chunk_rows: int = 5000) -> Iterator[list[dict[str, Any]]]:
        """The whole result in keyset chunks (each chunk one bounded query), at most `max_rows` rows."""
        cursor, sent = None, 0
        while sent < max_rows:
            records, cursor = self.page(name, grant, query, min(chunk_rows, max_rows - sent), cursor)
            if records:
                yield records
            sent += len(records)
            if cursor is None:
                return

    @staticmethod
    def after(view: sa.Table, order: list[tuple[str, bool]]) -> sa.ColumnElement[bool]:
        """Rows strictly after the keyset values `k0`, `k1`, ... in `order` (mixed directions):
        an OR of prefix-equal comparisons."""
        keys = [sa.bindparam(f"k{i}", type_=view.c[c].type) for i, (c, _) in enumerate(order)]
        terms = []
        for i, (column, descending) in enumerate(order):
            equal = [view.c[c] == keys[j] for j, (c, _) in enumerate(order[:i])]
            step = view.c[column] < keys[i] if descending else view.c[column] > keys[i]
            terms.append(sa.and_(*equal, step) if equal else step)
        return sa.or_(*terms) if len(terms) > 1 else terms[0]

    def seal(self, payload: dict[str, Any]) -> str:
        """`payload` encrypted and authenticated (AES-256-GCM): unreadable and unforgeable by the reader."""
        nonce = os.urandom(12)
        sealed = self._sealer.encrypt(nonce, orjson.dumps(payload, option=orjson.OPT_NAIVE_UTC), None)
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def unseal(self, token: str, refusal: str) -> dict[str, Any]:
        """The payload `seal` made of `token`; QueryError(`refusal`) if this gateway did not make it."""
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = orjson.loads(self._sealer.decrypt(sealed[:12], sealed[12:], None))
        except (InvalidTag, ValueError, TypeError):
            raise QueryError(refusal) from None
        if not isinstance(payload, dict):
            raise QueryError(refusal)
        return payload

    def _seal(self, name: str, order: list[tuple[str, bool]], values: list[Any]) -> str:
        return self.seal({"d": name, "o": [[c, d] for c, d in order], "v": values})

    def _unseal(self, name: str, order: list[tuple[str, bool]], cursor: str) -> list[Any]:
        payload = self.unseal(cursor, "cursor: not a cursor this gateway issued (use next_cursor as returned)")
        if payload.get("d") != name or [tuple(p) for p in payload.get("o", [])] != order:
            raise QueryError("cursor: it belongs to another dataset or sort order; start again without it")
        dataset: DatasetSpec = self.catalog.datasets[name]
        return [coerce(dataset.columns[c].type, v, "cursor") for (c, _), v in zip(order, payload["v"])]

