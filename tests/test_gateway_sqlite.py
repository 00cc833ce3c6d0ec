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
from test_gateway import _pseudonym, _start

KEY = "test-pseudonym-key-not-a-secret"


@pytest.fixture(scope="module")
def sqlite_gateway(sandbox_handle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from connectors.limits import reset_limits

    home = tmp_path_factory.mktemp("gateway-sqlite")
    url = f"sqlite:///{home / 'warehouse.db'}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in sandbox_handle.env().items():
            env.setenv(name, value)
        env.setenv("LGSP_HOME", str(home))
        env.setenv("LGSP_DATABASE_URL", url)
        env.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", KEY)
        sandbox_handle.faults.clear()
        reset_limits()
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
