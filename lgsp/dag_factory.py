"""One factory turns the catalog into Airflow DAGs.

Per pipeline: a DAG `lgsp_<pipeline>` with three tasks, extract -> validate ->
load, each a call into `lgsp.runner`; the load task updates the dataset's
Asset. A full refresh or a backfill in its system's peak hours has its first task rescheduled to their end
(`limits.peak.bulk: wait`; param `in_peak` runs it now). The indicators DAG `lgsp_indicators` runs when any
Asset of the datasets it reads is updated, and daily; each run recomputes the months the newly loaded rows touch.
`lgsp_maintenance` compacts the lake and applies the retention daily (`lgsp.retention`).
`lgsp_drift_<dataset>` checks a sample of a shared dataset against its source (`lgsp.drift`).
`lgsp_freshness` alerts when a pipeline's last complete sync gets older than its objective (`lgsp.freshness`).
`lgsp_notify` tells agencies' webhooks of changes (`gateway.webhooks`), on any shared dataset's Asset
and every few minutes (for retries and writes made outside Airflow).
Nothing here does I/O beyond reading the local catalog.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from catalog import Catalog, PipelineSpec, load_catalog
from catalog.models import FeedSpec

log = logging.getLogger("lgsp.dags")
START_DATE = datetime(2025, 7, 1, tzinfo=timezone.utc)  # the two-tier local government starts
VN_TIMEZONE = "Asia/Ho_Chi_Minh"


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


def _default_args(retries: int, retry_delay_s: float = 30.0, max_retry_delay_s: float = 900.0) -> dict[str, Any]:
    """Retries with exponential backoff (delay doubles up to the maximum); a task's last failure alerts."""
    from lgsp.alerts import on_task_failure

    return {"owner": "lgsp", "retries": retries, "retry_delay": timedelta(seconds=retry_delay_s),
            "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(seconds=max_retry_delay_s),
            "on_failure_callback": on_task_failure}


def _timetable(schedule: str | None) -> Any:
    """A cron schedule as data intervals in Vietnam time (`@daily` = one local day), so a run knows its window."""
    if schedule is None:
        return None
    from airflow.sdk import CronDataIntervalTimetable

    return CronDataIntervalTimetable(schedule, timezone=VN_TIMEZONE)


def _deadline(pipeline: PipelineSpec) -> Any:
    """A late alert when a run is not finished `late_after_s` after it was queued (None: no deadline)."""
    if pipeline.late_after_s is None:
        return None
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                         interval=timedelta(seconds=pipeline.late_after_s),
                         callback=AsyncCallback("lgsp.alerts.on_run_late",
                                                kwargs={"late_after_s": pipeline.late_after_s}))


def run_window(context: dict[str, Any]) -> dict[str, Any]:
    """The window a run pulls: `since`/`until` params, else the data interval of a scheduler backfill, else
    none (incremental from the cursor). Values are datetimes or None.
    """
    params = context.get("params") or {}
    if params.get("since") or params.get("until"):
        return {k: datetime.fromisoformat(params[k]) if params.get(k) else None for k in ("since", "until")}
    dag_run = context.get("dag_run")
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if "backfill" in str(getattr(dag_run, "run_type", "")) and start is not None and end is not None and start < end:
        return {"since": start, "until": end}
    return {"since": None, "until": None}


def pipeline_dag(pipeline: PipelineSpec, catalog: Catalog) -> Any:
    """The DAG of one pipeline: extract -> validate -> load (mapped over slices if the pipeline is partitioned)."""
    from airflow.sdk import dag

    name = pipeline.name
    system = catalog.systems[pipeline.source.system]

    @dag(dag_id=f"lgsp_{name}", description=pipeline.title, schedule=_timetable(pipeline.schedule),
         start_date=START_DATE, catchup=False, max_active_runs=1,
         params={"full_refresh": False, "since": None, "until": None, "delete_missing": None, "in_peak": False},
         tags=["lgsp", f"system:{system.name}", f"dataset:{pipeline.dataset}", *pipeline.tags],
         default_args=_default_args(pipeline.retries, pipeline.retry_delay_s, pipeline.max_retry_delay_s),
         deadline=_deadline(pipeline),
         doc_md=f"**{pipeline.title}**: `{system.name}.{pipeline.source.operation}` -> `{pipeline.dataset}`")
    def _pipeline() -> None:
        if pipeline.partition is None:
            _single_tasks(name, pipeline.dataset, system_pool(system.name))
        else:
            _partitioned_tasks(name, pipeline.dataset, system_pool(system.name))

    return _pipeline()


