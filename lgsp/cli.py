"""The `lgsp` command line.

    lgsp demo                 sandbox + every pipeline on Airflow + indicators + summary
    lgsp run PIPELINE         one pipeline (on Airflow, or --inline in this process)
    lgsp pipelines            list the catalog's pipelines
    lgsp sandbox              serve the sandbox systems until Ctrl-C
    lgsp catalog              validate the catalog
    lgsp discover SYSTEM OP   draft a dataset and its pipeline from what a declared system answers
    lgsp discover --compare P does P's system still answer as the catalog says? exit 1 if a sync would fail
    lgsp quarantine list|show|replay|close   see, replay and close rejected rows
    lgsp drift DATASET        ask the source for a sample of lgsp's copy now: what drifted, and why
    lgsp reconcile [PIPELINE] does lgsp hold every record the source counts (copy + quarantine)?
    lgsp status               every dataset fresh, every report due acknowledged? exit 1 if not
    lgsp doctor               is this machine ready? store, secrets, lake, disk, backups, gateway; exit 1 if not
    lgsp push FEED            enqueue and send a push feed (outbox)
    lgsp outbox list|retry    see the outbox, re-send dead letters
    lgsp health               probe every system; --history for success rate and latency
    lgsp lake info|compact|conform   files and rows per partition; merge small files; rewrite to the definition
    lgsp warehouse plan|migrate   bring core tables to their datasets' changed definitions
    lgsp indicators compute|list|export|dashboard|rank   indicators, open data, the dashboard, rankings
    lgsp airflow start        api-server, scheduler, dag-processor, triggerer (+ Celery workers) until Ctrl-C
    lgsp airflow trigger P    trigger a pipeline through Airflow's REST API and wait for it
    lgsp backfill P --from D --to D   re-pull exactly those data intervals, one DAG run each
    lgsp serve                the sharing gateway (REST + CKAN API) over the shared views
    lgsp agencies ...         agencies, API keys, OAuth2 clients, grants
    lgsp audit verify|list    the gateway's hash-chained audit of every read
    lgsp merger run|report|communes   province-merger consolidation (docs/merger.md)
    lgsp backup create|list|verify|restore   everything lgsp keeps, backed up and put back (docs/deploy.md)
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from catalog import CatalogError, load_catalog
from catalog.models import LOCAL_TZ
from lgsp.settings import load_settings, operator, redact_url

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lgsp: data integration and sharing for a Vietnamese province (LGSP).")
console = Console(highlight=False, emoji=False)


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def step(title: str) -> Iterator[None]:
    """Show a long step while it runs, then its duration."""
    started = time.monotonic()
    console.print(f"[cyan]->[/] {title} ...")
    with console.status(title, spinner="dots"):
        yield
    console.print(f"   [green]done[/] {title} ({time.monotonic() - started:.1f}s)")


def _cause(pipeline: str) -> str:
    """The recorded reason of the pipeline's last failed batch, if any."""
    try:
        from lgsp.report import last_failure
        from warehouse import Warehouse

        message = last_failure(Warehouse(load_settings().database_url, load_catalog()), pipeline)
    except Exception:  # noqa: BLE001 - the cause is a courtesy; the error itself is already shown
        return ""
    return f"\n   cause: {message}" if message else ""


def _start_sandbox(seed: int, citizens: int, dossiers: int) -> Any:
    """Start every sandbox system and point this process's environment (and its children) at them."""
    from sandbox import start_sandbox

    handle = start_sandbox(seed=seed, citizens=citizens, dossiers=dossiers, api_key=secrets.token_urlsafe(24))
    os.environ.update(handle.env())
    return handle


def _airflow_run(dag_ids: list[str], task_retries: bool = True, conf: dict[str, Any] | None = None) -> None:
    from lgsp import airflow_env

    settings = load_settings()
    airflow_env.configure(settings)
    with step("preparing Airflow metadata DB (SQLite under var/airflow)"):
        airflow_env.ensure_metadata_db(settings)
        airflow_env.ensure_pools(settings)
    with step("parsing the DAG folder"):
        dagbag = airflow_env.load_dagbag()
    for dag_id in dag_ids:
        with step(f"Airflow: {dag_id}"):
            airflow_env.run_dag(dag_id, dagbag, conf=conf, task_retries=task_retries)


@app.command()
def demo(seed: int = typer.Option(37, help="sandbox data seed"),
         citizens: int = typer.Option(2000, help="citizens in the population sandbox"),
         dossiers: int = typer.Option(6000, help="dossiers in the TTHC sandbox"),
         inline: bool = typer.Option(False, help="run the pipelines in this process, without Airflow")) -> None:
    """Start the sandbox, run every pipeline and the indicators on Airflow, print a summary."""
    settings, catalog = load_settings(), load_catalog()
    console.print(f"[bold]lgsp demo[/]: warehouse {redact_url(settings.database_url)}, lake {settings.lake_root}")
    with step(f"starting sandbox services (seed {seed}: {citizens} citizens, {dossiers} dossiers)"):
        handle = _start_sandbox(seed, citizens, dossiers)
    console.print("   " + ", ".join(f"{name} {url}" for name, url in handle.urls.items()))
    pushes = [f.name for f in catalog.feeds.values() if not f.after]
    drifts = [n for n, s in catalog.sharing.items() if s.lookup is not None and s.lookup.drift_schedule is not None]
    from gateway.demo import AGENCY, ASKED, DATASET, DemoAgency

    with step(f"a demo agency ({AGENCY}) granted {DATASET}, with webhooks at an endpoint served here; it asks for "
              f"{ASKED}, the province approves"):
        try:
            agency = DemoAgency(settings, catalog)
        except Exception as exc:  # noqa: BLE001 - one clear message
            handle.stop()
            fail(f"the demo agency could not be registered: {type(exc).__name__}: {exc}")
    try:
        _demo_run(settings, catalog, handle, agency, inline, pushes, drifts)
    finally:
        agency.close()


