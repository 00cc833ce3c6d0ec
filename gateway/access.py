"""Who is asking, what they may read, and how often: deny by default.

Credentials: `X-API-Key: <key>`, `Authorization: Bearer <key or OAuth2 token>`, or
CKAN's bare `Authorization: <key>`. No credential = anonymous, which may read open
datasets only. A credential that is unknown, revoked or expired (or whose agency is disabled) is refused (401),
never downgraded to anonymous. A restricted dataset needs a grant (403 otherwise).

Principals are cached for `principal_cache_s` (5 s), so a revoked key or grant stops
working within that time. Rate limits are token buckets per agency (per client
address for anonymous readers), kept per gateway process.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from catalog.models import SharedDatasetSpec
from gateway.agencies import ANONYMOUS, AgencyRegistry, Grant, Principal, digest
from gateway.settings import GatewaySettings


class AccessDenied(PermissionError):
    """A read is refused: `status` 401 (no or bad credential) or 403 (no grant)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(RuntimeError):
    """Too many requests; `retry_after_s` says when to come back."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limit exceeded: retry after {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


def presented_secret(api_key: str | None, authorization: str | None) -> str | None:
    """The secret a request presents, from X-API-Key or Authorization (Bearer or CKAN's bare key)."""
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, rest = authorization.strip().partition(" ")
        if rest and scheme.lower() == "bearer":
            return rest.strip()
        if not rest:
            return scheme
    return None


INVALID = "the API key or token is not valid (unknown, revoked or expired, or its agency disabled)"


class Authenticator:
    """Resolves credentials to principals, with a short cache."""

    def __init__(self, registry: AgencyRegistry, settings: GatewaySettings) -> None:
        self.registry = registry
        self.settings = settings
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def principal(self, secret: str | None) -> Principal:
        """The principal for `secret`; anonymous without one.

        Raises:
            AccessDenied: 401 if the secret is unknown, revoked or expired.
        """
        if not secret:
            return ANONYMOUS
        hashed = digest(secret)
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is None or cached[0] < now:
            found = self.registry.principal(secret)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[hashed] = cached = (now + self.settings.principal_cache_s, found)
        if cached[1] is None:
            raise AccessDenied(401, INVALID)
        return cached[1]

    def forget(self, agency_id: str) -> None:
        """Drop this process's cached principals of the agency (its grants changed here); other processes' expire
        within `principal_cache_s`."""
        with self._lock:
            for hashed in [h for h, (_, p) in self._cache.items() if p is not None and p.agency_id == agency_id]:
                del self._cache[hashed]

    def cached(self, secret: str | None) -> Principal | None:
        """The principal for `secret` if that needs no registry lookup (anonymous, or cached and fresh), else None.

        Raises:
            AccessDenied: 401 if the cached answer is that the secret is not valid.
        """
        if not secret:
            return ANONYMOUS
        cached = self._cache.get(digest(secret))
        if cached is None or cached[0] < time.monotonic():
            return None
        if cached[1] is None:
            raise AccessDenied(401, INVALID)
        return cached[1]


def authorize(principal: Principal, shared: SharedDatasetSpec) -> Grant:
    """What `principal` may read of `shared`: the personal columns in clear and the rows (an open dataset without a
    grant: every row, no personal column in clear).

    Raises:
        AccessDenied: 401 for an anonymous reader of a restricted dataset, 403 without a grant.
    """
    if shared.access == "open":
        return principal.grants.get(shared.name, OPEN)
    if principal.agency_id is None:
        raise AccessDenied(401, f"'{shared.name}' is restricted: send an API key (X-API-Key) or an OAuth2 "
                                "bearer token (POST /oauth/token)")
    granted = principal.grants.get(shared.name)
    if granted is None:
        raise AccessDenied(403, f"agency '{principal.agency_id}' has no grant on '{shared.name}' "
                                f"(ask its owner: {shared.owner})")
    gone = [column for column, _ in granted.scope if column not in shared.columns]
    if gone:  # the catalog stopped sharing a column the grant's rows are named by: read nothing, not everything
        raise AccessDenied(403, f"agency '{principal.agency_id}''s grant on '{shared.name}' covers the rows named by "
                                f"{gone}, no longer shared columns of it: the province grants it again "
                                f"(lgsp agencies grant {principal.agency_id} {shared.name} --scope ...)")
    return granted


OPEN = Grant()
MAX_BUCKETS = 100_000
IDLE_S = 60.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets: `rate` requests per second, bursts up to twice that (at least 5)."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, who: str, rate: float) -> None:
        """Spend one token of `who`'s bucket.

        Raises:
            RateLimited: the bucket is empty.
        """
        capacity = max(5.0, 2 * rate)
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(who)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:  # many addresses: forget the idle ones (their buckets are full)
                    self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < IDLE_S}
                    if len(self._buckets) >= MAX_BUCKETS:
                        self._buckets = {}  # bounded memory over exact limits for a moment
                bucket = self._buckets[who] = _Bucket(tokens=capacity, updated=now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1:
                raise RateLimited((1 - bucket.tokens) / rate)
            bucket.tokens -= 1
