"""The message log, in the style of X-Road's: one record per exchange with a peer.

Every HTTP exchange (REST calls, SOAP calls, token and session logins, WSDL
downloads) is recorded with its message id, client, system, operation,
SHA-256 of the request and response bodies, status, sizes and timing. Bodies
are kept only when the system's `message_log.bodies` is on, and then with
secrets and personal data (personal IDs, phone numbers, e-mail addresses,
names, addresses) redacted.

Records are buffered in memory and written to `lgsp_message_log` by whoever
owns the transaction (the runner after each page, the outbox dispatcher after
each message, `lgsp health`).

Example record:
    {"message_id": "6f1c...", "client": "lgsp", "system": "tthc", "operation": "/api/v1/dossiers",
     "method": "GET", "status": "ok", "http_status": 200, "request_sha256": "e3b0...",
     "response_sha256": "9a7d...", "request_bytes": 0, "response_bytes": 48211, "duration_ms": 41.7}
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from catalog.models import MessageLogSpec
from connectors.secrets import Secret, redact

_PERSONAL_KEYS = re.compile(
    r'("(?:full_name|holder_name|name|legal_representative|address|ChuHoSo|HoTen|DiaChi|signer|password|'
    r'username|client_secret|session)"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)
_PERSONAL_XML = re.compile(
    r"(<(?:[\w-]+:)?(full_name|holder_name|address|Username|Password|Nonce)\b[^>]*>)[^<]*(</)", re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\d.])\d{9,12}(?![\d.])")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def redact_personal(text: str) -> str:
    """Mask personal data in a JSON or XML body: IDs and phone numbers, e-mails, names, addresses."""
    text = _PERSONAL_KEYS.sub(r'\1"***"', text)
    text = _PERSONAL_XML.sub(r"\1***\3", text)
    text = _EMAIL.sub("***@***", text)
    return _DIGITS.sub(lambda m: m.group(0)[:3] + "*" * (len(m.group(0)) - 3), text)


def sha256(body: bytes | str | None) -> str:
    data = body.encode() if isinstance(body, str) else (body or b"")
    return hashlib.sha256(data).hexdigest()


@dataclass
class Exchange:
    """One request/response with a peer."""

    message_id: str
    system: str
    operation: str
    method: str
    url: str
    status: str
    http_status: int | None
    request_sha256: str
    response_sha256: str
    request_bytes: int
    response_bytes: int
    started_at: datetime
    duration_ms: float
    client: str = "lgsp"
    context: str = ""
    error: str = ""
    request_body: str | None = None
    response_body: str | None = None


@dataclass
class MessageLog:
    """A buffer of exchanges for one system; `drain()` hands them to the writer."""

    system: str
    spec: MessageLogSpec = field(default_factory=MessageLogSpec)
    secrets: list[Secret] = field(default_factory=list)
    context: str = ""
    _pending: list[Exchange] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def body_for_log(self, body: bytes | str | None) -> str | None:
        if not self.spec.bodies or body is None:
            return None
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        text = redact_personal(redact(text, self.secrets))
        return text[: self.spec.max_body_bytes]

    def record(self, *, message_id: str, operation: str, method: str, url: str, status: str,
               http_status: int | None, request_body: bytes | str | None, response_body: bytes | None,
               started_at: datetime, duration_ms: float, error: str = "") -> Exchange:
        exchange = Exchange(
            message_id=message_id, system=self.system, operation=operation, method=method,
            url=redact(url.split("?")[0], self.secrets), status=status, http_status=http_status,
            request_sha256=sha256(request_body), response_sha256=sha256(response_body),
            request_bytes=len(request_body or b""), response_bytes=len(response_body or b""),
            started_at=started_at, duration_ms=round(duration_ms, 2), context=self.context,
            error=redact(error, self.secrets)[:500],
            request_body=self.body_for_log(request_body), response_body=self.body_for_log(response_body))
        with self._lock:
            self._pending.append(exchange)
        return exchange

    def drain(self) -> list[dict[str, Any]]:
        """Take the buffered records as rows for `lgsp_message_log`."""
        with self._lock:
            pending, self._pending = self._pending, []
        return [asdict(e) for e in pending]

    def __len__(self) -> int:
        return len(self._pending)


def now() -> datetime:
    return datetime.now(timezone.utc)


def summarise(rows: list[dict[str, Any]]) -> str:
    """One line: how many exchanges, how many failed (for logs)."""
    failed = sum(1 for r in rows if r["status"] != "ok")
    return json.dumps({"exchanges": len(rows), "failed": failed})
