"""The REST API (FastAPI): catalog, records, exports, OAuth2 tokens; and the CKAN Action API.

    GET  /api/v1/datasets                          the catalog (open to all: metadata is public)
    GET  /api/v1/datasets/{name}                   one dataset: schema, row count, freshness, quality
    GET  /api/v1/datasets/{name}/records           filters, sort, fields, keyset pages (limit <= 1000)
    GET  /api/v1/datasets/{name}/export            the whole result as CSV, JSON lines or Parquet
    GET  /api/v1/datasets/{name}/lookup?{key}=...  one record asked of its source system now (gateway.lookup)
    GET  /api/v1/datasets/{name}/changes?since=..  what changed since a token: deletes, upserts (gateway.changes)
    POST /oauth/token                              OAuth2 client credentials -> bearer token
    GET|POST /api/3/action/{action}                CKAN: package_list|show|search, datastore_search
    GET  /portal, /portal/datasets/{name}          the data portal's HTML pages (gateway.portal; not in OpenAPI)

Routes for records and exports are generated per shared dataset, so the OpenAPI
document names each dataset's filter parameters (gateway.params) and record fields
(gateway.models) exactly.
Start it with `lgsp serve` (uvicorn); `create_app()` builds it from the environment.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import date, datetime, timezone
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import orjson
from fastapi import Depends, FastAPI, Form, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.models import Catalog
from gateway.access import AccessDenied, RateLimited, presented_secret
from gateway.access_requests import REQUEST_ID, AccessRequests, RequestError, UnknownRequest
from gateway.agencies import Grant, Principal, RegistryError
from gateway.audit import AuditEntry, AuditUnavailable
from gateway.changes import NoFeed, TokenExpired, feed_problem
from gateway.export import MEDIA_TYPES, encoder, parquet_schema
from gateway.fast import LeanRecords
from gateway.lookup import Answer, LookupFailed, lookup_key
from gateway import events as agency_events
from gateway import metrics
from gateway.events import ACCESS
from gateway.models import (AccessRequestIn, AccessRequestInfo, AccessRequestList, AgencyEventList, DatasetInfo,
                            DatasetList, ErrorBody, GrantGivenUp, GrantList, Health, TokenResponse, WebhookAttempt,
                            UsageList, WebhookDeliveries, WebhookList, WebhookRequest, WebhookSecret, changes_model,
                            lookup_model, page_model)
from gateway.params import ParamSpec, change_params, parse_params, record_params, record_query
from gateway.records import Filter, QueryError, QueryTimeout, RecordQuery
from gateway.service import Gateway, UnknownDataset
from gateway.settings import GatewaySettings
from gateway.usage import DEFAULT_WINDOW, moment, usage
from gateway.webhooks import UnknownWebhook, WebhookError, Webhooks, host_allowed, shown_url
from lgsp.metrics import CONTENT_TYPE as METRICS_TYPE, TOKEN_ENV, PlatformCollector
from warehouse.store import Warehouse

log = logging.getLogger("lgsp.gateway")
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
USAGE_KEPT_S = 60.0  # GET /api/v1/usage: the same question of the same agency answered from memory this long
USAGE_EVERY_S = 10.0  # ... and another question not before this (each is a pass over the audit)
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="an agency's API key (lgsp agencies key)")
BEARER = HTTPBearer(auto_error=False, description="an OAuth2 access token (POST /oauth/token) or an API key")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "bad parameter"), (401, "no or invalid credential for a restricted dataset"),
        (403, "no grant on this dataset"), (404, "no such dataset"), (429, "rate limit exceeded"),
        (503, "query timeout or audit unavailable"))}
LOOKUP_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 401: {"model": ErrorBody, "description": "no agency credential (a lookup reaches the source system)"},
    404: {"model": ErrorBody, "description": "no such record at the source, or no such dataset or lookup"},
    502: {"model": ErrorBody, "description": "the source refused or answered unusably, and lgsp has no copy"},
    503: {"model": ErrorBody, "description": "the source is unavailable and lgsp has no copy (see Retry-After)"}}

EXPORT_RESPONSE = {"description": "the rows, streamed", "content": {
    media.split(";")[0]: {"schema": {"type": "string"}} for media in MEDIA_TYPES.values()}}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=JSON_OPTIONS), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"status": status, "message": message}}, status, headers)


def caller(request: Request, gateway: Gateway) -> Principal:
    """Authenticate and rate-limit the request's caller."""
    secret = presented_secret(request.headers.get("x-api-key"), request.headers.get("authorization"))
    principal = gateway.authenticate(secret, request.client.host if request.client else "unknown")
    request.state.agency = principal.label
    return principal


# --- records and exports --------------------------------------------------------------------

