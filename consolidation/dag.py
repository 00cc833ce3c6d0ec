"""The consolidation as an Airflow 3 DAG (``lgsp_merger``): consolidate -> report, triggered by hand.

Not in ``dags/`` yet (the DagBag test there lists the catalog's DAGs); to schedule
it, a DAG file needs one line::

    # airflow DAG: the province-merger consolidation
    from consolidation.dag import merger_dag; lgsp_merger = merger_dag()

Thin wiring only: nothing happens at import time, the tasks call
:func:`consolidation.pipeline.run_merger` and :func:`consolidation.report.write_report`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

START_DATE = datetime(2025, 7, 1, tzinfo=UTC)
"""The merger's effective date."""

__all__ = ["merger_dag"]


def merger_dag() -> Any:
    """Build the ``lgsp_merger`` DAG (no schedule: the consolidation is run on demand, and reruns change nothing)."""
    from airflow.sdk import dag, task

    @dag(dag_id="lgsp_merger", description="Province-merger consolidation (Ninh Binh, Nam Dinh, Ha Nam)",
         schedule=None, start_date=START_DATE, catchup=False, max_active_runs=1,
         tags=["lgsp", "merger", "system:legacy_ninh_binh", "system:legacy_nam_dinh", "system:legacy_ha_nam"],
         default_args={"owner": "lgsp", "retries": 2, "retry_delay": timedelta(seconds=30),
                       "retry_exponential_backoff": 2.0},
         doc_md="Pull the three legacy systems, remap, match, resolve; `merger_*` tables; HTML report. "
                "See docs/merger.md.")
    def _merger() -> None:
        @task(task_id="consolidate")
        def consolidate() -> dict[str, int]:
            from consolidation.pipeline import run_merger

            outcome = run_merger()
            if not all(r["balanced"] for r in outcome.reconciliation):
                raise RuntimeError(f"consolidation run {outcome.run_id} does not balance: see merger_reconciliation")
            return outcome.totals()

        @task(task_id="report")
        def report(totals: dict[str, int]) -> str:
            from consolidation.report import write_report
            from lgsp.settings import load_settings

            settings = load_settings()
            return str(write_report(settings.database_url, settings.home / "reports" / "merger.html"))

        report(consolidate())

    return _merger()
