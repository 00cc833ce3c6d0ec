"""Fault injection (errors and latency) as WSGI middleware.

Applies to *data* requests only: everything except ``GET /health`` and the
WSDL download (``GET ...?wsdl``). An injected error is, for both services,
HTTP ``503 Service Unavailable`` with a JSON body::

    {"error": "service unavailable (injected fault)"}

so a zeep client sees ``zeep.exceptions.TransportError`` with
``status_code == 503`` (the body is not XML) -- the same signal a real
overloaded gateway gives -- rather than a SOAP Fault.

Example:
    >>> plan = FaultPlan(error_rate=0.2, latency_s=0.05, seed=1)
    >>> app = with_faults(inner_wsgi_app, plan)
    >>> plan.error_rate = 0.0  # takes effect for the next request
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

FAULT_STATUS = "503 Service Unavailable"
FAULT_BODY = {"error": "service unavailable (injected fault)"}


@dataclass
class FaultPlan:
    """Mutable, thread-safe fault plan shared by the sandbox services.

    Attributes:
        error_rate: Probability (0..1) that a data request gets a 503.
        latency_s: Seconds to sleep before answering each data request.
        seed: Seed of the plan's private ``random.Random``; one draw is made
            per data request (even at rate 0), so a given request sequence
            always fails at the same positions.
        requests: Data requests seen so far (read-only counter).
        injected: 503s injected so far (read-only counter).
    """

    error_rate: float = 0.0
    latency_s: float = 0.0
    seed: int = 0
    requests: int = field(default=0, init=False)
    injected: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed the random source (default: original seed) and zero the counters."""
        with self._lock:
            if seed is not None:
                self.seed = seed
            self._rng = random.Random(self.seed)
            self.requests = self.injected = 0

    def decide(self) -> tuple[bool, float]:
        """Draw the fate of one data request: ``(fail, latency_s)``."""
        with self._lock:
            self.requests += 1
            fail = self._rng.random() < self.error_rate
            if fail:
                self.injected += 1
            return fail, max(0.0, self.latency_s)


def is_exempt(environ: dict[str, Any]) -> bool:
    """True for ``/health`` and WSDL/XSD downloads, which never fail or lag."""
    if environ.get("PATH_INFO", "") == "/health":
        return True
    query = environ.get("QUERY_STRING", "").lower()
    return environ.get("REQUEST_METHOD", "GET") == "GET" and (query == "wsdl" or query.startswith(("wsdl&", "xsd")))


def _drain(environ: dict[str, Any]) -> None:
    """Read the unread request body: closing a socket with unread data sends a
    TCP RST, and the client would see "connection reset" instead of the 503."""
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    stream = environ.get("wsgi.input")
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        remaining -= len(chunk)


def with_faults(app: WsgiApp, plan: FaultPlan) -> WsgiApp:
    """Wrap a WSGI app so data requests obey ``plan`` (read at each request).

    Args:
        app: The WSGI application to protect.
        plan: The (mutable) fault plan.

    Returns:
        A WSGI application.
    """

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if is_exempt(environ):
            return app(environ, start_response)
        fail, delay = plan.decide()
        if delay:
            time.sleep(delay)
        if fail:
            _drain(environ)
            body = json.dumps(FAULT_BODY).encode()
            start_response(FAULT_STATUS, [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ])
            return [body]
        return app(environ, start_response)

    return middleware
