"""`lgsp status`: is every dataset fresh, and if not, why? One screen for whoever runs the platform.

Per pipeline: its freshness (lgsp.freshness: the age of its last complete sync against its
objective), its last run (status, when, rows, the error if it failed or its load was refused),
the dataset's open quarantine and its system's circuit. Per push feed: messages waiting, dead
letters, the oldest one not acknowledged and, for a feed with `due`, its reports' deadlines
(lgsp.deadlines: periods past due, those not acknowledged). Per reference between datasets
(lgsp.references): orphan rows, those past grace. Per rule across rows (lgsp.group_checks): the groups
breaking it, those past grace. The agencies' access requests waiting for a
decision (gateway.access_requests), the agencies' webhooks failing or dead (gateway.webhooks) and the
agencies reading far more than they usually do (gateway.usage). The systems' peak hours (`limits.peak`:
background calls slower) and whether it is one now.
Then the problems, each with what to do. It reads only the warehouse (no source is asked; `lgsp
health` does that).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from catalog.models import DAYS, LOCAL_TZ, Catalog
from lgsp.deadlines import all_deadlines
from lgsp.freshness import SEVERITY, STATES, human_age, overdue_text, pipeline_freshness
from lgsp.group_checks import check_all as check_groups, summary as group_summary
from lgsp.references import check_all
from lgsp.references import summary as reference_summary
from warehouse.store import Warehouse, utc

RUN_COUNTS = ("rows_pulled", "rows_landed", "rows_quarantined", "rows_changed")
STATE_COLOUR = {"fresh": "green", "warn": "yellow", "stale": "red", "never": "red", "unchecked": "dim"}


def _last_runs(conn: sa.Connection, tables: Any, pipelines: list[str]) -> dict[str, dict[str, Any]]:
    """pipeline -> its latest batch (lgsp.report.latest_batches)."""
    from lgsp.report import latest_batches

    return {row["pipeline"]: {"batch_id": row["batch_id"], "status": row["status"], "mode": row["mode"],
                              "started_at": utc(row["started_at"]), "finished_at": utc(row["finished_at"]),
                              **{k: row[k] for k in RUN_COUNTS}, "message": row["message"]}
            for row in latest_batches(conn, tables["lgsp_batch"], pipelines)}


def _open_quarantine(conn: sa.Connection, tables: Any) -> dict[str, int]:
    q = tables["lgsp_quarantine"]
    rows = conn.execute(sa.select(q.c.dataset, sa.func.count()).where(q.c.status == "open").group_by(q.c.dataset))
    return {dataset: int(n) for dataset, n in rows}


def _circuits(conn: sa.Connection, tables: Any) -> dict[str, dict[str, Any]]:
    circuit = tables["lgsp_circuit"]
    return {row.system: dict(row._mapping) for row in conn.execute(sa.select(circuit))}


def _feeds(conn: sa.Connection, tables: Any, catalog: Catalog, now: datetime) -> list[dict[str, Any]]:
    outbox = tables["lgsp_outbox"]
    counts: dict[tuple[str, str], int] = {}
    for feed, status, n in conn.execute(sa.select(outbox.c.feed, outbox.c.status, sa.func.count())
                                        .group_by(outbox.c.feed, outbox.c.status)):
        counts[(feed, status)] = int(n)
    oldest = dict(conn.execute(sa.select(outbox.c.feed, sa.func.min(outbox.c.created_at))
                               .where(outbox.c.status != "acked").group_by(outbox.c.feed)).all())
    acked = dict(conn.execute(sa.select(outbox.c.feed, sa.func.max(outbox.c.acked_at))
                              .where(outbox.c.status == "acked").group_by(outbox.c.feed)).all())
    feeds = []
    for name, feed in catalog.feeds.items():
        waiting = utc(oldest.get(name))
        feeds.append({"feed": name, "system": feed.system,
                      "waiting": counts.get((name, "pending"), 0) + counts.get((name, "failed"), 0),
                      "dead": counts.get((name, "dead"), 0), "acked": counts.get((name, "acked"), 0),
                      "oldest_waiting_at": waiting,
                      "oldest_waiting_age_s": None if waiting is None else (now - waiting).total_seconds(),
                      "last_acked_at": utc(acked.get(name))})
    return feeds


def _run_problem(name: str, run: dict[str, Any] | None) -> str | None:
    if run is None or not run.get("message") or run["status"] not in ("failed", "validated", "loaded"):
        return None
    what = {"failed": "last run failed", "validated": "last load was refused",
            "loaded": "last run loaded, and noted"}[run["status"]]  # a schema drift, a cursor the source ignores
    return f"{name}: {what} ({run['started_at'].isoformat(timespec='seconds')}): {run['message']}"


def scanned_parts(wh: Warehouse, catalog: Catalog, now: datetime) -> dict[str, Any]:
    """The parts of the report that scan whole tables: each reference between datasets (every referencing
    row), each rule across rows (a GROUP BY of the rows it reads) and the agencies' unusual reads (the audit's last
    weeks). `lgsp.metrics` keeps them longer than the rest."""
    with wh.engine.connect() as conn:
        references = check_all(conn, wh.metadata.tables, catalog, now)
        groups = check_groups(conn, wh.metadata.tables, catalog, now)
    try:
        reads, error = _unusual_reads(wh, now), None
    except ValueError as exc:  # a setting that is not a number: said, the rest of the report stands
        reads, error = None, str(exc)
    return {"references": references, "group_checks": groups, "unusual_reads": reads, "reads_error": error,
            "checked_at": now}


def status_report(wh: Warehouse, catalog: Catalog, now: datetime | None = None,
                  scanned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `lgsp status` shows, as data (its `--json`); `scanned`: `scanned_parts` computed earlier."""
    now = now or datetime.now(timezone.utc)
    with wh.engine.connect() as conn:
        freshness = pipeline_freshness(conn, wh.system, catalog, now)
        runs, quarantine = _last_runs(conn, wh.system, list(catalog.pipelines)), _open_quarantine(conn, wh.system)
        circuits, feeds = _circuits(conn, wh.system), _feeds(conn, wh.system, catalog, now)
    scanned = scanned or scanned_parts(wh, catalog, now)
    checked_references = scanned["references"]
    pipelines, problems = [], []
    for fresh in freshness:
        spec = catalog.pipelines[fresh.pipeline]
        run, circuit = runs.get(fresh.pipeline), circuits.get(spec.source.system)
        pipelines.append({**fresh.as_dict(), "system": spec.source.system,
                          "owner": catalog.systems[spec.source.system].owner or None, "schedule": spec.schedule,
                          "last_run": run, "open_quarantine": quarantine.get(spec.dataset, 0),
                          "circuit": circuit["state"] if circuit else None})
        if fresh.state in ("stale", "never"):
            when = ("has never synced completely" if fresh.synced_at is None
                    else f"is stale: last complete sync {human_age(fresh.age_s)} ago")
            todo = "fix what its last run says, then" if run is not None else "run it:"
            problems.append({"severity": "error", "pipeline": fresh.pipeline, "problem": (
                f"{fresh.pipeline} {when} (stale after {human_age(fresh.error_after_s)}); "
                f"{todo} `lgsp run {fresh.pipeline}`")})
        elif fresh.state == "warn":
            problems.append({"severity": "warning", "pipeline": fresh.pipeline, "problem": (
                f"{fresh.pipeline}: last complete sync {human_age(fresh.age_s)} ago "
                f"(warn after {human_age(fresh.warn_after_s)}, stale after {human_age(fresh.error_after_s)})")})
        run_problem = _run_problem(fresh.pipeline, run)
        if run_problem:
            problems.append({"severity": "warning", "pipeline": fresh.pipeline, "problem": run_problem})
        if circuit and circuit["state"] != "closed":
            problems.append({"severity": "warning", "pipeline": fresh.pipeline, "problem": (
                f"{spec.source.system}: circuit {circuit['state']} since {_iso(utc(circuit['opened_at']))}: "
                f"{circuit['last_error'] or 'no error kept'}; `lgsp health --system {spec.source.system}`")})
    deadlines = {d["feed"]: d for d in all_deadlines(wh, catalog, now)}
    for feed in feeds:
        feed["deadlines"] = deadlines.get(feed["feed"])
        for period in (feed["deadlines"] or {}).get("overdue", []):
            problems.append({"severity": "error", "feed": feed["feed"], "problem": (
                f"{overdue_text(feed['feed'], period)}: the receiver has not got all of it; `lgsp outbox list "
                f"--feed {feed['feed']}` shows what waits, `lgsp push {feed['feed']}` sends it")})
        if feed["dead"]:
            problems.append({"severity": "error", "feed": feed["feed"], "problem": (
                f"push feed {feed['feed']}: {feed['dead']} dead message(s); `lgsp outbox list --status dead`, "
                "then `lgsp outbox retry`")})
    for result in checked_references:
        if result["state"] == "broken":
            problems.append({"severity": result["severity"], "reference": result["reference"],
                             "problem": f"{reference_summary(result)}; {result['todo']}"})
    for result in scanned.get("group_checks", []):
        if result["state"] == "broken":
            problems.append({"severity": result["severity"], "check": result["check"],
                             "problem": f"{group_summary(result)}; {result['todo']}"})
    requests = _access_requests(wh, catalog, now)
    if requests and requests["pending"]:
        problems.append({"severity": "warning", "problem": (
            f"{requests['pending']} access request(s) of agencies wait for a decision (the oldest filed "
            f"{human_age(requests['oldest_age_s'])} ago): `lgsp agencies requests`, then `lgsp agencies approve` "
            "or `deny`")})
    for grant in (requests or {}).get("ending", []):
        problems.append({"severity": "warning", "problem": (
            f"{grant['agency_id']}'s grant on {grant['dataset']} ends in {human_age(grant['ends_in_s'])} "
            f"({grant['expires_at']:%Y-%m-%d %H:%M} UTC"
            + (f", request {grant['request_id']}" if grant["request_id"] else "")
            + "): the agency asks again (POST /api/v1/access-requests) if it still needs it")})
    reads = scanned["unusual_reads"]
    if scanned["reads_error"]:
        problems.append({"severity": "error", "problem": f"unusual reads not checked: {scanned['reads_error']}"})
    for found in reads or []:
        from gateway.usage import said

        problems.append({"severity": "warning", "agency": found["agency_id"], "problem": said(found)})
    hooks = _webhooks(wh)
    for hook in (hooks or {}).get("troubled", []):
        told = "its access events" if hook["events"] == "access" else hook["dataset"]
        if hook["dead_at"] is not None:
            problems.append({"severity": "error", "webhook": hook["webhook_id"], "problem": (
                f"webhook {hook['webhook_id']} of {hook['agency_id']} ({told}) is dead since "
                f"{_iso(utc(hook['dead_at']))}: {hook['last_error']}; fix the endpoint, then `lgsp webhooks retry "
                f"{hook['webhook_id']}`")})
        else:
            problems.append({"severity": "warning", "webhook": hook["webhook_id"], "problem": (
                f"webhook {hook['webhook_id']} of {hook['agency_id']} ({told}) failed {hook['attempts']} time(s) "
                f"in a row, tried again at {_iso(utc(hook['next_attempt_at']))}: {hook['last_error']}")})
    backup = _backup_state(now, problems)
    peaks = _peaks(catalog, now)
    busy = {p["system"]: p for p in peaks if p["until"] is not None}
    for problem in problems:  # a late pull of a system in its peak hours: why it may be slow
        system = catalog.pipelines[problem["pipeline"]].source.system if "pipeline" in problem else None
        if system in busy and "last complete sync" in problem["problem"]:
            until = busy[system]["until"].astimezone(LOCAL_TZ)
            problem["problem"] += (f" ({system} is in its peak hours until {until:%H:%M} local: pulls "
                                   f"run at {busy[system]['rate_per_s']:g}/s)")
    ok = not any(p["severity"] == "error" for p in problems)
    return {"checked_at": now, "ok": ok, "pipelines": pipelines, "feeds": feeds, "references": checked_references,
            "group_checks": scanned.get("group_checks", []), "access_requests": requests, "webhooks": hooks,
            "unusual_reads": reads, "backup": backup, "peak_hours": peaks,
            "problems": problems}


