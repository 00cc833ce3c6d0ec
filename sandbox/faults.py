"""Fault injection (errors, resets, hangs, throttling, broken bodies, latency) as WSGI middleware.

Applies to *data* requests only: everything except ``GET /health`` and the
WSDL/XSD download (``GET ...?wsdl``); OAuth token requests are data requests.
Each data request draws its fate once from the plan's private seeded RNG, so
a given request sequence always meets the same faults. The kinds:

* ``error`` -- ``503 Service Unavailable``, JSON body
  ``{"error": "service unavailable (injected fault)"}`` (a zeep client sees
  ``zeep.exceptions.TransportError`` with ``status_code == 503``).
* ``reset`` -- the server closes the socket with a TCP RST without answering
  (``requests.ConnectionError``); needs the sandbox's request handler
  (:mod:`sandbox.server`), any other server just closes the connection.
* ``timeout`` -- the server sleeps ``hang_s`` seconds, then answers normally
  (a client with a shorter timeout sees a timeout).
* ``throttle`` -- ``429 Too Many Requests`` with ``Retry-After: <retry_after_s>``.
* ``malformed`` -- the real answer with its body cut in half (truncated JSON,
  unclosed XML) and ``Content-Length`` fixed to match.
* ``overloaded`` -- not drawn: with ``capacity_per_s`` set, a data request that
  finds that many answered in the last second gets ``503 Service Unavailable``
  (``{"error": "server busy: ..."}``) at once, as VNeID and the population
  database do at peak hours; it does not draw (the other faults' sequence
  moves on by the requests that were served).

For ``POST`` requests (pushes) a ``reset`` or ``timeout`` happens, with
probability 0.5 (second draw), *after* the wrapped app processed the request:
the "lost acknowledgement" that makes idempotency keys necessary.

Example:
    >>> plan = FaultPlan(error_rate=0.2, latency_s=0.05, seed=1)
    >>> app = with_faults(inner_wsgi_app, plan)
    >>> plan.transient(0.3)   # error/reset/timeout 0.1 each, from the next request
    >>> plan.clear()          # no faults
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

FAULT_STATUS = "503 Service Unavailable"
FAULT_BODY = {"error": "service unavailable (injected fault)"}
THROTTLE_STATUS = "429 Too Many Requests"
THROTTLE_BODY = {"error": "too many requests (injected fault)"}
FAULT_KINDS = ("error", "reset", "timeout", "throttle", "malformed")
"""Kinds in draw order: one uniform number u picks the first kind whose cumulative rate exceeds u."""
RATE_FIELDS = ("error_rate", "reset_rate", "timeout_rate", "throttle_rate", "malformed_rate")
TUNABLE_FIELDS = (*RATE_FIELDS, "latency_s", "hang_s", "retry_after_s", "capacity_per_s")
ABORT_ENVIRON_KEY = "sandbox.abort_with_reset"
"""Environ key of the server callback that turns the connection's close into a TCP RST."""
LOST_ACK_SHARE = 0.5


class InjectedReset(ConnectionAbortedError):
    """Raised by the middleware to abort a response; wsgiref swallows it silently."""


class FaultDecision(NamedTuple):
    """The fate of one data request.

    Attributes:
        kind: One of :data:`FAULT_KINDS`, or ``None`` (answer normally).
        latency_s: Seconds to sleep first.
        after_processing: ``reset``/``timeout`` of a POST only after the app ran.
    """

    kind: str | None
    latency_s: float
    after_processing: bool = False