def _parsed(gateway: Gateway, name: str, specs: list[ParamSpec],
            request: Request) -> tuple[dict[str, Any], RecordQuery, QueryError | None]:
    """The parameters and query, or the error to raise once the caller is authorised (a refusal comes first)."""
    try:
        params = parse_params(specs, request.query_params)
        query = record_query(gateway.catalog.datasets[name], gateway.catalog.sharing[name], params)
        return params, query, None
    except QueryError as exc:
        return {}, RecordQuery(), exc


def _records_endpoint(gateway: Gateway, name: str, specs: list[ParamSpec]) -> Any:
    def records(request: Request) -> Response:
        principal = caller(request, gateway)
        params, query, bad = _parsed(gateway, name, specs, request)
        with gateway.audited(principal, name, "records", query) as outcome:
            if bad:
                raise bad
            rows, next_cursor = gateway.reader.page(name, outcome["granted"], query, params["limit"], params["cursor"])
            outcome["rows"] = len(rows)
        return json_response({"dataset": name, "records": rows, "next_cursor": next_cursor, "limit": params["limit"]})

    return records


def _export_endpoint(gateway: Gateway, name: str, specs: list[ParamSpec]) -> Any:
    dataset, shared = gateway.catalog.datasets[name], gateway.catalog.sharing[name]

    def export(request: Request) -> Response:
        principal = caller(request, gateway)
        params, query, bad = _parsed(gateway, name, specs, request)
        fmt = params.get("format", "csv")
        with gateway.audited(principal, name, f"export_{fmt}", query) as outcome:
            if bad:
                raise bad
            gateway.reader.check(name, outcome["granted"], query)
        columns = query.fields or list(shared.columns)
        max_rows = params["max_rows"] or gateway.settings.max_export_rows
        chunks = _counted(gateway, principal, name, fmt, outcome["granted"], query,
                          gateway.reader.chunks(name, outcome["granted"], query, max_rows))
        body = encoder(fmt)(parquet_schema(dataset, shared, columns) if fmt == "parquet" else columns, chunks)
        return StreamingResponse(body, media_type=MEDIA_TYPES[fmt], headers={
            "Content-Disposition": f'attachment; filename="{name}.{fmt}"'})

    return export


def _lookup_endpoint(gateway: Gateway, name: str) -> Any:
    def lookup(request: Request) -> Response:
        principal = caller(request, gateway)
        try:
            key, bad = lookup_key(gateway.catalog, name, request.query_params), None
        except QueryError as exc:
            key, bad = {}, exc
        query = RecordQuery(filters=[Filter(column, "eq", value) for column, value in key.items()])
        with gateway.audited(principal, name, "lookup", query) as outcome:
            if principal.agency_id is None:
                raise AccessDenied(401, "a live lookup calls the source system: send an agency's API key "
                                        "(X-API-Key) or an OAuth2 bearer token (POST /oauth/token)")
            if bad:
                raise bad
            grant: Grant = outcome["granted"]
            hidden = sorted(set(key) & set(gateway.catalog.sharing[name].personal) - grant.personal)
            if hidden:  # as a filter on a personal column: else a reader finds a person by an ID it may not see
                raise AccessDenied(403, f"a lookup by {', '.join(hidden)} needs a grant that includes it "
                                        f"(ask the data owner: {gateway.catalog.sharing[name].owner})")
            answer = _within_scope(gateway, name, key, grant, principal)
            outcome["rows"], outcome["action"] = 1, f"lookup_{answer.source}"
        record = gateway.reader.protect(name, grant.personal, [answer.record])[0]
        return json_response({"dataset": name, "source": answer.source, "as_of": answer.as_of,
                              "cached": answer.cached, "live_error": answer.live_error, "record": record},
                             headers={"Cache-Control": "no-store", "X-Lgsp-Source": answer.source})

    return lookup


def _within_scope(gateway: Gateway, name: str, key: dict[str, Any], grant: Grant, principal: Principal) -> Answer:
    """The lookup's answer if its record is within the grant's rows. For a scoped grant, a record outside them and
    a record the source does not have get the same 404, so a lookup tells nothing of records beyond the scope."""
    if not grant.scope:
        return gateway.lookups.lookup(name, key, principal.label)
    beyond = LookupFailed(404, f"no {name} with {', '.join(f'{c}={v}' for c, v in key.items())} among the records "
                               f"your grant covers ({grant.describe_scope()})")
    try:
        answer = gateway.lookups.lookup(name, key, principal.label)
    except LookupFailed as exc:
        if exc.status == 404:
            raise beyond from None
        raise
    if not grant.admits(answer.record):
        raise beyond
    return answer


