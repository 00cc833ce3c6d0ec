"""Plain-WSGI simulator of the provincial TTHC (administrative procedure) REST API.

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "tthc"}`` (no API key needed).
    ``GET /api/v1/dossiers?updated_since=<ISO-8601>&updated_until=<ISO-8601>&page=1&page_size=100``
        -> ``200 {"items": [...], "page": 1, "page_size": 100, "total": 6000, "total_pages": 60}``

``updated_since`` is inclusive, ``updated_until`` (optional) exclusive; ``total``
counts the rows inside that window.

Example item::

    {"dossier_id": "H37.01-250815-0003", "procedure_code": "1.004227",
     "procedure_name": "Cấp phiếu lý lịch tư pháp", "commune_code": "14464",
     "receiving_agency": "Sở Tư pháp", "received_at": "2025-08-15T09:30:00+07:00",
     "due_at": "2025-08-22T09:30:00+07:00", "finished_at": "2025-08-20T15:02:11+07:00",
     "returned_at": null, "status": "finished", "channel": "online",
     "paid_online": true, "digitised": true, "updated_at": "2025-08-20T15:20:11+07:00"}

Errors are JSON ``{"error": "..."}``: 400 bad parameter (names it), 401
missing/wrong ``X-API-Key``, 404 unknown path, 405 non-GET.
"""

from __future__ import annotations

import bisect
import hmac
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs

from sandbox.common import parse_instant, to_vn_iso

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DOSSIERS_PATH = "/api/v1/dossiers"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


class _BadParam(ValueError):
    pass


def dossier_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """Convert a ground-truth dossier to its JSON form (datetimes -> +07:00 ISO strings)."""
    return {k: (to_vn_iso(v) if hasattr(v, "astimezone") else v) for k, v in row.items()}


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int:
    raw = query.get(name, [""])[0].strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadParam(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise _BadParam(f"{name} must be >= 1, got {value}")
    return value


class TthcApp:
    """WSGI callable serving a fixed list of dossiers.

    Args:
        dossiers: Ground-truth rows (any order; served by ``(updated_at, dossier_id)``).
        api_key: Required ``X-API-Key`` value; ``None`` disables the check.
    """

    def __init__(self, dossiers: Sequence[dict[str, Any]], api_key: str | None = None) -> None:
        self.api_key = api_key
        ordered = sorted(dossiers, key=lambda r: (r["updated_at"], r["dossier_id"]))
        self._items = [dossier_to_json(r) for r in ordered]
        self._keys = [r["updated_at"].timestamp() for r in ordered]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, payload = self._route(environ)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
        if status == 401:
            headers.append(("WWW-Authenticate", 'ApiKey header="X-API-Key"'))
        if status == 405:
            headers.append(("Allow", "GET"))
        start_response(f"{status} {_REASONS[status]}", headers)
        return [body]

    def _route(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = environ.get("PATH_INFO", "") or "/"
        if path not in ("/health", DOSSIERS_PATH, DOSSIERS_PATH + "/"):
            return 404, {"error": f"no such resource: {path}"}
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return 405, {"error": f"method {environ.get('REQUEST_METHOD')} not allowed; use GET"}
        if path == "/health":
            return 200, {"status": "ok", "system": "tthc"}
        if self.api_key is not None:
            given = environ.get("HTTP_X_API_KEY", "")
            if not given:
                return 401, {"error": "missing X-API-Key header"}
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, {"error": "invalid X-API-Key"}
        try:
            return 200, self._list(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        except _BadParam as exc:
            return 400, {"error": str(exc)}

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        start, stop = 0, len(self._keys)
        for name in ("updated_since", "updated_until"):
            raw = query.get(name, [""])[0]
            if not raw.strip():
                continue
            try:
                bound = bisect.bisect_left(self._keys, parse_instant(raw).timestamp())
            except ValueError as exc:
                raise _BadParam(f"{name} must be an ISO-8601 date-time with offset: {exc}") from None
            if name == "updated_since":
                start = bound
            else:
                stop = bound
        stop = max(start, stop)
        page = _int_param(query, "page", 1)
        page_size = min(_int_param(query, "page_size", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
        total = stop - start
        first = start + (page - 1) * page_size
        items = self._items[first:min(first + page_size, stop)] if first < stop else []
        return {
            "items": items,
            "page": page,
            "page_size": page_size,
            "total": total,
            "total_pages": math.ceil(total / page_size),
        }


def make_tthc_app(dossiers: Sequence[dict[str, Any]], api_key: str | None = None) -> TthcApp:
    """Build the TTHC WSGI app (see :class:`TthcApp`)."""
    return TthcApp(dossiers, api_key)
