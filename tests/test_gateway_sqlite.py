"""The gateway on the embedded default (SQLite), driven through the `lgsp` commands an operator uses.

`lgsp agencies ...` registers an agency, issues its key and grants a dataset; the gateway
serves the same code as on PostgreSQL (uvicorn in a thread, real HTTP on loopback);
`lgsp audit verify` fails on an edited row. Also: a query past its time limit is
cancelled with a clear 503, never a stack trace.
"""
from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from catalog import load_catalog
from gateway.api import create_app
from gateway.service import prepare_database
from gateway.settings import GatewayConfigError, load_gateway_settings
from lgsp import runner
from lgsp.cli import app as lgsp_app
from test_gateway import _pseudonym, _start, gateway_env

KEY = "test-pseudonym-key-not-a-secret"


@pytest.fixture(scope="module")
def sqlite_gateway(sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("gateway-sqlite")
    url = f"sqlite:///{home / 'warehouse.db'}"
    with gateway_env(sandbox_handle, home, url):
        runner.run_pipeline("population_citizens")
        prepare_database(url, load_catalog())
        cli = CliRunner()
        for command in (["agencies", "add", "so_y_te", "Sở Y tế"], ["agencies", "grant", "so_y_te", "citizen"],
                        ["agencies", "add", "so_gd_dt", "Sở Giáo dục và Đào tạo"]):
            result = cli.invoke(lgsp_app, command)
            assert result.exit_code == 0, result.output
        keys = {a: cli.invoke(lgsp_app, ["agencies", "key", a]).stdout.strip().splitlines()[-1]
                for a in ("so_y_te", "so_gd_dt")}
        server, thread, base = _start(create_app(dataclasses.replace(load_gateway_settings(url),
                                                                     principal_cache_s=0.0)))
        try:
            yield {"base": base, "keys": keys, "database": home / "warehouse.db", "cli": cli, "url": url}
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def _get(gw: dict[str, Any], path: str, agency: str | None = None, **params: Any) -> requests.Response:
    headers = {"X-API-Key": gw["keys"][agency]} if agency else {}
    return requests.get(gw["base"] + path, params=params, headers=headers, timeout=30)


def test_agencies_cli_keys_grants_and_masking_on_sqlite(sqlite_gateway: dict[str, Any]) -> None:
    gw = sqlite_gateway
    assert all(key.startswith("lgsp_") for key in gw["keys"].values())
    with sqlite3.connect(gw["database"]) as conn:
        truth = [r[0] for r in conn.execute("SELECT personal_id FROM shared_citizen")]
        stored = [r[0] for r in conn.execute("SELECT secret_sha256 FROM gateway_credential")]
    assert not any(key in stored for key in gw["keys"].values())  # only hashes are stored
    body = _get(gw, "/api/v1/datasets/citizen/records", "so_y_te", limit=1000, sort="-birth_date")
    assert body.status_code == 200
    assert sorted(r["personal_id"] for r in body.json()["records"]) == sorted(_pseudonym(p) for p in truth)
    assert _get(gw, "/api/v1/datasets/citizen/records", "so_gd_dt").status_code == 403
    listing = gw["cli"].invoke(lgsp_app, ["agencies", "list"])
    assert "so_y_te" in listing.stdout and "citizen" in listing.stdout
    assert not any(key in listing.stdout for key in gw["keys"].values())
    audit = gw["cli"].invoke(lgsp_app, ["audit", "list", "--agency", "so_gd_dt"])
    assert "403" in audit.stdout


def test_audit_verify_fails_on_an_edited_row_on_sqlite(sqlite_gateway: dict[str, Any]) -> None:
    gw = sqlite_gateway
    _get(gw, "/api/v1/datasets/citizen/records", "so_y_te", limit=5)
    assert gw["cli"].invoke(lgsp_app, ["audit", "verify"]).exit_code == 0
    with sqlite3.connect(gw["database"]) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE gateway_audit SET agency_id = 'someone_else' WHERE seq = 1")
        conn.execute("DROP TRIGGER gateway_audit_no_update")  # someone with the rights to drop the trigger
        conn.execute("UPDATE gateway_audit SET agency_id = 'someone_else' WHERE seq = 1")
    result = gw["cli"].invoke(lgsp_app, ["audit", "verify"])
    assert result.exit_code == 1
    assert "row 1: content does not match its hash (edited)" in result.stdout


def test_a_slow_query_is_cancelled_with_a_clear_503(sqlite_gateway: dict[str, Any]) -> None:
    gw = sqlite_gateway
    settings = dataclasses.replace(load_gateway_settings(gw["url"]), query_timeout_s=1e-9)
    server, thread, base = _start(create_app(settings))
    try:
        response = requests.get(base + "/api/v1/datasets/citizen/records", params={"q": "nguyễn", "limit": 1000},
                                headers={"X-API-Key": gw["keys"]["so_y_te"]}, timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert response.status_code == 503
    assert "longer than" in response.json()["error"]["message"] and "Traceback" not in response.text


def test_serve_refuses_to_start_without_the_pseudonym_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LGSP_GATEWAY_PSEUDONYM_KEY", raising=False)
    with pytest.raises(GatewayConfigError, match="LGSP_GATEWAY_PSEUDONYM_KEY"):
        load_gateway_settings(f"sqlite:///{tmp_path / 'w.db'}")
    result = CliRunner().invoke(lgsp_app, ["serve"])
    assert result.exit_code == 1 and "LGSP_GATEWAY_PSEUDONYM_KEY" in result.stdout


def test_serve_with_two_workers_spreads_connections_over_both(sqlite_gateway: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`lgsp serve --workers 2`: a listening socket per worker (SO_REUSEPORT), so keep-alive connections land on
    both workers rather than mostly on whichever accepted first; a second server on the same port is refused."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import psutil

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LGSP_HOME": str(sqlite_gateway["database"].parent), "LGSP_DATABASE_URL": sqlite_gateway["url"],
           "LGSP_GATEWAY_PSEUDONYM_KEY": KEY}
    lgsp = str(Path(sys.executable).parent / "lgsp")
    server = subprocess.Popen([lgsp, "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline:
            workers = [p for p in psutil.Process(server.pid).children(recursive=True)
                       if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp"))]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2
        listening = {os.readlink(f"/proc/{w.pid}/fd/{c.fd}") for w in workers for c in w.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert len(listening) == 2, "each worker listens on a socket of its own (not one inherited socket)"
        time.sleep(1.0)  # both serving
        for _ in range(40):  # a burst of keep-alive connections, each used once
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        held = [sum(1 for c in worker.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED
                    and c.laddr.port == port) for worker in workers]
        assert sum(held) == 40 and min(held) >= 8, held  # binomial(40, 1/2): below 8 has odds of 1 in 100,000

        second = subprocess.run([lgsp, "serve", "--port", str(port), "--workers", "2"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1 and "cannot listen on 127.0.0.1" in second.stdout
    finally:
        for client in clients:
            client.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