def _demo_run(settings: Any, catalog: Any, handle: Any, agency: Any, inline: bool, pushes: list[str],
              drifts: list[str]) -> None:
    """The demo from the pipelines on, while the demo agency's endpoint is served."""
    from gateway.demo import AGENCY, ASKED, agency_copy
    from indicators import compute_indicator
    from lgsp import runner
    from lgsp.report import print_summary
    from warehouse import Warehouse

    try:
        if inline:
            from gateway.webhooks import scheduled_dispatch
            from lgsp import outbox

            for name in catalog.pipelines:
                with step(f"pipeline {name}"):
                    runner.run_pipeline(name, catalog=catalog, settings=settings)
            wh = runner.open_warehouse(catalog, settings)
            for spec in catalog.indicators.values():
                with step(f"indicator {spec.name}"):
                    compute_indicator(wh, spec)
            for feed in catalog.feeds:
                with step(f"push {feed}"):
                    outbox.push(wh, catalog, feed)
            for name in drifts:
                with step(f"drift check of {name}"):
                    from lgsp.drift import scheduled_check

                    scheduled_check(name)
            with step("telling agencies' webhooks what changed"):
                scheduled_dispatch()
            with step("backing up the store, the lake and GX's results"):
                from lgsp.backup import create

                create()
        else:
            _airflow_run([f"lgsp_{p}" for p in catalog.pipelines] + ["lgsp_indicators"]
                         + [f"lgsp_push_{f}" for f in pushes] + [f"lgsp_drift_{n}" for n in drifts]
                         + ["lgsp_notify", "lgsp_backup"], task_retries=False)
        from lgsp.reconcile import reconcile as count

        with step("counting every pipeline's records at its source and in lgsp"):
            counting = runner.open_warehouse(catalog, settings)
            counted = [count(catalog, counting, p.name) for p in catalog.pipelines.values() if p.source.total_field]
            counting.engine.dispose()
    except Exception as exc:  # noqa: BLE001 - every failure ends as one clear message
        handle.stop()
        causes = "".join(_cause(p) for p in catalog.pipelines)
        fail(f"{type(exc).__name__}: {exc}{causes}")
    handle.stop()
    wh = Warehouse(settings.database_url, catalog)
    print_summary(console, wh, catalog)
    from lgsp.report import print_reconciliation

    print_reconciliation(console, counted)
    told = agency.told
    if told.events:
        what = "; ".join(f"{e['dataset']} changed ({e['changes']} write(s), {e['rows_changed']} rows)"
                         for e in told.events)
        console.print(f"Agency told: {AGENCY}'s webhook got {len(told.events)} signed notification(s): {what}"
                      + (f"; {told.refused} refused (bad signature)" if told.refused else ""), soft_wrap=True)
    else:
        console.print(f"Agency told: nothing, as nothing it follows changed ({AGENCY}'s webhook on enterprise; "
                      "lgsp webhooks list)" + (f"; {told.refused} refused (bad signature)" if told.refused else ""),
                      soft_wrap=True)
    if told.request_id:
        got = ", ".join(f"{e['type']} ({e['data'].get('status') or e['data'].get('change')})" for e in told.access)
        console.print(f"Access request: {AGENCY} asked for {ASKED} ({told.request_id}), the province approved it; "
                      f"its access webhook was told: {got or 'nothing'} (GET /api/v1/events; lgsp webhooks access)",
                      soft_wrap=True)
    with step(f"an agency's copy of enterprise ({AGENCY}) kept by the gateway's change feed"):
        try:
            copied, copy_path = agency_copy(settings, catalog, agency)
        except Exception as exc:  # noqa: BLE001 - one clear message
            fail(f"the demo agency's copy failed: {type(exc).__name__}: {exc}")
    console.print(f"Agency copy: {copied.dataset} -> {copy_path} ({'snapshot' if copied.snapshot else 'changes'}: "
                  f"{copied.upserts} upserted, {copied.deletes} deleted; {copied.rows} rows; "
                  f"lgsp mirror {copied.dataset} --gateway URL --into ... keeps one)"
                  + "".join(f"; {note}" for note in copied.notes), soft_wrap=True)
    commune = agency.commune
    if commune is not None:
        console.print(f"Commune scope: {commune.agency} reads {commune.read:,} of the province's {commune.province:,} "
                      f"citizens, those of commune {commune.commune}"
                      + (f" [bold red]and {commune.beyond} of other communes[/]" if commune.beyond else "")
                      + f" (lgsp agencies grant {commune.agency} citizen --scope commune_code={commune.commune})",
                      soft_wrap=True)
        console.print(f"Disclosure report: resident {commune.resident} of commune {commune.commune}: "
                      f"{commune.named} read(s) named them; reads that may have included their record: "
                      f"{', '.join(commune.may_have) or 'none'} (lgsp audit subject ID); the notice to hand them: "
                      f"{commune.notice}", soft_wrap=True)
    console.print(f"Data: warehouse {redact_url(settings.database_url)}; lake {settings.lake_root} "
                  f"(landing/ as received, raw/<dataset>/ingest_date=.../*.parquet)")
    from lgsp.backup import backups
    from lgsp.backup_cli import said

    made = backups()
    if made:
        console.print(f"Backup: {said(made[-1])} (lgsp backup list; lgsp backup restore NAME --yes puts one back)",
                      soft_wrap=True)
    from lgsp import metrics

    console.print(f"Monitoring: {metrics.said(wh, catalog)} (lgsp metrics; GET /metrics on the gateway with "
                  f"{metrics.TOKEN_ENV}; alert rules in deploy/prometheus/lgsp-alerts.yml)", soft_wrap=True)
    from connectors.limits import peak_state
    from lgsp.status import peak_line

    for system in catalog.systems.values():
        peak = peak_state(system)
        if peak is not None:
            console.print(f"Peak hours: {peak_line(peak)} (limits.peak; lgsp status)", soft_wrap=True)
    from indicators.cli import publish

    for what, path in publish(wh, catalog, settings).items():
        console.print(f"{what.capitalize()}: {path}")


def peak_gate(catalog: Any, pipeline: str, bulk: bool, in_peak: bool, off_peak: bool, inline: bool) -> None:
    """Before a bulk pull (full refresh, backfill) in its system's peak hours (`limits.peak.bulk: wait`): refuse,
    saying when they end and what to do; with `off_peak` wait here for their end (inline) or say that the
    extract task waits on Airflow; with `in_peak` go on."""
    from lgsp import runner

    if in_peak and off_peak:
        fail("--in-peak runs it now and --off-peak waits for the peak's end: give one or the other")
    if not bulk or in_peak:
        return
    try:
        runner.check_off_peak(runner.context(pipeline, catalog), True)
    except runner.InPeakHours as exc:
        if not off_peak:
            fail(str(exc))
        local = f"{exc.until.astimezone(LOCAL_TZ):%H:%M}"
        if not inline:
            console.print(f"{pipeline}: in its system's peak hours: the extract task waits on Airflow until {local} "
                          "local time (rescheduled)")
            return
        with step(f"waiting until {local} local time, the end of the system's peak hours"):
            time.sleep(max(0.0, (exc.until - datetime.now(timezone.utc)).total_seconds()))


def _instant(text: str | None, option: str) -> Any:
    """A --since/--until value: a date (local midnight in Vietnam) or an ISO 8601 instant."""
    from datetime import timedelta

    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r} is not a date (2025-08-01) or an ISO 8601 instant (2025-08-01T00:00:00+07:00)")
    return value if value.tzinfo else value.replace(tzinfo=timezone(timedelta(hours=7)))


