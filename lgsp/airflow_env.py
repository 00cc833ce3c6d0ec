"""Run lgsp's DAGs on real Airflow 3 with its metadata in the project's working folder.

`configure()` must run before anything imports airflow: Airflow reads its
configuration at import time.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lgsp.settings import REPO_ROOT, Settings

DAGS_FOLDER = REPO_ROOT / "dags"


class DagRunFailed(RuntimeError):
    """A DAG run ended in a state other than success."""


def configure(settings: Settings, quiet: bool = True) -> dict[str, str]:
    """Point Airflow at `<LGSP_HOME>/airflow` (SQLite metadata) and the project's DAG folder."""
    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **metadata_env(os.environ.get("LGSP_AIRFLOW_DATABASE_URL") or f"sqlite:///{home / 'airflow.db'}"),
        "AIRFLOW__CORE__DAG_DISCOVERY_SAFE_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING" if quiet else "INFO",
        "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": r"(airflow|lgsp)\..*",
        "GX_ANALYTICS_ENABLED": "False",
        "LGSP_HOME": str(settings.home),
        "LGSP_DATABASE_URL": settings.database_url,
        **lineage_env(settings),
    }
    os.environ.update(env)
    return env


def metadata_env(url: str) -> dict[str, str]:
    """Airflow's metadata DB: SQLite, or PostgreSQL through psycopg 3 (sync and async engines)."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
    if url.startswith("postgresql+psycopg://"):
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = url.replace("+psycopg://", "+psycopg_async://", 1)
    return env


def lineage_env(settings: Settings) -> dict[str, str]:
    """OpenLineage for every task: events appended to `<LGSP_HOME>/airflow/openlineage/events.jsonl`.

    `LGSP_OPENLINEAGE_TRANSPORT=console` logs them instead; a JSON transport
    (e.g. `{"type": "http", "url": "http://marquez:5000"}`) sends them to a lineage server.
    """
    choice = os.environ.get("LGSP_OPENLINEAGE_TRANSPORT", "file")
    if choice == "file":
        folder = settings.airflow_home / "openlineage"
        folder.mkdir(parents=True, exist_ok=True)
        transport = json.dumps({"type": "file", "log_file_path": str(folder / "events.jsonl"), "append": True})
    elif choice == "console":
        transport = json.dumps({"type": "console"})
    else:
        transport = choice
    return {"AIRFLOW__OPENLINEAGE__TRANSPORT": transport, "AIRFLOW__OPENLINEAGE__NAMESPACE": "lgsp",
            "AIRFLOW__OPENLINEAGE__DISABLED": "False"}


def ensure_metadata_db(settings: Settings) -> bool:
    """Create or upgrade Airflow's metadata DB once per Airflow version; True if it ran."""
    import importlib.metadata

    version = importlib.metadata.version("apache-airflow-core")
    marker = settings.airflow_home / f".migrated-{version}"
    if marker.exists():
        return False
    airflow_bin = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow_bin), "db", "migrate"], capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"`airflow db migrate` failed (AIRFLOW_HOME={settings.airflow_home}):\n{tail}")
    marker.write_text(version)
    return True


def ensure_pools(settings: Settings) -> bool:
    """Create or update one Airflow pool per system (slots = the system's max_concurrency); True if it ran."""
    import hashlib
    import json

    from catalog import load_catalog
    from lgsp.dag_factory import pool_definitions

    pools = json.dumps(pool_definitions(load_catalog()), sort_keys=True)
    marker = settings.airflow_home / f".pools-{hashlib.sha256(pools.encode()).hexdigest()[:16]}"
    if marker.exists():
        return False
    path = settings.airflow_home / "pools.json"
    path.write_text(pools)
    airflow_bin = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow_bin), "pools", "import", str(path)], capture_output=True, text=True,
                          env=os.environ)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"`airflow pools import {path}` failed:\n{tail}")
    marker.write_text(pools)
    return True


def load_dagbag() -> Any:
    """Parse the project's DAG folder with Airflow's own DagBag."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


class _OncePerMinute(logging.Filter):
    """dag.test() says "No tasks to run" every second while a task waits (rescheduled to the end of a system's
    peak hours, say): let it through once a minute."""

    def __init__(self) -> None:
        super().__init__()
        self.said = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("No tasks to run"):
            return True
        now = time.monotonic()
        if now - self.said < 60:
            return False
        self.said = now
        return True


def run_dag(dag_id: str, dagbag: Any | None = None, conf: dict[str, Any] | None = None,
            task_retries: bool = True, logical_date: Any = None) -> Any:
    """Run one DAG to completion with `dag.test()`; raise DagRunFailed naming the failed tasks.

    With `task_retries=False` a failed task fails the run at once instead of
    waiting for Airflow's retry delays (the connectors still retry each request).
    """
    dagbag = dagbag or load_dagbag()
    if dagbag.import_errors:
        raise DagRunFailed(f"DAG folder {DAGS_FOLDER} has import errors: {dagbag.import_errors}")
    dag = dagbag.get_dag(dag_id)
    if dag is None:
        raise DagRunFailed(f"no DAG '{dag_id}' in {DAGS_FOLDER} (see `lgsp pipelines`)")
    if not task_retries:
        for task in dag.tasks:
            task.retries = 0
    dag.deadline = None  # late alerts are the scheduler's job; dag.test() cannot store them
    waiting = _OncePerMinute()
    logging.getLogger("airflow.sdk.definitions.dag").addFilter(waiting)
    try:
        run = dag.test(run_conf=conf, logical_date=logical_date) if conf or logical_date else dag.test()
    finally:
        logging.getLogger("airflow.sdk.definitions.dag").removeFilter(waiting)
    state = str(getattr(run, "state", "unknown"))
    if not state.endswith("success"):
        failed = [ti.task_id for ti in run.get_task_instances() if str(ti.state).endswith(("failed", "upstream_failed"))]
        raise DagRunFailed(f"DAG {dag_id} ended {state}; failed task(s): {failed or '?'}. "
                           f"Task logs are under {os.environ.get('AIRFLOW_HOME')}/logs")
    return run
