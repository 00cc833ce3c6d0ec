"""Scale-out: a partitioned sync on Airflow's CeleryExecutor (Redis broker, PostgreSQL metadata) spreads its
mapped tasks over two Celery workers and leaves the same warehouse as a single-process run."""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pgserver
from airflow_helpers import airflow_stack, leftover_processes, lgsp_env, run, snapshot_diff, warehouse_snapshot

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def databases(pg_admin_url: str) -> Iterator[dict[str, str]]:
    """Fresh PostgreSQL databases: Airflow's metadata, the Celery-run warehouse, the single-process warehouse."""
    urls = {name: pgserver.create_database(pg_admin_url) for name in ("airflow", "celery", "single")}
    yield urls
    for url in urls.values():
        pgserver.drop_database(pg_admin_url, url)


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def test_mapped_sync_on_two_celery_workers_equals_one_process(tmp_path: Path, sandbox_handle: Any,
                                                               databases: dict[str, str]) -> None:
    sandbox_handle.faults.clear()
    single = lgsp_env(tmp_path / "single", **sandbox_handle.env(), LGSP_DATABASE_URL=databases["single"])
    proc = run(["lgsp", "run", "land_parcels", "--inline"], single)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    home, queue = tmp_path / "celery", f"lgsp-test-{uuid.uuid4().hex[:8]}"  # a queue of our own on the shared Redis
    env = lgsp_env(home, **sandbox_handle.env(), LGSP_DATABASE_URL=databases["celery"],
                   LGSP_AIRFLOW_DATABASE_URL=_psycopg(databases["airflow"]), AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue)
    with airflow_stack(env, home, "--executor", "celery", "--workers", "2", "--concurrency", "1",
                       "--broker", REDIS) as api:
        run_id = api.trigger("lgsp_land_parcels")
        assert api.wait_for_run("lgsp_land_parcels", run_id, timeout=300) == "success"
        tasks = api.task_instances("lgsp_land_parcels", run_id)
    assert leftover_processes(str(home)) == []

    assert sorted((t["task_id"], t["map_index"]) for t in tasks if t["task_id"] == "extract") == [
        ("extract", i) for i in range(4)]
    assert {t["state"] for t in tasks} == {"success"} and {t["queue"] for t in tasks} == {queue}
    ran_on = {}
    for n in (1, 2):  # each worker logs the workloads it executed
        log = (home / "airflow" / "logs" / "stack" / f"worker{n}.log").read_text(errors="replace")
        ran_on[n] = set(re.findall(r"task_id='(\w+)'.{0,200}?run_id='" + re.escape(run_id), log))
    assert ran_on[1] and ran_on[2], ran_on  # both workers took part

    mapped = warehouse_snapshot(databases["celery"], "land_parcel", "land_parcels")
    one = warehouse_snapshot(databases["single"], "land_parcel", "land_parcels")
    assert mapped == one, snapshot_diff(mapped, one)
    truth = sandbox_handle.data
    assert len(mapped["rows"]) == len(truth.records("land_parcel")) - len(truth.defects("land_parcel"))
