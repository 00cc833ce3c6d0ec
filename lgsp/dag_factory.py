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
from catalog.models import FeedSpec

START_DATE = datetime(2025, 7, 1, tzinfo=timezone.utc)  # the two-tier local government starts


def dataset_asset(name: str, layer: str = "core") -> Any:
    """The Airflow Asset of a warehouse dataset (its core or mart table)."""
    from airflow.sdk import Asset

    return Asset(name=f"lgsp.{name}", uri=f"lgsp://warehouse/{layer}/{name}", group="lgsp")


def system_pool(system: str) -> str:
    """The Airflow pool capping concurrent calls to one system (slots = limits.max_concurrency)."""
    return f"lgsp_{system}"


def pool_definitions(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Pools to create in Airflow, in the format of `airflow pools import`."""
    return {system_pool(s.name): {"slots": s.limits.max_concurrency, "description": f"calls to {s.title}",
                                  "include_deferred": False} for s in catalog.systems.values()}


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
         params={"full_refresh": False, "since": None, "until": None},
         tags=["lgsp", f"system:{system.name}", f"dataset:{pipeline.dataset}", *pipeline.tags],
         default_args=_default_args(pipeline.retries),
         doc_md=f"**{pipeline.title}**: `{system.name}.{pipeline.source.operation}` -> `{pipeline.dataset}`")
    def _pipeline() -> None:
        @task(task_id="extract", pool=system_pool(system.name))
        def extract_step(**context: Any) -> str:
            """Pull since the cursor; `since`/`until` params (ISO 8601) backfill a window instead."""
            from datetime import datetime as _dt

            from lgsp import runner

            params = context.get("params") or {}
            window = {k: _dt.fromisoformat(params[k]) if params.get(k) else None for k in ("since", "until")}
            return str(runner.extract(runner.context(name), full_refresh=bool(params.get("full_refresh")),
                                      **window)["batch_id"])

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
            @task(task_id=f"compute_{indicator.name}", outlets=[indicators_mart_asset()])
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


def _feed_source_asset(feed: FeedSpec, catalog: Catalog) -> list[Any]:
    """A push feed runs when the table it reads changes (a core dataset's Asset, or the indicator mart)."""
    from airflow.sdk import Asset

    for ds in catalog.datasets.values():
        if ds.table_name == feed.table:
            return [dataset_asset(ds.name, ds.layer)]
    return [Asset(name=f"lgsp.{feed.table}", uri=f"lgsp://warehouse/{feed.table}", group="lgsp")]


def _feed_chain(feed: FeedSpec, catalog: Catalog) -> list[FeedSpec]:
    """The feed, then every feed declared `after` it (recursively), in order."""
    chain = [feed]
    for other in catalog.feeds.values():
        if feed.name in other.after:
            chain += _feed_chain(other, catalog)
    return chain


def push_dag(feed: FeedSpec, catalog: Catalog) -> Any:
    """The DAG of a push feed and the feeds that must follow it: enqueue -> dispatch, feed after feed.

    E.g. `lgsp_push_dvcqg_dossier_sync` syncs dossiers, then reports their
    progress (a progress update for a dossier the portal has not got would be refused).
    """
    from airflow.sdk import dag, task

    chain = _feed_chain(feed, catalog)

    @dag(dag_id=f"lgsp_push_{feed.name}", description=feed.title,
         schedule=feed.schedule or _feed_source_asset(feed, catalog), start_date=START_DATE, catchup=False,
         max_active_runs=1, tags=["lgsp", "push", f"system:{feed.system}", *feed.tags],
         default_args=_default_args(2),
         doc_md=" then ".join(f"**{f.title}**: `{f.table}` -> `{f.system}.{f.operation}`" for f in chain))
    def _push() -> None:
        previous = None
        for member in chain:
            @task(task_id=f"enqueue_{member.name}")
            def enqueue_step(feed_name: str = member.name) -> int:
                from catalog import load_catalog as _load
                from lgsp import outbox
                from lgsp.runner import open_warehouse

                current = _load()
                return outbox.enqueue(open_warehouse(current), current, current.feeds[feed_name])

            @task(task_id=f"dispatch_{member.name}", pool=system_pool(member.system))
            def dispatch_step(feed_name: str = member.name) -> dict[str, int]:
                from catalog import load_catalog as _load
                from lgsp import outbox
                from lgsp.runner import open_warehouse

                current = _load()
                counts = outbox.dispatch(open_warehouse(current), current, current.feeds[feed_name])
                if counts["dead"]:
                    raise RuntimeError(f"{feed_name}: {counts['dead']} message(s) dead-lettered; "
                                       "see `lgsp outbox list --status dead`, then `lgsp outbox retry`")
                return counts

            queued, sent = enqueue_step(), dispatch_step()
            if previous is not None:
                previous >> queued
            queued >> sent
            previous = sent

    return _push()


def indicators_mart_asset() -> Any:
    """The Asset of the indicator mart, updated by every compute task of `lgsp_indicators`."""
    return dataset_asset("indicator_value", "mart")


def build_dags(catalog: Catalog | None = None) -> dict[str, Any]:
    """Every lgsp DAG, keyed by dag_id (for a DAG file's globals())."""
    catalog = catalog or load_catalog()
    dags = {f"lgsp_{p.name}": pipeline_dag(p, catalog) for p in catalog.pipelines.values()}
    if catalog.indicators:
        dags["lgsp_indicators"] = indicators_dag(catalog)
    dags.update({f"lgsp_push_{f.name}": push_dag(f, catalog) for f in catalog.feeds.values() if not f.after})
    return dags
