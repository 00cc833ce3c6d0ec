"""One factory turns the catalog into Airflow DAGs.

Per pipeline: a DAG `lgsp_<pipeline>` with three tasks, extract -> validate ->
load, each a call into `lgsp.runner`; the load task updates the dataset's
Asset. The indicators DAG `lgsp_indicators` is scheduled on the Assets of the
datasets it reads. Nothing here does I/O beyond reading the local catalog.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from catalog import Catalog, PipelineSpec, load_catalog

START_DATE = datetime(2025, 7, 1, tzinfo=timezone.utc)  # the two-tier local government starts


def dataset_asset(name: str) -> Any:
    """The Airflow Asset of a warehouse dataset (its core table)."""
    from airflow.sdk import Asset

    return Asset(name=f"lgsp.{name}", uri=f"lgsp://warehouse/core/{name}", group="lgsp")


def _default_args(retries: int) -> dict[str, Any]:
    return {"owner": "lgsp", "retries": retries, "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=15)}


def pipeline_dag(pipeline: PipelineSpec, catalog: Catalog) -> Any:
    """The DAG of one pipeline: extract -> validate -> load."""
    from airflow.sdk import dag, task

    name = pipeline.name
    system = catalog.systems[pipeline.source.system]

    @dag(dag_id=f"lgsp_{name}", description=pipeline.title, schedule=pipeline.schedule,
         start_date=START_DATE, catchup=False, max_active_runs=1,
         tags=["lgsp", f"system:{system.name}", f"dataset:{pipeline.dataset}", *pipeline.tags],
         default_args=_default_args(pipeline.retries),
         doc_md=f"**{pipeline.title}**: `{system.name}.{pipeline.source.operation}` -> `{pipeline.dataset}`")
    def _pipeline() -> None:
        @task(task_id="extract")
        def extract_step(**context: Any) -> str:
            from lgsp import runner

            full = bool((context.get("params") or {}).get("full_refresh", False))
            return str(runner.extract(runner.context(name), full_refresh=full)["batch_id"])

        @task(task_id="validate")
        def validate_step(batch_id: str) -> str:
            from lgsp import runner

            runner.validate(runner.context(name), batch_id)
            return batch_id

        @task(task_id="load", outlets=[dataset_asset(pipeline.dataset)])
        def load_step(batch_id: str) -> dict[str, int]:
            from lgsp import runner

            result = runner.load(runner.context(name), batch_id)
            return {k: int(result[k]) for k in ("rows_pulled", "rows_landed", "rows_quarantined", "rows_changed")}

        load_step(validate_step(extract_step()))

    return _pipeline()


def indicators_dag(catalog: Catalog) -> Any:
    """The DAG that recomputes every indicator when a dataset it reads changes."""
    from airflow.sdk import dag, task

    reads = sorted({d for spec in catalog.indicators.values() for d in spec.reads})

    @dag(dag_id="lgsp_indicators", description="Recompute indicators into the mart",
         schedule=[dataset_asset(d) for d in reads] or None, start_date=START_DATE, catchup=False,
         max_active_runs=1, tags=["lgsp", "indicators", "mart"], default_args=_default_args(2))
    def _indicators() -> None:
        for indicator in catalog.indicators.values():
            @task(task_id=f"compute_{indicator.name}")
            def compute(indicator_name: str = indicator.name) -> int:
                from catalog import load_catalog as _load
                from indicators import compute_indicator
                from lgsp.settings import load_settings
                from warehouse import Warehouse

                current = _load()
                wh = Warehouse(load_settings().database_url, current)
                wh.create_all()
                return compute_indicator(wh, current.indicators[indicator_name])

            compute()

    return _indicators()


def build_dags(catalog: Catalog | None = None) -> dict[str, Any]:
    """Every lgsp DAG, keyed by dag_id (for a DAG file's globals())."""
    catalog = catalog or load_catalog()
    dags = {f"lgsp_{p.name}": pipeline_dag(p, catalog) for p in catalog.pipelines.values()}
    if catalog.indicators:
        dags["lgsp_indicators"] = indicators_dag(catalog)
    return dags