@app.command()
def run(pipeline: str = typer.Argument(..., help="pipeline name (see `lgsp pipelines`)"),
        full_refresh: bool = typer.Option(False, help="ignore the cursor and pull everything"),
        since: str = typer.Option(None, help="backfill from this date or instant (inclusive)"),
        until: str = typer.Option(None, help="backfill up to this date or instant (exclusive)"),
        inline: bool = typer.Option(False, help="run in this process instead of on Airflow"),
        retries: bool = typer.Option(True, help="let Airflow retry failed tasks (per the catalog)"),
        delete_missing: bool = typer.Option(False, help="with --full-refresh: remove the records the source no "
                                            "longer has (deleted without a marker; kept in the lake's removed/)"),
        delete_max: float = typer.Option(0.1, min=0.0, max=1.0, help="--delete-missing removes nothing if more "
                                         "than this share of the source's records would go"),
        in_peak: bool = typer.Option(False, help="a full refresh or backfill in the system's peak hours: run it now, "
                                     "at the peak rate (limits.peak)"),
        off_peak: bool = typer.Option(False, help="a full refresh or backfill in the system's peak hours: wait for "
                                      "their end (on Airflow the extract task is rescheduled to it)")) -> None:
    """Run one pipeline now: incremental from its cursor, --full-refresh, or a --since/--until backfill."""
    from lgsp import runner

    catalog = load_catalog()
    start, end = _instant(since, "--since"), _instant(until, "--until")
    if full_refresh and (start or end):
        fail("--full-refresh reads the whole source and --since/--until a window of it (a backfill): give one or "
             "the other")
    if delete_missing and not full_refresh:
        fail("--delete-missing needs --full-refresh: only a full refresh reads every record the source has")
    deleting = delete_max if delete_missing else None
    try:
        catalog.pipeline(pipeline)
        peak_gate(catalog, pipeline, bool(full_refresh or start or end), in_peak, off_peak, inline)
        if inline:
            with step(f"pipeline {pipeline}"):
                result = runner.run_pipeline(pipeline, full_refresh=full_refresh, catalog=catalog,
                                             since=start, until=end, delete_missing=deleting,
                                             in_peak=in_peak or off_peak)
            console.print({k: result[k] for k in ("batch_id", "mode", "rows_pulled", "rows_landed",
                                                  "rows_quarantined", "rows_changed", "rows_deleted") if k in result})
        else:
            conf = {"full_refresh": full_refresh, "since": start.isoformat() if start else None,
                    "until": end.isoformat() if end else None, "delete_missing": deleting, "in_peak": in_peak}
            _airflow_run([f"lgsp_{pipeline}"], task_retries=retries, conf=conf)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        cause = _cause(pipeline)
        fail(f"pipeline {pipeline}: {type(exc).__name__}: {exc}{cause if str(exc) not in cause else ''}")


@app.command()
def pipelines() -> None:
    """List the pipelines in the catalog."""
    catalog = load_catalog()
    table = Table(title="Pipelines (catalog/pipelines.yaml)")
    for col in ("pipeline", "DAG", "source", "dataset", "schedule", "retries"):
        table.add_column(col)
    for p in catalog.pipelines.values():
        table.add_row(p.name, f"lgsp_{p.name}", f"{p.source.system}.{p.source.operation}", p.dataset,
                      str(p.schedule), str(p.retries))
    console.print(table)


@app.command(name="catalog")
def check_catalog() -> None:
    """Validate the catalog files; exit non-zero naming the file and field if one is wrong.

    Beyond the files' shapes: every row rule, paginator and auth method named, and their parameters
    (lgsp's own and installed extensions', which are listed)."""
    from rich.markup import escape

    from catalog.loader import CATALOG_DIR
    from lgsp.catalog_check import problems
    from lgsp.plugins import load_plugins

    c = load_catalog()
    wrong = problems(c, Path(os.environ.get("LGSP_CATALOG_DIR") or CATALOG_DIR))
    for plugin in load_plugins():
        console.print(f"extension {escape(plugin.said())}", style="red" if plugin.error else None)
    for problem in wrong:
        console.print(f"[bold red]error:[/] {escape(problem)}")
    broken = [p for p in load_plugins() if p.error]
    if wrong or broken:
        raise typer.Exit(1)
    console.print(f"catalog ok: {len(c.systems)} systems, {len(c.datasets)} datasets, "
                  f"{len(c.pipelines)} pipelines, {len(c.indicators)} indicators")


@app.command()
def docs(folder: str = typer.Option("docs/datasets", help="where to write the pages")) -> None:
    """Generate the data dictionary (a page and a JSON Schema per dataset) from the catalog."""
    from pathlib import Path

    from lgsp.settings import REPO_ROOT
    from schemas.docs import write_dataset_docs

    target = Path(folder) if Path(folder).is_absolute() else REPO_ROOT / folder
    for path in write_dataset_docs(list(load_catalog().datasets.values()), target):
        console.print(f"wrote {path}")


