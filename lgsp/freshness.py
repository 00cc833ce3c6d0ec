"""Freshness: how long ago each pipeline last synced its source completely, judged against its objective.

A pipeline's age is the time since its last sync that read the source to the end and committed
(`lgsp_cursor.synced_at`: an incremental or full run, every slice of a partitioned one; a run
that brought nothing new counts, a backfill does not). Its `freshness` in catalog/pipelines.yaml
(`FreshnessSpec`) turns the age into a state:

    fresh      younger than warn_after
    warn       older than warn_after
    stale      older than error_after: `lgsp status` exits 1, the lgsp_freshness DAG alerts
    never      no complete sync yet (judged as stale)
    unchecked  no objective declared

A dataset's state is the worst of the pipelines that fill it (the gateway shows it to agencies).

`check_and_alert` is the lgsp_freshness DAG's task: it judges every pipeline, and every push
feed's report deadlines (lgsp.deadlines), keeps each one's state in `lgsp_freshness`, and sends
one alert (lgsp.alerts) when a pipeline goes stale (a report overdue, a reference between datasets
broken: lgsp.references) and one when it is fresh again (delivered, holds again), not one per
check; each change of state is kept in `lgsp_freshness_event`, from which `lgsp.availability` says
what share of the time each was fresh. Example alert body::

    {"kind": "stale", "dag_id": "lgsp_tthc_dossiers", "summary": "tthc_dossiers is stale: last complete sync
     4h 12m ago (stale after 4h); last run failed at 2026-12-05T03:00:00+00:00: FatalError: tthc ...", ...}
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, PipelineSpec
from warehouse.store import utc

log = logging.getLogger("lgsp.freshness")

STATES = ("fresh", "warn", "stale", "never", "unchecked")
SEVERITY = {"unchecked": 0, "fresh": 0, "warn": 1, "stale": 2, "never": 2}


@dataclass(frozen=True)
class Freshness:
    """One pipeline's freshness now."""

    pipeline: str
    dataset: str
    state: str
    synced_at: datetime | None
    age_s: float | None
    warn_after_s: float | None
    error_after_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "dataset": self.dataset, "state": self.state,
                "synced_at": self.synced_at.isoformat() if self.synced_at else None,
                "age_s": None if self.age_s is None else round(self.age_s, 1),
                "warn_after_s": self.warn_after_s, "error_after_s": self.error_after_s}


def judge(pipeline: PipelineSpec, synced_at: datetime | None, now: datetime) -> Freshness:
    """The pipeline's state given when it last synced completely."""
    spec = pipeline.freshness
    age = None if synced_at is None else max(0.0, (now - synced_at).total_seconds())
    if spec is None:
        state = "unchecked"
    elif age is None:
        state = "never"
    else:
        state = "stale" if age > spec.error_after else "warn" if age > spec.warn_after else "fresh"
    return Freshness(pipeline.name, pipeline.dataset, state, synced_at, age,
                     spec.warn_after if spec else None, spec.error_after if spec else None)


def synced_times(conn: sa.Connection, tables: Any, pipelines: list[str]) -> dict[str, datetime | None]:
    """pipeline -> its last complete sync (`lgsp_cursor.synced_at`).

    A pipeline synced before lgsp recorded `synced_at` has none until its next sync: its latest
    loaded batch that was not a backfill stands in, so an upgrade does not call it "never".
    """
    cursor = tables["lgsp_cursor"]
    synced = {row.pipeline: utc(row.synced_at)
              for row in conn.execute(sa.select(cursor.c.pipeline, cursor.c.synced_at))}
    unknown = [name for name in pipelines if synced.get(name) is None]
    if unknown:
        batch = tables["lgsp_batch"]
        rows = conn.execute(sa.select(batch.c.pipeline, sa.func.max(batch.c.finished_at))
                            .where(batch.c.pipeline.in_(unknown), batch.c.status == "loaded",
                                   sa.or_(batch.c.mode.is_(None), batch.c.mode != "backfill"))
                            .group_by(batch.c.pipeline))
        synced.update({name: utc(at) for name, at in rows})
    return synced


def pipeline_freshness(conn: sa.Connection, tables: Any, catalog: Catalog,
                       now: datetime | None = None) -> list[Freshness]:
    """Every pipeline's freshness, in catalog order."""
    now = now or datetime.now(timezone.utc)
    synced = synced_times(conn, tables, list(catalog.pipelines))
    return [judge(p, synced.get(p.name), now) for p in catalog.pipelines.values()]


def dataset_freshness(conn: sa.Connection, tables: Any, catalog: Catalog, dataset: str,
                      now: datetime | None = None) -> dict[str, Any] | None:
    """The dataset's state (the worst of its pipelines with an objective) and its last complete sync;
    None when no pipeline with an objective fills it (a mart dataset, say)."""
    judged = [f for f in pipeline_freshness(conn, tables, catalog, now)
              if f.dataset == dataset and f.state != "unchecked"]
    if not judged:
        return None
    worst = max(judged, key=lambda f: (SEVERITY[f.state], f.age_s if f.age_s is not None else float("inf")))
    return {"state": worst.state, "synced_at": worst.synced_at, "age_s": worst.age_s,
            "warn_after_s": worst.warn_after_s, "error_after_s": worst.error_after_s}