@contextmanager
def _fail_at_once_if_the_table_needs_migrating() -> Iterator[None]:
    """A core table whose shape differs from its definition: a retry would find the same, so fail now (and alert),
    saying what to run (`lgsp warehouse migrate`)."""
    from warehouse.store import SchemaMigrationNeeded

    try:
        yield
    except SchemaMigrationNeeded as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None


def _wait_off_peak(ctx: Any, context: dict[str, Any], full_refresh: bool, window: dict[str, Any]) -> None:
    """A full refresh or a backfill in the system's peak hours (`limits.peak.bulk: wait`, param `in_peak` not set):
    reschedule the task to the peak's end (it holds no worker slot meanwhile)."""
    from lgsp import runner

    if (context.get("params") or {}).get("in_peak"):
        return
    try:
        runner.check_off_peak(ctx, bool(full_refresh or window.get("since") or window.get("until")))
    except runner.InPeakHours as exc:
        from airflow.sdk.exceptions import AirflowRescheduleException

        log.info("%s", exc)
        raise AirflowRescheduleException(exc.until) from None


def _single_tasks(name: str, dataset: str, pool: str) -> None:
    """extract -> validate -> load of one batch."""
    from airflow.sdk import task

    @task(task_id="extract", pool=pool)
    def extract_step(**context: Any) -> str:
        """Pull since the cursor; `since`/`until` params (ISO 8601) or a backfill's interval pull a window."""
        from lgsp import runner

        full_refresh, window = bool((context.get("params") or {}).get("full_refresh")), run_window(context)
        ctx = runner.context(name)
        _wait_off_peak(ctx, context, full_refresh, window)
        with _fail_at_once_if_the_table_needs_migrating():
            return str(runner.extract(ctx, full_refresh=full_refresh, **window)["batch_id"])

    @task(task_id="validate")
    def validate_step(batch_id: str) -> str:
        from lgsp import runner

        with _fail_at_once_if_the_table_needs_migrating():
            runner.validate(runner.context(name), batch_id)
        return batch_id

    @task(task_id="load", outlets=[dataset_asset(dataset)])
    def load_step(batch_id: str, **context: Any) -> dict[str, int]:
        """Load; with the `delete_missing` param (a share, on a full refresh) remove what the source no longer has."""
        from lgsp import runner

        deleting = (context.get("params") or {}).get("delete_missing")
        with _fail_at_once_if_the_table_needs_migrating():
            result = runner.load(runner.context(name), batch_id, None if deleting is None else float(deleting))
        return {k: int(result[k]) for k in ("rows_pulled", "rows_landed", "rows_quarantined", "rows_changed",
                                            "rows_deleted") if k in result}

    load_step(validate_step(extract_step()))