@app.command()
def sandbox(seed: int = 37, citizens: int = 2000, dossiers: int = 6000) -> None:
    """Serve the sandbox systems on loopback until Ctrl-C.

    The endpoints and the sandbox's API key are written to `<LGSP_HOME>/sandbox.env`
    (mode 600; the key is not printed): `source var/sandbox.env` in another shell,
    then `lgsp run PIPELINE`.
    """
    settings = load_settings()
    handle = _start_sandbox(seed, citizens, dossiers)
    env_file = settings.home / "sandbox.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(handle.env().items())))
    for name, url in handle.urls.items():
        console.print(f"{name:<16} {url}")
    console.print(f"environment for `lgsp run`: source {env_file}   (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        handle.stop()


quarantine_app = typer.Typer(help="See, replay and close rows rejected by the row rules.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


def _warehouse() -> Any:
    from warehouse import Warehouse

    wh = Warehouse(load_settings().database_url, load_catalog())
    wh.create_all()
    return wh


@quarantine_app.command("list")
def quarantine_list(dataset: str = typer.Option(None, help="only this dataset"),
                    status: str = typer.Option("open", help="open, replayed, closed or all"),
                    limit: int = typer.Option(50, help="rows at most")) -> None:
    """Counts per dataset and rule, then the rows themselves."""
    from lgsp import quarantine

    wh = _warehouse()
    counts = Table(title="Quarantine by dataset and rule")
    for col in ("dataset", "rule", "status", "rows"):
        counts.add_column(col)
    for row in quarantine.summary(wh):
        counts.add_row(row["dataset"], row["rule"], row["status"], str(row["rows"]))
    console.print(counts)
    rows = Table(title=f"Rows ({status}, first {limit})")
    for col in ("id", "dataset", "key", "rule", "reason"):
        rows.add_column(col)
    for row in quarantine.list_quarantine(wh, dataset, status, limit):
        rows.add_row(row["quarantine_id"][:12], row["dataset"], row["record_key"] or "", row["rule"], row["reason"])
    console.print(rows)


@quarantine_app.command("show")
def quarantine_show(quarantine_id: str = typer.Argument(..., help="id or unique prefix (see `list`)")) -> None:
    """One quarantined row: rule, reason, batch and the raw payload as received."""
    from lgsp import quarantine

    row = quarantine.show(_warehouse(), quarantine_id)
    if row is None:
        fail(f"no single quarantined row with id starting {quarantine_id!r}")
    console.print_json(json.dumps(row, default=str, ensure_ascii=False))


@quarantine_app.command("close")
def quarantine_close(quarantine_id: str = typer.Argument(..., help="id or unique prefix of an open row")) -> None:
    """Mark an open row closed once dealt with (a live lookup's rejected answer, which no pipeline replays); kept."""
    from lgsp import quarantine

    row = quarantine.close(_warehouse(), quarantine_id)
    if row is None:
        fail(f"no single open quarantined row with id starting {quarantine_id!r} (see `lgsp quarantine list`)")
    console.print(f"closed {row['quarantine_id'][:12]} ({row['dataset']} {row['record_key']}, {row['rule']}, "
                  f"from {row['pipeline']})")


@quarantine_app.command("replay")
def quarantine_replay(pipeline: str = typer.Argument(..., help="pipeline whose open rows to re-check")) -> None:
    """Re-check a pipeline's open quarantined rows (after a fix) and land the ones that pass."""
    from lgsp import quarantine, runner

    try:
        result = quarantine.replay(runner.context(pipeline))
    except KeyError as exc:
        fail(str(exc))
    console.print(f"replayed {result['replayed']}: landed {result['landed']}, "
                  f"still rejected {result['still_rejected']}")


@app.command()
def push(feed: str = typer.Argument(..., help="feed name (catalog/feeds.yaml)"),
         inline: bool = typer.Option(False, help="run in this process instead of on Airflow")) -> None:
    """Queue what the receiver has not got yet, then send the feed's pending messages."""
    from lgsp import outbox

    catalog = load_catalog()
    if feed not in catalog.feeds:
        fail(f"no feed named {feed!r} (known: {', '.join(sorted(catalog.feeds))})")
    try:
        if inline:
            with step(f"push {feed}"):
                counts = outbox.push(_warehouse(), catalog, feed)
            console.print(counts)
        else:
            _airflow_run([f"lgsp_push_{feed}"], task_retries=False)
    except Exception as exc:  # noqa: BLE001
        fail(f"push {feed}: {type(exc).__name__}: {exc}")


outbox_app = typer.Typer(help="See the push outbox and re-send dead letters.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")


@outbox_app.command("list")
def outbox_list(feed: str = typer.Option(None, help="only this feed"),
                status: str = typer.Option(None, help="pending, failed, acked or dead"),
                limit: int = typer.Option(50, help="messages at most")) -> None:
    """Counts per feed and status, then the newest messages."""
    from lgsp import outbox

    wh = _warehouse()
    counts = Table(title="Outbox by feed and status")
    for col in ("feed", "status", "messages"):
        counts.add_column(col)
    for (name, state), n in sorted(outbox.counts_by_status(wh).items()):
        counts.add_row(name, state, str(n))
    console.print(counts)
    rows = Table(title=f"Messages ({status or 'any status'}, newest {limit})")
    for col in ("message", "feed", "status", "records", "attempts", "last error"):
        rows.add_column(col)
    for m in outbox.list_messages(wh, feed, status, limit):
        rows.add_row(m["message_id"][:12], m["feed"], m["status"], str(m["records"]), str(m["attempts"]),
                     (m["last_error"] or "")[:120])
    console.print(rows)


@outbox_app.command("retry")
def outbox_retry(message_ids: list[str] = typer.Argument(None, help="message ids (default: every dead one)"),
                 feed: str = typer.Option(None, help="only this feed's dead letters"),
                 send: bool = typer.Option(True, help="send them now")) -> None:
    """Give dead letters a fresh retry budget and (by default) send them now."""
    from lgsp import outbox

    wh, catalog = _warehouse(), load_catalog()
    requeued = outbox.requeue(wh, message_ids or None, feed)
    console.print(f"requeued {requeued} dead message(s)")
    if send and requeued:
        for name in [feed] if feed else list(catalog.feeds):
            console.print(f"{name}: {outbox.dispatch(wh, catalog, catalog.feeds[name])}")


lake_app = typer.Typer(help="See, compact and prune the lake (raw/<dataset>/ingest_date=..., landing/).",
                       no_args_is_help=True)
app.add_typer(lake_app, name="lake")


def _lake_dataset(lake: Any, dataset: str | None) -> list[str]:
    """The datasets a lake command works on; fails naming the known ones if `dataset` is not there."""
    known = lake.datasets()
    if dataset and dataset not in known:
        fail(f"no dataset {dataset!r} in the lake at {lake.root} (known: {', '.join(known) or 'none'})")
    return [dataset] if dataset else known


@lake_app.command("info")
def lake_info(dataset: str = typer.Argument(None, help="one dataset (default: all)")) -> None:
    """Files, rows and size per dataset and ingest_date partition."""
    from warehouse.lake import Lake

    lake = Lake(load_settings().lake_root)
    table = Table(title=f"Lake {lake.root / 'raw'}")
    for col in ("dataset", "ingest_date", "files", "rows", "MB"):
        table.add_column(col)
    for name in _lake_dataset(lake, dataset):
        for p in lake.info(name):
            table.add_row(p.dataset, p.ingest_date.isoformat(), str(p.files), str(p.rows),
                          f"{p.bytes / 1e6:.2f}")
    console.print(table)


@lake_app.command("compact")
def lake_compact(dataset: str = typer.Argument(None, help="one dataset (default: all)"),
                 ingest_date: str = typer.Option(None, help="only this partition (YYYY-MM-DD)"),
                 target_rows: int = typer.Option(1_000_000, help="rows per compacted file, about"),
                 min_age_minutes: float = typer.Option(
                     60, help="leave partitions with a file younger than this (its load may be pending)")) -> None:
    """Merge each partition's batch files into a few large ones; readers see every row once throughout."""
    from datetime import date, timedelta

    from warehouse.lake import Lake

    lake = Lake(load_settings().lake_root)
    try:
        day = date.fromisoformat(ingest_date) if ingest_date else None
    except ValueError:
        fail(f"--ingest-date {ingest_date!r} is not a date (2025-08-01)")
    merged = 0
    for name in _lake_dataset(lake, dataset):
        try:
            results = lake.compact(name, day, target_rows=target_rows, min_age=timedelta(minutes=min_age_minutes))
        except (OSError, ValueError) as exc:
            fail(f"lake compact {name}: {type(exc).__name__}: {exc}")
        for r in results:
            console.print(f"{r.dataset} ingest_date={r.ingest_date}: {r.files_before} files -> "
                          f"{r.files_after} ({r.rows} rows)")
        merged += len(results)
    console.print(f"compacted {merged} partition(s)")


@lake_app.command("conform")
def lake_conform(dataset: str = typer.Argument(None, help="one dataset (default: all)"),
                 dry_run: bool = typer.Option(False, help="say which files would be rewritten, change nothing")
                 ) -> None:
    """Rewrite the files a dataset's changed definition left behind (a column's type changed, a field kept in
    `_extras` declared) in its declared shape, so pyarrow, pandas and DuckDB read it as one dataset again.

    `lgsp warehouse migrate` runs it; a value that does not convert changes no file (exit 1, counts per column).
    """
    from warehouse.conform import conform_lake
    from warehouse.lake import Lake

    catalog, lake, failed = load_catalog(), Lake(load_settings().lake_root), False
    for name in _lake_dataset(lake, dataset):
        if name not in catalog.datasets:
            continue
        try:
            done = conform_lake(lake, catalog.datasets[name], dry_run=dry_run)
        except (OSError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            failed = True
            continue
        verb = "would rewrite" if dry_run else "rewrote"
        console.print(f"{name}: {verb} {done.files} file(s) in {done.partitions} partition(s), {done.rows} rows"
                      if done.files else f"{name}: every file has the declared shape")
    if failed:
        raise typer.Exit(1)


@lake_app.command("prune")
def lake_prune(older_than_days: float = typer.Option(
                   None, help="delete what is older than this many days (pages: of batches loaded before then); "
                              "default: LGSP_RETENTION_DAYS, or 90"),
               dry_run: bool = typer.Option(False, help="only say what would be deleted")) -> None:
    """Delete the landed pages of batches loaded long ago and GX's older results and pages (lgsp.retention).

    A batch that failed or was not loaded keeps its pages; Parquet, quarantine and the store are not touched.
    """
    from datetime import timedelta

    from lgsp.retention import prune, retention_days

    if older_than_days is None:
        try:
            older_than_days = retention_days()
        except ValueError as exc:
            fail(str(exc))
        if older_than_days is None:
            fail("LGSP_RETENTION_DAYS is off: nothing is pruned (give --older-than-days to prune anyway)")
    if older_than_days < 0:
        fail(f"--older-than-days must not be negative, got {older_than_days}")
    done = prune(timedelta(days=older_than_days), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    console.print(f"before {done.before:%Y-%m-%d %H:%M} UTC: {verb} {done.pages} landed page(s) of {done.batches} "
                  f"loaded batch(es), {done.page_bytes / 1e6:.2f} MB; {done.results} GX result(s) and "
                  f"{done.result_pages} Data Docs page(s), {done.result_bytes / 1e6:.2f} MB; {done.tombstones} "
                  f"deletion(s) kept for the change feed; {done.webhook_deliveries} webhook delivery record(s); "
                  f"{done.previous_tables} table(s) kept as they were before a migration")


@lake_app.command("maintain")
def lake_maintain(inline: bool = typer.Option(False, help="run in this process instead of on Airflow")) -> None:
    """Run the daily housekeeping now (the lgsp_maintenance DAG): compact the lake, then prune by retention."""
    from lgsp.retention import maintain, retention_days

    try:
        retention_days()  # a bad LGSP_RETENTION_DAYS is named here, not in a task log
        if not inline:
            return _airflow_run(["lgsp_maintenance"])
        done = maintain()
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        fail(f"maintenance: {type(exc).__name__}: {exc}")
    console.print(f"compacted {len(done['compacted'])} partition(s); retention "
                  + (f"{done['retention_days']:g} days: pruned {done['pruned']['pages']} landed page(s) of "
                     f"{done['pruned']['batches']} batch(es), {done['pruned']['results']} GX result(s)"
                     if done["pruned"] else "off: nothing pruned"))


@app.command()
def drift(dataset: str = typer.Argument(..., help="a shared dataset with a live lookup (catalog/sharing.yaml)"),
          sample: int = typer.Option(100, min=1, max=100_000, help="random records of the copy to ask for"),
          key: list[str] = typer.Option(None, help="ask for this record instead (COLUMN=VALUE; repeat per key)"),
          as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
          on_airflow: bool = typer.Option(False, help="run the DAG lgsp_drift_DATASET now (its catalog sample)"),
          history: bool = typer.Option(False, help="list the dataset's last checks (lgsp_drift_check)")) -> None:
    """Ask the source for a sample of lgsp's copy now and compare: pending changes, silent drift, deletions.

    Exits 1 when a record drifted silently (changed at the source with its cursor field not newer):
    no incremental sync will bring it; run the pipeline with --full-refresh and tell the source's owner.
    """
    from lgsp.drift import DriftError, check_drift

    catalog, settings = load_catalog(), load_settings()
    if history:
        return _drift_history(dataset)
    if on_airflow:
        lookup = catalog.sharing[dataset].lookup if dataset in catalog.sharing else None
        if lookup is None or lookup.drift_schedule is None:
            fail(f"no DAG lgsp_drift_{dataset}: give {dataset}'s lookup a drift_schedule in catalog/sharing.yaml")
        try:
            return _airflow_run([f"lgsp_drift_{dataset}"], task_retries=False)
        except Exception as exc:  # noqa: BLE001 - DagRunFailed names the task and where its log is
            fail(f"{type(exc).__name__}: {exc}")
    keys = None
    if key:
        columns = catalog.datasets[dataset].key if dataset in catalog.datasets else []
        pairs = [item.partition("=") for item in key]
        if any(not sep for _, sep, _ in pairs) or sorted(c for c, _, _ in pairs) != sorted(columns):
            fail(f"--key takes COLUMN=VALUE for each key column of {dataset!r} ({', '.join(columns) or '?'})")
        keys = [{c: v for c, _, v in pairs}]
    try:
        with step(f"asking {dataset}'s source for {len(keys) if keys else sample} record(s)"):
            report = check_drift(catalog, settings.database_url, dataset, sample, keys)
    except DriftError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(report.as_dict(), default=str, ensure_ascii=False))
    else:
        counts = Table(title=f"Drift of {dataset} against {report.system} ({len(report.findings)} records)")
        for col in ("status", "records"):
            counts.add_column(col)
        for status, count in report.counts().items():
            if count:
                counts.add_row(status, str(count))
        console.print(counts)
        rows = Table(title="Records that are not the same (first 50; column names only, never values)")
        for col in ("key", "status", "columns", "detail"):
            rows.add_column(col)
        for finding in [f for f in report.findings if f.status != "same"][:50]:
            rows.add_row(", ".join(f"{k}={v}" for k, v in finding.key.items()), finding.status,
                         ", ".join(finding.columns), finding.detail)
        console.print(rows)
    if report.counts()["silent"]:
        raise typer.Exit(1)


@app.command()
def reconcile(pipelines: list[str] = typer.Argument(None, help="pipelines (default: every one whose source "
                                                                "declares a total_field)"),
              as_json: bool = typer.Option(False, "--json", help="print the figures as JSON")) -> None:
    """Count each pipeline's records at the source and in lgsp (copy + open quarantine): complete, pending, lost?

    Exits 1 when records are lost: the source counts more than lgsp holds plus what it changed since the cursor.
    """
    from lgsp.reconcile import ReconcileError, reconcile as count

    catalog, wh = load_catalog(), _warehouse()
    names = pipelines or [p.name for p in catalog.pipelines.values() if p.source.total_field]
    results = []
    for name in names:
        try:
            with step(f"counting {name} at its source and in lgsp"):
                results.append(count(catalog, wh, name))
        except (KeyError, ReconcileError) as exc:
            fail(str(exc).strip('"'))
        except Exception as exc:  # noqa: BLE001 - a connector error names the system, the operation and what to do
            fail(f"{name}: {type(exc).__name__}: {exc}")
    if as_json:
        print(json.dumps([r.as_dict() for r in results], default=str))
    else:
        from lgsp.report import print_reconciliation

        print_reconciliation(console, results)
    if any(r.status == "lost" for r in results):
        raise typer.Exit(1)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
           alert: bool = typer.Option(False, help="first run the lgsp_freshness DAG on Airflow: alert on pipelines "
                                                  "gone stale or fresh again since its last check"),
           history: bool = typer.Option(False, help="instead: the share of the last --days each pipeline was fresh "
                                                    "and each feed on time, as the lgsp_freshness DAG judged them"),
           days: float = typer.Option(30.0, min=0.01, help="the window of --history")) -> None:
    """Is every dataset fresh? Each pipeline's last complete sync against its objective, its last run, open
    quarantine and circuit; each push feed's waiting and dead messages and its reports' deadlines; the
    problems and what to do.

    Exits 1 when a pipeline is stale (or never synced), a report is overdue or a push feed has dead letters;
    a warning exits 0.
    """
    from lgsp.status import as_json as report_json, print_history, print_status, status_report

    if history:
        from lgsp.availability import availability

        shares = availability(_warehouse(), days)
        if as_json:
            print(report_json({"days": days, "subjects": shares}))
        else:
            print_history(console, shares, days)
        return
    if alert:
        try:
            _airflow_run(["lgsp_freshness"], task_retries=False)
        except Exception as exc:  # noqa: BLE001
            fail(f"the freshness check: {type(exc).__name__}: {exc}")
    report = status_report(_warehouse(), load_catalog())
    if as_json:
        print(report_json(report))
    else:
        print_status(console, report)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
def metrics(textfile: Path = typer.Option(None, help="write them to this .prom file (atomically) for node_exporter's "
                                                    "textfile collector, instead of printing them")) -> None:
    """The platform's state as Prometheus metrics: freshness, last runs, quarantine, circuits, push feeds,
    references, rules across rows, webhooks, backups, quality scores (the gateway serves them at GET /metrics with its
    own)."""
    from lgsp.metrics import MetricsError, text, write_textfile

    wh, catalog = _warehouse(), load_catalog()
    if textfile is None:
        sys.stdout.write(text(wh, catalog).decode())
        return
    try:
        console.print(f"metrics written to {write_textfile(textfile, wh, catalog)}")
    except (MetricsError, OSError) as exc:
        fail(str(exc))


@app.command(name="record")
def record_cmd(dataset: str = typer.Argument(..., help="a dataset, e.g. citizen"),
               key: list[str] = typer.Argument(..., help="the record's key value(s), in the key's order"),
               received: bool = typer.Option(False, "--received", help="each version as its source sent it (the "
                                                                        "batch's landed page)"),
               as_json: bool = typer.Option(False, "--json", help="print it as one JSON line"),
               by: str = typer.Option(None, help="who asks (default $LGSP_OPERATOR or $USER); audited where the "
                                                 "record holds a person's ID")) -> None:
    """What lgsp knows of one record: the row now and the write behind it, each version the table held (when,
    from which batch, what changed), its deletions and its quarantined rows. A record holding a person's ID:
    the read is audited, and the person's disclosure report lists it (`lgsp audit subject`)."""
    from lgsp.record_history import RecordError, record
    from warehouse.lake import Lake

    wh = _warehouse()
    catalog = load_catalog()
    try:
        found = record(wh, catalog, Lake(load_settings().lake_root), dataset, key, received)
        _audit_record(wh, catalog.datasets[dataset], found, by, received)
    except RecordError as exc:
        fail(str(exc))
    finally:
        wh.engine.dispose()
    if as_json:
        print(json.dumps(found, default=str, ensure_ascii=False))
        return
    from rich.markup import escape

    named = escape(", ".join(f"{c} {v}" for c, v in found["key"].items()))
    now = found["now"]
    if now is None:
        console.print(f"[bold]{dataset} {named}[/]: not in the table now")
    else:
        console.print(f"[bold]{dataset} {named}[/]: written by {escape(_write_said(now))} from "
                      f"{now['source_system']}, loaded {now['loaded_at']:%Y-%m-%d %H:%M:%S} UTC")
    if found["known_since"] is not None:
        console.print(f"the lake's files begin on {found['known_since']}, after the dataset's first change: the "
                      "oldest version shown may have had others before it")
    if found["versions"]:
        table = Table(title=f"Versions the table held ({len(found['versions'])}), oldest first")
        for column in ("from (UTC)", "to (UTC)", "write", "what changed"):
            table.add_column(column, overflow="fold")
        for v in found["versions"]:
            changed = ("first version" if v["changed"] is None else
                       "; ".join(f"{c} {old} -> {new}" for c, (old, new) in v["changed"].items()) or "nothing shown")
            table.add_row(_when(v["since"], "before the lake's files"), _when(v["until"], "held now"),
                          escape(_write_said(v)), escape(changed))
        console.print(table)
    else:
        console.print("No version of it was ever held by the table.")
    for number, v in enumerate(found["versions"] if received else [], start=1):
        got = v.get("received")
        console.print(escape(f"version {number} as received: " + (
            f"{json.dumps(got['record'], ensure_ascii=False, default=str)} ({got['page']})" if got else
            "no landed page holds it (pruned by retention, or written by a replay, a migration or a restore)")))
    for d in found["deleted"]:
        console.print(f"deleted {d['at']:%Y-%m-%d %H:%M:%S} UTC by {escape(_write_said(d))}")
    for q in found["quarantined"]:
        console.print(escape(f"quarantined {q['at']:%Y-%m-%d %H:%M:%S} UTC by {_write_said(q)}: rule {q['rule']}: "
                             f"{q['reason']} ({q['status']}; lgsp quarantine show {q['quarantine_id'][:12]})"))


def _audit_record(wh: Any, spec: Any, found: dict[str, Any], by: str | None, received: bool) -> None:
    """`lgsp record`'s read in the gateway's audit when it shows a person's ID (`record_engineer_read`).
    Without the pseudonym key there is no gateway and no disclosure report to list it: said, not refused."""
    from gateway.audit import AuditUnavailable
    from gateway.disclosures import RECORD_READS, personal_id_columns, record_engineer_read
    from gateway.settings import GatewayConfigError, load_gateway_settings
    from lgsp.record_history import shown_values

    if not personal_id_columns(spec, spec.columns):
        return
    try:
        secret = load_gateway_settings().pseudonym_key
    except GatewayConfigError:
        Console(highlight=False, stderr=True, emoji=False).print(
            "not audited: this record holds a person's ID, and LGSP_GATEWAY_PSEUDONYM_KEY (the gateway's pseudonym "
            "key) is not set here; set it as the gateway has it to audit reads of personal data")
        return
    action = RECORD_READS[1] if received else RECORD_READS[0]
    try:
        record_engineer_read(wh.engine, spec, secret, shown_values(found), operator(by), action,
                             len(found["versions"]))
    except AuditUnavailable as exc:
        fail(f"{exc}: the record is not shown (a read of personal data must be audited); is the database up?")


def _when(at: Any, otherwise: str) -> str:
    return otherwise if at is None else f"{at:%Y-%m-%d %H:%M:%S}"


def _write_said(write: dict[str, Any]) -> str:
    """A write as `batch (pipeline, mode)`: a migration's, a restore's or a replay's id says what it was."""
    about = ", ".join(x for x in (write.get("pipeline"), write.get("mode")) if x)
    return write["batch_id"] + (f" ({about})" if about else "")


@app.command()
def references(dataset: str = typer.Option(None, help="only this dataset's columns"),
               as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
               examples: int = typer.Option(5, min=0, help="how many missing values to show per reference"),
               orphans: bool = typer.Option(False, "--orphans", help="instead: the orphan rows of --dataset as CSV "
                                                                     "(key, value, loaded_at), for the source's owner"),
               limit: int = typer.Option(None, min=1, help="at most this many orphan rows")) -> None:
    """Does every row name a record lgsp has? Each reference between datasets (`references:` in datasets.yaml):
    rows, orphans, those past grace, the missing values most named, and what to do.

    Exits 1 when a reference is broken (an orphan older than its grace).
    """
    from lgsp.references import check_all, summary
    from lgsp.status import as_json as report_json, print_references

    catalog = load_catalog()
    if dataset is not None and dataset not in catalog.datasets:
        fail(f"unknown dataset '{dataset}'; `lgsp pipelines` lists them")
    wh = _warehouse()
    if orphans:
        _print_orphans(wh, catalog, dataset, limit)
        return
    with wh.engine.connect() as conn:
        results = check_all(conn, wh.metadata.tables, catalog, dataset=dataset, examples=examples)
    if as_json:
        print(report_json({"references": results}))
    else:
        if not results:
            console.print(f"no column of {dataset or 'any dataset'} declares `references`")
        else:
            print_references(console, results)
        for result in results:
            if result["state"] == "broken":
                console.print(f"[red]broken:[/] {summary(result)}; {result['todo']}")
            elif result["state"] == "pending":
                console.print(f"[yellow]pending:[/] {summary(result)}")
    if any(r["state"] == "broken" for r in results):
        raise typer.Exit(1)


@app.command()
def checks(dataset: str = typer.Option(None, help="only this dataset's group checks"),
           as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
           examples: int = typer.Option(5, min=0, help="how many breaking groups to show per check"),
           groups: bool = typer.Option(False, "--groups", help="instead: the rows of the groups breaking --dataset's "
                                                               "checks as CSV, for the source's owner"),
           limit: int = typer.Option(None, min=1, help="at most this many rows (with --groups)")) -> None:
    """Do the rules across rows hold? Each group check (`group_checks:` in datasets.yaml, e.g. one current head
    per household): groups, those breaking it, those past grace, examples, and what to do.

    Exits 1 when a group check is broken (a group breaking it has had no row written for its grace).
    """
    import csv

    from lgsp.group_checks import breaking_rows, check_all, group_checks, summary
    from lgsp.status import as_json as report_json, print_group_checks

    catalog = load_catalog()
    if dataset is not None and dataset not in catalog.datasets:
        fail(f"unknown dataset '{dataset}'; `lgsp pipelines` lists them")
    declared = group_checks(catalog, dataset)
    wh = _warehouse()
    if groups:
        if dataset is None or not declared:
            fail("--groups lists one dataset's rows: add --dataset with a dataset that declares `group_checks` "
                 f"({', '.join(sorted({c.dataset for c in group_checks(catalog)})) or 'none does'})")
        key = catalog.datasets[dataset].key
        read = [[*g.spec.group_by, *key, *g.spec.count, *g.spec.where, *filter(None, [g.spec.distinct])]
                for g in declared]
        columns = ["check", *dict.fromkeys(c for columns_of in read for c in columns_of), "loaded_at"]
        out = csv.DictWriter(sys.stdout, columns, lineterminator="\n")  # one header: each check's rows fill theirs
        out.writeheader()
        with wh.engine.connect() as conn:
            for declared_check in declared:
                for row in breaking_rows(conn, wh.metadata.tables, catalog, declared_check, limit):
                    out.writerow({c: v.isoformat() if hasattr(v, "isoformat") else v for c, v in row.items()})
        return
    with wh.engine.connect() as conn:
        results = check_all(conn, wh.metadata.tables, catalog, dataset=dataset, examples=examples)
    if as_json:
        print(report_json({"group_checks": results}))
    else:
        if not results:
            console.print(f"{dataset} declares no `group_checks`" if dataset else "no dataset declares `group_checks`")
        else:
            print_group_checks(console, results)
        for result in results:
            if result["state"] != "ok":
                colour = "red" if result["state"] == "broken" else "yellow"
                todo = f"; {result['todo']}" if result["todo"] else ""
                console.print(f"[{colour}]{result['state']}:[/] {summary(result)}{todo}")
    if any(r["state"] == "broken" for r in results):
        raise typer.Exit(1)


@app.command()
def quality(dataset: str = typer.Argument(None, help="one dataset (default: every core dataset)"),
            days: float = typer.Option(30.0, min=0.01, help="the window of the validity figure (of --history)"),
            history: bool = typer.Option(False, help="instead: each dataset's scores over the last --days, as the "
                                                     "lgsp_freshness DAG recorded them (one row a day)"),
            as_json: bool = typer.Option(False, "--json", help="print the scorecards as JSON")) -> None:
    """Each dataset's data-quality scorecard: validity, timeliness, consistency, accuracy, and the overall figure
    (the weakest of them); and its columns least often filled."""
    from rich.table import Table

    from lgsp.freshness import human_age
    from lgsp.scorecard import DIMENSIONS, percent, scorecards
    from lgsp.status import as_json as report_json

    catalog = load_catalog()
    if dataset is not None and (dataset not in catalog.datasets or catalog.datasets[dataset].layer != "core"):
        fail(f"'{dataset}' is not a core dataset; `lgsp pipelines` lists the datasets the pipelines fill")
    wh = _warehouse()
    if history:
        _print_quality_history(wh, dataset, days, as_json)
        return
    cards = scorecards(wh.engine, wh.metadata.tables, catalog, dataset, days)
    if as_json:
        print(report_json({"days": days, "scorecards": cards}))
        return
    table = Table(title=f"Data quality (lgsp quality; validity over {days:g} days)")
    table.add_column("dataset", no_wrap=True)
    for col in ("overall", *DIMENSIONS):
        table.add_column(col, justify="right")
    for card in cards:
        weakest = card["weakest"]
        table.add_row(card["dataset"], percent(card["overall"]),
                      *(f"[bold]{percent(card[d]['score'])}[/]" if d == weakest else percent(card[d]["score"])
                        for d in DIMENSIONS))
    console.print(table)
    for card in cards:
        facts = []
        if card["profile"]["least_filled"]:
            facts.append("least filled: " + ", ".join(f"{c} {percent(s)}" for c, s in card["profile"]["least_filled"]))
        if card["validity"]["open_quarantine"]:
            facts.append(f"{card['validity']['open_quarantine']:,} rows wait in quarantine")
        if card["timeliness"]["state"] not in (None, "fresh"):
            facts.append(f"{card['timeliness']['state']} (last complete sync "
                         f"{human_age(card['timeliness']['age_s'])} ago)")
        if card["consistency"]["orphans"]:
            facts.append(f"{card['consistency']['orphans']:,} rows name a record lgsp does not have")
        if card["consistency"].get("breaking_groups"):
            facts.append(f"{card['consistency']['breaking_groups']:,} groups break a rule across rows")
        if facts:
            console.print(f"{card['dataset']}: " + "; ".join(facts))


def _print_quality_history(wh: Any, dataset: str | None, days: float, as_json: bool) -> None:
    from rich.table import Table

    from lgsp.scorecard import history, percent
    from lgsp.status import as_json as report_json

    rows = [r for r in history(wh, days) if dataset in (None, r["dataset"])]
    if as_json:
        print(report_json({"days": days, "datasets": rows}))
        return
    if not rows:
        console.print("no quality score recorded yet: the lgsp_freshness DAG (every 15 minutes under `lgsp airflow "
                      "start`, or `lgsp status --alert`) records them, one row per dataset a day")
        return
    table = Table(title=f"Data quality over the last {days:g} days (lgsp_quality_score)")
    for col in ("dataset", "days", "mean", "lowest (day)", "most often weakest", "latest (day)"):
        table.add_column(col, justify="right" if col in ("days", "mean") else "left")
    for r in rows:
        table.add_row(r["dataset"], str(r["days"]), percent(r["mean"]),
                      f"{percent(r['lowest'])} ({r['lowest_day'] or '-'})", r["most_often_weakest"] or "-",
                      f"{percent(r['latest'])} ({r['latest_day']})")
    console.print(table)


def _print_orphans(wh: Any, catalog: Any, dataset: str | None, limit: int | None) -> None:
    """`lgsp references --dataset D --orphans`: one CSV row per orphan row of each of D's references."""
    import csv

    from lgsp.references import orphan_rows, references as declared

    if dataset is None:
        fail("--orphans lists one dataset's orphan rows: add --dataset (e.g. --dataset dossier)")
    refs = declared(catalog, dataset)
    if not refs:
        fail(f"no column of {dataset} declares `references`")
    key = catalog.datasets[dataset].key
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["reference", *key, "value", "loaded_at"])
    with wh.engine.connect() as conn:
        for reference in refs:
            for row in orphan_rows(conn, wh.metadata.tables, catalog, reference, limit):
                out.writerow([row["reference"], *(row[k] for k in key), row["value"], row["loaded_at"].isoformat()])


def _drift_history(dataset: str, limit: int = 20) -> None:
    import sqlalchemy as sa

    wh = _warehouse()
    table = wh.system["lgsp_drift_check"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.dataset == dataset)
                            .order_by(table.c.checked_at.desc()).limit(limit)).mappings().all()
    out = Table(title=f"Drift checks of {dataset} (newest first, at most {limit})")
    for col in ("checked at", "system", "sampled", "counts (not same)", "silently drifted columns"):
        out.add_column(col)
    for row in rows:
        counts = {k: v for k, v in json.loads(row["counts"]).items() if v and k != "same"}
        out.add_row(str(row["checked_at"])[:19], row["system"], str(row["sampled"]),
                    ", ".join(f"{k} {v}" for k, v in counts.items()) or "none", row["silent_columns"])
    console.print(out)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="print the checks as JSON")) -> None:
    """Is this machine ready to run lgsp? Catalog, store, secrets, lake, disk, backups, gateway, Airflow: what
    each check found and what to do; exit 1 on an error."""
    from lgsp.doctor import as_dicts, examine

    found = examine()
    failed = any(c.state == "error" for c in found)
    if as_json:
        print(json.dumps({"ok": not failed, "checks": as_dicts(found)}, indent=1))
        raise typer.Exit(1 if failed else 0)
    table = Table(title="lgsp doctor")
    for column in ("area", "subject", "state", "found"):
        table.add_column(column, overflow="fold")
    colour = {"ok": "green", "warning": "yellow", "error": "red"}
    for check in found:
        table.add_row(check.area, check.subject, f"[{colour[check.state]}]{check.state}[/]", check.said)
    console.print(table)
    for check in found:
        if check.todo:
            console.print(f"[{colour[check.state]}]{check.state}:[/] {check.area} {check.subject}: {check.todo}",
                          soft_wrap=True)
    errors = sum(c.state == "error" for c in found)
    warnings = sum(c.state == "warning" for c in found)
    console.print(f"{len(found)} checks: {errors} error(s), {warnings} warning(s)")
    raise typer.Exit(1 if failed else 0)


