"""Plain-WSGI simulator of the provincial land information system (OAuth2 client credentials).

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "land"}`` (no token needed).
    ``POST /oauth/token`` (RFC 6749 §4.4), form ``grant_type=client_credentials``, client
        id/secret as HTTP Basic *or* form fields ``client_id``/``client_secret``
        -> ``200 {"access_token": "...", "token_type": "Bearer", "expires_in": 300}``;
        wrong client -> ``401 {"error": "invalid_client"}``; other grant ->
        ``400 {"error": "unsupported_grant_type"}``.
    ``GET /api/v2/parcels?updated_since=&updated_until=&offset=0&limit=100`` with
        ``Authorization: Bearer <token>`` -> ``200 {"data": [...], "total": N, "offset": 0, "limit": 100}``;
        missing, unknown or expired token -> 401 with
        ``WWW-Authenticate: Bearer error="invalid_token"``.

``updated_since`` is inclusive, ``updated_until`` exclusive; ``total`` counts the
rows in that window; rows come ordered by ``(updated_at, parcel_id)``; ``limit``
defaults to 100 and is capped at 1000.

Example parcel::

    {"parcel_id": "14464-12-345", "commune_code": "14464", "map_sheet": 12, "parcel_no": 345,
     "area_m2": 187.5, "land_use": "ONT", "holder_name": "Nguyễn Văn Hùng",
     "holder_personal_id": "037078012345", "holder_sex": "male", "holder_birth_date": "1978-03-09",
     "certificate_no": "DA 123456", "updated_at": "2025-08-15T09:30:00+07:00"}

The small request helpers here (:func:`row_to_json`, :func:`instant_param`,
:func:`int_param`, :func:`basic_credentials`, :func:`same_secret`) are shared
by the business and civil-servant simulators.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs

from sandbox.common import parse_instant, to_vn_iso

SYSTEM = "land"
TOKEN_PATH = "/oauth/token"
PARCELS_PATH = "/api/v2/parcels"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_TOKEN_TTL_S = 300.0
MAX_FORM_BYTES = 64 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]


class BadParam(ValueError):
    """A query parameter is invalid; the message names it (answered as 400)."""


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth row -> JSON form (timestamps ``+07:00`` ISO, dates ``YYYY-MM-DD``)."""
    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return to_vn_iso(value)
        return value.isoformat() if isinstance(value, date) else value
    return {k: convert(v) for k, v in row.items()}


def instant_param(query: dict[str, list[str]], name: str) -> float | None:
    """An optional ISO-8601 query parameter with offset, as a POSIX timestamp."""
    raw = query.get(name, [""])[0]
    if not raw.strip():
        return None
    try:
        return parse_instant(raw).timestamp()
    except ValueError as exc:
        raise BadParam(f"{name} must be an ISO-8601 date-time with offset: {exc}") from None


def int_param(query: dict[str, list[str]], name: str, default: int, minimum: int) -> int:
    """An optional integer query parameter ``>= minimum``."""
    raw = query.get(name, [""])[0].strip()
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise BadParam(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return int(raw)


def basic_credentials(environ: dict[str, Any]) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` header, else ``None``."""
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())


class LandApp:
    """WSGI callable serving parcels behind OAuth2 client-credentials tokens.

    Args:
        parcels: Ground-truth rows (any order; served by ``(updated_at, parcel_id)``).
        client_id: The one registered client.
        client_secret: Its secret.
        token_ttl_s: Token lifetime; may be changed on a running app (tests set 1 s).
    """

    def __init__(self, parcels: Sequence[dict[str, Any]], client_id: str, client_secret: str,
                 token_ttl_s: float = DEFAULT_TOKEN_TTL_S) -> None:
        self.client_id, self.client_secret, self.token_ttl_s = client_id, client_secret, token_ttl_s
        ordered = sorted(parcels, key=lambda r: (r["updated_at"], r["parcel_id"]))
        self._items = [row_to_json(r) for r in ordered]
        self._keys = [r["updated_at"].timestamp() for r in ordered]
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self.tokens_issued = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, payload, headers = self._route(environ)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        start_response(f"{status} {_REASONS[status]}", [
            ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"), *headers])
        return [body]

    def _route(self, environ: dict[str, Any]) -> Answer:
        path, method = environ.get("PATH_INFO", "") or "/", environ.get("REQUEST_METHOD", "GET")
        allowed = {"/health": "GET", TOKEN_PATH: "POST", PARCELS_PATH: "GET", PARCELS_PATH + "/": "GET"}
        if path not in allowed:
            return 404, {"error": f"no such resource: {path}"}, []
        if method != allowed[path]:
            return 405, {"error": f"method {method} not allowed; use {allowed[path]}"}, [("Allow", allowed[path])]
        if path == "/health":
            return 200, {"status": "ok", "system": SYSTEM}, []
        if path == TOKEN_PATH:
            return self._token(environ)
        if not self._token_valid(environ):
            return 401, {"error": "invalid_token", "error_description": "missing, unknown or expired token"}, [
                ("WWW-Authenticate", 'Bearer realm="land", error="invalid_token"')]
        try:
            return 200, self._list(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)), []
        except BadParam as exc:
            return 400, {"error": str(exc)}, []

    def _token(self, environ: dict[str, Any]) -> Answer:
        try:
            length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_FORM_BYTES)
        except ValueError:
            length = 0
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace")) if length else {}
        if form.get("grant_type", [""])[0] != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}, []
        given = basic_credentials(environ) or (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
        if not (same_secret(given[0], self.client_id) and same_secret(given[1], self.client_secret)):
            return 401, {"error": "invalid_client"}, [("WWW-Authenticate", 'Basic realm="land"')]
        token, ttl = secrets.token_urlsafe(32), float(self.token_ttl_s)
        now = time.monotonic()
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl
            self.tokens_issued += 1
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": max(1, math.ceil(ttl))}, []

    def _token_valid(self, environ: dict[str, Any]) -> bool:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self._lock:
            expires = self._tokens.get(token.strip())
        return expires is not None and time.monotonic() < expires

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        since, until = instant_param(query, "updated_since"), instant_param(query, "updated_until")
        first = 0 if since is None else bisect.bisect_left(self._keys, since)
        stop = len(self._keys) if until is None else max(first, bisect.bisect_left(self._keys, until))
        offset = int_param(query, "offset", 0, minimum=0)
        limit = min(int_param(query, "limit", DEFAULT_LIMIT, minimum=1), MAX_LIMIT)
        start = first + offset
        return {"data": self._items[start:min(start + limit, stop)], "total": stop - first,
                "offset": offset, "limit": limit}


def make_land_app(parcels: Sequence[dict[str, Any]], client_id: str, client_secret: str,
                  token_ttl_s: float = DEFAULT_TOKEN_TTL_S) -> LandApp:
    """Build the land WSGI app (see :class:`LandApp`)."""
    return LandApp(parcels, client_id, client_secret, token_ttl_s)