def _changes_endpoint(gateway: Gateway, name: str, specs: list[ParamSpec]) -> Any:
    def changes(request: Request) -> Response:
        principal = caller(request, gateway)
        try:
            params, bad = parse_params(specs, request.query_params), None
        except QueryError as exc:
            params, bad = {}, exc
        with gateway.audited(principal, name, "changes", RecordQuery()) as outcome:
            if bad:
                raise bad
            page = gateway.changes.page(name, outcome["granted"], params["since"], params["limit"])
            outcome["rows"] = len(page["changes"])
        return json_response(page, headers={"Cache-Control": "no-store"})

    return changes


def _counted(gateway: Gateway, principal: Principal, name: str, fmt: str, grant: Grant, query: RecordQuery,
             chunks: Any) -> Any:
    """Pass the chunks on; when the stream ends (or the client leaves), audit the rows actually sent."""
    sent = 0
    try:
        for chunk in chunks:
            yield chunk
            sent += len(chunk)
    finally:
        described = query.describe(set(gateway.catalog.sharing[name].personal), gateway.settings.pseudonym_key)
        if grant.scope:
            described["scope"] = grant.scope_dict()
        try:
            gateway.audit.record(AuditEntry(agency_id=principal.label, dataset=name, action=f"export_{fmt}_done",
                                            query=described, rows_returned=sent, status=200))
            metrics.read_audited(name, f"export_{fmt}_done", principal.label, 200, sent)
        except AuditUnavailable:
            log.error("export of %s by %s: its end could not be audited", name, principal.label)


def _catalog_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Response:
        return json_response({"status": "ok"})

    platform = PlatformCollector(lambda: Warehouse(gateway.settings.database_url, gateway.catalog), gateway.catalog)

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        """The gateway's counters and the platform's gauges for Prometheus (gateway.metrics, lgsp.metrics)."""
        if gateway.settings.metrics_token is None:
            return error_response(403, f"metrics are off: set {TOKEN_ENV} (16+ characters) where lgsp serve runs, "
                                       "and give it to Prometheus as its bearer token (docs/deploy.md#monitoring)")
        if not metrics.authorized(gateway.settings.metrics_token, request.headers.get("authorization")):
            return error_response(401, "GET /metrics wants Authorization: Bearer <LGSP_METRICS_TOKEN>",
                                  {"WWW-Authenticate": 'Bearer realm="lgsp metrics"'})
        body = metrics.gateway_text() + generate_latest(_platform_registry(platform))
        return Response(body, media_type=METRICS_TYPE, headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/datasets", response_model=DatasetList, tags=["catalog"],
             responses={429: ERRORS[429]}, summary="The shared datasets")
    def list_datasets(request: Request) -> Response:
        caller(request, gateway)
        return json_response({"datasets": [gateway.datasets.describe(n) for n in gateway.datasets.names()]})

    @app.get("/api/v1/datasets/{name}", response_model=DatasetInfo, tags=["catalog"],
             responses={s: ERRORS[s] for s in (404, 429)}, summary="One shared dataset")
    def show_dataset(request: Request, name: str) -> Response:
        caller(request, gateway)
        gateway.shared(name)
        return json_response(gateway.datasets.describe(name))


READERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="lgsp-gateway-read")