@dataclass
class FaultPlan:
    """Mutable, thread-safe fault plan of one sandbox service.

    Attributes:
        error_rate: Probability (0..1) of a 503.
        reset_rate: Probability of a TCP reset without an answer.
        timeout_rate: Probability of a ``hang_s`` hang before the answer.
        throttle_rate: Probability of a 429 with ``Retry-After``.
        malformed_rate: Probability of a truncated body.
        latency_s: Seconds to sleep before answering each data request.
        hang_s: Length of a ``timeout`` hang.
        retry_after_s: ``Retry-After`` value of a 429.
        capacity_per_s: Data requests the service answers in any one second
            (0: no limit); beyond it, ``overloaded`` 503s.
        seed: Seed of the plan's private ``random.Random``; one draw is made
            per data request (even at rate 0; a POST reset/timeout draws once
            more), so a given request sequence always fails at the same positions.
        requests: Data requests seen so far (read-only counter).
        injected: Faults injected so far, all kinds (read-only counter).
        injected_by_kind: ``{kind: count}``, e.g. ``{'error': 3, 'reset': 1}``.
    """

    error_rate: float = 0.0
    latency_s: float = 0.0
    seed: int = 0
    reset_rate: float = 0.0
    timeout_rate: float = 0.0
    throttle_rate: float = 0.0
    malformed_rate: float = 0.0
    hang_s: float = 2.0
    retry_after_s: int = 1
    capacity_per_s: float = 0.0
    requests: int = field(default=0, init=False)
    injected: int = field(default=0, init=False)
    injected_by_kind: dict[str, int] = field(default_factory=dict, init=False)
    _rng: random.Random = field(init=False, repr=False)
    _served: collections.deque[float] = field(default_factory=collections.deque, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed the random source (default: the current seed) and zero the counters."""
        with self._lock:
            if seed is not None:
                self.seed = seed
            self._rng = random.Random(self.seed)
            self.requests = self.injected = 0
            self.injected_by_kind = {}

    def transient(self, rate: float) -> None:
        """Set error, reset and timeout to ``rate / 3`` each, throttle and malformed to 0 (latency kept)."""
        self.error_rate = self.reset_rate = self.timeout_rate = rate / 3
        self.throttle_rate = self.malformed_rate = 0.0

    def clear(self) -> None:
        """Zero every rate, the latency and the capacity limit (counters and RNG are kept)."""
        for name in RATE_FIELDS:
            setattr(self, name, 0.0)
        self.latency_s = self.capacity_per_s = 0.0

    def overloaded(self) -> bool:
        """True (counted as an ``overloaded`` fault) when ``capacity_per_s`` requests were let in during the
        last second; else the request is let in."""
        if not self.capacity_per_s:
            return False
        with self._lock:
            now = time.monotonic()
            while self._served and self._served[0] <= now - 1.0:
                self._served.popleft()
            if len(self._served) >= self.capacity_per_s:
                self.requests += 1
                self.injected += 1
                self.injected_by_kind["overloaded"] = self.injected_by_kind.get("overloaded", 0) + 1
                return True
            self._served.append(now)
            return False

    def draw(self, method: str = "GET") -> FaultDecision:
        """Draw the fate of one data request (counts it)."""
        with self._lock:
            self.requests += 1
            u = self._rng.random()
            kind, bound = None, 0.0
            for name, rate_field in zip(FAULT_KINDS, RATE_FIELDS):
                bound += max(0.0, getattr(self, rate_field))
                if u < bound:
                    kind = name
                    break
            after = False
            if kind is not None:
                self.injected += 1
                self.injected_by_kind[kind] = self.injected_by_kind.get(kind, 0) + 1
                if method == "POST" and kind in ("reset", "timeout"):
                    after = self._rng.random() < LOST_ACK_SHARE
            return FaultDecision(kind, max(0.0, self.latency_s), after)

    def decide(self) -> tuple[bool, float]:
        """Legacy form of :meth:`draw`: ``(any_fault, latency_s)``."""
        decision = self.draw()
        return decision.kind is not None, decision.latency_s


def is_exempt(environ: dict[str, Any]) -> bool:
    """True for ``/health`` and WSDL/XSD downloads, which never fail or lag."""
    if environ.get("PATH_INFO", "") == "/health":
        return True
    query = environ.get("QUERY_STRING", "").lower()
    return environ.get("REQUEST_METHOD", "GET") == "GET" and (query == "wsdl" or query.startswith(("wsdl&", "xsd")))


def _drain(environ: dict[str, Any]) -> None:
    """Read the unread request body: closing a socket with unread data sends a
    TCP RST, and the client would see "connection reset" instead of the answer."""
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


def _json_answer(start_response: Callable[..., Any], status: str, payload: dict[str, str],
                 extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json; charset=utf-8"),
                            ("Content-Length", str(len(body))), *(extra or [])])
    return [body]


class _Captured:
    """A fully run WSGI answer: status, headers and body bytes."""

    def __init__(self, app: WsgiApp, environ: dict[str, Any]) -> None:
        self.status, self.headers, chunks = "500 Internal Server Error", [], []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            self.status, self.headers = status, list(headers)
            return chunks.append

        result = app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        self.body = b"".join(chunks)

    def replay(self, start_response: Callable[..., Any], truncate: bool = False) -> list[bytes]:
        """Send the answer, optionally with the body cut in half."""
        body = self.body[: len(self.body) // 2] if truncate else self.body
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        start_response(self.status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def _abort(environ: dict[str, Any]) -> None:
    _drain(environ)
    hook = environ.get(ABORT_ENVIRON_KEY)
    if hook is not None:
        hook()
    raise InjectedReset("connection reset (injected fault)")


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
        if plan.overloaded():
            _drain(environ)
            return _json_answer(start_response, FAULT_STATUS, {
                "error": f"server busy: more than {plan.capacity_per_s:g} requests a second (injected overload)"})
        decision = plan.draw(environ.get("REQUEST_METHOD", "GET"))
        if decision.latency_s:
            time.sleep(decision.latency_s)
        kind = decision.kind
        if kind is None:
            return app(environ, start_response)
        if kind == "error":
            _drain(environ)
            return _json_answer(start_response, FAULT_STATUS, FAULT_BODY)
        if kind == "throttle":
            _drain(environ)
            return _json_answer(start_response, THROTTLE_STATUS, THROTTLE_BODY,
                                [("Retry-After", str(plan.retry_after_s))])
        if kind == "malformed":
            return _Captured(app, environ).replay(start_response, truncate=True)
        if not decision.after_processing:
            if kind == "reset":
                _abort(environ)
            time.sleep(plan.hang_s)
            return app(environ, start_response)
        answer = _Captured(app, environ)  # the push is processed, then the acknowledgement is lost
        if kind == "reset":
            _abort(environ)
        time.sleep(plan.hang_s)
        return answer.replay(start_response)

    return middleware


def plan_seed(seed: int, system: str) -> int:
    """The fault seed of one system: stable across processes (no ``hash()``), distinct per system."""
    return seed * 1_000_003 + zlib.crc32(system.encode("utf-8"))


class FaultBoard:
    """The fault plans of every sandbox system, addressable one by one or all at once.

    Setting a tunable attribute sets it on every plan; reading it gives the
    common value (the largest, if the plans differ); ``requests``,
    ``injected`` and ``injected_by_kind`` are totals.

    Example:
        >>> board = FaultBoard({"land": FaultPlan(seed=1), "tthc": FaultPlan(seed=2)})
        >>> board.error_rate = 0.3          # both systems
        >>> board["land"].reset_rate = 0.5  # one system
        >>> board.clear(); board.requests
        0
    """

    def __init__(self, plans: dict[str, FaultPlan]) -> None:
        object.__setattr__(self, "_plans", dict(plans))

    def __getitem__(self, system: str) -> FaultPlan:
        try:
            return self._plans[system]  # type: ignore[no-any-return]
        except KeyError:
            raise KeyError(f"no fault plan for system {system!r}; known: {sorted(self._plans)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    def items(self) -> list[tuple[str, FaultPlan]]:
        """``[(system, plan), ...]``."""
        return list(self._plans.items())

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in TUNABLE_FIELDS:
            raise AttributeError(f"FaultBoard has no settable attribute {name!r}; use one of {TUNABLE_FIELDS}")
        for plan in self._plans.values():
            setattr(plan, name, value)

    def __getattr__(self, name: str) -> Any:
        plans = object.__getattribute__(self, "_plans").values()
        if name in TUNABLE_FIELDS:
            return max((getattr(p, name) for p in plans), default=0.0)
        if name in ("requests", "injected"):
            return sum(getattr(p, name) for p in plans)
        if name == "injected_by_kind":
            totals: dict[str, int] = {}
            for plan in plans:
                for kind, count in plan.injected_by_kind.items():
                    totals[kind] = totals.get(kind, 0) + count
            return totals
        raise AttributeError(name)

    def transient(self, rate: float) -> None:
        """:meth:`FaultPlan.transient` on every plan."""
        for plan in self._plans.values():
            plan.transient(rate)

    def clear(self) -> None:
        """:meth:`FaultPlan.clear` on every plan."""
        for plan in self._plans.values():
            plan.clear()

    def reset(self, seed: int | None = None) -> None:
        """Re-seed every plan and zero the counters.

        Args:
            seed: ``None`` keeps each plan's own seed; otherwise every plan gets
                exactly ``seed``, so each system replays the sequence of a lone
                ``FaultPlan(seed=seed)`` (as with the former single shared plan).
        """
        for plan in self._plans.values():
            plan.reset(seed)

    def __repr__(self) -> str:
        return f"FaultBoard({', '.join(self._plans)}; requests={self.requests}, injected={self.injected})"