def human_age(seconds: float | None) -> str:
    """3h 12m, 2d 4h, 45s; "-" for None."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // subsize
            return f"{seconds // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{seconds}s"


def _alert_for(fresh: Freshness, previous: str | None, last_failure: str | None) -> Any:
    """The alert for a change of state worth telling (None if it is not): gone stale, or fresh again."""
    from lgsp.alerts import Alert, dag_url, with_system

    dag_id = f"lgsp_{fresh.pipeline}"
    was_bad = previous is not None and SEVERITY.get(previous, 0) >= 2
    if SEVERITY[fresh.state] >= 2 and not was_bad:
        when = ("has never synced completely" if fresh.synced_at is None else
                f"last complete sync {human_age(fresh.age_s)} ago, at {fresh.synced_at.isoformat(timespec='seconds')}")
        cause = f"; last run: {last_failure}" if last_failure else ""
        summary = (f"{fresh.pipeline} is stale: {when} (stale after {human_age(fresh.error_after_s)}){cause}; "
                   f"see `lgsp status` and the DAG's runs")
        return with_system(Alert(kind="stale", dag_id=dag_id, summary=summary[:1000], dag_url=dag_url(dag_id),
                                 error=last_failure), dag_id)
    if fresh.state == "fresh" and was_bad:
        return with_system(Alert(kind="fresh", dag_id=dag_id, dag_url=dag_url(dag_id), summary=(
            f"{fresh.pipeline} is fresh again: synced completely {human_age(fresh.age_s)} ago")), dag_id)
    return None


def overdue_text(feed: str, period: dict[str, Any]) -> str:
    """"government_report: the report for 2025-10, due 2025-11-05 00:00 +07, has 6 of its 8 rows acknowledged"."""
    return (f"{feed}: the report for {period['period']}, due {period['due_at']:%Y-%m-%d %H:%M} +07, has "
            f"{period['acknowledged']} of its {period['rows']} rows acknowledged")


def _feed_alert(deadlines: dict[str, Any], previous: str | None, push_dag: str) -> Any:
    """The alert for a feed that fell behind its deadlines, or caught up (None otherwise)."""
    from lgsp.alerts import Alert, dag_url, with_system

    feed, overdue = deadlines["feed"], deadlines["overdue"]
    if overdue and previous != "overdue":
        summary = "; ".join(overdue_text(feed, p) for p in overdue[-3:])
        return with_system(Alert(kind="overdue", dag_id=push_dag, dag_url=dag_url(push_dag), summary=(
            f"{summary}; see `lgsp status` and `lgsp outbox list --feed {feed}`")[:1000]), f"lgsp_push_{feed}")
    if not overdue and previous == "overdue":
        last = deadlines["last_delivered"]
        return with_system(Alert(kind="delivered", dag_id=push_dag, dag_url=dag_url(push_dag),
                                 summary=f"{feed}: every report due is acknowledged again"
                                         + (f" (the latest: {last['period']})" if last else "")), f"lgsp_push_{feed}")
    return None


def _push_dag(catalog: Catalog, feed: str) -> str:
    """The DAG that sends `feed`: its own, or the first feed's it runs `after`."""
    spec = catalog.feeds[feed]
    return _push_dag(catalog, spec.after[0]) if spec.after else f"lgsp_push_{feed}"


def _unusual_reads(wh: Any, catalog: Catalog, now: datetime, kept: dict[str, Any],
                   states: dict[str, tuple[str, datetime | None]]) -> list[tuple[str, Any]]:
    """The alerts for agency-dataset pairs that became unusual (`reads:<agency>:<dataset>`, kept in `states`;
    one that was and is no longer goes back to `usual`, silently)."""
    if not sa.inspect(wh.engine).has_table("gateway_audit"):
        return []
    from gateway.usage import said, unusual
    from lgsp.alerts import Alert

    found = []
    flagged = {f"reads:{u['agency_id']}:{u['dataset']}": u for u in unusual(wh.engine, now)}
    for subject, u in flagged.items():
        states[subject] = ("unusual", None)
        if subject in kept and kept[subject].state == "unusual":
            continue  # told already
        shared = catalog.sharing.get(u["dataset"])
        found.append((subject, Alert(kind="unusual_reads", dag_id="lgsp_freshness", summary=said(u)[:1000],
                                     owner=shared.owner if shared else None)))
    for subject, row in kept.items():
        if subject.startswith("reads:") and row.state == "unusual" and subject not in flagged:
            states[subject] = ("usual", None)
    return found