class ReadRoute(APIRoute):
    """A route whose endpoint takes the request and parses its own parameters (gateway.params).

    FastAPI still documents it (parameters from `openapi_extra`, the response model, the
    security schemes), but does not solve parameters and dependencies per request: on the
    hot read path that machinery cost about a tenth of the gateway's time.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            # a plain executor: anyio's to_thread machinery cost more than the hop itself
            return await asyncio.get_running_loop().run_in_executor(READERS, endpoint, request)  # type: ignore[no-any-return]

        return handle


def _dataset_routes(app: FastAPI, gateway: Gateway) -> dict[str, list[ParamSpec]]:
    """Records and export routes per shared dataset; their parameters are documented from their ParamSpecs.
    Returns each dataset's records parameters (for the lean records path, gateway.fast)."""
    security = [Security(API_KEY), Security(BEARER)]
    specs = {}
    for name in sorted(gateway.catalog.sharing):
        dataset, shared = gateway.catalog.datasets[name], gateway.catalog.sharing[name]
        sortable = gateway.reader.sortable(name)
        records = record_params(dataset, shared, sortable, gateway.settings, export=False)
        exports = record_params(dataset, shared, sortable, gateway.settings, export=True)
        specs[name] = records
        app.router.add_api_route(
            f"/api/v1/datasets/{name}/records", _records_endpoint(gateway, name, records), methods=["GET"],
            route_class_override=ReadRoute, response_model=page_model(dataset, shared), responses=ERRORS,
            dependencies=security, tags=["records"], summary=f"Records of {name} ({shared.access})",
            operation_id=f"records_{name}", openapi_extra={"parameters": [p.openapi() for p in records]})
        app.router.add_api_route(
            f"/api/v1/datasets/{name}/export", _export_endpoint(gateway, name, exports), methods=["GET"],
            route_class_override=ReadRoute, response_class=Response, responses={**ERRORS, 200: EXPORT_RESPONSE},
            dependencies=security, tags=["exports"], summary=f"Export {name} ({shared.access})",
            operation_id=f"export_{name}", openapi_extra={"parameters": [p.openapi() for p in exports]})
        if feed_problem(gateway.catalog, name) is None:
            app.router.add_api_route(
                f"/api/v1/datasets/{name}/changes", _changes_endpoint(gateway, name, change_params(gateway.settings)),
                methods=["GET"], route_class_override=ReadRoute, response_model=changes_model(dataset, shared),
                responses={**ERRORS, 410: {"model": ErrorBody, "description": "the token has expired: start afresh"}},
                dependencies=security, tags=["changes"],
                summary=f"What changed in {name} since a token ({shared.access})",
                description="Without `since`: every current record, page by page (`more`), then a token. With "
                            "`since`: deletions, then the records changed, since the token was issued. Apply in "
                            "order, keep `next`, ask again. Personal columns protected as in records.",
                operation_id=f"changes_{name}",
                openapi_extra={"parameters": [p.openapi() for p in change_params(gateway.settings)]})
        if shared.lookup is not None:
            system = gateway.catalog.systems[shared.lookup.system]
            keys = [{"name": k, "in": "query", "required": True, "description": dataset.columns[k].description,
                     "schema": {"type": "string"}} for k in dataset.key]
            app.router.add_api_route(
                f"/api/v1/datasets/{name}/lookup", _lookup_endpoint(gateway, name), methods=["GET"],
                route_class_override=ReadRoute, response_model=lookup_model(dataset, shared),
                responses=LOOKUP_ERRORS, dependencies=security, tags=["lookups"],
                summary=f"Look up one {name} at {system.title or system.name}, now",
                description="The record as the source system has it now; when the source cannot answer, "
                            "lgsp's copy (`source: warehouse`, with `live_error` and `as_of`). Needs an "
                            "agency's credential and a grant; audited; personal columns protected.",
                operation_id=f"lookup_{name}", openapi_extra={"parameters": keys})

    @app.get("/api/v1/datasets/{name}/changes", include_in_schema=False)
    def no_changes(request: Request, name: str) -> Response:  # the datasets without a feed: say why
        caller(request, gateway)
        gateway.shared(name)
        raise NoFeed(feed_problem(gateway.catalog, name))

    return specs


