"""The HTTP session every connector uses, REST and SOAP alike.

`PeerSession` is a requests.Session that, for every request: adds the
client id and a fresh message id header (so a gateway can trace it), waits
for the system's rate limit (and its peak-hour rate, unless `background` is
False), reads at most `MAX_RESPONSE_BYTES` of the answer,
and records the exchange in the message log. zeep is given the same session,
so SOAP calls, WSDL downloads and logins are limited and logged too.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests

from catalog.models import SystemSpec
from connectors.auth import AuthMethod, make_auth
from connectors.errors import FatalError
from connectors.limits import Limits, limits_for
from connectors.message_log import MessageLog, now

CLIENT_ID = "lgsp"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def _request_body(kwargs: dict[str, Any]) -> bytes | None:
    if kwargs.get("json") is not None:
        return json.dumps(kwargs["json"], default=str).encode()
    data = kwargs.get("data")
    if isinstance(data, str):
        return data.encode()
    return data if isinstance(data, bytes) else None


class PeerSession(requests.Session):
    """A session bound to one system: traced, rate-limited, size-capped, logged."""

    def __init__(self, system: SystemSpec, log: MessageLog, limits: Limits,
                 max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        super().__init__()
        self.system, self.log, self.limits, self.max_bytes = system, log, limits, max_bytes
        self.operation = ""
        self.background = True  # False: a person is waiting (a gateway lookup): the system's peak rate spares it
        self.headers["User-Agent"] = f"{CLIENT_ID}/0.1"
        self.headers["X-Client-Id"] = CLIENT_ID

    def _read_capped(self, response: requests.Response) -> None:
        chunks, size = [], 0
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > self.max_bytes:
                response.close()
                raise FatalError(self.system.name, self.operation or "request",
                                 f"response larger than the {self.max_bytes}-byte limit",
                                 "the peer sent an oversized payload; nothing was landed from it")
            chunks.append(chunk)
        response._content = b"".join(chunks)  # noqa: SLF001 - requests' own cache of the body

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        message_id = str(uuid.uuid4())
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("X-Message-Id", message_id)
        kwargs["stream"] = True
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify  # else REQUESTS_CA_BUNDLE would override the system's CA
        self.limits.throttle(self.background)
        started, t0 = now(), time.perf_counter()
        operation = self.operation or str(url).split("?")[0].rsplit("/", 1)[-1]
        entry = {"message_id": message_id, "operation": operation, "method": str(method), "url": str(url),
                 "started_at": started}
        try:
            response = super().request(method, url, *args, headers=headers, **kwargs)
            self._read_capped(response)
        except (requests.RequestException, FatalError) as exc:
            status = "timeout" if isinstance(exc, requests.Timeout) else (
                "too_large" if isinstance(exc, FatalError) else "connection_error")
            self.log.record(**entry, status=status, http_status=None, request_body=_request_body(kwargs),
                            response_body=None, duration_ms=(time.perf_counter() - t0) * 1000,
                            error=type(exc).__name__)
            raise
        self.log.record(**entry, status="ok" if response.status_code < 400 else "http_error",
                        http_status=response.status_code, request_body=response.request.body,
                        response_body=response.content, duration_ms=(time.perf_counter() - t0) * 1000)
        return response


def open_session(system: SystemSpec, endpoint: str,
                 log: MessageLog | None = None) -> tuple[PeerSession, AuthMethod]:
    """A PeerSession for `system` with its auth method configured (secrets resolved now)."""
    auth = make_auth(system.auth, system.name, endpoint)
    log = log if log is not None else MessageLog(system.name, system.message_log)
    log.secrets.extend(auth.secrets)
    session = PeerSession(system, log, limits_for(system), max_bytes=system.max_response_bytes)
    auth.configure(session)
    return session, auth
