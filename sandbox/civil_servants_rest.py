"""Plain-WSGI simulator of the provincial civil-servant HR system (served over mutual TLS).

Authentication is the TLS client certificate alone (see :mod:`sandbox.tls`);
the app itself checks nothing.

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "civil_servants"}``.
    ``GET /api/v1/civil-servants?modified_after=&modified_before=&per_page=200&page=1``
        -> ``200 {"items": [...], "links": {"self": "<abs url>", "next": "<abs url>" | null}}``

``modified_after`` is inclusive (``updated_at >= modified_after``, like every
sandbox lower bound), ``modified_before`` exclusive; rows come ordered by
``(updated_at, servant_id)``; ``per_page`` defaults to 200 and is capped at 1000.
``links.next`` is the absolute URL of the next page with the same filters, and
``null`` on the last page.

Example civil servant::

    {"servant_id": "CB37-000123", "full_name": "Nguyễn Thị Lan", "personal_id": "037190012345",
     "sex": "female", "birth_date": "1990-04-02", "agency_code": "000.00.31.H42",
     "agency_name": "Sở Tư pháp", "position": "Chuyên viên", "category": "civil_servant",
     "rank_code": "01.003", "email": "nguyenthilan@ninhbinh.gov.vn",
     "updated_at": "2025-08-15T09:30:00+07:00"}

Errors are JSON ``{"error": "..."}``: 400 bad parameter (names it), 404 unknown
path, 405 non-GET.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from sandbox.common import parse_instant
from sandbox.rest_common import JsonService, Query, ServedRows, get_routes, instant_param, int_param

SYSTEM = "civil_servants"
SERVANTS_PATH = "/api/v1/civil-servants"
DEFAULT_PER_PAGE = 200
MAX_PER_PAGE = 1000


def _base_url(environ: dict[str, Any]) -> str:
    scheme = environ.get("wsgi.url_scheme", "https")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '127.0.0.1')}:{environ.get('SERVER_PORT')}"
    return f"{scheme}://{host}{SERVANTS_PATH}"


class CivilServantsApp(JsonService):
    """WSGI callable serving civil servants with next-link paging.

    Args:
        servants: Ground-truth rows (any order; served by ``(updated_at, servant_id)``).
    """

    routes = get_routes(SERVANTS_PATH)
    system = SYSTEM

    def __init__(self, servants: Sequence[dict[str, Any]]) -> None:
        self._rows = ServedRows(servants, "servant_id")

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"items": [...], "links": {"self": "<abs url>", "next": "<abs url>" | None}}``."""
        after, before = instant_param(query, "modified_after"), instant_param(query, "modified_before")
        per_page = min(int_param(query, "per_page", DEFAULT_PER_PAGE, minimum=1), MAX_PER_PAGE)
        page = int_param(query, "page", 1, minimum=1)
        first, stop = self._rows.window(after, before)
        start = first + (page - 1) * per_page
        items = self._rows.items[start:min(start + per_page, stop)] if start < stop else []
        filters = {name: parse_instant(query[name][0]).isoformat() for name in ("modified_after", "modified_before")
                   if query.get(name, [""])[0].strip()}
        base_url = _base_url(environ)

        def link(number: int) -> str:
            return f"{base_url}?{urlencode({**filters, 'per_page': per_page, 'page': number})}"

        return {"items": items,
                "links": {"self": link(page), "next": link(page + 1) if start + per_page < stop else None}}


def make_civil_servants_app(servants: Sequence[dict[str, Any]]) -> CivilServantsApp:
    """Build the civil-servant WSGI app (see :class:`CivilServantsApp`)."""
    return CivilServantsApp(servants)
