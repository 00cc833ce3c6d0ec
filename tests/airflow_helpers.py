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


def lgsp_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LGSP_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "LGSP_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parent.parent / "dags"),
        "GX_ANALYTICS_ENABLED": "False",
        "NO_COLOR": "1",
        "COLUMNS": "160",
    })
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    exe = cmd[0] if os.path.sep in cmd[0] else str(BIN / cmd[0])
    return subprocess.run([exe, *cmd[1:]], env=env, capture_output=True, text=True, timeout=timeout)
