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
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs

from sandbox.common import parse_instant, to_vn_iso

DOCUMENTS_PATH = "/api/documents"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
SYSTEM = "documents"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


class _BadParam(ValueError):
    pass


def document_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth document -> JSON form (timestamps ``+07:00`` ISO, dates ``YYYY-MM-DD``)."""
    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return to_vn_iso(value)
        if isinstance(value, date):
            return value.isoformat()
        return value
    return {k: convert(v) for k, v in row.items()}


class DocumentsApp:
    """WSGI callable serving a fixed list of documents behind a static bearer token.

    Args:
        documents: Ground-truth rows (any order; served by ``(updated_at, document_id)``).
        token: The bearer token clients must present.
    """

    def __init__(self, documents: Sequence[dict[str, Any]], token: str) -> None:
        self.token = token
        ordered = sorted(documents, key=lambda r: (r["updated_at"], r["document_id"]))
        self._items = [document_to_json(r) for r in ordered]
        self._keys = [(r["updated_at"].timestamp(), r["document_id"]) for r in ordered]
        self._secret = hashlib.sha256(f"{SYSTEM}:{token}".encode()).digest()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, payload = self._route(environ)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="documents"'))
        if status == 405:
            headers.append(("Allow", "GET"))
        start_response(f"{status} {_REASONS[status]}", headers)
        return [body]

    def _route(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = environ.get("PATH_INFO", "") or "/"
        if path not in ("/health", DOCUMENTS_PATH, DOCUMENTS_PATH + "/"):
            return 404, {"error": f"no such resource: {path}"}
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return 405, {"error": f"method {environ.get('REQUEST_METHOD')} not allowed; use GET"}
        if path == "/health":
            return 200, {"status": "ok", "system": SYSTEM}
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return 401, {"error": "missing 'Authorization: Bearer <token>' header"}
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return 401, {"error": "invalid bearer token"}
        try:
            return 200, self._list(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        except _BadParam as exc:
            return 400, {"error": str(exc)}

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        since, until = _instant_param(query, "since"), _instant_param(query, "until")
        page_size = _page_size(query)
        raw_token = query.get("page_token", [""])[0].strip()
        if raw_token:
            after, token_since, token_until = self._decode_token(raw_token)
            if (since is not None and since != token_since) or (until is not None and until != token_until):
                raise _BadParam("page_token was issued for a different since/until; keep them unchanged")
            since, until = token_since, token_until
            start = bisect.bisect_right(self._keys, after)
        else:
            start = 0 if since is None else bisect.bisect_left(self._keys, (since, ""))
        stop = len(self._keys) if until is None else bisect.bisect_left(self._keys, (until, ""))
        end = min(start + page_size, stop)
        payload: dict[str, Any] = {"documents": self._items[start:end] if start < end else []}
        if end < stop:
            payload["nextPageToken"] = self._encode_token(self._keys[end - 1], since, until)
        return payload

    def _encode_token(self, after: tuple[float, str], since: float | None, until: float | None) -> str:
        state = json.dumps({"after": list(after), "since": since, "until": until}, separators=(",", ":"))
        body = base64.urlsafe_b64encode(state.encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def _decode_token(self, token: str) -> tuple[tuple[float, str], float | None, float | None]:
        body, _, signature = token.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise _BadParam("page_token is invalid or was tampered with; restart paging without it")
        try:
            state = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            ts, doc_id = state["after"]
            return (float(ts), str(doc_id)), state["since"], state["until"]
        except (binascii.Error, ValueError, KeyError, TypeError):  # pragma: no cover - signed by us
            raise _BadParam("page_token is unreadable; restart paging without it") from None

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:16]


def _instant_param(query: dict[str, list[str]], name: str) -> float | None:
    raw = query.get(name, [""])[0]
    if not raw.strip():
        return None
    try:
        return parse_instant(raw).timestamp()
    except ValueError as exc:
        raise _BadParam(f"{name} must be an ISO-8601 date-time with offset: {exc}") from None


def _page_size(query: dict[str, list[str]]) -> int:
    raw = query.get("page_size", [""])[0].strip()
    if raw == "":
        return DEFAULT_PAGE_SIZE
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise _BadParam(f"page_size must be a positive integer, got {raw!r}")
    return min(int(raw), MAX_PAGE_SIZE)


def make_documents_app(documents: Sequence[dict[str, Any]], token: str) -> DocumentsApp:
    """Build the documents WSGI app (see :class:`DocumentsApp`)."""
    return DocumentsApp(documents, token)