def _access_request_routes(app: FastAPI, gateway: Gateway) -> None:
    """An agency asks for a dataset, follows its requests and withdraws a pending one (gateway.access_requests);
    the province decides them (lgsp agencies approve / deny)."""
    asked = AccessRequests(gateway.write_engine, gateway.catalog, gateway.audit)
    responses: dict[int | str, dict[str, Any]] = {s: ERRORS[s] for s in (401, 429)}
    one = {**responses, 404: {"model": ErrorBody, "description": "no such request of the calling agency"}}

    def agency(request: Request) -> str:
        principal = caller(request, gateway)
        if principal.agency_id is None:
            raise AccessDenied(401, "an access request is an agency's: send its API key (X-API-Key) or an OAuth2 "
                                    "bearer token (the province registers agencies: lgsp agencies add)")
        return principal.agency_id

    def shown(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in ("agency_id", "decided_by")}

    @app.get("/api/v1/grants", response_model=GrantList, tags=["access requests"], responses=responses,
             summary="The calling agency's grants: what it may read of each dataset (columns in clear, rows), "
                     "until when")
    def list_grants(request: Request) -> Response:
        return json_response({"grants": gateway.registry.grants_of(agency(request))})

    @app.delete("/api/v1/grants/{dataset}", response_model=GrantGivenUp, tags=["access requests"],
                responses={**responses, 404: {"model": ErrorBody, "description": "the agency holds no grant on it"}},
                summary="Give up the calling agency's grant on a dataset it no longer needs (audited; ask again to "
                        "read it)")
    def give_up_grant(request: Request, dataset: str = Path(..., max_length=100)) -> Response:
        agency_id = agency(request)
        try:
            gateway.registry.revoke(agency_id, dataset, by="agency")
        except RegistryError:
            return error_response(404, f"agency '{agency_id}' holds no grant on '{dataset}' (GET /api/v1/grants)")
        gateway.audit.record(AuditEntry(agency_id=agency_id, dataset=dataset, action="grant_relinquished", query={},
                                        rows_returned=None, status=200))
        gateway.authenticator.forget(agency_id)
        return json_response({"dataset": dataset, "outcome": "relinquished"})

    @app.get("/api/v1/events", response_model=AgencyEventList, tags=["access requests"], responses=responses,
             summary="The calling agency's events after `after`, oldest first: its requests decided, its grants "
                     "made, changed, revoked, ending or ended")
    def list_events(request: Request, after: int = Query(0, ge=0, le=2**62, description=(
                        "the number (`data.event`) of the last event already seen; 0: from the first")),
                    limit: int = Query(100, ge=1, le=1000)) -> Response:
        found = agency_events.after(gateway.write_engine, agency(request), after, limit + 1,
                                    gateway.settings.public_url or "")
        page = found[:limit]
        return json_response({"events": page, "next_after": page[-1]["data"]["event"] if page else after,
                              "more": len(found) > limit})

    usage_kept: dict[str, tuple[float, tuple[Any, Any], Any]] = {}  # agency -> (when, what was asked, the answer)
    usage_lock = threading.Lock()

    @app.get("/api/v1/usage", response_model=UsageList, tags=["access requests"], responses=responses,
             summary="What the calling agency read, per dataset, from the audit: requests by kind, refused, rows sent")
    def list_usage(request: Request,
                   since: Optional[Union[date, datetime]] = Query(None, description=(
                       "from: a date (the start of that day, Vietnam time) or a time; default 30 days ago")),
                   until: Optional[Union[date, datetime]] = Query(None, description="to (not included)")) -> Response:
        agency_id = agency(request)
        asked, clock = (since, until), time.monotonic()
        with usage_lock:  # a pass over the audit each: an agency's answer kept a minute, one pass per 10 s at most
            kept = usage_kept.get(agency_id)
            if kept is not None and kept[1] == asked and clock - kept[0] < USAGE_KEPT_S:
                return json_response(kept[2])
            if kept is not None and clock - kept[0] < USAGE_EVERY_S:
                raise RateLimited(USAGE_EVERY_S - (clock - kept[0]))
            usage_kept[agency_id] = (clock, asked, None)
        start = moment(since) or datetime.now(timezone.utc) - DEFAULT_WINDOW
        rows = usage(gateway.write_engine, start, moment(until), agency_id)
        body = {"since": start, "until": moment(until),
                "usage": [{k: v for k, v in r.items() if k != "agency_id"} for r in rows]}
        with usage_lock:
            usage_kept[agency_id] = (clock, asked, body)
        return json_response(body)

    @app.get("/api/v1/access-requests", response_model=AccessRequestList, tags=["access requests"],
             responses=responses, summary="The calling agency's access requests, newest first")
    def list_requests(request: Request) -> Response:
        return json_response({"requests": [shown(r) for r in asked.listing(agency(request))]})

    @app.post("/api/v1/access-requests", response_model=AccessRequestInfo, status_code=201, tags=["access requests"],
              responses={**responses, 400: ERRORS[400]},
              summary="Ask the province for a shared dataset (it approves or denies; GET follows the request)")
    def file_request(request: Request, wanted: AccessRequestIn) -> Response:
        agency_id = agency(request)
        try:
            entry = asked.submit(agency_id, wanted.dataset, wanted.purpose, wanted.personal, wanted.until,
                                 wanted.legal_basis, wanted.scope, wanted.daily_rows)
        except RequestError as exc:
            return error_response(400, str(exc))
        return json_response(shown(entry), 201, {"Location": f"/api/v1/access-requests/{entry['request_id']}"})

    @app.get("/api/v1/access-requests/{request_id}", response_model=AccessRequestInfo, tags=["access requests"],
             responses=one, summary="One of the calling agency's access requests")
    def get_request(request: Request, request_id: str = Path(..., max_length=64, pattern=REQUEST_ID)) -> Response:
        return json_response(shown(asked.get(request_id, agency(request))))

    @app.delete("/api/v1/access-requests/{request_id}", response_model=AccessRequestInfo, tags=["access requests"],
                responses={**one, 400: {"model": ErrorBody, "description": "the request is not pending"}},
                summary="Withdraw a pending access request")
    def withdraw_request(request: Request, request_id: str = Path(..., max_length=64, pattern=REQUEST_ID)) -> Response:
        agency_id = agency(request)
        try:
            return json_response(shown(asked.withdraw(request_id, agency_id)))
        except RequestError as exc:
            return error_response(400, str(exc))


