"""Run Airflow and the lgsp CLI in subprocesses with an isolated AIRFLOW_HOME / LGSP_HOME.

Airflow reads its configuration once per process, so every Airflow test runs
in a child process with its own environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def lgsp_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LGSP_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "LGSP_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "PYTHONPATH": str(REPO),  # the repository's packages, also ones newer than the editable install
        "GX_ANALYTICS_ENABLED": "False",
        "LGSP_POPULATION_PEAK_HOURS": "none",  # as in every test (conftest.py): timings that do not follow the clock
        "NO_COLOR": "1",
        "COLUMNS": "160",
    })
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    exe = cmd[0] if os.path.sep in cmd[0] else str(BIN / cmd[0])
    return subprocess.run([exe, *cmd[1:]], env=env, capture_output=True, text=True, timeout=timeout)


LINEAGE_COLUMNS = {"_batch_id", "_loaded_at"}  # which batch wrote a row and when: differ between two runs


def warehouse_snapshot(url: str, dataset: str, pipeline: str) -> dict[str, object]:
    """What a sync left in the warehouse, comparable across runs: the core rows (content and row hash,
    without the batch id and load time), the quarantined rows, and the pipeline's cursor."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            table = sa.Table(f"core_{dataset}", sa.MetaData(), autoload_with=conn)
            columns = [c for c in table.c if c.name not in LINEAGE_COLUMNS]
            rows = sorted(tuple(str(v) for v in r) for r in conn.execute(sa.select(*columns)))
            quarantine = sorted(conn.execute(sa.text(
                "select rule, record_key, payload from lgsp_quarantine where dataset = :d"), {"d": dataset}).all())
            cursor = conn.execute(sa.text("select cursor_value from lgsp_cursor where pipeline = :p"),
                                  {"p": pipeline}).scalar()
    finally:
        engine.dispose()
    return {"columns": [c.name for c in columns], "rows": rows, "quarantine": [tuple(q) for q in quarantine],
            "cursor": str(cursor)[:19] if cursor is not None else None}


def snapshot_diff(one: dict[str, Any], other: dict[str, Any], limit: int = 5) -> list[tuple[str, str, str, str]]:
    """The first differing (row key, column, value in one, value in other) of two snapshots, for a failure."""
    columns = list(one["columns"])
    mine = {row[0]: row for row in one["rows"]}  # type: ignore[union-attr]
    theirs = {row[0]: row for row in other["rows"]}  # type: ignore[union-attr]
    found = [(key, "(row)", "present" if key in mine else "-", "present" if key in theirs else "-")
             for key in sorted(set(mine) ^ set(theirs))]
    for key in sorted(set(mine) & set(theirs)):
        found += [(key, col, a, b) for col, a, b in zip(columns, mine[key], theirs[key]) if a != b]
    return found[:limit]


class WebhookSink:
    """A loopback HTTP server that keeps every JSON body POSTed to it (the alert webhook in tests)."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[dict[str, object]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lgsp"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """A loopback SMTP server (just enough of RFC 5321) that keeps every message it is given."""

    def __init__(self) -> None:
        import socketserver
        import threading
        from email import message_from_bytes
        from email.message import Message

        messages: list[Message] = []

        class Session(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 sink ESMTP")
                while line := self.rfile.readline():
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        self.reply("354 go ahead")
                        body = b"".join(iter(self.rfile.readline, b".\r\n"))
                        messages.append(message_from_bytes(body))
                        self.reply("250 queued")
                    elif verb == b"QUIT":
                        self.reply("221 bye")
                        return
                    elif verb == b"EHLO":
                        self.reply("250 sink")
                    else:
                        self.reply("250 ok")

        self.messages = messages
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Session)
        self.server.daemon_threads = True
        self.host, self.port = "127.0.0.1", self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self, to: str = "ops@ninhbinh.gov.vn") -> dict[str, str]:
        return {"LGSP_ALERT_SMTP_HOST": self.host, "LGSP_ALERT_SMTP_PORT": str(self.port), "LGSP_ALERT_EMAIL_TO": to}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def airflow_stack(env: dict[str, str], home: Path, *options: str, timeout: float = 240) -> Iterator[Any]:
    """`lgsp airflow start` in its own process group; yields an AirflowApi once every component is healthy.

    On exit: SIGTERM to `lgsp airflow start` (it stops its components), then SIGKILL to every process group
    it started (listed in <home>/airflow/stack.pids) and to its own.
    """
    import json
    import signal
    import time

    from lgsp.orchestration import AirflowApi, free_port

    port = free_port()
    log_path = home / "airflow-start.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN / "lgsp"), "airflow", "start", "--port", str(port), *options], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while "Airflow is up" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, f"lgsp airflow start exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"Airflow not up after {timeout}s:\n{log_path.read_text()[-4000:]}"
            time.sleep(2)
        yield AirflowApi(f"http://127.0.0.1:{port}", home / "airflow")
    finally:
        _stop_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        pids_file = home / "airflow" / "stack.pids"
        pids = list(json.loads(pids_file.read_text()).values()) if pids_file.exists() else []
        for pid in [*pids, proc.pid]:
            _stop_group(pid, signal.SIGKILL)
        proc.wait()


def _stop_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def leftover_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment mentions `marker` (a test's unique home): must be none."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            zombie = (entry / "stat").read_text().split()[2] == "Z"
            if marker.encode() in (entry / "environ").read_bytes() and not zombie:
                found.append(int(entry.name))
        except OSError:
            continue
    return found
