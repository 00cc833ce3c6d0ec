"""Run both simulators on loopback HTTP servers in background threads.

Example:
    >>> with start_sandbox(seed=37, citizens=300, dossiers=500, api_key="k") as sb:
    ...     sb.population_wsdl   # 'http://127.0.0.1:41234/?wsdl'
    ...     sb.tthc_url          # 'http://127.0.0.1:41235'
    ...     sb.faults.error_rate = 0.2   # both services, from the next request
"""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sandbox.data import SandboxData
from sandbox.faults import FaultPlan, WsgiApp, with_faults
from sandbox.population_soap import make_population_app
from sandbox.tthc_rest import make_tthc_app


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref server handling each request in a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _QuietHandler(WSGIRequestHandler):
    """Request handler without the stderr access log."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _serve(app: WsgiApp, host: str, port: int, name: str) -> tuple[WSGIServer, threading.Thread]:
    server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"sandbox-{name}", daemon=True)
    thread.start()
    return server, thread


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class SandboxHandle:
    """A running sandbox.

    Attributes:
        data: The ground truth both services serve.
        population_url: SOAP endpoint, e.g. ``'http://127.0.0.1:41234/'``.
        population_wsdl: ``population_url + '?wsdl'``.
        tthc_url: REST base URL without trailing slash, e.g. ``'http://127.0.0.1:41235'``.
        faults: The single :class:`FaultPlan` shared by both services.
        api_key: The ``X-API-Key`` the REST API requires (``None``: no check).
    """

    data: SandboxData = field(repr=False)
    population_url: str
    population_wsdl: str
    tthc_url: str
    faults: FaultPlan
    api_key: str | None = None
    _servers: list[tuple[WSGIServer, threading.Thread]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop both servers and close their sockets (idempotent)."""
        while self._servers:
            server, thread = self._servers.pop()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_sandbox(
    seed: int = 37,
    citizens: int = 2000,
    dossiers: int = 6000,
    host: str = "127.0.0.1",
    port_population: int = 0,
    port_tthc: int = 0,
    api_key: str | None = None,
    defect_rate: float = 0.01,
    data: SandboxData | None = None,
) -> SandboxHandle:
    """Generate the data and start both services (port 0 = pick a free port).

    Args:
        seed: Data seed (see :meth:`SandboxData.generate`).
        citizens: Number of citizens served over SOAP.
        dossiers: Number of dossiers served over REST.
        host: Interface to bind.
        port_population: SOAP port.
        port_tthc: REST port.
        api_key: Required ``X-API-Key`` for the REST data endpoint.
        defect_rate: Fraction of defective rows in each dataset.
        data: Serve this ground truth instead of generating it (tests use it to
            serve a changed snapshot of the same systems).

    Returns:
        A running :class:`SandboxHandle`; call ``stop()`` or use ``with``.
    """
    data = data or SandboxData.generate(seed, citizens, dossiers, defect_rate)
    faults = FaultPlan(seed=seed)
    handle = SandboxHandle(data, "", "", "", faults, api_key)
    try:
        pop = _serve(with_faults(make_population_app(data.citizens), faults), host, port_population, "population")
        handle._servers.append(pop)
        tthc = _serve(with_faults(make_tthc_app(data.dossiers, api_key), faults), host, port_tthc, "tthc")
        handle._servers.append(tthc)
    except BaseException:
        handle.stop()
        raise
    handle.population_url = f"http://{_url_host(host)}:{pop[0].server_port}/"
    handle.population_wsdl = handle.population_url + "?wsdl"
    handle.tthc_url = f"http://{_url_host(host)}:{tthc[0].server_port}"
    return handle