def _peaks(catalog: Catalog, now: datetime) -> list[dict[str, Any]]:
    """Each system's peak hours (`limits.peak`) and whether `now` is in one."""
    from connectors.limits import peak_state

    return [state for system in catalog.systems.values() if (state := peak_state(system, now)) is not None]


def peak_line(peak: dict[str, Any]) -> str:
    """`population's peak hours: mon-fri 07:30-11:30, 13:30-17:00 local (...): background calls at 10/s, ...`."""
    days = peak["days"]
    said = (f"{days[0]}-{days[-1]}" if len(days) > 2 and [DAYS.index(d) for d in days] == list(
        range(DAYS.index(days[0]), DAYS.index(days[-1]) + 1)) else ", ".join(days))
    now = ("now off peak" if peak["until"] is None
           else f"now in one until {peak['until'].astimezone(LOCAL_TZ):%H:%M} local")
    bulk = ", full refreshes and backfills wait for their end" if peak.get("bulk") == "wait" else ""
    return (f"{peak['system']}'s peak hours: {said} {', '.join(peak['hours'])} local (Asia/Ho_Chi_Minh): background "
            f"calls at {peak['rate_per_s']:g}/s{bulk}, lookups at the full rate; {now}")


def _backup_state(now: datetime, problems: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest backup (lgsp.backup) and, in `problems`, a warning when there is none or it is old."""
    from lgsp import backup

    root = backup.backup_root()
    found = backup.backups(root)
    latest = found[-1] if found else None
    state = {"root": str(root), "backups": len(found), "latest": latest.name if latest else None,
             "created_at": latest.created_at if latest else None,
             "age_s": (now - latest.created_at).total_seconds() if latest else None}
    try:
        limit = backup.max_age()
    except backup.BackupError as exc:
        problems.append({"severity": "error", "problem": f"backups not checked: {exc}"})
        return state
    if limit is None:
        return state
    if latest is None:
        problems.append({"severity": "warning", "problem": (
            f"no backup in {root}: `lgsp backup create` makes one, the lgsp_backup DAG one a night (set "
            f"{backup.BACKUP_DIR_ENV} to another disk)")})
    elif now - latest.created_at > limit:
        problems.append({"severity": "warning", "problem": (
            f"the latest backup ({latest.name}) is {human_age(state['age_s'])} old (warn after "
            f"{human_age(limit.total_seconds())}): is the lgsp_backup DAG running? `lgsp backup create` makes one "
            "now")})
    return state


def _unusual_reads(wh: Warehouse, now: datetime) -> list[dict[str, Any]] | None:
    """The agencies reading far more than they usually do (gateway.usage; None: no gateway here)."""
    if not sa.inspect(wh.engine).has_table("gateway_audit"):
        return None
    from gateway.usage import unusual

    return unusual(wh.engine, now)


def _webhooks(wh: Warehouse) -> dict[str, Any] | None:
    """The agencies' webhooks: how many, and those failing or dead (None: the gateway's tables are not there)."""
    inspector = sa.inspect(wh.engine)
    if not inspector.has_table("gateway_webhook"):
        return None
    from gateway.tables import webhook as w

    events = w.c.events if "events" in {c["name"] for c in inspector.get_columns("gateway_webhook")} else \
        sa.literal("dataset.changed").label("events")  # a table the gateway has not upgraded yet
    with wh.engine.connect() as conn:
        live = conn.execute(sa.select(sa.func.count()).select_from(w).where(w.c.removed_at.is_(None))).scalar()
        troubled = conn.execute(sa.select(
            w.c.webhook_id, w.c.agency_id, w.c.dataset, events, w.c.attempts, w.c.dead_at, w.c.next_attempt_at,
            w.c.last_error).where(w.c.removed_at.is_(None), sa.or_(w.c.dead_at.isnot(None), w.c.attempts > 0))
            .order_by(w.c.dead_at.is_(None), w.c.webhook_id)).mappings().all()
    return {"live": int(live or 0), "troubled": [dict(row) for row in troubled]}


def _access_requests(wh: Warehouse, catalog: Catalog, now: datetime) -> dict[str, Any] | None:
    """The gateway's access requests waiting for a decision and the grants ending within 14 days (None: the
    gateway's tables are not there yet)."""
    if not sa.inspect(wh.engine).has_table("gateway_access_request"):
        return None
    from gateway.access_requests import AccessRequests

    asked = AccessRequests(wh.engine, catalog)
    return {**asked.pending_summary(now), "ending": asked.ending_grants(now=now)}


