"""REST transport: JSON over a PeerSession, with explicit timeouts, auth and error classes.

Example upstream payload (TTHC dossiers):
    {"items": [{"dossier_id": "H37.12-250815-0001", ...}], "page": 1, "total_pages": 12}
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from catalog.loader import resolve_timeout
from catalog.models import SystemSpec
from connectors.errors import FatalError, RetriableError
from connectors.http import CLIENT_ID, MAX_RESPONSE_BYTES, open_session
from connectors.message_log import MessageLog
from connectors.secrets import redact
from connectors.source import raw_page

NEXT_URL = "__url__"  # a paginator's "follow this link" parameter

__all__ = ["CLIENT_ID", "MAX_RESPONSE_BYTES", "NEXT_URL", "RestTransport"]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


CERTIFICATE_PROBLEMS = ("CERTIFICATE_VERIFY_FAILED", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                        "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_HANDSHAKE_FAILURE", "WRONG_VERSION_NUMBER",
                        "TLSV1_ALERT_UNKNOWN_CA")


def _ssl_reason(exc: Exception) -> str:
    """The certificate problem behind a TLS failure, or the exception's name (a reset mid-handshake)."""
    text = str(exc)
    return next((marker for marker in CERTIFICATE_PROBLEMS if marker in text), type(exc).__name__)


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class RestTransport:
    """`method endpoint+operation` with query parameters (GET) or a JSON body (POST); returns the JSON object."""

    def __init__(self, system: SystemSpec, base_url: str, operation: str, method: str = "GET",
                 log: MessageLog | None = None) -> None:
        self.system, self.operation, self.method = system, operation, method
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/" + operation.lstrip("/") if operation else self.base_url
        self.session, self.auth = open_session(system, self.base_url, log)
        self.session.operation = operation
        self.timeout = (5.0, resolve_timeout(system))

    @property
    def log(self) -> MessageLog:
        return self.session.log

    def _fail(self, problem: str, hint: str = "", retriable: bool = False,
              retry_after: float | None = None, code: str = "") -> Exception:
        problem = redact(problem, self.auth.secrets)
        if retriable:
            return RetriableError(self.system.name, self.operation, problem, hint, retry_after)
        return FatalError(self.system.name, self.operation, problem, hint, code=code)

    def _target(self, params: dict[str, Any]) -> str:
        """The URL to call: the operation's, or a next link the peer gave (same host only)."""
        link = params.pop(NEXT_URL, None)
        if link is None:
            return self.url
        if urlsplit(link)[:2] != urlsplit(self.base_url)[:2]:
            raise self._fail(f"next link {link!r} leaves {self.base_url}",
                             "refusing to send credentials to another host; check the peer")
        return str(link)

    def _send(self, params: dict[str, Any], headers: dict[str, str],
              records_field: str | None = None) -> tuple[requests.Response, Any]:
        params = dict(params)
        url = self._target(params)
        request: dict[str, Any] = {"headers": dict(headers), "timeout": self.timeout}
        if self.method == "GET":
            request["params"] = {k: _encode(v) for k, v in params.items()}
        else:
            request["json"] = {k: _encode(v) for k, v in params.items()}
        self.auth.prepare(self.session, request)
        try:
            response = self.session.request(self.method, url, **request)
        except requests.Timeout:
            raise self._fail(f"timed out after {self.timeout[1]}s", retriable=True) from None
        except requests.exceptions.SSLError as exc:
            reason = _ssl_reason(exc)
            raise self._fail(f"TLS handshake failed ({reason})",
                             "check the client certificate, its key and the CA (auth.cert/key/ca)",
                             retriable=reason not in CERTIFICATE_PROBLEMS) from None
        except requests.ConnectionError as exc:
            raise self._fail(f"connection failed ({type(exc).__name__})", retriable=True) from None
        body = None
        if response.status_code < 400:
            body = self._json(response, records_field)
        return response, body

    def _json(self, response: requests.Response, records_field: str | None = None) -> Any:
        if records_field:  # UTF-8 JSON, as orjson reads it below, with the records left as the peer's JSON
            page = raw_page(response.content, records_field)
            if page is not None:
                return page
        try:
            return orjson.loads(response.content)  # UTF-8 JSON, the common case, parsed in C
        except orjson.JSONDecodeError:
            pass
        try:
            return response.json()  # another declared charset, or numbers orjson refuses
        except ValueError:
            raise self._fail("response is not valid JSON", "the peer sent a malformed payload; "
                             "nothing was landed from this page") from None

    def _check(self, response: requests.Response, body: Any) -> dict[str, Any]:
        status = response.status_code
        if status == 429 or status >= 500:
            raise self._fail(f"HTTP {status}", retriable=True, retry_after=_retry_after(response))
        if status >= 400:
            raise self._fail(f"HTTP {status}: {response.text[:200]}",
                             "check the credentials and the request parameters in the catalog", code=f"HTTP {status}")
        if isinstance(body, list):  # an answer that is the records themselves: `items`, as a SOAP array is
            return {"items": body}
        if not isinstance(body, dict):
            raise self._fail(f"expected a JSON object or array, got {type(body).__name__}")
        field = self.system.error_field
        if field and field in body and str(body[field]) not in self.system.ok_values:
            raise self._fail(f"{field} {body[field]!r}: {body.get(self.system.message_field, '')}",
                             "the peer refused the call; check the request")
        return body

    def _exchange(self, params: dict[str, Any], headers: dict[str, str],
                  records_field: str | None = None) -> dict[str, Any]:
        response, body = self._send(params, headers, records_field)
        if self.auth.expired(response, body):
            self.auth.refresh()
            response, body = self._send(params, headers, records_field)
        return self._check(response, body)

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        """One pull request; `params` go to the query string (GET) or the JSON body (POST)."""
        return self._exchange(params, {})

    def call_page(self, params: dict[str, Any], records_field: str) -> dict[str, Any]:
        """`call` for a page to land: the records under `records_field` stay as sent (`RawRecords`) where they can."""
        return self._exchange(params, {}, records_field)

    def send(self, payload: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """One push message; the receiver deduplicates on the `Idempotency-Key` header."""
        return self._exchange(payload, {"Idempotency-Key": idempotency_key})

    def close(self) -> None:
        self.session.close()
