"""The lean path of the hot read route, `GET /api/v1/datasets/{name}/records`, on PostgreSQL.

The route is still declared on the FastAPI app (so OpenAPI documents it, and SQLite serves
it there), but on PostgreSQL this ASGI middleware answers it before FastAPI's stack:
no routing table walk, no exception middlewares, no thread hop. The work is the same
code: the caller is authenticated and rate-limited (`Gateway.authenticate`), its
parameters parsed from the same `ParamSpec`s, the read authorised, checked, planned,
masked and sealed by `Reader`, audited with the same row (group-committed, awaited
before the response starts) and refused with the same error bodies. Only the I/O
differs: the query goes to PostgreSQL through psycopg's async connections, as a
prepared statement, from the event loop; the audit rows are group-committed from the
event loop too (`AsyncAuditWriter`, a chain of its own); a credential that is not in
the 5-second cache is looked up in a worker thread.

Everything else (the catalog, exports, CKAN, OAuth2, SQLite) goes to the FastAPI app.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics
from gateway.access import AccessDenied, authorize, presented_secret
from gateway.agencies import Principal
from gateway.audit import AsyncAuditWriter, AuditEntry
from gateway.params import ParamSpec, parse_params, record_query
from gateway.records import PagePlan, QueryError, QueryTimeout, RecordQuery
from gateway.service import Gateway

log = logging.getLogger("lgsp.gateway")
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
POOL_SIZE = 20  # async read connections per worker process (the threaded routes keep their own, at most 30)


class AsyncReads:
    """A small pool of async psycopg connections (read-only, statement timeout) and the SQL of each statement."""

    def __init__(self, gateway: Gateway) -> None:
        engine = gateway.read_engine
        self.dialect = engine.dialect
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.options = (f"-c statement_timeout={max(1, round(gateway.settings.query_timeout_s * 1000))} "
                        "-c default_transaction_read_only=on")
        self.timeout_s = gateway.settings.query_timeout_s
        self._idle: list[psycopg.AsyncCursor[Any]] = []  # one cursor per connection, kept with it
        self._slots = asyncio.Semaphore(POOL_SIZE)
        self._compiled: dict[int, tuple[sa.Select, Any, bool]] = {}
        self._columns: dict[str, tuple[list[str], list[Callable[[Any], Any] | None]]] = {}  # by the statement

    def _sql(self, stmt: sa.Select, params: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        """The statement's SQL for psycopg (named placeholders), its parameters (in-lists expanded), and the
        statement's text before expansion (the key of its result columns)."""
        cached = self._compiled.get(id(stmt))
        if cached is None or cached[0] is not stmt:
            compiled = stmt.compile(dialect=self.dialect)
            expanding = any(b.expanding for b in compiled.binds.values())
            if len(self._compiled) > 2048:
                self._compiled.clear()
            self._compiled[id(stmt)] = cached = (stmt, compiled, expanding)
        _, compiled, expanding = cached
        if expanding or compiled.binds.keys() - params.keys():
            state = compiled.construct_expanded_state(params)
            processors = state.processors
            bound = dict(state.parameters)
            sql = state.statement
        else:
            processors, bound, sql = compiled._bind_processors, params, compiled.string
        if processors:  # none for the gateway's types on psycopg; applied anyway, as SQLAlchemy would
            bound = {k: processors[k](v) if k in processors and v is not None else v for k, v in bound.items()}
        return sql, bound, compiled.string

    def _result_columns(self, key: str, cursor: psycopg.AsyncCursor[Any],
                        stmt: sa.Select) -> tuple[list[str], list[Callable[[Any], Any] | None]]:
        """The statement's column names and SQLAlchemy's result processors for the columns as PostgreSQL typed
        them (e.g. numeric -> float), from its first result (a statement's result columns do not change)."""
        found = self._columns.get(key)
        if found is None:
            description = cursor.description or []
            columns = list(stmt.selected_columns)
            found = ([d.name for d in description],
                     [columns[i].type._cached_result_processor(self.dialect, d.type_code)  # noqa: SLF001
                      for i, d in enumerate(description)])
            if len(self._columns) > 2048:
                self._columns.clear()
            self._columns[key] = found
        return found

    async def fetch(self, plan: PagePlan) -> tuple[list[str], list[Any]]:
        """Column names and row tuples of a page's statement (QueryTimeout past the time limit)."""
        sql, params, key = self._sql(plan.stmt, plan.params)
        async with self._slots:
            cursor = self._idle.pop() if self._idle else (await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, options=self.options)).cursor()
            conn, broken = cursor.connection, True
            try:
                await cursor.execute(sql, params)
                rows = await cursor.fetchall()
                names, processors = self._result_columns(key, cursor, plan.stmt)
                broken = False
            except psycopg.errors.QueryCanceled:
                broken = False
                raise QueryTimeout(f"the query ran longer than {self.timeout_s:g} s: narrow the filters") from None
            finally:
                if broken or conn.closed:
                    await conn.close()
                else:
                    self._idle.append(cursor)
        if any(processors):
            rows = [tuple(p(v) if p else v for p, v in zip(processors, row)) for row in rows]
        return names, rows

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().connection.close()


