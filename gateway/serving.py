"""`lgsp serve --workers N` on Linux: uvicorn's workers, each on a listening socket of its own slot (SO_REUSEPORT),
under a supervisor which holds the sockets and which SIGHUP makes replace the workers one by one
(`reload_running`) without a connection refused or reset."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

logger = logging.getLogger("uvicorn.error")


class ListenError(OSError):
    """The gateway cannot listen on its address; the message says which and why."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on its way out (a reload, SIGTERM) first stops accepting, then for up to
    `drain_s` goes on answering the connections it has, each answer saying `Connection: close` (the client
    opens its next connection to another worker), before uvicorn closes what is left and finishes the
    requests in progress.

    uvicorn closed every connection without a request in progress at once: one accepted an instant before,
    its request on the way, and a client's kept-alive connection, its next request on the way. Either
    client, whose request was sent, got "connection reset by peer" or "remote end closed connection
    without response" during a reload (`benchmarks/gateway_reload.py`).
    """

    drain_s = 2.0
    draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.config.loaded:
            self.config.load()
        self.config.loaded_app = _CloseWhenDraining(self.config.loaded_app, self)
        await super().serve(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.draining = True
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_s
        await asyncio.sleep(0.05)  # a connection accepted just now is handed to its protocol
        while self.server_state.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


class _CloseWhenDraining:
    """The app, whose answers say `Connection: close` once its server drains (uvicorn then closes the
    connection after the answer)."""

    def __init__(self, app: Any, server: DrainingServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.server.draining or scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, closing)


class SlotWorker(multiprocess.Process):
    """A uvicorn worker serving one slot's socket, stopping as `DrainingServer` does."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class SlotSupervisor(multiprocess.Multiprocess):
    """uvicorn's worker supervisor (restarts, health checks, SIGHUP replaces each worker after its
    replacement is ready, SIGTTIN/SIGTTOU add or remove one), with a listening socket per worker slot,
    all on one address (SO_REUSEPORT), opened and held by the supervisor.

    With one socket shared by the workers (uvicorn's way), whichever worker is idle when a burst of
    connections arrives accepts most of them, and keep-alive clients stay where they landed: under load
    one worker had most of the connections and a full core while the other idled. With a socket per
    worker the kernel spreads new connections over them by a hash of their addresses.

    The sockets are the supervisor's, not the workers': a worker replaced, restarted or killed closes
    only its copy, and the connections waiting in its slot's queue are accepted by the next worker of
    the slot. (A socket closed with connections in its queue resets them; when each worker opened its
    own, a reload reset the few connections that arrived in the instant its old worker stopped.)
    """

    ready_timeout_s = 90.0

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config, sockets=[])
        self.slots: list[socket.socket] = []

    def _start(self, slot: int) -> SlotWorker:
        while len(self.slots) <= slot:
            self.slots.append(_reuse_port_socket(self.config.host, self.config.port))
        worker = SlotWorker(self.config, [self.slots[slot]])
        worker.start()
        return worker

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(self.processes_num)]

    def restart_all(self) -> None:
        """Replace each worker, its replacement started and ready before the old one stops. A replacement gets
        `ready_timeout_s` to start (uvicorn gives it its 5 s health check: under load a worker took longer to
        import, the reload was abandoned and the workers not yet replaced kept the old catalog)."""
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(max(self.ready_timeout_s, self.config.timeout_worker_healthcheck),
                                        self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    logger.error(f"New worker [{new.pid}] was not ready in {self.ready_timeout_s:.0f} s; keeping "
                                 f"worker [{old.pid}] and the others not yet replaced: send SIGHUP again")
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def keep_subprocess_alive(self) -> None:
        for slot, worker in enumerate(self.processes):
            if self.should_exit.is_set():
                return  # the supervisor is stopping: no new workers
            if worker.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            worker.kill()  # hung, or gone
            worker.join()
            if worker.exitcode == STARTUP_FAILURE:  # the app cannot start: every new worker would fail alike
                logger.error(f"Worker [{worker.pid}] failed to start, stopping the gateway.")
                self.should_exit.set()
                return
            logger.info(f"Worker [{worker.pid}] died; starting another on its socket")
            self.processes[slot] = self._start(slot)

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN: one more worker")
        self.processes_num += 1
        self.processes.append(self._start(len(self.processes)))

    def handle_ttou(self) -> None:
        if self.processes_num <= 1:
            logger.info("Received SIGTTOU: one worker left, kept")
            return
        logger.info("Received SIGTTOU: one worker fewer (connections waiting for it are reset)")
        self.processes_num -= 1
        worker = self.processes.pop()
        worker.terminate()
        worker.join()
        self.slots.pop().close()

    def close_slots(self) -> None:
        for sock in self.slots:
            sock.close()
        self.slots.clear()


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """Bound, not listening: its first worker makes it listen (until then a connection is refused, not kept
    waiting for a worker still starting); from then on it listens until the supervisor closes it."""
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


def workers_of(supervisor: int) -> set[int]:
    """The pids of the live workers of `lgsp serve`'s supervisor `supervisor` (not multiprocessing's resource
    tracker, not a worker that exited and was not yet reaped)."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return set()
    found = set()
    for child in children:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state != "Z" and b"resource_tracker" not in command:
            found.add(int(child))
    return found


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
    """The gateway's workers under `SlotSupervisor`, each on its slot's socket.

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
    supervisor = SlotSupervisor(config)
    with _pid_written(config):
        try:
            supervisor.run()
        except KeyboardInterrupt:
            pass
        finally:
            supervisor.close_slots()


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