def _webhook_routes(app: FastAPI, gateway: Gateway) -> None:
    """An agency sees its own webhooks, pings one, revives a dead one, rotates or removes one; it registers its own
    when the province allows its host (LGSP_GATEWAY_WEBHOOK_HOSTS), else the province adds them (lgsp webhooks add)."""
    hooks = Webhooks(gateway.write_engine, gateway.catalog, gateway.settings.pseudonym_key,
                     gateway.settings.public_url)
    responses: dict[int | str, dict[str, Any]] = {s: ERRORS[s] for s in (401, 429)}
    one = {**responses, 404: {"model": ErrorBody, "description": "no such webhook of the calling agency"}}

    def agency(request: Request) -> Principal:
        principal = caller(request, gateway)
        if principal.agency_id is None:
            raise AccessDenied(401, "webhooks are an agency's: send its API key (X-API-Key) or an OAuth2 bearer token")
        return principal

    def own(request: Request) -> list[dict[str, Any]]:
        return [{k: v for k, v in h.items() if k != "agency_id"} for h in hooks.listing(agency(request).agency_id)]

    def find(request: Request, webhook_id: str) -> dict[str, Any]:
        found = [h for h in own(request) if h["webhook_id"] == webhook_id]
        if not found:
            raise UnknownWebhook(f"no webhook '{webhook_id}' of this agency (GET /api/v1/webhooks lists them)")
        return found[0]

    @app.get("/api/v1/webhooks", response_model=WebhookList, tags=["webhooks"], responses=responses,
             summary="The calling agency's webhooks and their state")
    def list_webhooks(request: Request) -> Response:
        return json_response({"webhooks": own(request)})

    @app.post("/api/v1/webhooks", response_model=WebhookSecret, status_code=201, tags=["webhooks"],
              responses={**responses, 400: ERRORS[400], 403: {
                  "model": ErrorBody, "description": "no grant on the dataset, or a host the province does not allow"}},
              summary="Register a webhook of the calling agency (its secret is shown once)")
    def add_webhook(request: Request, wanted: WebhookRequest) -> Response:
        principal = agency(request)
        allowed = gateway.settings.webhook_hosts
        if not allowed:
            raise AccessDenied(403, "the province has not opened webhook registration to agencies "
                                    "(LGSP_GATEWAY_WEBHOOK_HOSTS): ask it to add one (lgsp webhooks add)")
        if urlsplit(wanted.url).scheme != "https" or not host_allowed(wanted.url, allowed):
            raise AccessDenied(403, f"{shown_url(wanted.url)!r}: an agency may register https addresses on "
                                    f"{', '.join(allowed)} only")
        access = wanted.events == ACCESS
        if access and wanted.dataset not in (None, "*"):
            return error_response(400, "an access webhook tells of every request and grant of the agency: "
                                       "send no dataset")
        if not access and wanted.dataset is None:
            return error_response(400, "name the dataset whose changes the webhook tells of (or send "
                                       "\"events\": \"access\" for the agency's requests and grants)")
        if not access and wanted.dataset not in principal.grants:
            raise AccessDenied(403, f"agency '{principal.agency_id}' has no grant on '{wanted.dataset}'")
        try:
            webhook_id, secret = hooks.add(principal.agency_id, wanted.dataset or "*", wanted.url,
                                           created_by="agency", events=wanted.events)
        except WebhookError as exc:
            return error_response(400, str(exc))
        return json_response({"webhook_id": webhook_id, "dataset": "*" if access else wanted.dataset,
                              "url": shown_url(wanted.url), "secret": secret}, 201, {"Cache-Control": "no-store"})

    @app.delete("/api/v1/webhooks/{webhook_id}", response_model=WebhookAttempt, tags=["webhooks"], responses=one,
                summary="Stop telling the endpoint (its deliveries are kept)")
    def remove_webhook(request: Request, webhook_id: str = Path(..., max_length=64)) -> Response:
        find(request, webhook_id)
        hooks.remove(webhook_id)
        return json_response({"webhook_id": webhook_id, "outcome": "removed"})

    @app.post("/api/v1/webhooks/{webhook_id}/rotate", response_model=WebhookSecret, tags=["webhooks"],
              responses=one, summary="A new signing secret, shown once (the old one also signs for 24 hours)")
    def rotate_webhook(request: Request, webhook_id: str = Path(..., max_length=64)) -> Response:
        hook = find(request, webhook_id)
        secret = hooks.rotate(webhook_id)
        return json_response({"webhook_id": webhook_id, "dataset": hook["dataset"], "url": hook["url"],
                              "secret": secret}, headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/webhooks/{webhook_id}/deliveries", response_model=WebhookDeliveries, tags=["webhooks"],
             responses=one, summary="The latest attempts to tell the endpoint, newest first")
    def webhook_deliveries(request: Request, webhook_id: str = Path(..., max_length=64),
                           limit: int = Query(20, ge=1, le=1000)) -> Response:
        find(request, webhook_id)
        rows = [{k: v for k, v in row.items() if k not in ("delivery_id", "webhook_id")}
                for row in hooks.deliveries(webhook_id, limit)]
        return json_response({"webhook_id": webhook_id, "deliveries": rows})

    @app.post("/api/v1/webhooks/{webhook_id}/ping", response_model=WebhookAttempt, tags=["webhooks"],
              responses=one, summary="Send a signed webhook.ping event to the endpoint now")
    def ping_webhook(request: Request, webhook_id: str = Path(..., max_length=64)) -> Response:
        find(request, webhook_id)
        done = hooks.ping(webhook_id)
        return json_response({"webhook_id": webhook_id, "outcome": done.outcome, "status": done.status,
                              "error": done.error, "duration_ms": done.duration_ms})

    @app.post("/api/v1/webhooks/{webhook_id}/retry", response_model=WebhookAttempt, tags=["webhooks"],
              responses={**one, 409: {"model": ErrorBody, "description": "the webhook is not dead"}},
              summary="Revive a dead webhook once its endpoint is fixed: tried at the next dispatch")
    def retry_webhook(request: Request, webhook_id: str = Path(..., max_length=64)) -> Response:
        if find(request, webhook_id)["state"] != "dead":
            return error_response(409, f"webhook '{webhook_id}' is not dead: it is tried as scheduled")
        hooks.retry(webhook_id)
        return json_response({"webhook_id": webhook_id, "outcome": "revived"})


