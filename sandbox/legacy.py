"""The three legacy provincial systems (Ninh Bình, Nam Định, Hà Nam before the merger) as loopback REST services.

Each system is one :class:`LegacyApp` behind its own ``X-API-Key``:

    ``GET /health`` -> ``200 {"status": "ok", "system": "legacy_nam_dinh"}`` (no key needed)
    ``GET /api/citizens?offset=0&limit=200`` -> ``200 {"data": [...], "total": 459, "offset": 0, "limit": 200}``
    ``GET /api/enterprises``, ``GET /api/dossiers``: the same paging.

Rows come in ``(updated_at, key)`` order; ``limit`` defaults to 200, capped at 1000.
Errors are JSON ``{"error": ...}``: 400 bad parameter, 401 missing/wrong key, 404, 405.

Example:
    >>> with start_legacy_sandbox(seed=37) as legacy:
    ...     legacy.urls["legacy_ha_nam"]       # 'http://127.0.0.1:41301'
    ...     os.environ.update(legacy.env())     # LGSP_LEGACY_HA_NAM_URL, LGSP_LEGACY_HA_NAM_API_KEY, ...
    ...     legacy.data.truth.review            # which records must end in the review queue
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sandbox.faults import FaultBoard, FaultPlan, plan_seed, with_faults
from sandbox.legacy_data import KEY_FIELDS, LEGACY_SYSTEMS, LegacyData, generate_legacy
from sandbox.rest_common import Answer, JsonService, Query, ServedRows, api_key_refusal, int_param
from sandbox.server import SandboxServer, serve_wsgi

PATHS = {"/api/citizens": "citizen", "/api/enterprises": "enterprise", "/api/dossiers": "dossier"}
"""Listing path -> record kind."""
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000

__all__ = ["PATHS", "LegacyApp", "LegacyHandle", "env_prefix", "start_legacy_sandbox"]


def env_prefix(system: str) -> str:
    """``'legacy_ha_nam'`` -> ``'LGSP_LEGACY_HA_NAM'`` (the catalog's ``${...}`` variables)."""
    return f"LGSP_{system.upper()}"


class LegacyApp(JsonService):
    """WSGI callable serving one legacy system's citizens, enterprises and dossiers (offset paging).

    Args:
        system: e.g. ``"legacy_nam_dinh"``.
        records: ``{kind: rows}`` as :func:`sandbox.legacy_data.generate_legacy` makes them.
        api_key: The required ``X-API-Key``.
    """

    routes = {"/health": "GET", **{path: "GET" for path in PATHS}}
    system = "legacy"

    def __init__(self, system: str, records: dict[str, Sequence[dict[str, Any]]], api_key: str) -> None:
        self.system = system  # type: ignore[misc]  # per instance: /health names the province's system
        self.api_key = api_key
        self._rows = {kind: ServedRows(rows, KEY_FIELDS[kind]) for kind, rows in records.items()}

    def gate(self, environ: dict[str, Any]) -> Answer | None:
        """401 unless ``X-API-Key`` matches."""
        return api_key_refusal(environ, self.api_key)

    def page(self, query: Query, environ: dict[str, Any]) -> dict[str, Any]:
        """``{"data": [...], "total": N, "offset": 0, "limit": 200}`` of the kind the path names."""
        rows = self._rows[PATHS[environ.get("PATH_INFO", "")]]
        offset = int_param(query, "offset", 0, minimum=0)
        limit = min(int_param(query, "limit", DEFAULT_LIMIT, minimum=1), MAX_LIMIT)
        return {"data": rows.items[offset:offset + limit], "total": len(rows.items), "offset": offset, "limit": limit}


@dataclass
class LegacyHandle:
    """Running legacy systems: ``urls``, ``api_keys``, ``faults`` (one plan per system) and the ``data`` (with truth)."""

    data: LegacyData = field(repr=False)
    faults: FaultBoard
    api_keys: dict[str, str] = field(repr=False)
    urls: dict[str, str] = field(default_factory=dict)
    _servers: list[tuple[SandboxServer, threading.Thread]] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        """``LGSP_LEGACY_<PROVINCE>_URL`` and ``..._API_KEY`` of every system (contains secrets)."""
        env: dict[str, str] = {}
        for system, url in self.urls.items():
            env[f"{env_prefix(system)}_URL"] = url
            env[f"{env_prefix(system)}_API_KEY"] = self.api_keys[system]
        return env

    def stop(self) -> None:
        """Stop every server (idempotent)."""
        servers, self._servers = self._servers, []
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> LegacyHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def legacy_api_key(seed: int, system: str) -> str:
    """The seed-derived test key of one legacy system (never a real secret)."""
    return "sbx-" + hashlib.sha256(f"lgsp-legacy/{seed}/{system}".encode()).hexdigest()[:24]


def start_legacy_sandbox(seed: int = 37, citizens: int = 400, enterprises: int = 150, dossiers: int = 600,
                         host: str = "127.0.0.1", data: LegacyData | None = None,
                         ports: dict[str, int] | None = None) -> LegacyHandle:
    """Generate the legacy data (or serve ``data``) and start the three systems on loopback (port 0 = free).

    Args:
        seed: Data seed; also derives the API keys and the fault seeds.
        citizens: Own citizens per system (see :func:`sandbox.legacy_data.generate_legacy`).
        enterprises: Own enterprises per system.
        dossiers: Dossiers per system.
        host: Interface to bind.
        data: Serve this instead of generating.
        ports: Fixed ports, e.g. ``{"legacy_ha_nam": 8821}``.

    Returns:
        A running :class:`LegacyHandle`; call ``stop()`` or use ``with``.
    """
    data = data or generate_legacy(seed, citizens, enterprises, dossiers)
    plans = {system: FaultPlan(seed=plan_seed(seed, system)) for system in LEGACY_SYSTEMS}
    handle = LegacyHandle(data, FaultBoard(plans), {s: legacy_api_key(seed, s) for s in LEGACY_SYSTEMS})
    try:
        for system in LEGACY_SYSTEMS:
            app = LegacyApp(system, data.records[system], handle.api_keys[system])
            server, thread = serve_wsgi(with_faults(app, plans[system]), host, (ports or {}).get(system, 0), system)
            handle._servers.append((server, thread))
            handle.urls[system] = f"http://{host}:{server.server_port}"
    except BaseException:
        handle.stop()
        raise
    return handle
