"""Health probes: can lgsp reach each system, authenticate, and how fast does it answer?

A REST system is probed with `GET <endpoint><health_path>` over its own
authenticated session (so a client certificate or an API key is exercised);
a SOAP system by downloading its WSDL. The result is kept in the warehouse
(`lgsp_health_check`) by `lgsp health`, so success rate and latency per
connection over time can be read back (`history`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import requests

from catalog.loader import resolve_endpoint, resolve_timeout
from catalog.models import SystemSpec
from connectors.http import open_session
from connectors.message_log import MessageLog


@dataclass
class HealthResult:
    """One probe: `status` is `up`, `degraded` (answered, not 2xx), `down` (no answer) or `misconfigured`."""

    system: str
    checked_at: datetime
    ok: bool
    status: str
    latency_ms: float | None
    detail: str


def probe(system: SystemSpec, log: MessageLog | None = None) -> HealthResult:
    """Probe one system once (never raises: a failure is a result)."""
    checked_at = datetime.now(timezone.utc)
    if system.protocol == "reference":
        return HealthResult(system.name, checked_at, True, "up", 0.0, "in-process reference data")
    try:
        endpoint = resolve_endpoint(system)
        base = endpoint.split("?")[0].rstrip("/")
        session, _auth = open_session(system, base, log)
    except Exception as exc:  # noqa: BLE001 - a missing secret or variable is a finding, not a crash
        return HealthResult(system.name, checked_at, False, "misconfigured", None, str(exc)[:300])
    session.operation = "health"
    url = endpoint if system.protocol == "soap" else base + "/" + system.health_path.lstrip("/")
    started = time.perf_counter()
    try:
        response = session.get(url, timeout=(5.0, resolve_timeout(system)))
    except requests.RequestException as exc:
        latency = (time.perf_counter() - started) * 1000
        return HealthResult(system.name, checked_at, False, "down", round(latency, 1), type(exc).__name__)
    finally:
        session.close()
    latency = round((time.perf_counter() - started) * 1000, 1)
    if response.status_code >= 400:
        return HealthResult(system.name, checked_at, False, "degraded", latency, f"HTTP {response.status_code}")
    return HealthResult(system.name, checked_at, True, "up", latency, f"HTTP {response.status_code}")