def _token_route(app: FastAPI, gateway: Gateway) -> None:
    basic = HTTPBasic(auto_error=False)

    @app.post("/oauth/token", response_model=TokenResponse, tags=["service"],
              responses={400: ERRORS[400], 401: ERRORS[401]}, summary="OAuth2 client credentials grant")
    def token(grant_type: str = Form(..., max_length=100), client_id: Optional[str] = Form(None, max_length=200),
              client_secret: Optional[str] = Form(None, max_length=200),
              credentials: Optional[HTTPBasicCredentials] = Depends(basic)) -> Response:
        if grant_type != "client_credentials":
            return error_response(400, "grant_type must be client_credentials")
        if credentials is not None:
            client_id, client_secret = credentials.username, credentials.password
        issued = (gateway.registry.issue_token(client_id, client_secret, gateway.settings.token_ttl_s)
                  if client_id and client_secret else None)
        if issued is None:
            return error_response(401, "invalid client: unknown client_id, wrong secret, or revoked")
        return json_response({"access_token": issued, "token_type": "bearer",
                              "expires_in": gateway.settings.token_ttl_s}, headers={"Cache-Control": "no-store"})


# --- errors, logging, the app ---------------------------------------------------------------

def problem(exc: Exception) -> tuple[int, str, dict[str, str]] | None:
    """The status, message and headers a known refusal is answered with (None: not one of them, a 500)."""
    if isinstance(exc, AccessDenied):
        return exc.status, str(exc), {}
    if isinstance(exc, QueryError):
        return 400, str(exc), {}
    if isinstance(exc, (UnknownDataset, NoFeed, UnknownWebhook, UnknownRequest)):
        return 404, str(exc.args[0]), {}
    if isinstance(exc, TokenExpired):
        return 410, str(exc), {}
    if isinstance(exc, RateLimited):
        return 429, str(exc), {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    if isinstance(exc, QueryTimeout):
        return 503, str(exc), {"Retry-After": "5"}
    if isinstance(exc, LookupFailed):
        return exc.status, str(exc), ({"Retry-After": str(max(1, round(exc.retry_after_s)))}
                                      if exc.retry_after_s else {})
    if isinstance(exc, AuditUnavailable):
        return 503, "the read could not be audited, so it was refused; try again later", {}
    return None


def _error_handlers(app: FastAPI) -> None:
    from gateway.ckan import ckan_error, is_ckan
    from gateway.portal import error_page, is_portal

    def handle(status: int, message: str, request: Request, headers: dict[str, str] | None = None) -> Response:
        if is_portal(request):
            return error_page(request, status, headers)  # in the page's language: what to do, not `message`
        return ckan_error(request, status, message) if is_ckan(request) else error_response(status, message, headers)

    def known(request: Request, exc: Exception) -> Response:
        status, message, headers = problem(exc)  # type: ignore[misc]
        return handle(status, message, request, headers or None)

    for kind in (AccessDenied, QueryError, UnknownDataset, NoFeed, TokenExpired, RateLimited, QueryTimeout,
                 AuditUnavailable, LookupFailed, UnknownWebhook, UnknownRequest):
        app.add_exception_handler(kind, known)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in exc.errors())  # the message only, never the value sent
        return handle(400, problems, request)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return handle(exc.status_code, str(exc.detail), request)


_reload_asked = False


def stale_definition(exc: BaseException) -> bool:
    """Whether a read failed because a migration changed a shared column's type under this worker (PostgreSQL
    refuses the statements it prepared: "cached plan must not change result type"). The first time, the
    worker asks its supervisor (`lgsp serve`) to replace every worker (SIGHUP: they read the catalog and
    prepare their statements again), so the gateway recovers even when the migration ran elsewhere."""
    global _reload_asked
    from psycopg import errors

    cause = getattr(exc, "orig", None) or exc
    if not (isinstance(cause, errors.FeatureNotSupported) and "cached plan must not change result type" in str(cause)):
        return False
    from gateway.serving import is_lgsp_serve

    parent = os.getppid()
    if not _reload_asked and is_lgsp_serve(parent):
        _reload_asked = True
        log.warning("a shared column's type changed under this worker: asking lgsp serve (pid %d) to reload", parent)
        os.kill(parent, signal.SIGHUP)
    return True