def _parsed(gateway: Gateway, name: str, specs: list[ParamSpec],
            scope: Scope) -> tuple[dict[str, Any], RecordQuery, QueryError | None]:
    try:
        params = parse_params(specs, dict(QueryParams(scope["query_string"])))  # a repeated name: its last value
        return params, record_query(gateway.catalog.datasets[name], gateway.catalog.sharing[name], params), None
    except QueryError as exc:
        return {}, RecordQuery(), exc


class LeanRecords:
    """ASGI middleware: answers `GET /api/v1/datasets/{name}/records` on PostgreSQL; passes everything else on."""

    def __init__(self, app: ASGIApp, gateway: Gateway, specs: dict[str, list[ParamSpec]],
                 problem: Callable[[Exception], tuple[int, str, dict[str, str]] | None],
                 executor: Any) -> None:
        self.app = app
        self.gateway = gateway
        self.specs = specs
        self.problem = problem
        self.executor = executor
        self.routes = {f"/api/v1/datasets/{name}/records": name for name in specs}
        self.enabled = gateway.read_engine.dialect.name == "postgresql"
        self.reads: AsyncReads | None = None
        self.audit: AsyncAuditWriter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http" and scope["method"] == "GET":
            name = self.routes.get(scope["path"])
            if name is not None:
                await self._records(name, scope, send)
                return
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        await self.app(scope, receive, send)

    def _closing(self, send: Send) -> Send:
        """`send` that closes the async connections when the server shuts down."""
        async def sent(message: Any) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                reads, self.reads, audit, self.audit = self.reads, None, self.audit, None
                if audit is not None:
                    await audit.close()
                if reads is not None:
                    await reads.close()
            await send(message)
        return sent

    async def _records(self, name: str, scope: Scope, send: Send) -> None:
        try:
            status, body, headers = 200, await self._page(name, scope), None
        except Exception as exc:  # noqa: BLE001 - the known refusals; anything else is the guard's 500
            known = self.problem(exc)
            if known is None:
                raise
            status, message, headers = known
            body = orjson.dumps({"error": {"status": status, "message": message}}, option=JSON_OPTIONS)
        raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _caller(self, scope: Scope) -> Principal:
        api_key = authorization = None
        for key, value in scope["headers"]:
            if key == b"x-api-key":
                api_key = value.decode("latin-1")
            elif key == b"authorization":
                authorization = value.decode("latin-1")
        secret = presented_secret(api_key, authorization)
        client = scope["client"][0] if scope.get("client") else "unknown"
        principal = self.gateway.authenticate_cached(secret, client)
        if principal is None:  # a registry lookup: a blocking query, off the event loop
            principal = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.gateway.authenticate, secret, client)
        scope.setdefault("state", {})["agency"] = principal.label  # for the request log line
        return principal

    async def _page(self, name: str, scope: Scope) -> bytes:
        """The page as the JSON body; refusals and bad queries audited as by `Gateway.audited`."""
        gateway = self.gateway
        principal = await self._caller(scope)  # 401 and 429 raised here: no read attempted, no audit row
        params, query, bad = _parsed(gateway, name, self.specs[name], scope)
        shared = gateway.shared(name)
        described = query.describe(set(shared.personal), gateway.settings.pseudonym_key)
        try:
            grant = authorize(principal, shared)
            if grant.scope:
                described["scope"] = grant.scope_dict()
            if bad:
                raise bad
            plan = gateway.reader.plan_page(name, grant, query, params["limit"], params["cursor"])
            if self.reads is None:
                self.reads = AsyncReads(gateway)
            names, rows = await self.reads.fetch(plan)
            records, next_cursor = gateway.reader.finish_page(plan, names, rows)
        except AccessDenied as exc:
            await self._audit(principal, name, described, None, exc.status)
            raise
        except QueryError:
            await self._audit(principal, name, described, None, 400)
            raise
        body = orjson.dumps({"dataset": name, "records": records, "next_cursor": next_cursor,
                             "limit": params["limit"]}, option=JSON_OPTIONS)
        await self._audit(principal, name, described, len(records), 200)
        return body

    async def _audit(self, principal: Principal, name: str, query: dict[str, Any], rows: int | None,
                     status: int) -> None:
        """The read's audit row, committed (as `Gateway._record` writes it: same row, same log line)."""
        if self.audit is None:
            self.audit = AsyncAuditWriter(self.gateway.write_engine)
        await self.audit.record(AuditEntry(agency_id=principal.label, dataset=name, action="records", query=query,
                                           rows_returned=rows, status=status))
        metrics.read_audited(name, "records", principal.label, status, rows)
        log.info("read records %s by %s: status %s, %s rows", name, principal.label, status, rows)

