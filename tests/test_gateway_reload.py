"""A running `lgsp serve` picks up a migrated shared column: `lgsp warehouse migrate` tells it to reload (SIGHUP),
its workers are replaced one by one with ones that read the catalog again, on a real PostgreSQL.

Before, a gateway kept the catalog and (on PostgreSQL) the prepared statements it started with, and its reads
of a dataset whose shared column changed type failed until it was restarted by hand.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

from airflow_helpers import BIN, REPO
from catalog import load_catalog
from gateway.serving import workers_of
from test_warehouse_migrate import typed_firm
from test_write_modes import batch, firms, write
from warehouse import Warehouse

pytestmark = pytest.mark.postgres

SHARED_FIRM = {"description": "Firms (a test dataset)", "owner": "test", "licence": "test", "access": "open",
               "columns": ["code", "employees", "updated_at"]}


def _catalog(folder: Path, kind: str) -> None:
    """The real catalog on disk, with `firm` (its `employees` of type `kind`) declared and shared openly."""
    if not folder.exists():
        shutil.copytree(REPO / "catalog", folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    datasets = yaml.safe_load((folder / "datasets.yaml").read_text())
    datasets["datasets"]["firm"] = json.loads(typed_firm(kind).model_dump_json(exclude_defaults=True))
    (folder / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    sharing = yaml.safe_load((folder / "sharing.yaml").read_text())
    sharing["sharing"]["firm"] = SHARED_FIRM
    (folder / "sharing.yaml").write_text(yaml.safe_dump(sharing, allow_unicode=True))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def lgsp_serve(env: dict[str, str], log_path: Path, workers: int = 2) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real `lgsp serve --workers N` on a free port, answering /health: (the process, its base URL); stopped
    (SIGTERM, then killed after 30 s) on leaving. Its output goes to `log_path` (a pipe nobody reads would fill
    and stop it)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        gateway = subprocess.Popen([str(BIN / "lgsp"), "serve", "--port", str(port), "--workers", str(workers)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if requests.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline and gateway.poll() is None, "the gateway did not start"
                time.sleep(0.2)
            yield gateway, base
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.kill()


def _employees(base: str) -> list[Any]:
    answer = requests.get(f"{base}/api/v1/datasets/firm/records", params={"limit": 5}, timeout=10)
    answer.raise_for_status()
    return [r["employees"] for r in answer.json()["records"]]


def _serving(base: str, expected: list[Any], kind: type, outcomes: Counter[str], timeout_s: float = 60) -> None:
    """Read firm until 20 reads in a row give `expected` as `kind` values; tally every answer's status."""
    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < 20:
        answer = requests.get(f"{base}/api/v1/datasets/firm/records", params={"limit": 5}, timeout=10)
        outcomes[str(answer.status_code)] += 1
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] == "2" and "definition changed" in answer.json()["error"]["message"]
        got = [r["employees"] for r in answer.json()["records"]] if answer.status_code == 200 else None
        streak = streak + 1 if got == expected and all(type(v) is kind for v in got) else 0
        assert time.monotonic() < deadline, f"the gateway never served {expected} ({outcomes})"
        time.sleep(0.05)


def test_a_migrated_shared_column_is_served_in_its_new_type_after_the_gateway_reloads(pg_url: str,
                                                                                         tmp_path: Path) -> None:
    folder, home = tmp_path / "catalog", tmp_path / "home"
    _catalog(folder, "string")
    env = {**os.environ, "LGSP_HOME": str(home), "LGSP_DATABASE_URL": pg_url, "LGSP_CATALOG_DIR": str(folder),
           "LGSP_GATEWAY_PSEUDONYM_KEY": "a-test-key-of-32-characters-long", "PYTHONPATH": str(REPO),
           "NO_COLOR": "1", "COLUMNS": "200", "LGSP_GATEWAY_ANONYMOUS_RATE_PER_S": "100000"}
    catalog = load_catalog(folder)
    wh = Warehouse(pg_url, catalog)
    wh.create_all()
    write(wh, catalog.datasets["firm"], batch([{**r, "employees": str(i)} for i, r in enumerate(firms())], "b1"))
    wh.engine.dispose()
    others: Counter[str] = Counter()
    stop = threading.Event()

    def read_others() -> None:  # another dataset, read throughout
        while not stop.is_set():
            try:
                others[str(requests.get(f"{base}/api/v1/datasets/enterprise", timeout=10).status_code)] += 1
            except requests.RequestException as exc:
                others[type(exc).__name__] += 1
            time.sleep(0.02)

    with lgsp_serve(env, tmp_path / "gateway.log") as (gateway, base):
        try:
            pid = int((home / "gateway.pid").read_text().split()[0])
            assert pid == gateway.pid  # the supervisor, which SIGHUP reloads
            before: Counter[str] = Counter()
            _serving(base, ["0", "1", "2", "3", "4"], str, before)  # and psycopg prepared its statements
            reader = threading.Thread(target=read_others)
            reader.start()

            replaced = set(workers_of(pid))
            _catalog(folder, "integer")  # 1. migrated here: `migrate` tells the gateway to reload
            migrated = subprocess.run([str(BIN / "lgsp"), "warehouse", "migrate", "firm"], env=env,
                                      capture_output=True, text=True, timeout=300)
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
            assert f"told the running gateway (pid {pid}) to reload" in " ".join(migrated.stdout.split())
            first: Counter[str] = Counter()
            _serving(base, [0, 1, 2, 3, 4], int, first)

            deadline = time.monotonic() + 90  # every worker is a new one (a busy machine drains the old ones slowly)
            while (now := set(workers_of(pid))) & replaced or len(now) < 2:
                assert time.monotonic() < deadline, f"the workers {replaced & now} were not replaced"
                time.sleep(0.2)
            for _ in range(80):  # psycopg prepares a statement on its 5th run on a connection: on each, surely
                assert _employees(base) == [0, 1, 2, 3, 4]
            _catalog(folder, "float")  # 2. migrated from another machine (no pid file): the workers notice
            elsewhere = {**env, "LGSP_HOME": str(tmp_path / "elsewhere")}
            migrated = subprocess.run([str(BIN / "lgsp"), "warehouse", "migrate", "firm"], env=elsewhere,
                                      capture_output=True, text=True, timeout=300)
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
            assert "reload `lgsp serve` now" in " ".join(migrated.stdout.split())
            second: Counter[str] = Counter()
            _serving(base, [0.0, 1.0, 2.0, 3.0, 4.0], float, second)
            assert second["503"] >= 1, second  # what made a worker ask for the reload
            stop.set()
            reader.join()
            for window in (first, second):  # a read in the moment before its worker was replaced: 503, retry
                assert set(window) <= {"200", "503"}, window
            assert set(others) == {"200"} and others["200"] > 10, others  # the other datasets: served throughout
            assert "asking lgsp serve" in (tmp_path / "gateway.log").read_text() and gateway.poll() is None
        finally:
            stop.set()
    assert not (home / "gateway.pid").exists()  # removed on the way out


