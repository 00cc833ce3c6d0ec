"""Exponential backoff with full jitter, honouring Retry-After.

Example:
    >>> call_with_retry(lambda: 42, RetrySpec(), "tthc", "/api/v1/dossiers")
    42
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from catalog.models import RetrySpec
from connectors.errors import RetriableError, RetriesExhausted
from connectors.limits import CircuitBreaker

T = TypeVar("T")
log = logging.getLogger("lgsp.connectors")


def backoff_delay(attempt: int, spec: RetrySpec, rng: random.Random) -> float:
    """Full-jitter delay before retry number `attempt` (1-based)."""
    ceiling = min(spec.max_backoff_s, spec.backoff_s * (2 ** (attempt - 1)))
    return rng.uniform(0, ceiling)


def call_with_retry(
    call: Callable[[], T],
    spec: RetrySpec,
    system: str,
    operation: str,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    breaker: CircuitBreaker | None = None,
) -> T:
    """Run `call`; on RetriableError wait and try again, up to `spec.attempts` times.

    FatalError (and anything else) propagates at once. With a `breaker`, an
    open circuit fails at once (CircuitOpen) and every outcome is counted.
    """
    rng = rng or random.Random()
    for attempt in range(1, spec.attempts + 1):
        if breaker is not None:
            breaker.check(operation)
        try:
            result = call()
        except RetriableError as exc:
            if breaker is not None:
                breaker.failure(exc.problem)
            if attempt == spec.attempts:
                raise RetriesExhausted(
                    system, operation,
                    f"still failing after {spec.attempts} attempts; last error: {exc.problem}",
                    "the peer is down or overloaded: check `lgsp` logs and the system's status, then rerun "
                    "(the cursor was not advanced, nothing is lost)",
                ) from exc
            delay = backoff_delay(attempt, spec, rng)
            if exc.retry_after_s is not None:
                delay = max(delay, min(exc.retry_after_s, spec.max_backoff_s * 4))
            log.warning("%s %s: %s; retry %d/%d in %.2fs", system, operation, exc.problem,
                        attempt, spec.attempts - 1, delay)
            sleep(delay)
            continue
        if breaker is not None:
            breaker.success()
        return result
    raise AssertionError("unreachable")  # pragma: no cover