def _partitioned_tasks(name: str, dataset: str, pool: str) -> None:
    """plan -> extract/validate/load mapped over the slices -> publish (cursor + Asset once)."""
    from airflow.sdk import task

    @task(task_id="plan")
    def plan_step(**context: Any) -> list[dict[str, Any]]:
        """Fix the run's window once, and cut it into the catalog's slices (lgsp.partitions)."""
        from lgsp import partitions, runner

        ctx, window = runner.context(name), run_window(context)
        full_refresh = bool((context.get("params") or {}).get("full_refresh"))
        deleting = (context.get("params") or {}).get("delete_missing")
        if deleting is not None and not full_refresh:
            raise ValueError("delete_missing needs full_refresh: only a full refresh reads every record the source has")
        _wait_off_peak(ctx, context, full_refresh, window)
        with _fail_at_once_if_the_table_needs_migrating():
            cursor = None if full_refresh else ctx.warehouse.get_cursor(name)
        assert ctx.pipeline.partition is not None
        parts = partitions.plan(cursor, ctx.pipeline.lookback_s, ctx.pipeline.partition, full_refresh, **window,
                                run=runner.new_batch_id(name))
        return [{**part, "delete_missing": None if deleting is None else float(deleting)} for part in parts]

    @task(task_id="extract", pool=pool)
    def extract_step(part: dict[str, Any]) -> str:
        from lgsp import partitions, runner

        window = {k: datetime.fromisoformat(part[k]) if part[k] else None for k in ("since", "until")}
        with _fail_at_once_if_the_table_needs_migrating():
            return str(runner.extract(runner.context(name), partition=partitions.request_filter(part["filter"]),
                                      full_refresh=bool(part.get("full_refresh")), run=part.get("run"),
                                      **window)["batch_id"])

    @task(task_id="validate")
    def validate_step(batch_id: str) -> str:
        from lgsp import runner

        with _fail_at_once_if_the_table_needs_migrating():
            runner.validate(runner.context(name), batch_id)
        return batch_id

    @task(task_id="load")
    def load_step(batch_id: str) -> dict[str, Any]:
        from lgsp import runner

        with _fail_at_once_if_the_table_needs_migrating():
            result = runner.load(runner.context(name), batch_id)
        return {"batch_id": batch_id, "cursor_to": result.get("cursor_to"),
                **{k: int(result[k]) for k in ("rows_pulled", "rows_landed", "rows_quarantined", "rows_changed")}}

    @task(task_id="publish", outlets=[dataset_asset(dataset)])
    def publish_step(parts: list[dict[str, Any]], loads: list[dict[str, Any]]) -> dict[str, Any]:
        """Every slice landed: move the cursor as one batch would have (not for a backfill), update the Asset."""
        from lgsp import partitions, runner

        # one request for every slice's result: iterating Airflow's lazy sequence asks item by item
        # until one is not found, which its API client logs as an error ("XCom not found")
        loads = list(loads[:])
        cursor = partitions.landed_cursor(loads)
        first, deleted = list(parts)[0], {}
        if first["incremental"]:  # every slice read the source to the end: synced now
            ctx = runner.context(name)
            if first.get("full_refresh") and first.get("delete_missing") is not None:  # all slices in: what's gone
                deleted = runner.delete_missing_of_run(ctx, first["run"], [r["batch_id"] for r in loads],
                                                       first["delete_missing"])
            with ctx.warehouse.transaction() as conn:  # a full refresh: the source's newest, even an earlier one
                ctx.warehouse.set_cursor(conn, name, cursor, loads[-1]["batch_id"], synced=True,
                                         exact=bool(first.get("full_refresh")))
        return {"slices": len(loads), "cursor": cursor.isoformat() if cursor else None, **deleted,
                **{k: sum(int(r[k]) for r in loads) for k in ("rows_pulled", "rows_landed", "rows_changed")}}

    parts = plan_step()
    loads = load_step.expand(batch_id=validate_step.expand(batch_id=extract_step.expand(part=parts)))
    publish_step(parts, loads)


INDICATORS_SCHEDULE = "5 0 * * *"  # 00:05 Vietnam time: a new month's values of a state exist on its first day


def indicators_dag(catalog: Catalog) -> Any:
    """The DAG that recomputes every indicator when any dataset it reads changes, and every day at 00:05 local
    time: a state at each period's end (`as_of: period_end`) has a new month's value on its first day even when
    nothing changed (the dated ones find no new month then: nothing is written)."""
    from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, dag, task

    reads = sorted({d for spec in catalog.indicators.values() for d in spec.datasets_read})
    daily = CronTriggerTimetable(INDICATORS_SCHEDULE, timezone=VN_TIMEZONE)
    # any of them: a list of Assets would wait until every one had changed
    schedule = AssetOrTimeSchedule(timetable=daily, assets=AssetAny(*(dataset_asset(d) for d in reads))) \
        if reads else None

    @dag(dag_id="lgsp_indicators", description="Recompute indicators into the mart",
         schedule=schedule, start_date=START_DATE, catchup=False,
         max_active_runs=1, tags=["lgsp", "indicators", "mart"], default_args=_default_args(2))
    def _indicators() -> None:
        for indicator in catalog.indicators.values():
            @task(task_id=f"compute_{indicator.name}", outlets=[indicators_mart_asset()])
            def compute(indicator_name: str = indicator.name) -> dict[str, Any]:
                """Recompute the months late-arriving or changed rows fall in (every month the first time)."""
                from catalog import load_catalog as _load
                from indicators import compute_touched
                from lgsp.settings import load_settings
                from warehouse import Warehouse

                current = _load()
                wh = Warehouse(load_settings().database_url, current)
                wh.create_all()
                return compute_touched(wh, current.indicators[indicator_name])

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


MAINTENANCE_SCHEDULE = "0 2 * * *"  # 02:00 Vietnam time, after the night's syncs


