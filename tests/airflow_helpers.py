"""Run Airflow and the lgsp CLI in subprocesses with an isolated AIRFLOW_HOME / LGSP_HOME.

Airflow reads its configuration once per process, so every Airflow test runs
in a child process with its own environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    return {"rows": rows, "quarantine": [tuple(q) for q in quarantine],
            "cursor": str(cursor)[:19] if cursor is not None else None}


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
