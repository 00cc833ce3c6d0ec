"""REST transport: a requests.Session with explicit timeouts, auth and error classes.

Example upstream payload (TTHC dossiers):
    {"items": [{"dossier_id": "H37.12-250815-0001", ...}], "page": 1, "total_pages": 12}
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import requests

from catalog.models import SystemSpec
from connectors.errors import FatalError, RetriableError
from connectors.secrets import Secret, redact, resolve_secret

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CLIENT_ID = "lgsp"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class RestTransport:
    """GET `endpoint + operation` with query parameters; returns the JSON body."""

    def __init__(self, system: SystemSpec, base_url: str, operation: str) -> None:
        self.system, self.operation = system, operation
        self.url = base_url.rstrip("/") + "/" + operation.lstrip("/")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"{CLIENT_ID}/0.1"
        self.session.headers["X-Client-Id"] = CLIENT_ID
        self._secrets: list[Secret] = []
        auth = system.auth
        if auth.type != "none" and auth.secret:
            secret = resolve_secret(auth.secret)
            self._secrets.append(secret)
            if auth.type == "api_key":
                self.session.headers[auth.header or "X-API-Key"] = secret.reveal()
            elif auth.type == "basic":
                self.session.auth = (auth.username or "", secret.reveal())

    def _fail(self, problem: str, hint: str = "", retriable: bool = False,
              retry_after: float | None = None) -> Exception:
        problem = redact(problem, self._secrets)
        if retriable:
            return RetriableError(self.system.name, self.operation, problem, hint, retry_after)
        return FatalError(self.system.name, self.operation, problem, hint)

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        query = {k: _encode(v) for k, v in params.items()}
        headers = {"X-Message-Id": str(uuid.uuid4())}
        try:
            response = self.session.get(self.url, params=query, headers=headers,
                                        timeout=(5.0, self.system.timeout_s))
        except requests.Timeout:
            raise self._fail(f"timed out after {self.system.timeout_s}s", retriable=True) from None
        except requests.ConnectionError as exc:
            raise self._fail(f"connection failed ({type(exc).__name__})", retriable=True) from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise self._fail(f"HTTP {status}", retriable=True, retry_after=_retry_after(response))
        if status >= 400:
            raise self._fail(f"HTTP {status}: {response.text[:200]}",
                             "check the credentials and the request parameters in the catalog")
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise self._fail(f"response of {len(response.content)} bytes exceeds the {MAX_RESPONSE_BYTES} limit")
        try:
            body = response.json()
        except ValueError:
            raise self._fail("response is not valid JSON", "the peer sent a malformed payload; "
                             "nothing was landed from this page") from None
        if not isinstance(body, dict):
            raise self._fail(f"expected a JSON object, got {type(body).__name__}")
        return body

    def close(self) -> None:
        self.session.close()
