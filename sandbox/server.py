"""Run every simulated system on its own loopback server, in background threads.

Example:
    >>> with start_sandbox(seed=37, citizens=300, dossiers=500, api_key="k") as sb:
    ...     sb.urls["land"]                  # 'http://127.0.0.1:41236'
    ...     sb.urls["civil_status"]          # 'http://127.0.0.1:41237/?wsdl'
    ...     sb.faults.error_rate = 0.2       # every system, from the next request
    ...     sb.faults["business"].throttle_rate = 0.5
    ...     os.environ.update(sb.env())      # points lgsp's catalog at this sandbox
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sandbox.business_rest import make_business_app
from sandbox.civil_servants_rest import make_civil_servants_app
from sandbox.civil_status_soap import household_register, make_civil_status_app
from sandbox.data import SandboxData
from sandbox.documents_rest import make_documents_app
from sandbox.dvcqg_rest import DvcqgState, make_dvcqg_app
from sandbox.faults import ABORT_ENVIRON_KEY, FaultBoard, FaultPlan, WsgiApp, plan_seed, with_faults
from sandbox.health_insurance_rest import make_health_insurance_app
from sandbox.land_rest import LandApp, make_land_app
from sandbox.population_soap import make_population_app
from sandbox.reporting_soap import ReportingInbox, make_reporting_app
from sandbox.tls import TlsFiles, make_test_pki, server_context
from sandbox.tthc_rest import make_tthc_app

SYSTEMS = ("population", "tthc", "civil_status", "land", "business", "civil_servants",
           "dvcqg", "documents", "reporting", "health_insurance")
"""Every simulated system, in start order (the catalog's system names)."""
SOAP_SYSTEMS = frozenset({"population", "civil_status", "reporting"})
TLS_SYSTEMS = frozenset({"civil_servants"})
CONNECTION_TIMEOUT_S = 30.0
"""Idle socket timeout per connection (a stuck client cannot pin a thread forever)."""
UNCHECKED_TTHC_KEY = "sandbox-tthc-key"
"""``LGSP_TTHC_API_KEY`` when the TTHC service checks no key (``api_key=None``)."""


@dataclass(frozen=True)
class SandboxCredentials:
    """What each system accepts: fixed test values derived from the seed (never real secrets).

    Example:
        >>> creds = SandboxCredentials.for_seed(37)
        >>> creds.land_client_id, creds.env()["LGSP_LAND_CLIENT_SECRET"][:4]
        ('lgsp-land', 'sbx-')
    """

    tthc_api_key: str | None
    civil_status_user: str
    civil_status_password: str
    land_client_id: str
    land_client_secret: str
    business_user: str
    business_password: str
    dvcqg_user: str
    dvcqg_password: str
    documents_token: str
    reporting_user: str
    reporting_password: str
    health_insurance_api_key: str

    @classmethod
    def for_seed(cls, seed: int, tthc_api_key: str | None = None) -> SandboxCredentials:
        """Seed-derived credentials; ``tthc_api_key`` keeps its meaning (``None``: TTHC checks no key)."""
        def secret(system: str) -> str:
            return "sbx-" + hashlib.sha256(f"lgsp-sandbox/{seed}/{system}".encode()).hexdigest()[:24]

        return cls(tthc_api_key, "lgsp-hotich", secret("civil_status"), "lgsp-land", secret("land"),
                   "lgsp", secret("business"), "lgsp", secret("dvcqg"), secret("documents"),
                   "lgsp-baocao", secret("reporting"), secret("health_insurance"))

    def env(self) -> dict[str, str]:
        """The credential half of :meth:`SandboxHandle.env`."""
        return {
            "LGSP_TTHC_API_KEY": self.tthc_api_key or UNCHECKED_TTHC_KEY,
            "LGSP_CIVIL_STATUS_USER": self.civil_status_user,
            "LGSP_CIVIL_STATUS_PASSWORD": self.civil_status_password,
            "LGSP_LAND_CLIENT_ID": self.land_client_id, "LGSP_LAND_CLIENT_SECRET": self.land_client_secret,
            "LGSP_BUSINESS_USER": self.business_user, "LGSP_BUSINESS_PASSWORD": self.business_password,
            "LGSP_DVCQG_USER": self.dvcqg_user, "LGSP_DVCQG_PASSWORD": self.dvcqg_password,
            "LGSP_DOCUMENTS_TOKEN": self.documents_token,
            "LGSP_REPORTING_USER": self.reporting_user, "LGSP_REPORTING_PASSWORD": self.reporting_password,
            "LGSP_HEALTH_INSURANCE_API_KEY": self.health_insurance_api_key,
        }

    def __repr__(self) -> str:
        return "SandboxCredentials(<redacted>)"


@dataclass
class _Apps:
    """The WSGI app of every system, plus the objects tests inspect."""

    wsgi: dict[str, WsgiApp]
    land: LandApp
    reporting_inbox: ReportingInbox
    dvcqg: DvcqgState
    households: Any


def _build_apps(data: SandboxData, creds: SandboxCredentials) -> _Apps:
    land = make_land_app(data.land_parcels, creds.land_client_id, creds.land_client_secret)
    inbox = ReportingInbox()
    dvcqg = DvcqgState(data.procedures, creds.dvcqg_user, creds.dvcqg_password)
    households = household_register(data.household_members)
    wsgi: dict[str, WsgiApp] = {
        "population": make_population_app(data.citizens),
        "tthc": make_tthc_app(data.dossiers, creds.tthc_api_key),
        "civil_status": make_civil_status_app(data.civil_status_events, creds.civil_status_user,
                                              creds.civil_status_password, households),
        "land": land,
        "business": make_business_app(data.enterprises, creds.business_user, creds.business_password),
        "civil_servants": make_civil_servants_app(data.civil_servants),
        "dvcqg": make_dvcqg_app(dvcqg),
        "documents": make_documents_app(data.documents, creds.documents_token),
        "reporting": make_reporting_app(inbox, creds.reporting_user, creds.reporting_password),
        "health_insurance": make_health_insurance_app(data.health_insurance_cards, creds.health_insurance_api_key),
    }
    return _Apps(wsgi, land, inbox, dvcqg, households)


class SandboxServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref server: a daemon thread per request, optional TLS, quiet about dropped clients."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is not None:  # handshake later, in the request thread
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # refused TLS handshakes, clients that hung up
            return
        super().handle_error(request, client_address)


class SandboxRequestHandler(WSGIRequestHandler):
    """Request handler without access log, doing TLS handshakes and injected resets.

    The fault middleware calls ``environ[ABORT_ENVIRON_KEY]()``; the connection
    is then closed with ``SO_LINGER (1, 0)``, so the client gets a TCP RST.
    """

    timeout = CONNECTION_TIMEOUT_S
    _reset = False

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(CONNECTION_TIMEOUT_S)
            self.request.do_handshake()
        super().setup()

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[ABORT_ENVIRON_KEY] = self._request_reset
        return environ

    def _request_reset(self) -> None:
        self._reset = True

    def finish(self) -> None:
        if self._reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            super().finish()
        finally:
            if self._reset:
                self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve_wsgi(app: WsgiApp, host: str = "127.0.0.1", port: int = 0, name: str = "app",
               ssl_context: ssl.SSLContext | None = None) -> tuple[SandboxServer, threading.Thread]:
    """Serve ``app`` on ``host:port`` (0 = free port) in a daemon thread.

    Returns:
        ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.
    """
    server = make_server(host, port, app, server_class=SandboxServer, handler_class=SandboxRequestHandler)
    if ssl_context is not None:
        server.ssl_context = ssl_context
        server.base_environ["HTTPS"] = "on"  # wsgi.url_scheme = 'https'
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
        data: The ground truth every service serves.
        faults: :class:`FaultBoard`; ``faults["land"]`` is one system's plan.
        urls: ``{system: url}``: SOAP -> WSDL URL (``'http://127.0.0.1:41234/?wsdl'``),
            REST -> base URL without trailing slash (civil_servants is ``https://``).
        credentials: The credentials every system accepts.
        tls: PKI of the mutual-TLS service (``ca_cert``, ``client_cert``, ``client_key``).
        api_key: The TTHC ``X-API-Key`` (``None``: TTHC checks no key).
        land: The land app (``land.token_ttl_s`` may be changed while running).
        reporting_inbox: What the reporting SOAP service received.
        dvcqg: The DVCQG portal state (sessions, pushed dossiers and progress).
        households: The civil-status registry's household memberships as served (``households.correct(key,
            relation="spouse")`` corrects one row, as the registry's staff would).
        population_url: SOAP endpoint, e.g. ``'http://127.0.0.1:41234/'``.
        population_wsdl: ``population_url + '?wsdl'``.
        tthc_url: TTHC REST base URL.
    """

    data: SandboxData = field(repr=False)
    faults: FaultBoard
    credentials: SandboxCredentials = field(repr=False)
    tls: TlsFiles = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    urls: dict[str, str] = field(default_factory=dict)
    land: LandApp | None = field(default=None, repr=False)
    reporting_inbox: ReportingInbox | None = field(default=None, repr=False)
    dvcqg: DvcqgState | None = field(default=None, repr=False)
    households: Any = field(default=None, repr=False)
    _servers: list[tuple[SandboxServer, threading.Thread]] = field(default_factory=list, repr=False)

    @property
    def population_url(self) -> str:
        return self.urls["population"].removesuffix("?wsdl")

    @property
    def population_wsdl(self) -> str:
        return self.urls["population"]

    @property
    def tthc_url(self) -> str:
        return self.urls["tthc"]

    def env(self) -> dict[str, str]:
        """Every ``LGSP_*`` variable that points lgsp's catalog at this sandbox (contains secrets)."""
        return {**self.credentials.env(), **{
            "LGSP_POPULATION_WSDL": self.urls["population"], "LGSP_TTHC_URL": self.urls["tthc"],
            "LGSP_CIVIL_STATUS_WSDL": self.urls["civil_status"], "LGSP_LAND_URL": self.urls["land"],
            "LGSP_BUSINESS_URL": self.urls["business"], "LGSP_CIVIL_SERVANTS_URL": self.urls["civil_servants"],
            "LGSP_CIVIL_SERVANTS_CERT": self.tls.client_cert, "LGSP_CIVIL_SERVANTS_KEY": self.tls.client_key,
            "LGSP_CIVIL_SERVANTS_CA": self.tls.ca_cert, "LGSP_DVCQG_URL": self.urls["dvcqg"],
            "LGSP_DOCUMENTS_URL": self.urls["documents"], "LGSP_REPORTING_WSDL": self.urls["reporting"],
            "LGSP_HEALTH_INSURANCE_URL": self.urls["health_insurance"],
        }}

    def stop(self) -> None:
        """Stop every server, close the sockets, delete the PKI (idempotent)."""
        servers, self._servers = self._servers, []
        stoppers = [threading.Thread(target=server.shutdown, daemon=True) for server, _ in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper, (server, thread) in zip(stoppers, servers):
            stopper.join(timeout=5)
            server.server_close()
            thread.join(timeout=5)
        if self.tls is not None:
            shutil.rmtree(self.tls.directory, ignore_errors=True)

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
    sizes: dict[str, int] | None = None,
    *,
    ports: dict[str, int] | None = None,
    credentials: SandboxCredentials | None = None,
) -> SandboxHandle:
    """Generate the data and start every system (port 0 = pick a free port).

    Args:
        seed: Data seed (see :meth:`SandboxData.generate`); also derives the
            credentials and each system's fault seed.
        citizens: Number of citizens served over SOAP.
        dossiers: Number of dossiers served over REST.
        host: Interface to bind.
        port_population: Population SOAP port.
        port_tthc: TTHC REST port.
        api_key: Required TTHC ``X-API-Key`` (``None``: no check).
        defect_rate: Fraction of defective rows in each dataset.
        data: Serve this ground truth instead of generating it (tests use it to
            serve a changed snapshot of the same systems).
        sizes: Row counts of the other datasets, e.g. ``{"land_parcel": 50}``.
        ports: Ports of other systems, e.g. ``{"land": 8013}``.
        credentials: Use these instead of the seed-derived ones (``api_key``, if
            given, still sets the TTHC key).

    Returns:
        A running :class:`SandboxHandle`; call ``stop()`` or use ``with``.
    """
    data = data or SandboxData.generate(seed, citizens, dossiers, defect_rate, sizes)
    creds = SandboxCredentials.for_seed(seed, api_key) if credentials is None else credentials
    if credentials is not None and api_key is not None:
        creds = replace(credentials, tthc_api_key=api_key)
    ports = {**(ports or {}), "population": port_population or (ports or {}).get("population", 0),
             "tthc": port_tthc or (ports or {}).get("tthc", 0)}
    plans = {name: FaultPlan(seed=plan_seed(seed, name)) for name in SYSTEMS}
    tls = make_test_pki(tempfile.mkdtemp(prefix="lgsp-sandbox-tls-"), host)
    handle = SandboxHandle(data, FaultBoard(plans), creds, tls, api_key=creds.tthc_api_key)
    try:
        apps = _build_apps(data, creds)
        handle.land, handle.reporting_inbox, handle.dvcqg = apps.land, apps.reporting_inbox, apps.dvcqg
        handle.households = apps.households
        for name in SYSTEMS:
            tls_context = server_context(tls) if name in TLS_SYSTEMS else None
            server, thread = serve_wsgi(with_faults(apps.wsgi[name], plans[name]), host, ports.get(name, 0),
                                        name, tls_context)
            handle._servers.append((server, thread))
            base = f"{'https' if tls_context else 'http'}://{_url_host(host)}:{server.server_port}"
            handle.urls[name] = f"{base}/?wsdl" if name in SOAP_SYSTEMS else base
    except BaseException:
        handle.stop()
        raise
    return handle