def _workers(supervisor: int) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in workers_of(supervisor)]


def test_connections_waiting_for_a_killed_worker_are_served_by_the_next_one(pg_url: str, tmp_path: Path) -> None:
    """Each worker slot's listening socket is the supervisor's: a worker killed (or replaced) with connections
    in its queue hands them to the next worker of its slot. When each worker opened its own socket, they were
    reset as it closed ("connection reset by peer" for a client whose request was sent)."""
    env = {**os.environ, "LGSP_HOME": str(tmp_path / "home"), "LGSP_DATABASE_URL": pg_url, "PYTHONPATH": str(REPO),
           "LGSP_GATEWAY_PSEUDONYM_KEY": "a-test-key-of-32-characters-long", "NO_COLOR": "1"}
    with lgsp_serve(env, tmp_path / "gateway.log") as (gateway, base):
        workers = _workers(gateway.pid)
        assert len(workers) == 2, workers
        for worker in workers:
            worker.suspend()  # SIGSTOP: connections are accepted by the kernel and wait in the slots' queues
        answers: list[str] = []

        def ask() -> None:
            try:
                answers.append(str(requests.get(f"{base}/health", timeout=60).status_code))
            except requests.RequestException as exc:
                answers.append(type(exc).__name__)

        askers = [threading.Thread(target=ask) for _ in range(24)]  # 24 source ports: both slots have some
        for asker in askers:
            asker.start()
        time.sleep(1)
        assert answers == []  # all waiting
        for worker in workers:
            worker.kill()
        for asker in askers:
            asker.join()
        assert Counter(answers) == {"200": 24}, Counter(answers)
        assert gateway.poll() is None and "starting another on its socket" in (tmp_path / "gateway.log").read_text()
        replaced = _workers(gateway.pid)
        assert len(replaced) == 2 and not {p.pid for p in replaced} & {p.pid for p in workers}


def _holder(supervisor: int, client: socket.socket) -> psutil.Process:
    """The worker that accepted `client`'s connection."""
    local, deadline = client.getsockname()[1], time.monotonic() + 10
    while True:
        for worker in _workers(supervisor):
            if any(c.raddr and c.raddr.port == local for c in worker.net_connections("tcp")):
                return worker
        assert time.monotonic() < deadline, "no worker accepted the connection"
        time.sleep(0.05)


def _answer(client: socket.socket) -> bytes:
    """Send GET /health on `client`, read one answer (headers and its 15-byte body)."""
    client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}') and (chunk := client.recv(4096)):
        answer += chunk
    return answer


def test_a_stopping_worker_answers_the_requests_of_the_connections_it_holds(pg_url: str, tmp_path: Path) -> None:
    """A worker told to stop (a reload, SIGTERM) goes on answering, for a moment, the connections it holds: one
    it accepted that has not sent its request yet, and a kept-alive one; each answer says `Connection: close`,
    then the connection closes. uvicorn closed both at once: a client whose request was on its way got "remote
    end closed connection without response" or "connection reset by peer"."""
    env = {**os.environ, "LGSP_HOME": str(tmp_path / "home"), "LGSP_DATABASE_URL": pg_url, "PYTHONPATH": str(REPO),
           "LGSP_GATEWAY_PSEUDONYM_KEY": "a-test-key-of-32-characters-long", "NO_COLOR": "1"}
    with lgsp_serve(env, tmp_path / "gateway.log") as (gateway, base):
        port = int(base.rsplit(":", 1)[1])
        fresh = socket.create_connection(("127.0.0.1", port), timeout=30)
        worker, kept = _holder(gateway.pid, fresh), None
        for _ in range(40):  # another connection to the same worker (the kernel spreads them by address)
            candidate = socket.create_connection(("127.0.0.1", port), timeout=30)
            if _holder(gateway.pid, candidate).pid == worker.pid:
                kept = candidate
                break
            candidate.close()
        assert kept is not None
        try:
            first = _answer(kept)
            assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()  # kept alive
            worker.terminate()  # SIGTERM, as a reload sends it
            time.sleep(0.5)
            assert worker.is_running()  # still answering
            for client in (fresh, kept):
                answer = _answer(client)
                assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower(), answer
                assert client.recv(1) == b""  # then closed by the worker
        finally:
            fresh.close()
            kept.close()
        worker.wait(timeout=10)
        assert requests.get(f"{base}/health", timeout=30).status_code == 200  # the other worker, and the new one
