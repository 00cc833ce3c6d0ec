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

from collections.abc import Sequence
from typing import Any

from sandbox.rest_common import (Answer, JsonService, Query, ServedRows, api_key_refusal, get_routes, instant_param,
                                 int_param, row_to_json)

CARDS_PATH = "/api/cards"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SYSTEM = "health_insurance"

card_to_json = row_to_json
"""Ground-truth card -> JSON form (timestamps ``+07:00`` ISO, dates ``YYYY-MM-DD``)."""


class HealthInsuranceApp(JsonService):
    """WSGI callable serving a fixed list of cards behind an ``X-API-Key``.

    Args:
        cards: Ground-truth rows (any order; served by ``(updated_at, card_no)``).
        api_key: The required ``X-API-Key`` value.
    """

    routes = get_routes(CARDS_PATH)
    system = SYSTEM

    def __init__(self, cards: Sequence[dict[str, Any]], api_key: str) -> None:
        self.api_key = api_key
        self._rows = ServedRows(cards, "card_no")

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """401 unless ``X-API-Key`` matches."""
        return api_key_refusal(environ, self.api_key)

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"data": [...], "total": 1200, "offset": 0, "limit": 100}``."""
        first, stop = self._rows.window(instant_param(query, "updated_since"), instant_param(query, "updated_until"))
        offset = int_param(query, "offset", 0, minimum=0)
        limit = min(int_param(query, "limit", DEFAULT_LIMIT, minimum=1), MAX_LIMIT)
        start = first + offset
        return {
            "data": self._rows.items[start:min(start + limit, stop)] if start < stop else [],
            "total": stop - first,
            "offset": offset,
            "limit": limit,
        }


def make_health_insurance_app(cards: Sequence[dict[str, Any]], api_key: str) -> HealthInsuranceApp:
    """Build the health insurance card WSGI app (see :class:`HealthInsuranceApp`)."""
    return HealthInsuranceApp(cards, api_key)
