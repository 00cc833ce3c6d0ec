"""Plain-WSGI simulator of the National Public Service Portal (Cổng DVC quốc gia, DVCQG).

Shaped like the portal's integration contract: log in for a session, then POST
every call to ``/api`` naming a ``service``.

Routes:
    ``GET /health`` -> ``200 {"status": "ok", "system": "dvcqg"}``.
    ``POST /login`` ``{"username": "lgsp", "password": "..."}``
        -> ``200 {"error_code": "0", "session": "<token>", "message": "OK"}``; wrong -> 401.
    ``POST /api`` ``{"session": "<token>", "madonvi": "000.00.00.H42", "service": "<name>", ...}``:

    * ``LayThuTuc`` (procedure catalogue) ``"page": 1, "page_size": 50`` (max 500; optional
      ``"since"``/``"until"``, ISO-8601 with offset, on ``NgayCapNhat``)
      -> ``{"error_code": "0", "result": [...], "page": 1, "total_pages": 3, "total": 120}``.
    * ``DongBoHoSoMC`` (sync dossiers) ``"data": [dossier, ...]`` (1..200)
      -> ``{"error_code": "0", "message": "OK", "accepted": 1}``.
    * ``CapNhatTienDoHoSoMC`` (progress) ``"data": [{"MaHoSo": "H37.12-250815-0001",
      "TrangThaiHoSo": "5", "NgayXuLy": "20250816100000", "NoiDungXuLy": "Chuyển phòng chuyên môn",
      "NguoiXuLy": "Trần Văn An"}]`` -> same answer as ``DongBoHoSoMC``.

Example dossier item::

    {"MaHoSo": "H37.12-250815-0001", "MaTTHC": "1.004227", "TenTTHC": "...",
     "NgayTiepNhan": "20250815093000", "NgayHenTra": "20250822093000", "NgayTra": "",
     "TrangThaiHoSo": "4", "HinhThuc": "1"}

Times are ``yyyyMMddHHmmss`` in Asia/Ho_Chi_Minh. An unknown/expired session is
HTTP 200 ``{"error_code": "-1", ...}`` (log in again and retry). Invalid data,
unknown service or dossier: HTTP 400; wrong credentials 401; an
``Idempotency-Key`` reused with a different body (ignoring ``session``): 422.
4xx bodies are ``{"error_code": "<status>", "message": m, "error": m}``.

Idempotency: a POST /api with header ``Idempotency-Key`` is applied once; a
repeat with the same body gets the stored answer plus ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.common import VN_TZ, parse_instant
from sandbox.dvcqg_catalog import make_procedures, portal_time

__all__ = ["DvcqgState", "make_dvcqg_app", "make_procedures", "parse_portal_time", "portal_time"]

SYSTEM = "dvcqg"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_BATCH = 200
SESSION_INVALID = {"error_code": "-1", "message": "Session không hợp lệ hoặc đã hết hạn"}
DOSSIER_REQUIRED = ("MaHoSo", "MaTTHC", "NgayTiepNhan", "NgayHenTra", "TrangThaiHoSo", "HinhThuc")
PROGRESS_REQUIRED = ("MaHoSo", "TrangThaiHoSo", "NgayXuLy", "NoiDungXuLy")
STATUS_CODES = frozenset(str(n) for n in range(1, 11))
CHANNEL_CODES = frozenset(("0", "1"))
_PORTAL_TIME = re.compile(r"[0-9]{14}")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 422: "Unprocessable Content"}

Answer = tuple[int, dict[str, Any]]


class _Rejected(Exception):
    """A 4xx answer: ``_Rejected(400, "data[3].NgayTra: ...")``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_portal_time(text: str) -> datetime:
    """``'20250815093000'`` -> ``datetime(2025, 8, 15, 9, 30, tzinfo=VN_TZ)``.

    Raises:
        ValueError: Not 14 digits, or not a real date and time.
    """
    if not isinstance(text, str) or not _PORTAL_TIME.fullmatch(text):
        raise ValueError(f"expected yyyyMMddHHmmss (14 digits), got {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=VN_TZ)


@dataclass
class DvcqgState:
    """Everything the portal knows: the catalogue, sessions, and what lgsp pushed.

    Attributes:
        procedures: Rows of :func:`make_procedures`, served by ``LayThuTuc``.
        username: The account lgsp logs in with.
        password: Its password.
        session_ttl_s: Lifetime of a session, in seconds.
        dossiers: ``{MaHoSo: item}``, the latest synced version of each dossier.
        progress: ``{MaHoSo: [progress item, ...]}`` in arrival order.
        apply_counts: ``Counter({(service, MaHoSo, content_hash): times_applied})``.
        replays: Requests answered from the idempotency store.
        lock: Guards all of the above (the server is threaded); hold it to read a consistent view.

    Example:
        >>> state = DvcqgState(make_procedures(37), "lgsp", "secret", session_ttl_s=60)
        >>> state.expire_sessions()  # every client must log in again
    """

    procedures: list[dict[str, Any]]
    username: str
    password: str
    session_ttl_s: float = 300.0
    dossiers: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    progress: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False)
    apply_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter, init=False)
    replays: int = field(default=0, init=False)
    lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _sessions: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _idempotency: dict[str, tuple[str, Answer]] = field(default_factory=dict, init=False, repr=False)

    def login(self, username: str, password: str) -> str | None:
        """Open a session for good credentials (``None`` otherwise)."""
        good = hmac.compare_digest(username.encode(), self.username.encode()) & hmac.compare_digest(
            password.encode(), self.password.encode())
        if not good:
            return None
        token = secrets.token_urlsafe(24)
        with self.lock:
            self._sessions[token] = time.monotonic() + self.session_ttl_s
        return token

    def session_valid(self, token: Any) -> bool:
        """True if ``token`` names an open, unexpired session."""
        with self.lock:
            expiry = self._sessions.get(token) if isinstance(token, str) else None
            return expiry is not None and time.monotonic() < expiry

    def expire_sessions(self) -> None:
        """Invalidate every session (clients must log in again)."""
        with self.lock:
            self._sessions.clear()