def maintenance_dag() -> Any:
    """The daily housekeeping: compact the lake's partitions, then prune by the retention (`lgsp.retention`)."""
    from airflow.sdk import dag, task

    @dag(dag_id="lgsp_maintenance", description="Compact the lake, prune landed pages and GX results by retention",
         schedule=_timetable(MAINTENANCE_SCHEDULE), start_date=START_DATE, catchup=False, max_active_runs=1,
         tags=["lgsp", "maintenance"], default_args=_default_args(2),
         doc_md="Compacts every dataset's Parquet partitions (`lgsp lake compact`), then deletes the landed pages "
                "of batches loaded more than `LGSP_RETENTION_DAYS` days ago (default 90, `off` keeps them) and "
                "Great Expectations' older results and pages (`lgsp lake prune`).")
    def _maintenance() -> None:
        @task(task_id="maintain")
        def maintain() -> dict[str, Any]:
            from lgsp.retention import maintain as run_maintenance

            return run_maintenance()

        maintain()

    return _maintenance()


BACKUP_SCHEDULE = "0 3 * * *"  # 03:00 Vietnam time, after the housekeeping compacted the lake


def backup_dag() -> Any:
    """`lgsp_backup`: every night, the store, the lake and GX's results backed up and read back (`lgsp.backup`)."""
    from airflow.sdk import dag, task

    @dag(dag_id="lgsp_backup", description="Back up the store, the lake and GX's results; keep the newest",
         schedule=_timetable(BACKUP_SCHEDULE), start_date=START_DATE, catchup=False, max_active_runs=1,
         tags=["lgsp", "maintenance"], default_args=_default_args(2),
         doc_md="Backs up the store (one consistent instant), the lake and Great Expectations' results into "
                "`LGSP_BACKUP_DIR` (default `$LGSP_HOME/backups`), reads every file back against its SHA-256, and "
                "keeps the newest `LGSP_BACKUP_KEEP` (default 7). `lgsp backup restore NAME --yes` puts one back.")
    def _backup() -> None:
        @task(task_id="backup")
        def backup() -> dict[str, Any]:
            from lgsp.backup import create, verify

            made = create()
            checked = verify(made)
            if not checked.ok:
                raise RuntimeError(f"backup {made.path} does not read back: {'; '.join(checked.problems[:5])}")
            return {"backup": str(made.path), "rows": made.rows, "lake_files": made.lake_files, "bytes": made.bytes}

        backup()

    return _backup()


FRESHNESS_SCHEDULE = "*/15 * * * *"


def _metrics_textfile(wh: Any, catalog: Any, errors: list[str]) -> str | None:
    """The platform's gauges written where `LGSP_METRICS_TEXTFILE` says (node_exporter's textfile collector), if
    it says; a failure is said in `errors` and the log: the freshness check stands."""
    from lgsp.metrics import textfile_setting, write_textfile

    path = textfile_setting()
    if path is None:
        return None
    try:
        return str(write_textfile(path, wh, catalog))
    except Exception as exc:  # noqa: BLE001
        errors.append(f"metrics not written to {path}: {type(exc).__name__}: {exc}"[:500])
        log.warning("lgsp_freshness: %s", errors[-1])
        return None


def freshness_dag() -> Any:
    """`lgsp_freshness`: every 15 minutes, each pipeline's last complete sync judged against its objective
    (`lgsp.freshness`); one alert when one goes stale, one when it is fresh again."""
    from airflow.sdk import dag, task

    @dag(dag_id="lgsp_freshness", description="Alert when a pipeline's data gets older than its objective",
         schedule=_timetable(FRESHNESS_SCHEDULE), start_date=START_DATE, catchup=False, max_active_runs=1,
         tags=["lgsp", "freshness"], default_args=_default_args(2),
         doc_md="Judges every pipeline with a `freshness` objective (catalog/pipelines.yaml) by the age of its last "
                "complete sync, keeps the states in `lgsp_freshness` and sends one alert (LGSP_ALERT_*) when a "
                "pipeline goes stale and one when it is fresh again (and one when an agency starts reading far "
                "more of a dataset than it usually does: gateway.usage). It does not fail on a stale pipeline (that "
                "would alert every 15 minutes); `lgsp status` shows the same, with the last runs' errors.")
    def _freshness() -> None:
        @task(task_id="check")
        def check() -> dict[str, Any]:
            from catalog import load_catalog as _load
            from lgsp.freshness import check_and_alert
            from lgsp.runner import open_warehouse

            current = _load()
            wh = open_warehouse(current)
            result = check_and_alert(wh, current)
            result["metrics"] = _metrics_textfile(wh, current, result["errors"])
            return result

        check()

    return _freshness()


