"""The consolidation DAG on real Airflow 3: parsed by a DagBag and run with dag.test() against the legacy sandbox."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_helpers import lgsp_env, run
from sandbox.legacy import start_legacy_sandbox

pytestmark = pytest.mark.airflow

RUN_DAG = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
assert "lgsp_merger" in bag.dags, bag.import_errors
dag = bag.dags["lgsp_merger"]
result = dag.test()
print(json.dumps({{"errors": {{k: str(v) for k, v in bag.import_errors.items()}}, "tags": sorted(dag.tags),
                   "state": str(result.state), "tasks": sorted(t.task_id for t in dag.tasks)}}))
"""


def test_merger_dag_runs_on_airflow(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "lgsp_merger.py").write_text(  # Airflow's safe mode only parses files that say "airflow" and "dag"
        '"""airflow DAG"""\nfrom consolidation.dag import merger_dag\nlgsp_merger = merger_dag()\n')
    home = tmp_path / "home"
    with start_legacy_sandbox(seed=5, citizens=60, enterprises=20, dossiers=60) as legacy:
        env = lgsp_env(home, **legacy.env())
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
        assert run(["airflow", "db", "migrate"], env).returncode == 0
        proc = run(["python", "-c", RUN_DAG.format(folder=str(folder))], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["tasks"] == ["consolidate", "report"]
    assert "lgsp" in result["tags"] and result["state"].endswith("success"), result
    assert (home / "reports" / "merger.html").read_text(encoding="utf-8").count("balanced for every system") == 1
