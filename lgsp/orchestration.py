"""lgsp under the real Airflow scheduler: one call starts every component, a small client drives it over REST.

`AirflowStack` starts the api-server, scheduler, dag-processor and triggerer
(and, with the CeleryExecutor, Celery workers) on the project's DAG folder,
each in its own process group with its log in `<AIRFLOW_HOME>/logs/stack/`.
Metadata: SQLite under `<LGSP_HOME>/airflow` by default, PostgreSQL when
`LGSP_AIRFLOW_DATABASE_URL` is set (required for Celery). `AirflowApi`
triggers and watches DAG runs through Airflow's REST API (`/api/v2`).

Example:
    >>> stack = AirflowStack(load_settings(), StackOptions(port=8080))  # doctest: +SKIP
    >>> with stack:                                                    # doctest: +SKIP
    ...     api = stack.api()
    ...     run_id = api.trigger("lgsp_tthc_dossiers")
    ...     api.wait_for_run("lgsp_tthc_dossiers", run_id)               # -> "success"
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from lgsp.settings import Settings

AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


class StackError(RuntimeError):
    """An Airflow component did not start, or a run did not end as expected."""


def free_port() -> int:
    """A TCP port nobody listens on right now (for the api-server and the log servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class StackOptions:
    """How to run Airflow: where the API listens, which executor, how many Celery workers."""

    port: int = 8080
    host: str = "127.0.0.1"
    executor: str = "local"
    workers: int = 0
    worker_concurrency: int = 1
    broker_url: str = "redis://127.0.0.1:6379/0"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def stack_env(settings: Settings, options: StackOptions) -> dict[str, str]:
    """The environment every component shares (on top of lgsp.airflow_env.configure)."""
    from lgsp import airflow_env

    if options.executor not in EXECUTORS:
        raise StackError(f"executor {options.executor!r} is not one of {sorted(EXECUTORS)}")
    env = {**os.environ, **airflow_env.configure(settings, quiet=False)}
    metadata = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    env.update({
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS[options.executor],
        "AIRFLOW__API__HOST": options.host, "AIRFLOW__API__PORT": str(options.port),
        "AIRFLOW__API__BASE_URL": options.base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{options.base_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": os.environ.get("LGSP_AIRFLOW_USERS", "admin:admin"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
    })
    if options.executor == "celery":
        if metadata.startswith("sqlite"):
            raise StackError("the CeleryExecutor needs a shared metadata database: set LGSP_AIRFLOW_DATABASE_URL="
                             "postgresql+psycopg://USER@HOST/DB (see docs/deploy.md)")
        env.update({"AIRFLOW__CELERY__BROKER_URL": options.broker_url,
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata,
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(options.worker_concurrency),
                    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1"})
    return env


class AirflowStack:
    """Every Airflow component of one lgsp installation, started and stopped together."""

    def __init__(self, settings: Settings, options: StackOptions) -> None:
        self.settings, self.options = settings, options
        self.env = stack_env(settings, options)
        self.log_dir = settings.airflow_home / "logs" / "stack"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def commands(self) -> dict[str, list[str]]:
        """Component name -> its command line."""
        airflow = str(AIRFLOW_BIN)
        api_server = [airflow, "api-server", "--host", self.options.host, "--port", str(self.options.port)]
        commands = {"api-server": api_server,
                    "scheduler": [airflow, "scheduler"], "dag-processor": [airflow, "dag-processor"],
                    "triggerer": [airflow, "triggerer"]}
        for n in range(1, self.options.workers + 1):
            commands[f"worker{n}"] = [airflow, "celery", "worker", "--celery-hostname", f"worker{n}@%h",
                                      "--concurrency", str(self.options.worker_concurrency), "--skip-serve-logs"]
        return commands

    def prepare(self) -> None:
        """Create or upgrade the metadata DB and the per-system pools."""
        from lgsp import airflow_env

        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("AIRFLOW", "LGSP_"))})
        airflow_env.ensure_metadata_db(self.settings)
        airflow_env.ensure_pools(self.settings)

    def start(self, timeout: float = 180) -> None:
        """Prepare, start every component, wait until the API reports them healthy."""
        self.prepare()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, command in self.commands().items():
            log = (self.log_dir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
        (self.settings.airflow_home / "stack.pids").write_text(
            json.dumps({name: proc.pid for name, proc in self.processes.items()}))
        try:
            self.wait_healthy(timeout)
        except Exception:
            self.stop()
            raise

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-20:])
                raise StackError(f"Airflow {name} exited with code {proc.returncode}; its log ends:\n{tail}")

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Wait until metadata DB, scheduler, triggerer and dag-processor are healthy (and workers ready)."""
        deadline, last = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = requests.get(f"{self.options.base_url}/api/v2/monitor/health", timeout=5).json()
            except (requests.RequestException, ValueError):
                last = {}
            healthy = bool(last) and all(part.get("status") == "healthy" for part in last.values())
            if healthy and all(self._worker_ready(n) for n in range(1, self.options.workers + 1)):
                return last
            time.sleep(2)
        raise StackError(f"Airflow not healthy after {timeout:.0f}s (last health: {last}); "
                         f"see the logs in {self.log_dir}")

    def _worker_ready(self, number: int) -> bool:
        log = self.log_dir / f"worker{number}.log"
        return log.exists() and " ready." in log.read_text(errors="replace")

    def stop(self, grace: float = 20) -> None:
        """SIGTERM every component's process group, then SIGKILL what is still there after `grace` seconds."""
        for proc in self.processes.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        self.processes.clear()

    def api(self) -> "AirflowApi":
        return AirflowApi(self.options.base_url, self.settings.airflow_home)

    def __enter__(self) -> "AirflowStack":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class AirflowApi:
    """Airflow's REST API (`/api/v2`) with a JWT from the simple auth manager's user."""

    def __init__(self, base_url: str, airflow_home: Path, username: str = "admin") -> None:
        self.base_url, self.airflow_home, self.username = base_url.rstrip("/"), airflow_home, username
        self._token: str | None = None

    def _password(self) -> str:
        if os.environ.get("LGSP_AIRFLOW_PASSWORD"):
            return os.environ["LGSP_AIRFLOW_PASSWORD"]
        path = self.airflow_home / PASSWORDS_FILE
        try:
            return str(json.loads(path.read_text())[self.username])
        except (OSError, ValueError, KeyError):
            raise StackError(f"no password for Airflow user {self.username!r}: set LGSP_AIRFLOW_PASSWORD or start "
                             f"the api-server once (it writes {path})") from None

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            response = requests.post(f"{self.base_url}/auth/token", timeout=15,
                                     json={"username": self.username, "password": self._password()})
            _raise_for(response, "log in to the Airflow API")
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.base_url}/api/v2{path}", headers=self._headers(), timeout=30,
                                    **kwargs)
        _raise_for(response, f"{method} /api/v2{path}")
        return response.json()

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed `dag_id` into the metadata DB."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = requests.get(f"{self.base_url}/api/v2/dags/{dag_id}", headers=self._headers(), timeout=15)
            if response.status_code == 200:
                return
            time.sleep(2)
        raise StackError(f"DAG {dag_id} not parsed after {timeout:.0f}s; check `airflow dags list-import-errors`")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> str:
        """Unpause and trigger `dag_id`; return the new run's id."""
        self.wait_for_dag(dag_id)
        self.unpause(dag_id)
        run = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf or {}})
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                                 params={"limit": 1000})["task_instances"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Poll the run until it ends; return its final state ("success" or "failed")."""
        deadline, state = time.monotonic() + timeout, "?"
        while time.monotonic() < deadline:
            state = str(self.run(dag_id, run_id)["state"])
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise StackError(f"run {run_id} of {dag_id} still {state} after {timeout:.0f}s")


def _raise_for(response: requests.Response, what: str) -> None:
    if response.status_code >= 400:
        raise StackError(f"could not {what}: HTTP {response.status_code} {response.text[:300]}")
