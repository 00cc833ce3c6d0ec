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

Rows are converted by :func:`sandbox.rest_common.row_to_json` (still importable
from here).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from sandbox.rest_common import (Answer, JsonService, Query, ServedRows, basic_credentials, get_routes, instant_param,
                                 int_param, row_to_json, same_secret, unauthorized)

__all__ = [
    "DEFAULT_LIMIT", "DEFAULT_TOKEN_TTL_S", "MAX_FORM_BYTES", "MAX_LIMIT", "PARCELS_PATH", "SYSTEM", "TOKEN_PATH",
    "LandApp", "make_land_app", "row_to_json",
]

SYSTEM = "land"
TOKEN_PATH = "/oauth/token"
PARCELS_PATH = "/api/v2/parcels"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_TOKEN_TTL_S = 300.0
MAX_FORM_BYTES = 64 * 1024


class LandApp(JsonService):
    """WSGI callable serving parcels behind OAuth2 client-credentials tokens.

    Args:
        parcels: Ground-truth rows (any order; served by ``(updated_at, parcel_id)``).
        client_id: The one registered client.
        client_secret: Its secret.
        token_ttl_s: Token lifetime; may be changed on a running app (tests set 1 s).
    """

    routes = get_routes(PARCELS_PATH) | {TOKEN_PATH: "POST"}
    system = SYSTEM
    common_headers = (("Cache-Control", "no-store"),)

    def __init__(self, parcels: Sequence[dict[str, Any]], client_id: str, client_secret: str,
                 token_ttl_s: float = DEFAULT_TOKEN_TTL_S) -> None:
        self.client_id, self.client_secret, self.token_ttl_s = client_id, client_secret, token_ttl_s
        self._rows = ServedRows(parcels, "parcel_id")
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self.tokens_issued = 0

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """The token endpoint; else 401 unless the bearer token is one issued and not expired."""
        if (environ.get("PATH_INFO", "") or "/") == TOKEN_PATH:
            return self._token(environ)
        if not self._token_valid(environ):
            return unauthorized("invalid_token", 'Bearer realm="land", error="invalid_token"',
                                error_description="missing, unknown or expired token")
        return None

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
            return unauthorized("invalid_client", 'Basic realm="land"')
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

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"data": [...], "total": N, "offset": 0, "limit": 100}``.

        ``commune_from`` (inclusive) and ``commune_to`` (exclusive) keep the parcels
        whose ``commune_code`` is in that range (string order), for partitioned syncs.
        """
        first, stop = self._rows.window(instant_param(query, "updated_since"), instant_param(query, "updated_until"))
        offset = int_param(query, "offset", 0, minimum=0)
        limit = min(int_param(query, "limit", DEFAULT_LIMIT, minimum=1), MAX_LIMIT)
        low, high = query.get("commune_from", [""])[0], query.get("commune_to", [""])[0]
        if low or high:
            codes = [(item, item.get("commune_code") or "") for item in self._rows.items[first:stop]]
            chosen = [item for item, code in codes if low <= code and (not high or code < high)]
            return {"data": chosen[offset:offset + limit], "total": len(chosen), "offset": offset, "limit": limit}
        start = first + offset
        return {"data": self._rows.items[start:min(start + limit, stop)], "total": stop - first,
                "offset": offset, "limit": limit}


def make_land_app(parcels: Sequence[dict[str, Any]], client_id: str, client_secret: str,
                  token_ttl_s: float = DEFAULT_TOKEN_TTL_S) -> LandApp:
    """Build the land WSGI app (see :class:`LandApp`)."""
    return LandApp(parcels, client_id, client_secret, token_ttl_s)
