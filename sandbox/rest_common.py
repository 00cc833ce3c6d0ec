"""What the sandbox's plain-WSGI REST simulators share: routing preamble, JSON answers, query parsing, auth checks.

A simulator is a :class:`JsonService`: it declares its routes and system name,
checks credentials in :meth:`JsonService.gate` and builds a page in
:meth:`JsonService.page`. Every answer is an :data:`Answer`
``(status, payload, headers)`` that :func:`json_response` writes;
:func:`preamble` answers what every simulator answers alike (404 unknown
path, 405 wrong method, ``GET /health``) and :func:`listing` turns a page
into ``200`` or a ``400`` naming the bad parameter (:class:`BadParam`).
:class:`ServedRows` holds the rows in service order with the bisect window
on ``updated_at`` (``since`` inclusive, ``until`` exclusive).

Example:
    >>> row_to_json({"birth_date": date(1990, 4, 2), "updated_at": datetime.fromisoformat("2025-08-15T02:30:00Z")})
    {'birth_date': '1990-04-02', 'updated_at': '2025-08-15T09:30:00+07:00'}
    >>> preamble({"PATH_INFO": "/health", "REQUEST_METHOD": "GET"}, get_routes("/api/cards"), "health_insurance")
    (200, {'status': 'ok', 'system': 'health_insurance'}, [])
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs

from sandbox.common import parse_instant, to_vn_iso

REASONS: dict[int, str] = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
}
"""HTTP reason phrase of every status the simulators answer."""

Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]
"""``(status, JSON payload, headers beyond Content-Type/Content-Length)``."""
Query = dict[str, list[str]]
"""A parsed query string (``parse_qs`` with blank values kept)."""

__all__ = [
    "REASONS", "Answer", "BadParam", "JsonService", "Query", "ServedRows", "api_key_refusal", "basic_credentials",
    "get_routes", "instant_param", "int_param", "json_response", "listing", "preamble", "row_to_json", "same_secret",
    "unauthorized",
]


class BadParam(ValueError):
    """A query parameter is invalid; the message names it (answered as 400)."""


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth row -> JSON form (timestamps ``+07:00`` ISO, dates ``YYYY-MM-DD``)."""
    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return to_vn_iso(value)
        return value.isoformat() if isinstance(value, date) else value
    return {k: convert(v) for k, v in row.items()}


def json_response(start_response: Callable[..., Any], answer: Answer,
                  common_headers: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    """Write ``answer`` as a JSON response.

    Args:
        start_response: The WSGI ``start_response``.
        answer: ``(status, payload, headers)``, e.g. ``(405, {"error": "..."}, [("Allow", "GET")])``.
        common_headers: Headers the service sends on every response (before ``answer``'s own),
            e.g. ``[("Cache-Control", "no-store")]``.

    Returns:
        The WSGI body: the payload as UTF-8 JSON, non-ASCII kept as is.
    """
    status, payload, headers = answer
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    start_response(f"{status} {REASONS[status]}", [
        ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body))),
        *common_headers, *headers])
    return [body]


def get_routes(path: str) -> dict[str, str]:
    """Routes of a read-only service: ``/health``, ``path`` and ``path/``, all ``GET``."""
    return {"/health": "GET", path: "GET", path + "/": "GET"}


def preamble(environ: dict[str, Any], routes: Mapping[str, str], system: str) -> Answer | None:
    """Answer what every simulator answers alike, or ``None`` for the service's own work.

    Args:
        environ: The WSGI environ.
        routes: Path -> the one method it accepts, e.g. ``{"/health": "GET", "/oauth/token": "POST"}``.
        system: The name ``/health`` reports, e.g. ``"land"``.

    Returns:
        ``404 {"error": "no such resource: /x"}`` for a path not in ``routes``,
        ``405 {"error": "method POST not allowed; use GET"}`` (with ``Allow``) for another method,
        ``200 {"status": "ok", "system": system}`` for ``/health``; else ``None``.
    """
    path, method = environ.get("PATH_INFO", "") or "/", environ.get("REQUEST_METHOD", "GET")
    if path not in routes:
        return 404, {"error": f"no such resource: {path}"}, []
    if method != routes[path]:
        return 405, {"error": f"method {method} not allowed; use {routes[path]}"}, [("Allow", routes[path])]
    if path == "/health":
        return 200, {"status": "ok", "system": system}, []
    return None


def unauthorized(error: str, challenge: str, **details: str) -> Answer:
    """``401 {"error": error, **details}`` with ``WWW-Authenticate: challenge``."""
    return 401, {"error": error, **details}, [("WWW-Authenticate", challenge)]


