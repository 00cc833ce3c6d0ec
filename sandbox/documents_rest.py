"""Plain-WSGI simulator of the provincial document management system (quản lý văn bản).

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "documents"}`` (no token needed).
    ``GET /api/documents?since=<ISO-8601>&until=<ISO-8601>&page_size=100&page_token=<opaque>``
        -> ``200 {"documents": [...], "nextPageToken": "eyJhZnRlciI6..."}``

Google API style paging: ``nextPageToken`` is absent on the last page. Pass it
back as ``page_token``; the token remembers ``since``/``until`` (they may be
omitted on later pages, but must not change). ``since`` is inclusive, ``until``
exclusive, both on ``updated_at``; rows come ordered by ``(updated_at, document_id)``.

Example document::

    {"document_id": "VB37-2025-004512", "direction": "incoming",
     "number_symbol": "123/BNV-CCVC", "document_type": "cong_van",
     "summary": "V/v triển khai Đề án 06 trên địa bàn tỉnh", "issuing_agency": "Bộ Nội vụ",
     "agency_code": "000.00.39.H42", "issued_on": "2025-08-14",
     "received_at": "2025-08-15T09:30:00+07:00", "digitally_signed": true,
     "signer": "Nguyễn Văn Hùng", "updated_at": "2025-08-15T10:10:00+07:00"}

Errors are JSON ``{"error": "..."}``: 400 bad parameter (names it), 401
missing/wrong ``Authorization: Bearer <token>``, 404 unknown path, 405 non-GET.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from sandbox.rest_common import (Answer, BadParam, JsonService, Query, ServedRows, get_routes, instant_param,
                                 int_param, row_to_json, same_secret, unauthorized)

DOCUMENTS_PATH = "/api/documents"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
SYSTEM = "documents"

_CHALLENGE = 'Bearer realm="documents"'

document_to_json = row_to_json
"""Ground-truth document -> JSON form (timestamps ``+07:00`` ISO, dates ``YYYY-MM-DD``)."""


class DocumentsApp(JsonService):
    """WSGI callable serving a fixed list of documents behind a static bearer token.

    Args:
        documents: Ground-truth rows (any order; served by ``(updated_at, document_id)``).
        token: The bearer token clients must present.
    """

    routes = get_routes(DOCUMENTS_PATH)
    system = SYSTEM

    def __init__(self, documents: Sequence[dict[str, Any]], token: str) -> None:
        self.token = token
        self._rows = ServedRows(documents, "document_id")
        self._secret = hashlib.sha256(f"{SYSTEM}:{token}".encode()).digest()

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """401 unless ``Authorization: Bearer <token>`` carries the token."""
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return unauthorized("missing 'Authorization: Bearer <token>' header", _CHALLENGE)
        if not same_secret(given.strip(), self.token):
            return unauthorized("invalid bearer token", _CHALLENGE)
        return None

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"documents": [...], "nextPageToken": "eyJhZnRlciI6..."}`` (no token on the last page)."""
        since, until = instant_param(query, "since"), instant_param(query, "until")
        page_size = min(int_param(query, "page_size", DEFAULT_PAGE_SIZE, minimum=1, requirement="a positive integer"),
                        MAX_PAGE_SIZE)
        raw_token = query.get("page_token", [""])[0].strip()
        after: tuple[float, str] | None = None
        if raw_token:
            after, token_since, token_until = self._decode_token(raw_token)
            if (since is not None and since != token_since) or (until is not None and until != token_until):
                raise BadParam("page_token was issued for a different since/until; keep them unchanged")
            since, until = token_since, token_until
        first, stop = self._rows.window(since, until)
        start = first if after is None else bisect.bisect_right(self._rows.positions, after)
        end = min(start + page_size, stop)
        payload: dict[str, Any] = {"documents": self._rows.items[start:end] if start < end else []}
        if end < stop:
            payload["nextPageToken"] = self._encode_token(self._rows.positions[end - 1], since, until)
        return payload

    def _encode_token(self, after: tuple[float, str], since: float | None, until: float | None) -> str:
        state = json.dumps({"after": list(after), "since": since, "until": until}, separators=(",", ":"))
        body = base64.urlsafe_b64encode(state.encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def _decode_token(self, token: str) -> tuple[tuple[float, str], float | None, float | None]:
        body, _, signature = token.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise BadParam("page_token is invalid or was tampered with; restart paging without it")
        try:
            state = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            ts, doc_id = state["after"]
            return (float(ts), str(doc_id)), state["since"], state["until"]
        except (binascii.Error, ValueError, KeyError, TypeError):  # pragma: no cover - signed by us
            raise BadParam("page_token is unreadable; restart paging without it") from None

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:16]


def make_documents_app(documents: Sequence[dict[str, Any]], token: str) -> DocumentsApp:
    """Build the documents WSGI app (see :class:`DocumentsApp`)."""
    return DocumentsApp(documents, token)
