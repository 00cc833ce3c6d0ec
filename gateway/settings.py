"""The gateway's settings, from the environment (secrets never from files, never logged).

| variable | default | meaning |
| --- | --- | --- |
| `LGSP_GATEWAY_PSEUDONYM_KEY` | none (required) | secret for keyed hashes of personal IDs and for sealing page cursors |
| `LGSP_GATEWAY_MAX_PAGE_ROWS` | 1000 | largest page a reader may ask for |
| `LGSP_GATEWAY_MAX_EXPORT_ROWS` | 1000000 | largest export (rows) |
| `LGSP_GATEWAY_MAX_BODY_BYTES` | 1048576 | largest request body (a CKAN query, an access request, a token request); larger: 413 |
| `LGSP_GATEWAY_QUERY_TIMEOUT_S` | 5 | a query running longer is cancelled (503) |
| `LGSP_GATEWAY_RATE_PER_S` | 20 | requests per second per agency unless its registration says otherwise |
| `LGSP_GATEWAY_ANONYMOUS_RATE_PER_S` | 10 | requests per second per client address without a key (open data) |
| `LGSP_GATEWAY_TOKEN_TTL_S` | 3600 | lifetime of an OAuth2 access token |
| `LGSP_GATEWAY_PUBLIC_URL` | none | the gateway's address as agencies reach it (webhook notifications link the feed by it) |
| `LGSP_GATEWAY_WEBHOOK_HOSTS` | none | hosts agencies may register webhooks at themselves (`*.ninhbinh.gov.vn,cases.example`); none: only `lgsp webhooks add` |
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lgsp.settings import load_settings

KEY_VARIABLE = "LGSP_GATEWAY_PSEUDONYM_KEY"


class GatewayConfigError(RuntimeError):
    """A gateway setting is missing or wrong; the message says which variable and what to do."""


@dataclass(frozen=True, repr=False)
class GatewaySettings:
    """What the gateway needs; `repr` never shows the key."""

    database_url: str
    pseudonym_key: bytes
    max_page_rows: int = 1000
    default_page_rows: int = 100
    max_export_rows: int = 1_000_000
    max_body_bytes: int = 1 << 20
    query_timeout_s: float = 5.0
    rate_per_s: float = 20.0
    anonymous_rate_per_s: float = 10.0
    token_ttl_s: int = 3600
    principal_cache_s: float = 5.0
    public_url: str | None = None
    webhook_hosts: tuple[str, ...] = ()
    metrics_token: bytes | None = None  # GET /metrics wants it as a bearer token (None: /metrics is off)

    def __repr__(self) -> str:
        return f"GatewaySettings(database_url=<redacted>, max_page_rows={self.max_page_rows}, ...)"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise GatewayConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise GatewayConfigError(f"{name} must be positive, got {raw}")
    return value


def load_gateway_settings(database_url: str | None = None) -> GatewaySettings:
    """Settings from the environment; the database is the warehouse's (`LGSP_DATABASE_URL`).

    Raises:
        GatewayConfigError: `LGSP_GATEWAY_PSEUDONYM_KEY` is unset or shorter than 16 characters, or another
            setting is wrong (`LGSP_METRICS_TOKEN` shorter than 16 characters, a number that is not one).
    """
    from lgsp.metrics import CACHE_ENV, SCAN_ENV, TOKEN_ENV, MetricsError, seconds_setting

    key = os.environ.get(KEY_VARIABLE, "")
    if len(key) < 16:
        raise GatewayConfigError(
            f"{KEY_VARIABLE} must be set to a secret of at least 16 characters (it keys the pseudonyms of "
            f"personal IDs and seals page cursors), e.g. export {KEY_VARIABLE}=$(python3 -c "
            "'import secrets; print(secrets.token_urlsafe(32))'); keep it stable, pseudonyms change with it")
    metrics_token = os.environ.get(TOKEN_ENV, "")
    if metrics_token and len(metrics_token) < 16:
        raise GatewayConfigError(
            f"{TOKEN_ENV} must be at least 16 characters (Prometheus sends it as a bearer token to GET /metrics), "
            f"e.g. export {TOKEN_ENV}=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'); unset, "
            "/metrics is off")
    try:
        seconds_setting(CACHE_ENV, 0.0), seconds_setting(SCAN_ENV, 0.0)
    except MetricsError as exc:
        raise GatewayConfigError(str(exc)) from None
    return GatewaySettings(
        database_url=database_url or load_settings().database_url,
        pseudonym_key=key.encode(),
        max_page_rows=int(_number("LGSP_GATEWAY_MAX_PAGE_ROWS", 1000)),
        max_export_rows=int(_number("LGSP_GATEWAY_MAX_EXPORT_ROWS", 1_000_000)),
        max_body_bytes=int(_number("LGSP_GATEWAY_MAX_BODY_BYTES", 1 << 20)),
        query_timeout_s=_number("LGSP_GATEWAY_QUERY_TIMEOUT_S", 5.0),
        rate_per_s=_number("LGSP_GATEWAY_RATE_PER_S", 20.0),
        anonymous_rate_per_s=_number("LGSP_GATEWAY_ANONYMOUS_RATE_PER_S", 10.0),
        token_ttl_s=int(_number("LGSP_GATEWAY_TOKEN_TTL_S", 3600)),
        public_url=os.environ.get("LGSP_GATEWAY_PUBLIC_URL") or None,
        webhook_hosts=tuple(h.strip().lower() for h in os.environ.get("LGSP_GATEWAY_WEBHOOK_HOSTS", "").split(",")
                            if h.strip()),
        metrics_token=metrics_token.encode() or None,
    )
