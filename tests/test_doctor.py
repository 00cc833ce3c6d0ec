"""`lgsp doctor`: a machine set up for the sandbox (real store on SQLite and PostgreSQL, real lake, the sandbox's
secrets and TLS files) passes; each broken part is named with what to do, and no secret is printed."""
from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from lgsp import backup
from lgsp.doctor import examine
from warehouse.store import make_engine


def _doctor(*args: str) -> tuple[int, Any]:
    from lgsp.cli import app

    result = CliRunner().invoke(app, ["doctor", *args])
    return result.exit_code, json.loads(result.stdout) if "--json" in args else " ".join(result.output.split())


def _states(found: list[Any]) -> dict[tuple[str, str], str]:
    return {(c.area, c.subject): c.state for c in found}


def test_a_machine_set_up_for_the_sandbox_passes_and_says_what_it_checked(
        lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from catalog import load_catalog
    from warehouse import Warehouse

    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "doctor-test-key-not-secret")
    if lgsp_env.database_url.startswith("postgresql"):  # production: Airflow's metadata on PostgreSQL too
        monkeypatch.setenv("LGSP_AIRFLOW_DATABASE_URL", lgsp_env.database_url)
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    wh.create_all()
    wh.engine.dispose()
    backup.create()
    code, report = _doctor("--json")
    problems = [c for c in report["checks"] if c["state"] != "ok" and c["area"] != "disk"]
    assert (code, report["ok"], problems) == (0, True, []), problems
    areas = {c["area"] for c in report["checks"]}
    assert areas == {"python", "catalog", "store", "secrets", "lake", "disk", "backups", "gateway", "metrics",
                     "airflow"}
    said = {(c["area"], c["subject"]): c["said"] for c in report["checks"]}
    kind = "postgresql" if lgsp_env.database_url.startswith("postgresql") else "sqlite"
    assert any(k[0] == "store" and v.startswith(f"{kind} ") and v.endswith(" answers") for k, v in said.items())
    assert said[("secrets", "tthc")] == "LGSP_TTHC_API_KEY is set"
    assert os.environ["LGSP_TTHC_API_KEY"] not in json.dumps(report), "a secret is named, never shown"
    tls = [c["said"] for c in report["checks"] if c["subject"] == "civil_servants"]
    assert any(s.startswith("TLS key ") for s in tls) and any(s.startswith("TLS cert ") for s in tls)
    if kind == "postgresql":
        assert said[("backups", "pg_dump")].endswith("pg_dump")
    code, text = _doctor()
    assert code == 0 and "checks: 0 error(s)" in text and "lgsp doctor" in text


