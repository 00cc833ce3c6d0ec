"""Plain-WSGI simulator of the business registration system (HTTP Basic, cursor paging).

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "business"}`` (no credentials needed).
    ``GET /api/enterprises?changed_since=&changed_until=&cursor=&limit=100`` with HTTP Basic
        -> ``200 {"results": [...], "next_cursor": "<opaque>" | null, "total": N}``

``changed_since`` is inclusive, ``changed_until`` exclusive (``total`` counts the window's
rows); rows come ordered by
``(updated_at, tax_code)``; ``limit`` defaults to 100 and is capped at 1000.
``next_cursor`` (URL-safe base64 of the last row's ``(updated_at, tax_code)``)
is passed back as ``cursor`` with the same window to get the next page; it is
``null`` on the last page. A cursor that does not decode is a 400.

``GET /api/enterprises?tax_code=2700123456`` is the registry's lookup by tax code: the
same envelope, ``results`` holding that enterprise (its newest version) or nothing.

Example enterprise::

    {"tax_code": "2700123456", "name": "Công ty TNHH Xây dựng Tràng An",
     "enterprise_type": "llc_multi", "status": "active", "registered_on": "2012-05-03",
     "commune_code": "14464", "address": "81 Khóm 16 Phạm Thế Hiển, Xã Gia Viễn",
     "legal_representative": "Trần Văn Minh", "email": "info@xaydungtrangan.com.vn",
     "phone": "0912345678", "updated_at": "2025-08-15T09:30:00+07:00"}

Errors are JSON ``{"error": "..."}``: 400 bad parameter (names it), 401 missing or
wrong credentials (with ``WWW-Authenticate: Basic``), 404 unknown path, 405 non-GET.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Sequence
from typing import Any

from sandbox.rest_common import (Answer, BadParam, JsonService, Query, ServedRows, basic_credentials, get_routes,
                                 instant_param, int_param, same_secret, unauthorized)

SYSTEM = "business"
ENTERPRISES_PATH = "/api/enterprises"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_CHALLENGE = 'Basic realm="business", charset="UTF-8"'


def encode_cursor(position: tuple[float, str]) -> str:
    """``(timestamp, tax_code)`` of the last row seen -> opaque cursor."""
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`; raises :class:`BadParam` naming ``cursor``."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        stamp, key = raw
        if not isinstance(key, str) or isinstance(stamp, bool):
            raise TypeError(key)
        return float(stamp), key
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadParam(f"cursor {cursor[:40]!r} is not a cursor this API issued") from None


class BusinessApp(JsonService):
    """WSGI callable serving enterprises behind HTTP Basic authentication.

    Args:
        enterprises: Ground-truth rows (any order; served by ``(updated_at, tax_code)``).
        username: The accepted user name.
        password: Its password.
    """

    routes = get_routes(ENTERPRISES_PATH)
    system = SYSTEM

    def __init__(self, enterprises: Sequence[dict[str, Any]], username: str, password: str) -> None:
        self.username, self.password = username, password
        self._rows = ServedRows(enterprises, "tax_code")
        self._current = {item["tax_code"]: item for item in self._rows.items}  # in (updated_at, key) order: newest

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """401 unless HTTP Basic carries the user name and password."""
        given = basic_credentials(environ)
        if given is None:
            return unauthorized("HTTP Basic credentials required", _CHALLENGE)
        if not (same_secret(given[0], self.username) and same_secret(given[1], self.password)):
            return unauthorized("invalid user name or password", _CHALLENGE)
        return None

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"results": [...], "next_cursor": "<opaque>" | None}``."""
        tax_code = query.get("tax_code", [""])[0].strip()
        if tax_code:
            found = self._current.get(tax_code)
            return {"results": [found] if found is not None else [], "next_cursor": None,
                    "total": int(found is not None)}
        since, until = instant_param(query, "changed_since"), instant_param(query, "changed_until")
        limit = min(int_param(query, "limit", DEFAULT_LIMIT, minimum=1), MAX_LIMIT)
        start, stop = self._rows.window(since, until)
        cursor = query.get("cursor", [""])[0].strip()
        if cursor:
            start = max(start, bisect.bisect_right(self._rows.positions, decode_cursor(cursor)))
        end = min(start + limit, stop)
        results = self._rows.items[start:end] if start < end else []
        more = bool(results) and end < stop
        return {"results": results, "next_cursor": encode_cursor(self._rows.positions[end - 1]) if more else None,
                "total": stop - self._rows.window(since, until)[0]}


def make_business_app(enterprises: Sequence[dict[str, Any]], username: str, password: str) -> BusinessApp:
    """Build the business registration WSGI app (see :class:`BusinessApp`)."""
    return BusinessApp(enterprises, username, password)
