"""The generated DAGs on real Airflow 3: DagBag, import errors, and real DAG runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from airflow_helpers import REPO, lgsp_env, run

pytestmark = pytest.mark.airflow

DAGBAG_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "dags": {{d.dag_id: {{"tags": sorted(d.tags), "schedule": type(d.timetable).__name__,
                          "catchup": d.catchup,
                          "retries": {{t.task_id: t.retries for t in d.tasks}},
                          "pools": {{t.task_id: t.pool for t in d.tasks}},
                          "params": sorted(d.params.keys()),
                          "start_utc": d.start_date.utcoffset().total_seconds() == 0}}
              for d in bag.dags.values()}},
}}))
"""


def _json_tail(stdout: str) -> Any:
    """The JSON document Airflow printed after its warnings."""
    line = next(ln for ln in reversed(stdout.splitlines()) if ln.startswith(("[", "{")))
    return json.loads(line)


def _dagbag(tmp_path: Path, folder: Path) -> dict[str, Any]:
    proc = run(["python", "-c", DAGBAG_PROBE.format(folder=str(folder))], lgsp_env(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_dagbag_has_no_import_errors_tags_and_retries(tmp_path: Path) -> None:
    from catalog import load_catalog

    bag = _dagbag(tmp_path, Path(__file__).resolve().parent.parent / "dags")
    assert bag["errors"] == {}
    catalog = load_catalog()
    expected = ({f"lgsp_{p}" for p in catalog.pipelines}
                | {"lgsp_indicators", "lgsp_maintenance", "lgsp_backup", "lgsp_notify", "lgsp_freshness"}
                | {f"lgsp_push_{f.name}" for f in catalog.feeds.values() if not f.after}
                | {"lgsp_drift_citizen", "lgsp_drift_enterprise"})
    assert set(bag["dags"]) == expected
    for dag_id, dag in bag["dags"].items():
        assert "lgsp" in dag["tags"], dag_id
        assert dag["catchup"] is False and dag["start_utc"]
        assert dag["retries"] and all(r >= 2 for r in dag["retries"].values()), dag_id
    assert set(bag["dags"]["lgsp_tthc_dossiers"]["retries"]) == {"extract", "validate", "load"}
    for name, pipeline in catalog.pipelines.items():  # calls to a system share its pool
        assert bag["dags"][f"lgsp_{name}"]["pools"]["extract"] == f"lgsp_{pipeline.source.system}"
        assert bag["dags"][f"lgsp_{name}"]["params"] == ["delete_missing", "full_refresh", "in_peak", "since",
                                                        "until"]
    sync = bag["dags"]["lgsp_push_dvcqg_dossier_sync"]["pools"]
    assert sync == {"enqueue_dvcqg_dossier_sync": "default_pool", "dispatch_dvcqg_dossier_sync": "lgsp_dvcqg",
                    "enqueue_dvcqg_dossier_progress": "default_pool", "dispatch_dvcqg_dossier_progress": "lgsp_dvcqg"}
    assert "Asset" in bag["dags"]["lgsp_indicators"]["schedule"]  # scheduled on the datasets it reads
    assert bag["dags"]["lgsp_maintenance"]["schedule"] == "CronDataIntervalTimetable"  # daily, 02:00 Vietnam time
    assert set(bag["dags"]["lgsp_maintenance"]["retries"]) == {"maintain"}
    assert bag["dags"]["lgsp_backup"]["schedule"] == "CronDataIntervalTimetable"  # daily, 03:00 Vietnam time
    assert set(bag["dags"]["lgsp_backup"]["retries"]) == {"backup"}
    assert bag["dags"]["lgsp_freshness"]["schedule"] == "CronDataIntervalTimetable"  # every 15 minutes
    assert set(bag["dags"]["lgsp_freshness"]["retries"]) == {"check"}
    assert bag["dags"]["lgsp_notify"]["schedule"] == "AssetOrTimeSchedule"  # on the shared datasets, every 5 min
    drift = bag["dags"]["lgsp_drift_citizen"]  # weekly, calls the population system within its pool
    assert (drift["schedule"], drift["pools"], drift["tags"]) == (
        "CronDataIntervalTimetable", {"check": "lgsp_population"}, ["drift", "lgsp", "population"])


def test_dagbag_probe_can_fail(tmp_path: Path) -> None:
    """Control: the same probe reports a broken DAG file."""
    broken = tmp_path / "dags"
    broken.mkdir()
    (broken / "broken_dag.py").write_text("from airflow.sdk import dag\nraise RuntimeError('boom')\n")
    assert "boom" in json.dumps(_dagbag(tmp_path, broken)["errors"])


def test_airflow_cli_lists_no_import_errors(tmp_path: Path) -> None:
    env = lgsp_env(tmp_path / "home")
    assert run(["airflow", "db", "migrate"], env).returncode == 0
    assert run(["airflow", "dags", "reserialize"], env).returncode == 0
    proc = run(["airflow", "dags", "list-import-errors", "-o", "json"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lgsp_pipelines.py" not in proc.stdout
    listed = run(["airflow", "dags", "list", "-o", "json"], env)
    assert {d["dag_id"] for d in _json_tail(listed.stdout)} >= {"lgsp_tthc_dossiers", "lgsp_population_citizens"}
    # control: a broken DAG in a copy of the folder is reported by the same command
    broken = tmp_path / "dags"
    shutil.copytree(Path(env["AIRFLOW__CORE__DAGS_FOLDER"]), broken)
    (broken / "broken_dag.py").write_text("from airflow.sdk import dag\nraise RuntimeError('boom')\n")
    env_broken = {**env, "AIRFLOW__CORE__DAGS_FOLDER": str(broken)}
    assert run(["airflow", "dags", "reserialize"], env_broken).returncode == 0
    errors = run(["airflow", "dags", "list-import-errors", "-o", "json"], env_broken)
    assert "boom" in errors.stdout


def test_lgsp_run_executes_a_pipeline_dag_on_airflow(tmp_path: Path, sandbox_handle: Any) -> None:
    import sqlalchemy as sa

    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env())
    proc = run(["lgsp", "run", "tthc_dossiers"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Airflow: lgsp_tthc_dossiers" in proc.stdout
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        landed = conn.execute(sa.text("select count(*) from core_dossier")).scalar()
        status = conn.execute(sa.text("select status from lgsp_batch")).scalars().all()
    truth = sandbox_handle.data
    assert landed == len(truth.dossiers) - len(truth.dossier_defects)
    assert status == ["loaded"]
    airflow_db = sa.create_engine(f"sqlite:///{home / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        states = dict(conn.execute(sa.text(
            "select task_id, state from task_instance where dag_id = 'lgsp_tthc_dossiers'")).all())
    assert states == {"extract": "success", "validate": "success", "load": "success"}


def test_failed_dag_run_exits_non_zero_naming_the_task(tmp_path: Path) -> None:
    env = lgsp_env(tmp_path / "home", LGSP_TTHC_URL="http://127.0.0.1:9", LGSP_TTHC_API_KEY="k")
    proc = run(["lgsp", "run", "tthc_dossiers", "--no-retries"], env)
    assert proc.returncode == 1
    assert "lgsp_tthc_dossiers" in proc.stdout and "extract" in proc.stdout


def test_push_dag_syncs_dossiers_to_dvcqg_on_airflow(tmp_path: Path, sandbox_handle: Any) -> None:
    """The push DAG runs enqueue -> dispatch for the sync feed, then for the progress feed."""
    import sqlalchemy as sa

    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env())
    assert run(["lgsp", "run", "tthc_dossiers", "--inline"], env).returncode == 0
    proc = run(["lgsp", "push", "dvcqg_dossier_sync"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        outbox = dict(conn.execute(sa.text("select feed, count(*) from lgsp_outbox where status = 'acked' "
                                           "group by feed")).all())
        dossiers = set(conn.execute(sa.text("select dossier_id from core_dossier")).scalars())
    assert set(outbox) == {"dvcqg_dossier_sync", "dvcqg_dossier_progress"}
    assert dossiers <= set(sandbox_handle.dvcqg.dossiers)
    airflow_db = sa.create_engine(f"sqlite:///{home / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        pools = set(conn.execute(sa.text("select pool from slot_pool")).scalars())
        states = dict(conn.execute(sa.text("select task_id, state from task_instance "
                                           "where dag_id = 'lgsp_push_dvcqg_dossier_sync'")).all())
    assert {"lgsp_dvcqg", "lgsp_reporting", "lgsp_population"} <= pools
    assert set(states.values()) == {"success"} and len(states) == 4


def test_maintenance_dag_prunes_loaded_batches_on_airflow(tmp_path: Path, sandbox_handle: Any) -> None:
    """`lgsp lake maintain` runs the lgsp_maintenance DAG: the landed pages of loaded batches go, no row does."""
    import sqlalchemy as sa

    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env(), LGSP_RETENTION_DAYS="0")
    assert run(["lgsp", "run", "tthc_dossiers", "--inline"], env).returncode == 0
    landing = home / "lake" / "landing" / "tthc_dossiers"
    assert list(landing.rglob("page-*"))
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        before = conn.execute(sa.text("select count(*) from core_dossier")).scalar()
    proc = run(["lgsp", "lake", "maintain"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Airflow: lgsp_maintenance" in proc.stdout
    assert not list(landing.rglob("page-*")) and list(landing.rglob("manifest.json"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from core_dossier")).scalar() == before > 0
    airflow_db = sa.create_engine(f"sqlite:///{home / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        states = dict(conn.execute(sa.text(
            "select task_id, state from task_instance where dag_id = 'lgsp_maintenance'")).all())
    assert states == {"maintain": "success"}


def test_drift_dag_passes_on_a_faithful_copy_and_fails_on_silent_drift(tmp_path: Path, sandbox_handle: Any) -> None:
    """`lgsp drift citizen --on-airflow` runs lgsp_drift_citizen: a copy the sync left right passes; when the source
    then changes every address without touching updated_at (a relay of the real service), the task fails."""
    import re

    from loopback import serve, soap_relay

    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env())
    assert run(["lgsp", "run", "population_citizens", "--inline"], env).returncode == 0
    faithful = run(["lgsp", "drift", "citizen", "--on-airflow"], env)
    assert faithful.returncode == 0, faithful.stdout[-3000:] + faithful.stderr[-3000:]
    assert "Airflow: lgsp_drift_citizen" in faithful.stdout
    relay = serve(soap_relay(sandbox_handle.population_wsdl, lambda content: re.sub(
        rb"<tns:address>[^<]*<", "<tns:address>Số 9 Đường Khác<".encode(), content)))
    try:
        drifted = run(["lgsp", "drift", "citizen", "--on-airflow"],
                      {**env, "LGSP_POPULATION_WSDL": next(relay) + "/?wsdl"})
    finally:
        relay.close()
    assert drifted.returncode == 1
    assert "DAG lgsp_drift_citizen ended failed; failed task(s): ['check']" in " ".join(drifted.stdout.split())
    logs = drifted.stdout + drifted.stderr + "".join(
        p.read_text(errors="replace") for p in (home / "airflow" / "logs").rglob("*") if p.is_file())
    assert "differ from population with their cursor field unchanged (columns: {'address': 200})" in logs, logs[-3000:]
    assert "Đường Khác" not in logs  # column names, never values



def test_notify_dag_tells_agencies_webhooks_and_fails_when_one_stops(tmp_path: Path, sandbox_handle: Any) -> None:
    """`lgsp webhooks dispatch --on-airflow` runs lgsp_notify: after a load, each agency endpoint following the
    dataset gets one signed notification; an endpoint answering 410 Gone stops its webhook and fails the run
    (the alert), the others are told all the same."""
    import re

    from standardwebhooks.webhooks import Webhook

    from loopback import serving
    from test_gateway import KEY
    from test_gateway_webhooks import Endpoint

    receiver = Endpoint()
    env = lgsp_env(tmp_path / "home", **sandbox_handle.env(), LGSP_GATEWAY_PSEUDONYM_KEY=KEY)
    with serving(receiver) as base:
        for args in (["agencies", "add", "so_xay_dung", "Sở Xây dựng"], ["agencies", "grant", "so_xay_dung", "dossier"]):
            assert run(["lgsp", *args], env).returncode == 0
        added = [run(["lgsp", "webhooks", "add", "so_xay_dung", "dossier", f"{base}{path}"], env) for path in
                 ("/hook", "/gone")]
        assert all(a.returncode == 0 for a in added), [a.stdout + a.stderr for a in added]
        secret = added[0].stdout.strip()
        assert run(["lgsp", "run", "tthc_dossiers", "--inline"], env).returncode == 0
        receiver.answer(410, path="/gone")
        stopped = run(["lgsp", "webhooks", "dispatch", "--on-airflow"], env)
        assert stopped.returncode == 1 and "Airflow: lgsp_notify" in stopped.stdout
        assert "DAG lgsp_notify ended failed; failed task(s): ['dispatch']" in " ".join(stopped.stdout.split())
        assert sorted(r["path"] for r in receiver.received) == ["/gone", "/hook"]
        told = next(r for r in receiver.received if r["path"] == "/hook")
        assert Webhook(secret).verify(told["body"], told["headers"])["data"]["dataset"] == "dossier"
        gone = re.search(r"wh_[0-9a-f]{12}", added[1].stderr)
        assert gone is not None and "dead" in run(["lgsp", "webhooks", "list"], env).stdout
        assert run(["lgsp", "webhooks", "remove", gone.group(0)], env).returncode == 0
        again = run(["lgsp", "webhooks", "dispatch", "--on-airflow"], env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert len(receiver.received) == 2, "told once: nothing new since"


def test_a_table_that_needs_migrating_fails_its_dag_at_once_saying_so_and_runs_after_the_migration(
        tmp_path: Path, sandbox_handle: Any) -> None:
    """dossier declared `history` after it was loaded as `merge`: the DAG's first task fails on its first try (a
    retry would find the same) naming `lgsp warehouse migrate`; after the migration the DAG runs."""
    import sqlalchemy as sa
    import yaml

    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env())
    assert run(["lgsp", "run", "tthc_dossiers", "--inline"], env).returncode == 0
    folder = tmp_path / "catalog"
    shutil.copytree(REPO / "catalog", folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    datasets = yaml.safe_load((folder / "datasets.yaml").read_text())
    datasets["datasets"]["dossier"]["write_mode"] = "history"
    (folder / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    env = {**env, "LGSP_CATALOG_DIR": str(folder)}
    refused = run(["lgsp", "run", "tthc_dossiers"], env)
    assert refused.returncode == 1
    assert "failed task(s): ['extract', 'load', 'validate']" in " ".join(refused.stdout.split())  # 2 upstream
    logs = refused.stdout + refused.stderr + "".join(
        p.read_text(errors="replace") for p in (home / "airflow" / "logs").rglob("*") if p.is_file())
    assert "core_dossier (dossier): write mode merge -> history" in logs and "lgsp warehouse migrate" in logs
    airflow_db = sa.create_engine(f"sqlite:///{home / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        tries = conn.execute(sa.text("select try_number, state from task_instance where dag_id = "
                                     "'lgsp_tthc_dossiers' and task_id = 'extract'")).all()
    assert [tuple(t) for t in tries] == [(1, "failed")], "no retry: it would find the same"

    migrated = run(["lgsp", "warehouse", "migrate", "dossier"], env)
    assert migrated.returncode == 0 and "dossier: migrated" in migrated.stdout, migrated.stdout + migrated.stderr
    again = run(["lgsp", "run", "tthc_dossiers"], env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