def drift_dag(name: str, catalog: Catalog) -> Any:
    """`lgsp_drift_<dataset>`: on its `drift_schedule`, a sample of the copy asked of its source (`lgsp.drift`)."""
    from airflow.sdk import dag, task

    lookup = catalog.sharing[name].lookup
    assert lookup is not None and lookup.drift_schedule is not None

    @dag(dag_id=f"lgsp_drift_{name}", description=f"Check a sample of {name} against {lookup.system}",
         schedule=_timetable(lookup.drift_schedule), start_date=START_DATE, catchup=False, max_active_runs=1,
         tags=["lgsp", "drift", lookup.system], default_args=_default_args(2, retry_delay_s=600.0),
         doc_md=f"Asks {lookup.system} for {lookup.drift_sample} random records of lgsp's copy of {name} through "
                "its live lookup and compares them (`lgsp drift`). Fails, without retries and with an alert, when "
                "a record drifted silently (changed at the source with its cursor field not newer: no incremental "
                "sync will bring it); retries when the source could not be asked for most of the sample.")
    def _drift() -> None:
        @task(task_id="check", pool=system_pool(lookup.system))
        def check() -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            from lgsp.drift import SilentDrift, scheduled_check

            try:
                return scheduled_check(name)
            except SilentDrift as exc:
                raise AirflowFailException(str(exc)) from None  # a retry would find the same

        check()

    return _drift()


NOTIFY_SCHEDULE = "*/5 * * * *"  # retries of failed deliveries; quarantine replays update no Asset


def followed_datasets(catalog: Catalog) -> list[str]:
    """The shared datasets that have a change feed (gateway.changes.feed_problem: core or mart tables, not
    append logs), judged here without importing the gateway: the DAG processor parses this module."""
    return [name for name in sorted(catalog.sharing) if name in catalog.datasets
            and catalog.datasets[name].layer in ("core", "mart") and catalog.datasets[name].write_mode != "append"]


def followed_assets(catalog: Catalog) -> list[Any]:
    """The Assets `lgsp_notify` runs on: those of `followed_datasets`."""
    return [indicators_mart_asset() if catalog.datasets[name].layer == "mart" else dataset_asset(name)
            for name in followed_datasets(catalog)]


def notify_dag(catalog: Catalog) -> Any:
    """`lgsp_notify`: send agencies' webhooks what changed, when a shared dataset changes and every 5 minutes."""
    from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, dag, task

    assets = followed_assets(catalog)
    every = CronTriggerTimetable(NOTIFY_SCHEDULE, timezone=VN_TIMEZONE)

    @dag(dag_id="lgsp_notify", description="Tell agencies' webhooks which shared datasets changed",
         schedule=AssetOrTimeSchedule(timetable=every, assets=AssetAny(*assets)) if assets else every,
         start_date=START_DATE, catchup=False, max_active_runs=1, tags=["lgsp", "gateway", "webhooks"],
         default_args=_default_args(2),
         doc_md="One dispatch of `gateway.webhooks`: each agency webhook whose dataset changed since its endpoint "
                "last acknowledged gets one signed notification (Standard Webhooks); before it, grants ending within "
                "14 days (or ended) become their agencies' `grant.ending` (`grant.ended`) events, and each access "
                "webhook gets its agency's events (requests decided, grants changed, ending or ended: "
                "`gateway.events`). Failed deliveries are tried "
                "again by later runs (30 s doubling to 1 h); the task fails when a webhook dies (10 failures in a "
                "row, or 410 Gone): `lgsp webhooks retry`.")
    def _notify() -> None:
        @task(task_id="dispatch")
        def dispatch() -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            from gateway.webhooks import scheduled_dispatch

            summary = scheduled_dispatch()
            dead = [d["webhook_id"] for d in summary["deliveries"] if d["outcome"] in ("dead", "gone")]
            if dead:  # a retry would not revive them; the failure alerts (on_task_failure)
                raise AirflowFailException(f"webhook(s) {', '.join(dead)} stopped: " + "; ".join(
                    d["error"] for d in summary["deliveries"] if d["webhook_id"] in dead))
            return summary

        dispatch()

    return _notify()


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
    dags["lgsp_maintenance"] = maintenance_dag()
    dags["lgsp_backup"] = backup_dag()
    if any(p.freshness is not None for p in catalog.pipelines.values()):
        dags["lgsp_freshness"] = freshness_dag()
    dags["lgsp_notify"] = notify_dag(catalog)
    dags.update({f"lgsp_drift_{name}": drift_dag(name, catalog) for name, shared in catalog.sharing.items()
                 if shared.lookup is not None and shared.lookup.drift_schedule is not None})
    return dags