@app.command()
def health(history: bool = typer.Option(False, help="success rate and latency per system from the warehouse"),
           system: str = typer.Option(None, help="only this system")) -> None:
    """Probe every system (reachable? authenticated? how fast?) and keep the results."""
    from connectors.health import probe
    from lgsp.exchanges import health_history, record_health

    wh, catalog = _warehouse(), load_catalog()
    if history:
        table = Table(title="Connection health over time (lgsp_health_check)")
        for col in ("system", "probes", "success rate", "p50 ms", "max ms", "last status"):
            table.add_column(col)
        for h in health_history(wh):
            table.add_row(h["system"], str(h["probes"]), f"{h['success_rate']:.0%}", str(h["p50_ms"]),
                          str(h["max_ms"]), h["last_status"])
        console.print(table)
        return
    names = [system] if system else list(catalog.systems)
    results = [probe(catalog.systems[n]) for n in names]
    record_health(wh, results)
    table = Table(title="Health of the connected systems")
    for col in ("system", "status", "latency ms", "detail"):
        table.add_column(col)
    for r in results:
        colour = "green" if r.ok else "red"
        table.add_row(r.system, f"[{colour}]{r.status}[/]", str(r.latency_ms), r.detail)
    console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


from indicators.cli import app as indicators_app  # noqa: E402 - compute|list|export|dashboard|rank (docs/indicators.md)

app.add_typer(indicators_app, name="indicators")

from warehouse.cli import app as warehouse_app  # noqa: E402 - plan|migrate|migrations (warehouse.migrate)

app.add_typer(warehouse_app, name="warehouse")

from consolidation.cli import merger_app  # noqa: E402 - the province-merger consolidation (docs/merger.md)

app.add_typer(merger_app, name="merger")

from gateway.cli import register as register_gateway  # noqa: E402 - serve, agencies, audit (docs/gateway.md)

register_gateway(app)

from lgsp.orchestration_cli import register as register_orchestration  # noqa: E402 - airflow start|trigger, backfill

register_orchestration(app)  # docs/orchestration.md

from lgsp.backup_cli import register as register_backup  # noqa: E402 - backup create|list|verify|restore

register_backup(app)  # docs/deploy.md#backups

from lgsp.discover_cli import register as register_discover  # noqa: E402 - discover SYSTEM OPERATION

register_discover(app)  # docs/adding-a-system.md


def main() -> None:
    logging.basicConfig(level=os.environ.get("LGSP_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        app()
    except CatalogError as exc:
        console.print(f"[bold red]catalog error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