def listing(environ: dict[str, Any], page: Callable[[Query], dict[str, Any]]) -> Answer:
    """``200`` with what ``page`` makes of the query string, or ``400 {"error": ...}`` on :class:`BadParam`."""
    try:
        return 200, page(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)), []
    except BadParam as exc:
        return 400, {"error": str(exc)}, []


def instant_param(query: Query, name: str) -> float | None:
    """An optional ISO-8601 query parameter with offset, as a POSIX timestamp.

    Raises:
        BadParam: e.g. ``updated_since must be an ISO-8601 date-time with offset: ...``.
    """
    raw = query.get(name, [""])[0]
    if not raw.strip():
        return None
    try:
        return parse_instant(raw).timestamp()
    except ValueError as exc:
        raise BadParam(f"{name} must be an ISO-8601 date-time with offset: {exc}") from None


def int_param(query: Query, name: str, default: int, minimum: int, requirement: str | None = None) -> int:
    """An optional integer query parameter ``>= minimum`` (ASCII digits only).

    Args:
        query: The parsed query string.
        name: The parameter, e.g. ``"limit"``.
        default: Its value when absent or blank.
        minimum: The smallest accepted value.
        requirement: How the error message states the rule; default ``"an integer >= {minimum}"``.

    Raises:
        BadParam: e.g. ``limit must be an integer >= 1, got '0'``.
    """
    raw = query.get(name, [""])[0].strip()
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise BadParam(f"{name} must be {requirement or f'an integer >= {minimum}'}, got {raw!r}")
    return int(raw)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())


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


def api_key_refusal(environ: dict[str, Any], api_key: str) -> Answer | None:
    """``401`` unless the ``X-API-Key`` header equals ``api_key``; ``None`` when it does."""
    given = environ.get("HTTP_X_API_KEY", "")
    if not given:
        return unauthorized("missing X-API-Key header", 'ApiKey header="X-API-Key"')
    if not same_secret(given, api_key):
        return unauthorized("invalid X-API-Key", 'ApiKey header="X-API-Key"')
    return None


class ServedRows:
    """A service's rows in service order ``(updated_at, key)``, ready to window and page.

    Args:
        rows: Ground-truth rows in any order, each with an aware ``updated_at``.
        key: The field that breaks ``updated_at`` ties, e.g. ``"parcel_id"``.

    Attributes:
        items: JSON forms (:func:`row_to_json`), e.g. ``{"card_no": "GD4370123456789", ...,
            "updated_at": "2025-08-15T09:30:00+07:00"}``.
        positions: ``(updated_at as POSIX timestamp, key)`` of each item, for cursors.
        stamps: The timestamps alone, for windows.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], key: str) -> None:
        ordered = sorted(rows, key=lambda r: (r["updated_at"], r[key]))
        self.items = [row_to_json(r) for r in ordered]
        self.positions: list[tuple[float, Any]] = [(r["updated_at"].timestamp(), r[key]) for r in ordered]
        self.stamps = [stamp for stamp, _ in self.positions]

    def window(self, since: float | None, until: float | None) -> tuple[int, int]:
        """Index range ``[first, stop)`` of ``since <= updated_at < until`` (``None``: open; never ``stop < first``)."""
        first = 0 if since is None else bisect.bisect_left(self.stamps, since)
        stop = len(self.stamps) if until is None else max(first, bisect.bisect_left(self.stamps, until))
        return first, stop


class JsonService:
    """Base of a JSON simulator: :func:`preamble`, then :meth:`gate`, then :meth:`page` via :func:`listing`.

    A subclass declares :attr:`routes` and :attr:`system` and implements
    :meth:`page`; one with credentials also overrides :meth:`gate`.

    Attributes:
        routes: Path -> the one method it accepts, e.g. ``get_routes("/api/cards")``.
        system: The name ``/health`` reports, e.g. ``"health_insurance"``.
        common_headers: Sent on every response after Content-Type/Content-Length,
            e.g. ``(("Cache-Control", "no-store"),)``.
    """

    routes: ClassVar[Mapping[str, str]]
    system: ClassVar[str]
    common_headers: ClassVar[Sequence[tuple[str, str]]] = ()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = preamble(environ, self.routes, self.system) or self.gate(environ)
        if answer is None:
            answer = listing(environ, lambda query: self.page(query, environ))
        return json_response(start_response, answer, self.common_headers)

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """Answer before the listing (a 401, or an endpoint of the service's own), or ``None`` to list."""
        return None

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """The listing payload for ``query``; raises :class:`BadParam` naming a bad parameter."""
        raise NotImplementedError(f"{type(self).__name__} must define page(): every JSON service lists rows")
