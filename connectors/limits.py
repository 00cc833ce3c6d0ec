"""Per-system limits: a request-rate limit, a concurrency cap, a circuit breaker, and peak hours.

One `Limits` object per system per process (`limits_for(system)`), shared by
every transport that talks to it. Across processes (Airflow tasks), the
concurrency cap is an Airflow pool per system (`lgsp_<system>`, see
`lgsp.dag_factory`), and an open breaker is remembered in the warehouse
(`lgsp_circuit`) so the next run does not hammer a peer that was just declared
down. In a system's peak hours (`limits.peak`), background calls (pulls, drift
checks, pushes) wait for a slower rate too; a gateway lookup does not.

Example:
    >>> limits = limits_for(system)
    >>> with limits.slot():          # waits for a free slot and a rate token
    ...     limits.breaker.check()   # raises CircuitOpen while the peer is declared down
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from catalog.loader import expand_env
from catalog.models import DAYS, LOCAL_TZ, PeakSpec, SystemSpec, peak_until, peak_windows
from connectors.errors import ConnectorError

log = logging.getLogger("lgsp.connectors")


class CircuitOpen(ConnectorError):
    """The peer failed too many times in a row; lgsp stops calling it for a while."""


class TokenBucket:
    """`rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity = rate, burst or max(1.0, rate)
        self.tokens, self.clock = self.capacity, clock
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> float:
        """Take one token, sleeping until one is available; returns the seconds waited."""
        waited = 0.0
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return waited
                delay = (1 - self.tokens) / self.rate
            sleep(delay)
            waited += delay


@dataclass
class CircuitBreaker:
    """Closed -> open after `threshold` consecutive retriable failures -> half-open after `reset_s`.

    While open, `check()` raises CircuitOpen at once (no request is sent). After
    `reset_s` one trial call goes through: success closes the circuit, failure
    opens it again.
    """

    system: str
    threshold: int
    reset_s: float
    failures: int = 0
    opened_at: datetime | None = None
    last_error: str = ""
    on_change: Callable[["CircuitBreaker"], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._now() >= self.opened_at + timedelta(seconds=self.reset_s) else "open"

    @staticmethod
    def _now() -> datetime:
        return datetime.now(timezone.utc)

    def check(self, operation: str = "") -> None:
        if self.state == "open":
            assert self.opened_at is not None
            retry_at = self.opened_at + timedelta(seconds=self.reset_s)
            raise CircuitOpen(self.system, operation or "*",
                              f"circuit open since {self.opened_at:%Y-%m-%d %H:%M:%S}Z after {self.failures} "
                              f"consecutive failures (last: {self.last_error})",
                              f"lgsp stops calling a dead peer; it tries again after {retry_at:%H:%M:%S}Z. "
                              "Check the peer with `lgsp health`")

    def success(self) -> None:
        with self.lock:
            changed = self.opened_at is not None
            self.failures, self.opened_at, self.last_error = 0, None, ""
        if changed and self.on_change:
            self.on_change(self)

    def failure(self, error: str) -> None:
        with self.lock:
            self.failures += 1
            self.last_error = error
            opening = self.failures >= self.threshold and self.state != "open"
            if opening:
                self.opened_at = self._now()
        if opening and self.on_change:
            self.on_change(self)

    def restore(self, failures: int, opened_at: datetime | None, last_error: str) -> None:
        """Take over a state remembered by an earlier process."""
        with self.lock:
            self.failures, self.opened_at, self.last_error = failures, opened_at, last_error


class Peak:
    """A system's peak hours (`limits.peak`) in this process: whether an instant is in one, and the slower rate
    of background calls then. `calls` and `waited_s` count what the peak rate held back."""

    def __init__(self, system: str, spec: PeakSpec, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 ) -> None:
        self.system, self.rate_per_s, self.clock = system, spec.rate_per_s, clock
        self.windows = peak_windows(expand_env(spec.hours))  # expanded now: `none` in the environment, no peak
        self.days = {DAYS.index(day) for day in spec.days}
        self.bucket = TokenBucket(spec.rate_per_s, burst=1)  # evenly spaced: no burst when a window opens
        self.calls, self.waited_s = 0, 0.0
        self.told_until: datetime | None = None
        self.lock = threading.Lock()

    def until(self, at: datetime | None = None) -> datetime | None:
        """When the peak that holds `at` (default: now) ends, UTC; None off peak."""
        return peak_until(self.windows, self.days, at or self.clock()) if self.windows else None

    def throttle(self) -> None:
        """In a peak window: wait for the peak rate's token (the first call of each window says so in the log)."""
        until = self.until()
        if until is None:
            return
        with self.lock:
            first, self.told_until = self.told_until != until, until
        if first:
            log.info("%s is in its peak hours until %s local time: lgsp's background calls slow to %g/s "
                     "(limits.peak in catalog/systems.yaml; gateway lookups keep the system's own limits)",
                     self.system, f"{until.astimezone(LOCAL_TZ):%H:%M}", self.rate_per_s)
        waited = self.bucket.acquire()
        with self.lock:
            self.calls, self.waited_s = self.calls + 1, self.waited_s + waited


class Limits:
    """Rate limit, concurrency cap and breaker of one system, in this process, and its peak hours."""

    def __init__(self, system: SystemSpec) -> None:
        spec = system.limits
        self.bucket = TokenBucket(spec.rate_per_s) if spec.rate_per_s else None
        self.slots = threading.BoundedSemaphore(spec.max_concurrency)
        self.breaker = CircuitBreaker(system.name, spec.breaker_failures, spec.breaker_reset_s)
        self.peak = Peak(system.name, spec.peak) if spec.peak is not None else None

    def throttle(self, background: bool = True) -> None:
        """Wait for the system's rate, and, for a background call (not a lookup a person waits for) in the
        system's peak hours, for the peak rate too."""
        if background and self.peak is not None:
            self.peak.throttle()
        if self.bucket is not None:
            self.bucket.acquire()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.slots:
            self.throttle()
            yield


def peak_state(system: SystemSpec, at: datetime | None = None) -> dict[str, Any] | None:
    """A system's peak hours as `lgsp status` shows them: the windows (local time), the weekdays, the rate of
    background calls, and `until` (UTC) when `at` (default: now) is in one; None when it has none."""
    if system.limits.peak is None:
        return None
    peak = Peak(system.name, system.limits.peak)
    if not peak.windows:
        return None
    return {"system": system.name, "hours": [f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}"
                                             for s, e in peak.windows],
            "days": list(system.limits.peak.days), "rate_per_s": peak.rate_per_s, "bulk": system.limits.peak.bulk,
            "until": peak.until(at)}


def bulk_wait(system: SystemSpec, at: datetime | None = None) -> datetime | None:
    """When a bulk pull of `system` (a full refresh, a backfill) may start: the end (UTC) of the peak window that
    holds `at` (default: now) if the system's `limits.peak.bulk` is `wait`; None: it may start now."""
    peak = system.limits.peak
    if peak is None or peak.bulk != "wait":
        return None
    return Peak(system.name, peak).until(at)


_REGISTRY: dict[str, Limits] = {}
_REGISTRY_LOCK = threading.Lock()


def limits_for(system: SystemSpec) -> Limits:
    """The process-wide Limits of `system` (created on first use)."""
    with _REGISTRY_LOCK:
        if system.name not in _REGISTRY:
            _REGISTRY[system.name] = Limits(system)
        return _REGISTRY[system.name]


def reset_limits() -> None:
    """Forget every system's limits and breaker state (tests, long-lived workers after a config change)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
