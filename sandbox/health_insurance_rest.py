"""Plain-WSGI simulator of the health insurance (BHYT) card registry REST API.

Not part of lgsp's catalog: the "adding a system" guide connects it with YAML only.

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "health_insurance"}`` (no key needed).
    ``GET /api/cards?updated_since=<ISO-8601>&updated_until=<ISO-8601>&offset=0&limit=100``
        -> ``200 {"data": [...], "total": 1200, "offset": 0, "limit": 100}``

``updated_since`` is inclusive, ``updated_until`` exclusive; ``total`` counts the
rows inside that window; rows come ordered by ``(updated_at, card_no)``.

Example card::

    {"card_no": "GD4370123456789", "personal_id": "037190012345",
     "full_name": "Nguyễn Thị Lan", "sex": "female", "birth_date": "1990-04-02",
     "commune_code": "14464", "valid_from": "2025-03-01", "valid_to": "2026-02-28",
     "updated_at": "2025-08-15T09:30:00+07:00"}

Errors are JSON ``{"error": "..."}``: 400 bad parameter (names it), 401
missing/wrong ``X-API-Key``, 404 unknown path, 405 non-GET.
"""

from __future__ import annotations

import bisect
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs

from sandbox.common import parse_instant, to_vn_iso

CARDS_PATH = "/api/cards"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SYSTEM = "health_insurance"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


class _BadParam(ValueError):
    pass


def card_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth card -> JSON form (timestamps ``+07:00`` ISO, dates ``YYYY-MM-DD``)."""
    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return to_vn_iso(value)
        if isinstance(value, date):
            return value.isoformat()
        return value
    return {k: convert(v) for k, v in row.items()}


class HealthInsuranceApp:
    """WSGI callable serving a fixed list of cards behind an ``X-API-Key``.

    Args:
        cards: Ground-truth rows (any order; served by ``(updated_at, card_no)``).
        api_key: The required ``X-API-Key`` value.
    """

    def __init__(self, cards: Sequence[dict[str, Any]], api_key: str) -> None:
        self.api_key = api_key
        ordered = sorted(cards, key=lambda r: (r["updated_at"], r["card_no"]))
        self._items = [card_to_json(r) for r in ordered]
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
        if path not in ("/health", CARDS_PATH, CARDS_PATH + "/"):
            return 404, {"error": f"no such resource: {path}"}
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return 405, {"error": f"method {environ.get('REQUEST_METHOD')} not allowed; use GET"}
        if path == "/health":
            return 200, {"status": "ok", "system": SYSTEM}
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
        since, until = _instant_param(query, "updated_since"), _instant_param(query, "updated_until")
        first = 0 if since is None else bisect.bisect_left(self._keys, since)
        stop = len(self._keys) if until is None else bisect.bisect_left(self._keys, until)
        stop = max(first, stop)
        offset = _int_param(query, "offset", 0, minimum=0)
        limit = min(_int_param(query, "limit", DEFAULT_LIMIT, minimum=1), MAX_LIMIT)
        start = first + offset
        return {
            "data": self._items[start:min(start + limit, stop)] if start < stop else [],
            "total": stop - first,
            "offset": offset,
            "limit": limit,
        }


def _instant_param(query: dict[str, list[str]], name: str) -> float | None:
    raw = query.get(name, [""])[0]
    if not raw.strip():
        return None
    try:
        return parse_instant(raw).timestamp()
    except ValueError as exc:
        raise _BadParam(f"{name} must be an ISO-8601 date-time with offset: {exc}") from None


def _int_param(query: dict[str, list[str]], name: str, default: int, minimum: int) -> int:
    raw = query.get(name, [""])[0].strip()
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise _BadParam(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return int(raw)


def make_health_insurance_app(cards: Sequence[dict[str, Any]], api_key: str) -> HealthInsuranceApp:
    """Build the health insurance card WSGI app (see :class:`HealthInsuranceApp`)."""
    return HealthInsuranceApp(cards, api_key)