class GuardMiddleware:
    """One log line per request (method, path without query, status, agency, ms: no personal data),
    a generic 500 with a reference instead of any stack trace or exception message, and a 413 for a
    request body over `max_body` bytes, refused before it is read (its Content-Length) or as soon as
    it passes the limit (a chunked body): no body is held in memory whole beyond it."""

    def __init__(self, app: ASGIApp, paths: frozenset[str] = frozenset(), max_body: int = 1 << 20) -> None:
        self.app, self.paths = app, paths  # the app's paths without parameters: routes for the metrics' labels
        self.max_body = max_body

    async def _bounded(self, scope: Scope, receive: Receive) -> Receive | None:
        """`receive` for a body within the limit (a chunked one read here first, then replayed); None: over it."""
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            return receive if length.isdigit() and int(length) <= self.max_body else None
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size <= self.max_body:
                messages.append(message)
            elif not message.get("more_body", False) or size > 2 * self.max_body:
                return None  # refused: read to its end if it ends soon (the client then reads the 413 cleanly)
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        return replayed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, sent_start = time.perf_counter(), 500, False
        bounded = await self._bounded(scope, receive)
        if bounded is None:
            response = error_response(413, f"the request body is larger than the gateway takes ({self.max_body:,} "
                                           "bytes, LGSP_GATEWAY_MAX_BODY_BYTES): send less (a CKAN query's filters, "
                                           "an access request's text)", {"Connection": "close"})
            await response(scope, receive, send)
            log.info("%s %s 413 - body over %d bytes", scope["method"], scope["path"], self.max_body)
            metrics.request_done(metrics.route_label(scope, self.paths), scope["method"], 413,
                                 time.perf_counter() - started)
            return
        receive = bounded

        async def tracked(message: Message) -> None:
            nonlocal status, sent_start
            if message["type"] == "http.response.start":
                status, sent_start = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - logged by type and reference, never its message
            if stale_definition(exc) and not sent_start:
                response = error_response(503, "this dataset's definition changed (lgsp warehouse migrate) after "
                                               "this gateway's workers started; they are being replaced: retry in a "
                                               "moment", {"Retry-After": "2"})
                await response(scope, receive, send)
                status = 503
                return
            reference = secrets.token_hex(6)
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("internal error %s: %s\n%s", reference, type(exc).__name__, frames)
            if not sent_start:
                response = error_response(500, f"internal error (reference {reference}); it has been logged")
                await response(scope, receive, send)
        finally:
            agency, seconds = scope.get("state", {}).get("agency", "-"), time.perf_counter() - started
            log.info("%s %s %s %s %.1fms", scope["method"], scope["path"], status, agency, seconds * 1000)
            metrics.request_done(metrics.route_label(scope, self.paths), scope["method"], status, seconds)


def _platform_registry(collector: PlatformCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def create_app(settings: GatewaySettings | None = None, catalog: Catalog | None = None) -> FastAPI:
    """The gateway's ASGI application (tables and shared views must exist: `lgsp serve` prepares them)."""
    from gateway.ckan import ckan_routes
    from gateway.portal import portal_routes

    gateway = Gateway(settings, catalog)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # the worker's long-lived objects (the app, routes, models, SQLAlchemy, ~150,000) out of the cyclic
        # collector's full passes: each pass over them took 120-130 ms, a stall of every request in flight
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gateway.close()  # flush the audit queue, release connections
            gc.unfreeze()  # collectable again (an in-process server, as in the tests, leaves nothing pinned)

    app = FastAPI(lifespan=lifespan, title="lgsp sharing gateway", version="1.0.0",
                  description="Shared datasets of the province for its agencies and the public: REST and CKAN APIs. "
                              "Restricted datasets need an API key (X-API-Key) or an OAuth2 bearer token.",
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.gateway = gateway
    _catalog_routes(app, gateway)
    specs = _dataset_routes(app, gateway)
    _token_route(app, gateway)
    _webhook_routes(app, gateway)
    _access_request_routes(app, gateway)
    ckan_routes(app, gateway)
    portal_routes(app, gateway)
    _error_handlers(app)
    # the hot records route on PostgreSQL, answered before FastAPI's stack (inside the guard: same log, same 500)
    app.add_middleware(LeanRecords, gateway=gateway, specs=specs, problem=problem, executor=READERS)
    app.add_middleware(GuardMiddleware, paths=frozenset(r.path for r in app.routes  # type: ignore[attr-defined]
                                                         if "{" not in r.path),  # type: ignore[attr-defined]
                       max_body=gateway.settings.max_body_bytes)
    return app
