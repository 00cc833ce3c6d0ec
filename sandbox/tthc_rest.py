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

import math
from collections.abc import Sequence
from typing import Any

from sandbox.rest_common import (Answer, BadParam, JsonService, Query, ServedRows, api_key_refusal, get_routes,
                                 instant_param, row_to_json)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DOSSIERS_PATH = "/api/v1/dossiers"
SYSTEM = "tthc"

dossier_to_json = row_to_json
"""Convert a ground-truth dossier to its JSON form (datetimes -> +07:00 ISO strings)."""


def _int_param(query: Query, name: str, default: int) -> int:
    """This API's own integer rule: anything ``int()`` reads (``+2``, ``1_0``), ``>= 1``."""
    raw = query.get(name, [""])[0].strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise BadParam(f"{name} must be >= 1, got {value}")
    return value


class TthcApp(JsonService):
    """WSGI callable serving a fixed list of dossiers.

    Args:
        dossiers: Ground-truth rows (any order; served by ``(updated_at, dossier_id)``).
        api_key: Required ``X-API-Key`` value; ``None`` disables the check.
    """

    routes = get_routes(DOSSIERS_PATH)
    system = SYSTEM

    def __init__(self, dossiers: Sequence[dict[str, Any]], api_key: str | None = None) -> None:
        self.api_key = api_key
        self._rows = ServedRows(dossiers, "dossier_id")

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """401 unless ``X-API-Key`` matches (when a key is set)."""
        return None if self.api_key is None else api_key_refusal(environ, self.api_key)

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"items": [...], "page": 1, "page_size": 100, "total": 6000, "total_pages": 60}``."""
        start, stop = self._rows.window(instant_param(query, "updated_since"), instant_param(query, "updated_until"))
        page = _int_param(query, "page", 1)
        page_size = min(_int_param(query, "page_size", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
        total = stop - start
        first = start + (page - 1) * page_size
        items = self._rows.items[first:min(first + page_size, stop)] if first < stop else []
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