def check_and_alert(wh: Any, catalog: Catalog, now: datetime | None = None) -> dict[str, Any]:
    """Judge every pipeline, every feed's deadlines, every reference between datasets (lgsp.references) and
    every group check (lgsp.group_checks), keep the states in `lgsp_freshness` (a reference's subject:
    `ref:<dataset>.<column>`, a group check's `check:<dataset>.<check>`), and alert on a pipeline going stale, a
    report going overdue, a reference or a group check breaking, and on each recovering."""
    from lgsp import group_checks
    from lgsp.alerts import send
    from lgsp.deadlines import all_deadlines
    from lgsp.references import alert_for, check_all
    from lgsp.report import last_failure

    now = now or datetime.now(timezone.utc)
    table = wh.system["lgsp_freshness"]
    with wh.engine.connect() as conn:
        judged = [f for f in pipeline_freshness(conn, wh.system, catalog, now) if f.state != "unchecked"]
        kept = {r.subject: r for r in conn.execute(sa.select(table))}
        checked_references = check_all(conn, wh.metadata.tables, catalog, now)
        checked_groups = group_checks.check_all(conn, wh.metadata.tables, catalog, now)
    alerts, states = [], {}
    for fresh in judged:
        previous = kept[fresh.pipeline].state if fresh.pipeline in kept else None
        alert = _alert_for(fresh, previous, last_failure(wh, fresh.pipeline))
        if alert is not None:
            alerts.append({"subject": fresh.pipeline, "kind": alert.kind, "sent_to": send(alert)})
        states[fresh.pipeline] = (fresh.state, fresh.synced_at)
    for deadlines in all_deadlines(wh, catalog, now):
        subject = f"feed:{deadlines['feed']}"
        previous = kept[subject].state if subject in kept else None
        alert = _feed_alert(deadlines, previous, _push_dag(catalog, deadlines["feed"]))
        if alert is not None:
            alerts.append({"subject": subject, "kind": alert.kind, "sent_to": send(alert)})
        states[subject] = ("overdue" if deadlines["overdue"] else "fresh", None)
    for result in checked_references:
        subject = f"ref:{result['reference']}"
        previous = kept[subject].state if subject in kept else None
        alert = alert_for(catalog, result, previous)
        if alert is not None:
            alerts.append({"subject": subject, "kind": alert.kind, "sent_to": send(alert)})
        states[subject] = (result["state"], None)
    for result in checked_groups:
        subject = f"check:{result['check']}"
        previous = kept[subject].state if subject in kept else None
        alert = group_checks.alert_for(catalog, result, previous)
        if alert is not None:
            alerts.append({"subject": subject, "kind": alert.kind, "sent_to": send(alert)})
        states[subject] = (result["state"], None)
    errors = []
    try:  # agencies reading far more than they usually do (gateway.usage): alert once when a pair becomes unusual
        for subject, alert in _unusual_reads(wh, catalog, now, kept, states):
            alerts.append({"subject": subject, "kind": alert.kind, "sent_to": send(alert)})
    except Exception as exc:  # noqa: BLE001 - said in the result and the log; the check itself stands
        errors.append(f"unusual reads not checked: {type(exc).__name__}: {exc}"[:500])
    rows = [{"subject": subject, "state": state, "synced_at": synced_at, "checked_at": now,
             "since": (utc(kept[subject].since) if subject in kept and kept[subject].state == state else now)}
            for subject, (state, synced_at) in states.items()]
    changed = [{"subject": r["subject"], "at": now, "state": r["state"]} for r in rows
               if r["subject"] not in kept or kept[r["subject"]].state != r["state"]]
    with wh.transaction() as conn:
        wh.upsert(conn, table, rows, ["subject"])
        wh.insert_ignore(conn, wh.system["lgsp_freshness_event"], changed, ["subject", "at"])
    try:  # today's quality scorecards, for `lgsp quality --history`: never at the cost of the freshness alerts
        from lgsp.scorecard import record, scorecards

        record(wh, scorecards(wh.engine, wh.metadata.tables, catalog, now=now, profile=False,
                              references=checked_references, groups=checked_groups), now)
    except Exception as exc:  # noqa: BLE001 - said in the result and the log; the check itself stands
        errors.append(f"quality scores not recorded: {type(exc).__name__}: {exc}"[:500])
    try:  # agencies' new access requests: tell the province
        if sa.inspect(wh.engine).has_table("gateway_access_request"):
            from gateway.access_requests import AccessRequests

            told = AccessRequests(wh.engine, catalog).notify_new(send)
            alerts += [{"subject": f"request:{request_id}", "kind": "access_request"} for request_id in told]
    except Exception as exc:  # noqa: BLE001
        errors.append(f"access requests not told: {type(exc).__name__}: {exc}"[:500])
    for error in errors:
        log.warning("lgsp_freshness: %s", error)
    return {"checked": len(rows), "states": {subject: state for subject, (state, _) in states.items()},
            "alerts": alerts, "errors": errors}
