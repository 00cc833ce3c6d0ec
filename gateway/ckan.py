"""The CKAN-compatible Action API, so tools that speak CKAN (ckanapi, CKAN harvesters) work unchanged.

    GET|POST /api/3/action/package_list                      names of the shared datasets
    GET|POST /api/3/action/package_show?id=citizen           one dataset as a CKAN package
    GET|POST /api/3/action/package_search?q=...&rows=&start=  search titles, descriptions (also
                                                             Vietnamese), owners
    GET|POST /api/3/action/datastore_search                  resource_id, filters, q, fields, sort,
                                                             limit, offset, include_total

(also under /api/action/, where ckanapi calls.) A dataset is a package with one
datastore resource whose id is the dataset's name. Responses are CKAN's envelope
`{help, success, result}`; errors `{help, success: false, error: {__type, message}}`
with CKAN's status codes (404 Not Found Error, 403 Authorization Error, 409 Validation
Error). Access, masking and audit are the REST API's (gateway.service). A package's Vietnamese
title and description, when the catalog has them, are the extras `title_vi` and `notes_vi`.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI, Request, Security
from fastapi.responses import Response

from gateway.access import AccessDenied
from gateway.api import API_KEY, BEARER, caller, json_response
from gateway.params import parse_list, parse_sort
from gateway.records import Filter, QueryError, RecordQuery, coerce
from gateway.service import Gateway, UnknownDataset

Action = Literal["package_list", "package_show", "package_search", "datastore_search"]
CKAN_TYPES = {"string": "text", "integer": "int8", "float": "float8", "boolean": "bool", "date": "date",
              "timestamp": "timestamp"}
ERROR_TYPES = {400: "Validation Error", 401: "Authorization Error", 403: "Authorization Error",
               404: "Not Found Error", 409: "Validation Error", 429: "Rate Limit Error", 503: "Service Unavailable"}
MAX_OFFSET = 100_000
VIETNAMESE_EXTRAS = (("title_vi", "title_vi"), ("notes_vi", "description_vi"))  # extras key, catalog field


class CkanValidation(ValueError):
    """A CKAN parameter is wrong (409 Validation Error); `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def is_ckan(request: Request) -> bool:
    return request.url.path.startswith(("/api/3/action/", "/api/action/"))


def _help(request: Request) -> str:
    action = request.url.path.rsplit("/", 1)[-1]
    return f"{str(request.base_url).rstrip('/')}/api/3/action/help_show?name={action}"


def ckan_error(request: Request, status: int, message: str, field: str | None = None) -> Response:
    """CKAN's error envelope; a validation error names its field."""
    status = 409 if status in (400, 409) else status
    error: dict[str, Any] = {"__type": ERROR_TYPES.get(status, "Error"), "message": message}
    if field:
        error[field] = [message]
    return json_response({"help": _help(request), "success": False, "error": error}, status)


async def _params(request: Request) -> dict[str, Any]:
    """The action's parameters: the JSON body of a POST, or the query string of a GET."""
    if request.method == "POST":
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise CkanValidation("body", "the request body is not JSON") from None
        except RecursionError:  # `[[[[...`: Python's parser gives up on the depth
            raise CkanValidation("body", "the request body is nested too deeply to be a CKAN query") from None
        if not isinstance(body, dict):
            raise CkanValidation("body", "the request body must be a JSON object")
        return body
    return dict(request.query_params)


def _integer(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, default)
    try:
        value = int(raw) if not isinstance(raw, bool) and str(raw).lstrip("-").isdigit() else None
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= high:
        raise CkanValidation(name, f"{name} must be an integer from {low} to {high}")
    return value


def _text(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 500 or "\x00" in value:
        raise CkanValidation(name, f"{name} must be a string (at most 500 characters, no NUL)")
    return value


def package(gateway: Gateway, request: Request, name: str) -> dict[str, Any]:
    """A shared dataset as a CKAN package with one datastore resource."""
    info = gateway.datasets.describe(name)
    base = str(request.base_url).rstrip("/")
    modified = info["freshness"].isoformat() if info["freshness"] else None
    return {
        "id": name, "name": name, "title": info["title"], "notes": info["description"], "type": "dataset",
        "state": "active", "private": info["access"] == "restricted", "license_id": info["licence"],
        "license_title": info["licence"], "metadata_modified": modified,
        "organization": {"name": info["owner"].split(" (")[0].lower().replace(" ", "-"), "title": info["owner"]},
        "num_resources": 1, "num_tags": 0, "tags": [],
        "extras": [{"key": "access", "value": info["access"]}, {"key": "row_count", "value": str(info["row_count"])},
                   {"key": "last_quality", "value": json.dumps(info["last_quality"], default=str)},
                   *([{"key": "quality_score", "value": json.dumps(info["quality_score"])}]
                     if info.get("quality_score") else []),
                   *([{"key": "freshness_state", "value": info["freshness_status"]["state"]}]
                     if info.get("freshness_status") else []),
                   *[{"key": key, "value": info[field]} for key, field in VIETNAMESE_EXTRAS if info[field]]],
        "resources": [{"id": name, "package_id": name, "name": info["title"], "format": "JSON",
                       "datastore_active": True, "last_modified": modified,
                       "url": f"{base}/api/v1/datasets/{name}/records"}],
    }


def package_search(gateway: Gateway, request: Request, params: dict[str, Any]) -> dict[str, Any]:
    q = (_text(params, "q") or "").lower()
    rows, start = _integer(params, "rows", 10, 0, 1000), _integer(params, "start", 0, 0, 100_000)
    hits = []
    for name in gateway.datasets.names():
        shared, dataset = gateway.catalog.sharing[name], gateway.catalog.datasets[name]
        text = " ".join([name, dataset.title, shared.description, shared.title_vi, shared.description_vi,
                         shared.owner, shared.licence]).lower()
        if q in ("", "*:*") or all(word in text for word in q.split()):
            hits.append(name)
    return {"count": len(hits), "sort": "name asc", "facets": {}, "search_facets": {},
            "results": [package(gateway, request, n) for n in hits[start:start + rows]]}


def _filters(gateway: Gateway, name: str, raw: Any) -> list[Filter]:
    """CKAN `filters`: {column: value or [values]} (a JSON string in a GET)."""
    if raw in (None, ""):
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise CkanValidation("filters", "filters must be a JSON object {column: value or [values]}") from None
    if not isinstance(raw, dict):
        raise CkanValidation("filters", "filters must be an object {column: value or [values]}")
    dataset, filters = gateway.catalog.datasets[name], []
    for column, value in raw.items():
        if column not in dataset.columns:
            raise CkanValidation("filters", f"'{column}' is not a column of '{name}'")
        kind = dataset.columns[column].type
        if isinstance(value, list):
            if not value or len(value) > 1000 or any(isinstance(v, (dict, list)) for v in value):
                raise CkanValidation("filters", f"filters.{column}: give 1 to 1000 plain values")
            filters.append(Filter(column, "in", [coerce(kind, v, f"filters.{column}") for v in value]))
        elif isinstance(value, dict) or value is None:
            raise CkanValidation("filters", f"filters.{column}: give a value or a list of values")
        else:
            filters.append(Filter(column, "eq", coerce(kind, value, f"filters.{column}")))
    return filters


def _ckan_sort(params: dict[str, Any]) -> list[tuple[str, bool]]:
    """CKAN sort: 'col1 asc, col2 desc'."""
    text = _text(params, "sort")
    if not text:
        return []
    parts = []
    for item in text.split(","):
        words = item.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise CkanValidation("sort", "sort must be like 'column asc, other desc'")
        parts.append(f"-{words[0]}" if len(words) == 2 and words[1].lower() == "desc" else words[0])
    return parse_sort(",".join(parts))


def datastore_search(gateway: Gateway, request: Request, params: dict[str, Any]) -> dict[str, Any]:
    name = _text(params, "resource_id") or _text(params, "id")
    if name is None:
        raise CkanValidation("resource_id", "resource_id is required (the dataset's name, see package_list)")
    gateway.shared(name)
    fields = params.get("fields")
    fields = parse_list(",".join(fields) if isinstance(fields, list) and all(isinstance(f, str) for f in fields)
                        else _text(params, "fields"))
    query = RecordQuery(filters=_filters(gateway, name, params.get("filters")), sort=_ckan_sort(params),
                        fields=fields, q=_text(params, "q"))
    limit = _integer(params, "limit", 100, 0, gateway.settings.max_page_rows)
    offset = _integer(params, "offset", 0, 0, MAX_OFFSET)
    include_total = str(params.get("include_total", "true")).lower() not in ("false", "0")
    principal = caller(request, gateway)
    with gateway.audited(principal, name, "ckan_datastore_search", query) as outcome:
        records = gateway.reader.offset_page(name, outcome["granted"], query, limit, offset)
        total = gateway.reader.count(name, outcome["granted"], query) if include_total else None
        outcome["rows"] = len(records)
    dataset, shared = gateway.catalog.datasets[name], gateway.catalog.sharing[name]
    columns = query.fields or shared.columns
    base = f"/api/3/action/datastore_search?resource_id={name}"
    result = {"resource_id": name, "records": records, "limit": limit, "offset": offset,
              "fields": [{"id": c, "type": "text" if c in shared.personal else CKAN_TYPES[dataset.columns[c].type]}
                         for c in columns],
              "_links": {"start": base, "next": f"{base}&offset={offset + limit}"}}
    if total is not None:
        result["total"] = total
    return result


def ckan_routes(app: FastAPI, gateway: Gateway) -> None:
    """Mount the actions under /api/3/action/ and /api/action/."""

    async def action(request: Request, name: Action) -> Response:
        try:
            params = await _params(request)
            result = await _dispatch(gateway, request, name, params)
        except CkanValidation as exc:
            return ckan_error(request, 409, str(exc), exc.field)
        except QueryError as exc:
            return ckan_error(request, 409, str(exc))
        except UnknownDataset as exc:
            return ckan_error(request, 404, f"Not found: {exc.args[0]}")
        except AccessDenied as exc:
            return ckan_error(request, exc.status, str(exc))
        return json_response({"help": _help(request), "success": True, "result": result})

    responses = {status: {"description": kind} for status, kind in ERROR_TYPES.items()}
    for prefix in ("/api/3/action", "/api/action"):
        for method in ("GET", "POST"):
            app.add_api_route(prefix + "/{name}", action, methods=[method], tags=["ckan"], responses=responses,
                              dependencies=[Security(API_KEY), Security(BEARER)],
                              include_in_schema=prefix == "/api/3/action", operation_id=f"ckan_{method.lower()}",
                              summary="CKAN Action API: package_list, package_show, package_search, datastore_search")


async def _dispatch(gateway: Gateway, request: Request, name: str, params: dict[str, Any]) -> Any:
    """Run a CKAN action in a worker thread (authentication and reads touch the database)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_run_action, gateway, request, name, params)


def _run_action(gateway: Gateway, request: Request, name: str, params: dict[str, Any]) -> Any:
    if name == "datastore_search":
        return datastore_search(gateway, request, params)
    caller(request, gateway)
    if name == "package_list":
        return gateway.datasets.names()
    if name == "package_search":
        return package_search(gateway, request, params)
    dataset = _text(params, "id") or _text(params, "name_or_id")
    if dataset is None:
        raise CkanValidation("id", "id is required (a dataset name, see package_list)")
    gateway.shared(dataset)
    return package(gateway, request, dataset)
