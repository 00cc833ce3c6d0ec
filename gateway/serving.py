"""`lgsp serve --workers N` on Linux: uvicorn's workers, each listening on a socket of its own (SO_REUSEPORT),
under uvicorn's supervisor, which SIGHUP makes replace them one by one (`reload_running`)."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from uvicorn.supervisors import multiprocess


class ListenError(OSError):
    """The gateway cannot listen on its address; the message says which and why."""


class ReusePortProcess(multiprocess.Process):
    """A uvicorn worker listening on a socket of its own (SO_REUSEPORT on the same address).

    With one listening socket shared by the workers (uvicorn's way), whichever worker is idle
    when a burst of connections arrives accepts most of them, and keep-alive clients stay where
    they landed: under load one worker had most of the connections and a full core while the
    other idled. With a socket per worker the kernel spreads new connections over the workers by
    a hash of their addresses.
    """

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover - in the worker
        super().target([_reuse_port_socket(self.config.host, self.config.port)])


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def pid_file() -> Path:
    """Where a running `lgsp serve` keeps its supervisor's pid and address: `$LGSP_HOME/gateway.pid`."""
    from lgsp.settings import load_settings

    return load_settings().home / "gateway.pid"


def reload_running() -> int | None:
    """Tell the `lgsp serve` of this LGSP_HOME, if one runs, to replace its workers (SIGHUP); its pid, or None.

    The supervisor starts each new worker, waits until it answers, then stops the old one: requests go on
    being served, and the new workers read the catalog and open their connections afresh (after
    `lgsp warehouse migrate` changed a shared column's type, or an edit of catalog/sharing.yaml).
    """
    try:
        pid = int(pid_file().read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # none running here
    if not is_lgsp_serve(pid):
        return None  # the file is stale, its pid gone or reused by another program
    os.kill(pid, signal.SIGHUP)
    return pid


def is_lgsp_serve(pid: int) -> bool:
    """Whether process `pid` is an `lgsp serve` (its command line: .../lgsp serve ...)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in command and any(part.endswith(b"lgsp") for part in command)


@contextmanager
def _pid_written(config: uvicorn.Config) -> Iterator[None]:
    path = pid_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n{config.host}:{config.port}\n")
    try:
        yield
    finally:
        try:
            if path.read_text().split()[0] == str(os.getpid()):
                path.unlink()
        except (OSError, IndexError):
            pass


def serve_reuse_port(config: uvicorn.Config) -> None:
    """uvicorn's worker supervisor (restarts, signals, health checks), each worker with its own socket.

    The supervisor's pid is written to `pid_file()` while it runs: SIGHUP to it replaces the workers one
    by one (`reload_running`).

    Raises:
        ListenError: the address is taken.
    """
    try:  # the address must be free: not even another gateway's SO_REUSEPORT sockets (we would share its port)
        with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((config.host, config.port))
    except OSError as exc:
        raise ListenError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    multiprocess.Process = ReusePortProcess  # type: ignore[misc] # the supervisor builds its workers by this name
    with _pid_written(config):
        try:
            multiprocess.Multiprocess(config, sockets=[]).run()
        except KeyboardInterrupt:
            pass


def start_in_thread(app: object, timeout_s: float = 30.0) -> tuple[uvicorn.Server, threading.Thread, str]:
    """`app` served by uvicorn in a daemon thread on a free loopback port: (server, thread, base URL).

    For the demo (and the tests): stop it with `server.should_exit = True` and `thread.join()`.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the gateway did not start in this process")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def in_thread(app: object) -> Iterator[str]:
    """`start_in_thread` as a context: the base URL; the server stopped on leaving."""
    server, thread, base = start_in_thread(app)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
