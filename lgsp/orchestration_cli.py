"""`lgsp airflow start|trigger` and `lgsp backfill`: the CLI of lgsp.orchestration and lgsp.backfill.

    lgsp airflow start [--port 8080] [--executor local|celery --workers 2]   every component, until Ctrl-C
    lgsp airflow trigger PIPELINE [--url http://127.0.0.1:8080]            a run through the REST API, waited for
    lgsp backfill PIPELINE --from 2025-08-01 --to 2025-08-04 [--every @daily] [--inline]
"""
from __future__ import annotations

import signal
import time
from datetime import datetime, timezone
from typing import Any

import typer
from rich.table import Table

from catalog import load_catalog
from lgsp.settings import load_settings, redact_url

airflow_app = typer.Typer(help="Run lgsp's DAGs under the real Airflow scheduler.", no_args_is_help=True)


def _console() -> Any:
    from lgsp.cli import console

    return console


def _fail(message: str) -> None:
    from lgsp.cli import fail

    fail(message)


@airflow_app.command("start")
def airflow_start(port: int = typer.Option(8080, help="port of the api-server (UI and REST API)"),
                  executor: str = typer.Option("local", help="local (one machine) or celery (workers, Redis)"),
                  workers: int = typer.Option(0, help="Celery workers to start here (with --executor celery)"),
                  concurrency: int = typer.Option(2, help="tasks per Celery worker"),
                  broker: str = typer.Option("redis://127.0.0.1:6379/0", help="Celery broker URL")) -> None:
    """Start api-server, scheduler, dag-processor and triggerer (and Celery workers) until Ctrl-C.

    Metadata: SQLite under LGSP_HOME/airflow, or PostgreSQL from LGSP_AIRFLOW_DATABASE_URL
    (required for --executor celery). Log in as `admin`; the password is in
    LGSP_HOME/airflow/simple_auth_manager_passwords.json.generated.
    """
    from lgsp.orchestration import AirflowStack, StackError, StackOptions

    console, settings = _console(), load_settings()
    options = StackOptions(port=port, executor=executor, workers=workers, worker_concurrency=concurrency,
                           broker_url=broker)
    try:
        stack = AirflowStack(settings, options)
        console.print(f"starting Airflow ({options.executor} executor, metadata "
                      f"{redact_url(stack.env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN'])}) ...")
        stack.start()
    except StackError as exc:
        _fail(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    console.print(f"Airflow is up: {options.base_url} (user admin, password in "
                  f"{settings.airflow_home}/simple_auth_manager_passwords.json.generated); logs in {stack.log_dir}")
    try:
        while True:
            time.sleep(5)
            stack._check_alive()
    except KeyboardInterrupt:
        console.print("stopping Airflow ...")
    except StackError as exc:
        console.print(f"[bold red]error:[/] {exc}")
    finally:
        stack.stop()


@airflow_app.command("trigger")
def airflow_trigger(pipeline: str = typer.Argument(..., help="pipeline name, or a DAG id (lgsp_...)"),
                    url: str = typer.Option("http://127.0.0.1:8080", help="the api-server"),
                    wait: bool = typer.Option(True, help="wait for the run to end"),
                    timeout: float = typer.Option(600, help="seconds to wait")) -> None:
    """Trigger a DAG run through Airflow's REST API (of `lgsp airflow start`) and wait for its end."""
    from lgsp.orchestration import AirflowApi, StackError

    dag_id = pipeline if pipeline.startswith("lgsp_") else f"lgsp_{pipeline}"
    api = AirflowApi(url, load_settings().airflow_home)
    try:
        run_id = api.trigger(dag_id)
        _console().print(f"triggered {dag_id} run {run_id}")
        if wait:
            state = api.wait_for_run(dag_id, run_id, timeout)
            _console().print(f"{dag_id} {run_id}: {state}")
            if state != "success":
                raise typer.Exit(1)
    except StackError as exc:
        _fail(str(exc))


def backfill(pipeline: str = typer.Argument(..., help="pipeline name (see `lgsp pipelines`)"),
             start: str = typer.Option(..., "--from", help="first day (Vietnam time) or ISO instant, inclusive"),
             end: str = typer.Option(..., "--to", help="last day or instant, exclusive"),
             every: str = typer.Option(None, help="cut at this cron/preset instead of the pipeline's schedule"),
             inline: bool = typer.Option(False, help="run in this process instead of on Airflow"),
             in_peak: bool = typer.Option(False, help="in the system's peak hours: run now, at the peak rate"),
             off_peak: bool = typer.Option(False, help="in the system's peak hours: wait for their end (on Airflow "
                                           "each run's extract task is rescheduled to it)")) -> None:
    """Re-pull exactly the data intervals in [--from, --to): one DAG run per interval, cursor untouched."""
    from lgsp import backfill as bf
    from lgsp.cli import peak_gate

    catalog, started = load_catalog(), datetime.now(timezone.utc)
    try:
        spec = catalog.pipeline(pipeline)
        intervals = bf.data_intervals(bf.local_midnight(start), bf.local_midnight(end), every or spec.schedule)
    except (KeyError, ValueError) as exc:
        _fail(f"backfill {pipeline}: {exc}")
    if spec.source.until_param is None and len(intervals) > 0:
        _fail(f"backfill {pipeline}: source {spec.source.system}.{spec.source.operation} has no until_param, so it "
              "cannot be asked for a closed interval; declare it in catalog/pipelines.yaml")
    peak_gate(catalog, pipeline, bool(intervals), in_peak, off_peak, inline)
    _console().print(f"backfill {pipeline}: {len(intervals)} interval(s) from {intervals[0].start} to "
                     f"{intervals[-1].end}")
    try:
        _run_intervals(pipeline, intervals, inline, in_peak or (off_peak and inline))
    except Exception as exc:  # noqa: BLE001 - one clear message
        _fail(f"backfill {pipeline}: {type(exc).__name__}: {exc}")
    _print_batches(pipeline, started)


def _run_intervals(pipeline: str, intervals: list[Any], inline: bool, in_peak: bool = False) -> None:
    from lgsp import airflow_env, runner
    from lgsp.cli import step

    if inline:
        for interval in intervals:
            with step(f"{pipeline} {interval}"):
                runner.run_pipeline(pipeline, since=interval.start, until=interval.end, in_peak=in_peak)
        return
    settings = load_settings()
    airflow_env.configure(settings)
    with step("preparing Airflow metadata DB"):
        airflow_env.ensure_metadata_db(settings)
        airflow_env.ensure_pools(settings)
        dagbag = airflow_env.load_dagbag()
    for interval in intervals:
        with step(f"Airflow: lgsp_{pipeline} {interval}"):
            airflow_env.run_dag(f"lgsp_{pipeline}", dagbag, conf={**interval.conf(), "in_peak": in_peak},
                                logical_date=interval.start)


def _print_batches(pipeline: str, since: datetime) -> None:
    """The batches this backfill wrote: window, rows pulled, landed, changed."""
    import sqlalchemy as sa

    from lgsp.runner import open_warehouse

    wh = open_warehouse()
    table = wh.system["lgsp_batch"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.pipeline == pipeline, table.c.started_at >= since)
                            .order_by(table.c.cursor_from)).all()
    out = Table(title=f"Backfill batches of {pipeline}")
    for col in ("from", "until", "rows pulled", "landed", "changed", "status"):
        out.add_column(col)
    for r in rows:
        out.add_row(str(r.cursor_from), str(r.cursor_until), str(r.rows_pulled), str(r.rows_landed),
                    str(r.rows_changed), r.status)
    _console().print(out)


def register(app: typer.Typer) -> None:
    """Add `lgsp airflow ...` and `lgsp backfill` to the lgsp CLI."""
    app.add_typer(airflow_app, name="airflow")
    app.command(name="backfill")(backfill)