def test_each_broken_part_is_an_error_or_warning_naming_what_to_do(
        lgsp_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from catalog import load_catalog
    from warehouse import Warehouse

    wh = Warehouse(lgsp_env.database_url, load_catalog())
    wh.create_all()
    wh.engine.dispose()
    engine = make_engine(lgsp_env.database_url)
    with engine.begin() as conn:  # a core table as an older definition left it: a column the dataset no longer has
        conn.execute(sa.text("ALTER TABLE core_document ADD COLUMN fax_number TEXT"))
    engine.dispose()
    secret = os.environ["LGSP_DOCUMENTS_TOKEN"]
    monkeypatch.delenv("LGSP_DOCUMENTS_TOKEN")
    monkeypatch.delenv("LGSP_TTHC_URL")
    monkeypatch.delenv("LGSP_GATEWAY_PSEUDONYM_KEY", raising=False)
    key = Path(os.environ["LGSP_CIVIL_SERVANTS_KEY"])
    key.chmod(0o644)
    monkeypatch.setenv("LGSP_CIVIL_SERVANTS_CA", str(tmp_path / "missing-ca.pem"))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("LGSP_LAKE", str(blocked / "lake"))
    try:
        found = examine()
    finally:
        key.chmod(0o600)
    bad = {(c.area, c.subject, c.state): (c.said, c.todo) for c in found if c.state != "ok"}
    assert bad[("secrets", "documents", "error")] == (
        "LGSP_DOCUMENTS_TOKEN is not set: documents's calls fail",
        "export LGSP_DOCUMENTS_TOKEN=... (or name an Airflow Connection: secret: conn:ID)")
    said, todo = bad[("secrets", "tthc", "warning")]
    assert said.startswith("LGSP_TTHC_URL is not set: tthc is the default address http://127.0.0.1:8802")
    assert todo == "export LGSP_TTHC_URL=<the system's address>"
    tls = [(c.state, c.said, c.todo) for c in found if c.subject == "civil_servants" and c.state != "ok"]
    assert ("warning", f"its TLS key {key} is readable by others", f"chmod 600 {key}") in tls
    assert ("error", f"its TLS ca {tmp_path / 'missing-ca.pem'} does not exist: civil_servants's calls fail",
            "export LGSP_CIVIL_SERVANTS_CA=<its path>") in tls
    said, todo = bad[("store", "core tables", "warning")]
    assert said.startswith("document differ from their datasets' definitions") and "lgsp warehouse plan" in todo
    said, todo = bad[("lake", str(blocked / "lake"), "error")]
    assert said.startswith("cannot write or swap folders there") and "LGSP_LAKE" in todo
    assert ("gateway", "LGSP_GATEWAY_PSEUDONYM_KEY", "error") in bad
    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "doctor-test-key-not-secret")
    monkeypatch.setenv("LGSP_METRICS_TOKEN", "too-short")
    monkeypatch.setenv("LGSP_METRICS_TEXTFILE", str(tmp_path / "no-such-folder" / "lgsp.prom"))
    metrics = {(c.area, c.subject, c.state): (c.said, c.todo) for c in examine() if c.area in ("gateway", "metrics")}
    said, todo = metrics[("gateway", "LGSP_METRICS_TOKEN", "error")]
    assert said.startswith("`lgsp serve` will not start: LGSP_METRICS_TOKEN must be at least 16 characters")
    assert "too-short" not in repr(metrics)
    said, todo = metrics[("metrics", "LGSP_METRICS_TEXTFILE", "error")]
    assert said.startswith(f"{tmp_path / 'no-such-folder'} is not a folder lgsp can write") and "textfile" in todo
    monkeypatch.setenv("LGSP_METRICS_TEXTFILE", str(tmp_path / "lgsp.txt"))
    assert any(c.state == "error" and "does not end in .prom" in c.said for c in examine())
    assert ("backups", str(backup.backup_root()), "warning") in bad
    assert secret not in repr(found)
    code, report = _doctor("--json")
    assert code == 1 and report["ok"] is False


def test_a_store_that_does_not_answer_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LGSP_DATABASE_URL", "postgresql://lgsp:not-shown-pw@127.0.0.1:1/nowhere")
    found = examine()
    [store] = [c for c in found if c.area == "store"]
    assert (store.state, store.subject) == ("error", "postgresql://lgsp:***@127.0.0.1:1/nowhere")
    assert store.said.startswith("does not answer") and "LGSP_DATABASE_URL" in store.todo
    assert "not-shown-pw" not in repr(found)
    assert _states(found)[("airflow", "metadata")] == "warning", "a PostgreSQL store: Airflow's metadata too"
    monkeypatch.setenv("LGSP_AIRFLOW_DATABASE_URL", "postgresql://airflow@127.0.0.1:1/airflow")
    assert _states(examine())[("airflow", "postgresql://airflow@127.0.0.1:1/airflow")] == "error"


def test_a_load_whose_lake_file_is_gone_is_a_warning(lgsp_env: Any, sandbox_handle: Any) -> None:
    from lgsp import runner
    from warehouse.lake import Lake

    runner.run_pipeline("population_citizens")
    runner.run_pipeline("population_citizens")  # nothing changed: a second file, no second load in the change log
    runner.run_pipeline("business_enterprises")
    checks = {(c.area, c.subject): c for c in examine()}
    assert checks[("lake", "raw/")].state == "ok" and "each of the 2 loads" in checks[("lake", "raw/")].said
    lake = Lake(lgsp_env.lake_root)
    assert [c.files_after for c in lake.compact("citizen", min_age=timedelta(0))] == [1]
    assert ("lake", "raw/") in _states(examine()), "a compacted file still says which batches it holds"
    for path in lake.dataset_path("citizen").glob("*/*.parquet"):
        path.unlink()  # the disk lost them
    checks = {(c.area, c.subject): c for c in examine()}
    gone = checks[("lake", "raw/citizen")]
    assert gone.state == "warning" and gone.said.startswith("1 of its 1 loads have no lake file"), gone
    assert "lgsp backup restore" in gone.todo and ("lake", "raw/business_enterprise") not in checks