def _content_hash(item: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _fingerprint(body: dict[str, Any]) -> str:
    """Hash of the request body minus ``session`` (a re-login must not change it)."""
    return _content_hash({k: v for k, v in body.items() if k != "session"})


def _batch(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data")
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_BATCH or not all(isinstance(d, dict) for d in data):
        raise _Rejected(400, f"data must be a list of 1..{MAX_BATCH} objects")
    return data


def _check_item(index: int, item: dict[str, Any], required: tuple[str, ...], times: tuple[str, ...],
                optional_times: tuple[str, ...] = ()) -> None:
    """Required keys are non-empty strings, times are valid ``yyyyMMddHHmmss`` (optional may be '')."""
    where = f"data[{index}] (MaHoSo={item.get('MaHoSo')!r})"
    for key in required:
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise _Rejected(400, f"{where}.{key} is required (a non-empty string)")
    for key in times + tuple(k for k in optional_times if item.get(k) not in (None, "")):
        try:
            parse_portal_time(item[key])
        except ValueError as exc:
            raise _Rejected(400, f"{where}.{key}: {exc}") from None
    if item["TrangThaiHoSo"] not in STATUS_CODES:
        raise _Rejected(400, f"{where}.TrangThaiHoSo must be '1'..'10', got {item['TrangThaiHoSo']!r}")


def _sync_dossiers(state: DvcqgState, body: dict[str, Any]) -> Answer:
    items = _batch(body)
    known_codes = {p["MaTTHC"] for p in state.procedures}
    seen: set[str] = set()
    for i, item in enumerate(items):
        _check_item(i, item, DOSSIER_REQUIRED, ("NgayTiepNhan", "NgayHenTra"), ("NgayTra",))
        if item["HinhThuc"] not in CHANNEL_CODES:
            raise _Rejected(400, f"data[{i}].HinhThuc must be '0' (paper) or '1' (online), got {item['HinhThuc']!r}")
        if item["MaTTHC"] not in known_codes:
            raise _Rejected(400, f"data[{i}].MaTTHC {item['MaTTHC']!r} is not a procedure of the portal")
        if item["MaHoSo"] in seen:
            raise _Rejected(400, f"data[{i}].MaHoSo {item['MaHoSo']!r} appears twice in one call")
        seen.add(item["MaHoSo"])
    for item in items:
        state.dossiers[item["MaHoSo"]] = dict(item)
        state.apply_counts["DongBoHoSoMC", item["MaHoSo"], _content_hash(item)] += 1
    return 200, {"error_code": "0", "message": "OK", "accepted": len(items)}


def _update_progress(state: DvcqgState, body: dict[str, Any]) -> Answer:
    items = _batch(body)
    for i, item in enumerate(items):
        _check_item(i, item, PROGRESS_REQUIRED, ("NgayXuLy",))
        if item["MaHoSo"] not in state.dossiers:
            raise _Rejected(400, f"data[{i}].MaHoSo {item['MaHoSo']!r} was never synced (DongBoHoSoMC first)")
    for item in items:
        state.progress.setdefault(item["MaHoSo"], []).append(dict(item))
        state.apply_counts["CapNhatTienDoHoSoMC", item["MaHoSo"], _content_hash(item)] += 1
    return 200, {"error_code": "0", "message": "OK", "accepted": len(items)}


def _positive_int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Rejected(400, f"{key} must be a positive integer, got {value!r}")
    return value


def _window_bound(body: dict[str, Any], key: str) -> datetime | None:
    raw = body.get(key)
    if raw in (None, ""):
        return None
    try:
        return parse_instant(str(raw))
    except ValueError as exc:
        raise _Rejected(400, f"{key} must be an ISO-8601 date-time with offset: {exc}") from None


def _list_procedures(state: DvcqgState, body: dict[str, Any]) -> Answer:
    page = _positive_int(body, "page", 1)
    page_size = min(_positive_int(body, "page_size", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    since, until = _window_bound(body, "since"), _window_bound(body, "until")
    rows = [p for p in state.procedures
            if (since is None or parse_portal_time(p["NgayCapNhat"]) >= since)
            and (until is None or parse_portal_time(p["NgayCapNhat"]) < until)]
    first = (page - 1) * page_size
    return 200, {"error_code": "0", "result": rows[first:first + page_size], "page": page,
                 "total_pages": math.ceil(len(rows) / page_size), "total": len(rows)}


SERVICES: dict[str, Callable[[DvcqgState, dict[str, Any]], Answer]] = {
    "LayThuTuc": _list_procedures,
    "DongBoHoSoMC": _sync_dossiers,
    "CapNhatTienDoHoSoMC": _update_progress,
}
"""Service name -> handler, run under ``state.lock``."""


def _read_json(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) if length > 0 else b"")
    except (ValueError, UnicodeDecodeError):
        raise _Rejected(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _Rejected(400, "the request body must be a JSON object")
    return body


class DvcqgApp:
    """WSGI callable for a :class:`DvcqgState` (see the module docstring)."""

    def __init__(self, state: DvcqgState) -> None:
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        replayed = False
        try:
            status, payload, replayed = self._route(environ)
        except _Rejected as exc:
            status, payload = exc.status, {"error_code": str(exc.status), "message": str(exc), "error": str(exc)}
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
        if replayed:
            headers.append(("Idempotent-Replayed", "true"))
        start_response(f"{status} {_REASONS[status]}", headers)
        return [body]

    def _route(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
        path, method = environ.get("PATH_INFO", "") or "/", environ.get("REQUEST_METHOD", "GET")
        allowed = {"/health": "GET", "/login": "POST", "/api": "POST"}.get(path.rstrip("/") or "/")
        if allowed is None:
            raise _Rejected(404, f"no such resource: {path}")
        if method != allowed:
            raise _Rejected(405, f"method {method} not allowed on {path}; use {allowed}")
        if allowed == "GET":
            return 200, {"status": "ok", "system": SYSTEM}, False
        body = _read_json(environ)
        if path.rstrip("/") == "/login":
            return (*self._login(body), False)
        return self._api(body, environ.get("HTTP_IDEMPOTENCY_KEY"))

    def _login(self, body: dict[str, Any]) -> Answer:
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise _Rejected(400, "username and password are required strings")
        token = self.state.login(username, password)
        if token is None:
            raise _Rejected(401, "Sai thông tin đăng nhập (wrong username or password)")
        return 200, {"error_code": "0", "session": token, "message": "OK"}

    def _api(self, body: dict[str, Any], idempotency_key: str | None) -> tuple[int, dict[str, Any], bool]:
        state = self.state
        if not state.session_valid(body.get("session")):
            return 200, dict(SESSION_INVALID), False
        if not isinstance(body.get("madonvi"), str) or not body["madonvi"].strip():
            raise _Rejected(400, "madonvi (agency code) is required")
        service = body.get("service")
        handler = SERVICES.get(service) if isinstance(service, str) else None
        if handler is None:
            raise _Rejected(400, f"unknown service {service!r}; one of {sorted(SERVICES)}")
        fingerprint = _fingerprint(body) if idempotency_key else ""
        with state.lock:
            if idempotency_key:
                stored = state._idempotency.get(idempotency_key)
                if stored is not None:
                    if stored[0] != fingerprint:
                        raise _Rejected(422, f"Idempotency-Key {idempotency_key!r} was already used "
                                             "with a different request body")
                    state.replays += 1
                    return stored[1][0], dict(stored[1][1]), True
            status, payload = handler(state, body)
            if idempotency_key:
                state._idempotency[idempotency_key] = (fingerprint, (status, dict(payload)))
        return status, payload, False


def make_dvcqg_app(state: DvcqgState) -> DvcqgApp:
    """Build the DVCQG WSGI app serving and recording into ``state``."""
    return DvcqgApp(state)