def _iso(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def as_json(report: dict[str, Any]) -> str:
    """The report as JSON, times in ISO 8601 UTC."""
    return json.dumps(report, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def _when(value: datetime | None, now: datetime) -> str:
    return "-" if value is None else f"{human_age((now - value).total_seconds())} ago"


def freshness_line(report: dict[str, Any]) -> str:
    """One line for the demo's summary: how many pipelines are in each state, how many reports are overdue."""
    counts: dict[str, int] = {}
    for p in report["pipelines"]:
        counts[p["state"]] = counts.get(p["state"], 0) + 1
    states = ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts)
    reports = [f["deadlines"] for f in report["feeds"] if f.get("deadlines")]
    due = sum(d["periods_due"] for d in reports)
    overdue = sum(len(d["overdue"]) for d in reports)
    broken = sum(r["state"] == "broken" for r in report["references"])
    orphans = sum(r["orphans"] for r in report["references"])
    groups = report.get("group_checks", [])
    checks = (f"; group checks: {len(groups)}, {sum(g['state'] == 'broken' for g in groups)} broken, "
              f"{sum(g['breaking'] for g in groups)} groups breaking one" if groups else "")
    return (f"Freshness: {states} (of {len(report['pipelines'])} pipelines); reports due: {due}, "
            f"{overdue} overdue; references: {len(report['references'])}, {broken} broken, {orphans} orphan rows"
            f"{checks} (`lgsp status` says why)")


def _reports(deadlines: dict[str, Any] | None) -> str:
    """"36, 2 overdue; 2025-09: 8/8": the periods past due, how many are not delivered, the last that is."""
    if deadlines is None:
        return "-"
    last = deadlines["last_delivered"]
    overdue = len(deadlines["overdue"])
    return (f"{deadlines['periods_due']}" + (f", [red]{overdue} overdue[/]" if overdue else "")
            + (f"; {last['period']}: {last['acknowledged']}/{last['rows']}" if last else ""))


def print_status(console: Console, report: dict[str, Any]) -> None:
    """The report as tables, then the problems."""
    now = report["checked_at"]
    table = Table(title="Pipelines: freshness and last run (lgsp status)")
    table.add_column("pipeline", no_wrap=True)
    for col in ("freshness", "synced", "warn / stale", "last run", "quarantine", "circuit"):
        table.add_column(col, justify="right" if col == "quarantine" else "left")
    for p in sorted(report["pipelines"], key=lambda p: -SEVERITY[p["state"]]):
        run = p["last_run"]
        objective = ("-" if p["warn_after_s"] is None
                     else f"{human_age(p['warn_after_s'])} / {human_age(p['error_after_s'])}")
        synced = datetime.fromisoformat(p["synced_at"]) if p["synced_at"] else None
        last = "-" if run is None else (f"{run['status']} {_when(run['started_at'], now)}, "
                                        f"{run.get('rows_pulled') or 0:,} rows")
        table.add_row(p["pipeline"], f"[{STATE_COLOUR[p['state']]}]{p['state']}[/]", _when(synced, now), objective,
                      last, f"{p['open_quarantine']:,}", p["circuit"] or "-")
    console.print(table)
    if report["feeds"]:
        feeds = Table(title="Push feeds (lgsp outbox)")
        feeds.add_column("feed", no_wrap=True)
        for col in ("waiting", "dead", "acked", "last acknowledged", "reports due"):
            feeds.add_column(col)
        for f in report["feeds"]:
            waiting = f"{f['waiting']} (oldest {_when(f['oldest_waiting_at'], now)})" if f["waiting"] else "0"
            feeds.add_row(f["feed"], waiting, f"[red]{f['dead']}[/]" if f["dead"] else "0", str(f["acked"]),
                          _when(f["last_acked_at"], now), _reports(f["deadlines"]))
        console.print(feeds)
    if report["references"]:
        print_references(console, report["references"])
    if report.get("group_checks"):
        print_group_checks(console, report["group_checks"])
    backup = report.get("backup")
    if backup and backup["latest"]:
        console.print(f"Backup: latest {backup['latest']}, {_when(backup['created_at'], now)} ({backup['backups']} in "
                      f"{backup['root']}; lgsp backup list)", soft_wrap=True)
    for peak in report.get("peak_hours") or []:
        console.print(peak_line(peak), soft_wrap=True)
    if not report["problems"]:
        console.print("[green]nothing needs attention: every pipeline with an objective is fresh, no report "
                      "overdue, no dead letter, no broken reference nor group check[/]")
    for problem in report["problems"]:
        colour = "red" if problem["severity"] == "error" else "yellow"
        console.print(f"[{colour}]{problem['severity']}:[/] {problem['problem']}")


REFERENCE_COLOUR = {"ok": "green", "pending": "yellow", "broken": "red"}


def print_references(console: Console, results: list[dict[str, Any]]) -> None:
    """`lgsp references`, and the references part of `lgsp status`: one row per reference."""
    table = Table(title="References between datasets (lgsp references)")
    table.add_column("column\n-> the key it names", no_wrap=True)
    for col, justify in (("state", "left"), ("rows", "right"), ("orphans\n(past grace)", "right"),
                         ("missing:\nmost named", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        missing = ", ".join(f"{m['value']} ({m['rows']:,})" for m in r["missing"])
        more = r["missing_values"] - len(r["missing"])
        table.add_row(f"{r['reference']}\n-> {r['references']}", f"[{REFERENCE_COLOUR[r['state']]}]{r['state']}[/]",
                      f"{r['rows']:,}", f"{r['orphans']:,}\n({r['orphans_past_grace']:,}, {human_age(r['grace_s'])})",
                      (missing + (f" +{more:,} more" if more > 0 else "")) or "-")
    console.print(table)


def print_group_checks(console: Console, results: list[dict[str, Any]]) -> None:
    """`lgsp checks`, and the group checks part of `lgsp status`: one row per group check."""
    table = Table(title="Rules across rows (lgsp checks)")
    table.add_column("check\nrule", overflow="fold")
    for col, justify in (("state", "left"), ("groups", "right"), ("breaking\n(past grace)", "right"),
                         ("examples:\ngroup (rows counted)", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        shown = ", ".join(",".join(str(v) for v in e["group"].values()) + f" ({e['counted']})" for e in r["examples"])
        more = r["breaking"] - len(r["examples"])
        table.add_row(f"{r['check']}\n{r['rule']}", f"[{REFERENCE_COLOUR[r['state']]}]{r['state']}[/]",
                      f"{r['groups']:,}",
                      f"{r['breaking']:,}\n({r['breaking_past_grace']:,}, {human_age(r['grace_s'])})",
                      (shown + (f" +{more:,} more" if more > 0 else "")) or "-")
    console.print(table)


def print_history(console: Console, shares: list[dict[str, Any]], days: float) -> None:
    """`lgsp status --history`: per pipeline and feed, the share of the window in each state."""
    if not shares:
        console.print("no freshness check recorded yet: the lgsp_freshness DAG (every 15 minutes under "
                      "`lgsp airflow start`, or `lgsp status --alert`) records them")
        return
    table = Table(title=f"Freshness over the last {days:g} days (lgsp_freshness_event)")
    table.add_column("pipeline / feed", no_wrap=True)
    for col in ("observed", "fresh", "warn", "stale", "went stale", "longest stale"):
        table.add_column(col, justify="right")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    for row in shares:
        table.add_row(row["subject"], human_age(row["observed_s"]), pct(row["fresh"]), pct(row["warn"]),
                      pct(row["stale"]), str(row["incidents"]), human_age(row["longest_stale_s"]))
    console.print(table)
