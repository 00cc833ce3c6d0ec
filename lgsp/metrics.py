"""Metrics for Prometheus: the platform's state (what `lgsp status` reports) as gauges a monitoring system
scrapes, graphs and alerts on.

Two ways out, the same text (Prometheus' exposition format 0.0.4):

- `GET /metrics` on the sharing gateway (`lgsp serve`), with `Authorization: Bearer $LGSP_METRICS_TOKEN`:
  these gauges and the gateway's own counters (gateway.metrics: requests, latency, rows sent);
- `lgsp metrics` prints them; `lgsp metrics --textfile DIR/lgsp.prom` writes them atomically for
  node_exporter's textfile collector (a host without a gateway), and the lgsp_freshness DAG does it every
  15 minutes when `LGSP_METRICS_TEXTFILE` names the file.

Each scrape reads the warehouse's small tables (batches, cursors, quarantine counts, outbox, circuits,
webhooks, requests, scores); the parts that scan whole tables (each reference between datasets and rule
across rows, the agencies' unusual reads over the audit: ~1 s at 4 million residents) are computed again only when older
than `LGSP_METRICS_SCAN_S` (300 s), and the whole answer is kept `LGSP_METRICS_CACHE_S` (15 s), so a
scrape every 15 s costs the store a few small queries. `lgsp_status_scanned_timestamp_seconds` says when
the scanned parts were computed. A store that does not answer gives `lgsp_status_up 0` (and the error in
the log), not a failed scrape: the gateway's own counters still arrive.

No metric carries a personal value: labels are pipelines, datasets, systems, feeds, references, states,
agencies' ids and routes, all bounded by the catalog and the registry.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from catalog.models import Catalog
from lgsp.freshness import STATES
from lgsp.settings import env_number

log = logging.getLogger("lgsp.metrics")
CACHE_ENV, SCAN_ENV = "LGSP_METRICS_CACHE_S", "LGSP_METRICS_SCAN_S"
TOKEN_ENV, TEXTFILE_ENV = "LGSP_METRICS_TOKEN", "LGSP_METRICS_TEXTFILE"
CACHE_S, SCAN_S = 15.0, 300.0
RUN_STATUSES = ("extracting", "extracted", "validated", "loaded", "failed")
CIRCUIT_STATES = ("closed", "open", "half_open")
FRESHNESS_STATES = STATES
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(ValueError):
    """A metrics setting is wrong; the message names it and says what it takes."""


def seconds_setting(name: str, default: float) -> float:
    """A number of seconds from the environment (`lgsp.settings.env_number`), or MetricsError saying what is wrong."""
    try:
        return env_number(name, default)
    except ValueError as exc:
        raise MetricsError(str(exc)) from None


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class _Families:
    """Gauge families by name, filled sample by sample."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily] = {}

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        if name not in self.families:
            self.families[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
        return self.families[name]

    def add(self, name: str, help_text: str, value: float | None, **labels: Any) -> None:
        family = self.gauge(name, help_text, tuple(labels))
        if value is not None:
            family.add_metric([str(v) for v in labels.values()], float(value))

    def states(self, name: str, help_text: str, current: str | None, states: Iterable[str], **labels: Any) -> None:
        """One sample per possible state, 1 for the current one (Prometheus' enum pattern)."""
        for state in states:
            self.add(name, help_text, 1.0 if state == current else 0.0, **labels, state=state)


def _pipelines(f: _Families, report: dict[str, Any]) -> None:
    for p in report["pipelines"]:
        who = {"pipeline": p["pipeline"]}
        f.add("lgsp_pipeline_info", "A pipeline of the catalog: its dataset, source system and schedule", 1.0,
              **who, dataset=p["dataset"], system=p["system"], schedule=p["schedule"] or "")
        f.states("lgsp_pipeline_freshness", "The pipeline's freshness against its objective (1: the current state)",
                 p["state"], FRESHNESS_STATES, **who)
        f.add("lgsp_pipeline_last_complete_sync_timestamp_seconds",
              "When the pipeline's last complete (non-backfill) sync committed", _ts(p["synced_at"]), **who)
        f.add("lgsp_pipeline_warn_after_seconds", "The freshness objective: warn when the last complete sync is older",
              p["warn_after_s"], **who)
        f.add("lgsp_pipeline_stale_after_seconds",
              "The freshness objective: stale (an error) when the last complete sync is older", p["error_after_s"],
              **who)
        f.add("lgsp_dataset_open_quarantine_rows", "Rows of the dataset rejected by its row rules, still open",
              p["open_quarantine"], pipeline=p["pipeline"], dataset=p["dataset"])
        run = p["last_run"]
        if run is None:
            continue
        f.states("lgsp_pipeline_last_run_status", "The status of the pipeline's latest batch (1: the current one)",
                 run["status"], RUN_STATUSES, **who)
        f.add("lgsp_pipeline_last_run_start_timestamp_seconds", "When the pipeline's latest batch started",
              _ts(run["started_at"]), **who)
        if run["finished_at"] is not None:
            f.add("lgsp_pipeline_last_run_duration_seconds", "How long the pipeline's latest finished batch took",
                  _ts(run["finished_at"]) - _ts(run["started_at"]), **who)  # type: ignore[operator]
        for kind in ("pulled", "landed", "quarantined", "changed"):
            f.add("lgsp_pipeline_last_run_rows", "Rows of the latest batch: pulled, landed, quarantined, changed",
                  run[f"rows_{kind}"] or 0, **who, kind=kind)


def _systems(f: _Families, report: dict[str, Any]) -> None:
    circuits = {p["system"]: p["circuit"] for p in report["pipelines"]}
    for system, state in sorted(circuits.items()):
        f.states("lgsp_system_circuit", "The circuit breaker before the system (1: the current state; closed: "
                 "calls go through)", state or "closed", CIRCUIT_STATES, system=system)
    for peak in report.get("peak_hours") or []:
        f.add("lgsp_system_peak", "1 while the system is in its peak hours (limits.peak: lgsp's background calls "
              "to it slowed), 0 off peak", 0.0 if peak["until"] is None else 1.0, system=peak["system"])
        f.add("lgsp_system_peak_rate_per_second", "The rate of lgsp's background calls to the system in its peak "
              "hours", peak["rate_per_s"], system=peak["system"])


def _feeds(f: _Families, report: dict[str, Any]) -> None:
    for feed in report["feeds"]:
        who = {"feed": feed["feed"]}
        for status in ("waiting", "dead", "acked"):
            f.add("lgsp_feed_messages", "Push feed messages: waiting to be sent or acknowledged, dead letters, acked",
                  feed[status], **who, status=status)
        f.add("lgsp_feed_oldest_waiting_age_seconds", "The age of the push feed's oldest message not acknowledged",
              feed["oldest_waiting_age_s"] or 0.0, **who)
        deadlines = feed.get("deadlines") or {}
        f.add("lgsp_feed_overdue_periods", "Report periods of the feed past their deadline and not all received",
              len(deadlines.get("overdue", [])), **who)


def _references(f: _Families, references: list[dict[str, Any]]) -> None:
    for r in references:
        who = {"reference": r["reference"], "severity": r["severity"]}
        f.add("lgsp_reference_rows", "Rows naming a record of another dataset", r["rows"], **who)
        f.add("lgsp_reference_orphan_rows", "Rows naming a record lgsp does not have", r["orphans"], **who)
        f.add("lgsp_reference_orphan_rows_past_grace", "Orphan rows older than the reference's grace",
              r["orphans_past_grace"], **who)


def _group_checks(f: _Families, checks: list[dict[str, Any]]) -> None:
    for c in checks:
        who = {"check": c["check"], "severity": c["severity"]}
        f.add("lgsp_group_check_groups", "Groups a rule across rows reads", c["groups"], **who)
        f.add("lgsp_group_check_breaking_groups", "Groups breaking a rule across rows", c["breaking"], **who)
        f.add("lgsp_group_check_breaking_groups_past_grace", "Groups breaking it with no row written within its grace",
              c["breaking_past_grace"], **who)


def _gateway_side(f: _Families, report: dict[str, Any]) -> None:
    requests = report.get("access_requests")
    if requests is not None:
        f.add("lgsp_access_requests_pending", "Agencies' access requests waiting for the province's decision",
              requests.get("pending", 0))
        f.add("lgsp_grants_ending_soon", "Grants ending within 14 days", len(requests.get("ending", [])))
    hooks = report.get("webhooks")
    if hooks is not None:
        dead = sum(1 for h in hooks["troubled"] if h["dead_at"] is not None)
        f.add("lgsp_webhooks", "Agencies' webhooks: live (not removed), failing (retrying), dead", hooks["live"],
              state="live")
        f.add("lgsp_webhooks", "", len(hooks["troubled"]) - dead, state="failing")
        f.add("lgsp_webhooks", "", dead, state="dead")
    reads = report.get("unusual_reads")
    if reads is not None:
        f.add("lgsp_unusual_reads", "Agency and dataset pairs read far more than usual (or than the grant's "
              "daily rows)", len(reads))


def _backup(f: _Families, report: dict[str, Any]) -> None:
    backup = report["backup"]
    f.add("lgsp_backups", "Complete backups kept (lgsp backup)", backup["backups"])
    f.add("lgsp_backup_last_timestamp_seconds", "When the latest complete backup was taken",
          _ts(backup["created_at"]))


def _scores(f: _Families, engine: sa.Engine, tables: Any) -> None:
    """Each dataset's latest quality scorecard, as the lgsp_freshness DAG recorded it (lgsp.scorecard)."""
    from lgsp.scorecard import DIMENSIONS

    table = tables["lgsp_quality_score"]
    latest = sa.select(table.c.dataset, sa.func.max(table.c.day).label("day")).group_by(table.c.dataset).subquery()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).join(latest, sa.and_(table.c.dataset == latest.c.dataset,
                                                                  table.c.day == latest.c.day))).all()
    f.gauge("lgsp_quality_score", "The dataset's latest quality score (0-1) per dimension, and overall (the "
            "weakest); a dimension not judged yet has no sample", ("dataset", "dimension"))
    f.gauge("lgsp_quality_score_timestamp_seconds", "When the dataset's quality score was last computed (the "
            "lgsp_freshness DAG, every 15 minutes)", ("dataset",))
    for row in rows:
        for dimension in ("overall", *DIMENSIONS):
            f.add("lgsp_quality_score", "", row._mapping[dimension], dataset=row.dataset, dimension=dimension)
        f.add("lgsp_quality_score_timestamp_seconds", "", _ts(row.checked_at), dataset=row.dataset)


def _recent_runs(f: _Families, engine: sa.Engine, tables: Any, now: datetime) -> None:
    """Each pipeline's batches started in the 24 hours before `now`, by status, and the rows they pulled and changed:
    a pipeline failing every other run shows here while its latest run may have passed."""
    from datetime import timedelta

    batch = tables["lgsp_batch"]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(batch.c.pipeline, batch.c.status, sa.func.count(),
                                      sa.func.coalesce(sa.func.sum(batch.c.rows_pulled), 0),
                                      sa.func.coalesce(sa.func.sum(batch.c.rows_changed), 0))
                            .where(batch.c.started_at >= now - timedelta(days=1))
                            .group_by(batch.c.pipeline, batch.c.status)).all()
    f.gauge("lgsp_pipeline_runs_24h", "Batches started in the last 24 hours, by their status now",
            ("pipeline", "status"))
    pulled: dict[str, float] = {}
    changed: dict[str, float] = {}
    for pipeline, status, runs, rows_pulled, rows_changed in rows:
        f.add("lgsp_pipeline_runs_24h", "", runs, pipeline=pipeline, status=status)
        pulled[pipeline] = pulled.get(pipeline, 0) + rows_pulled
        changed[pipeline] = changed.get(pipeline, 0) + rows_changed
    f.gauge("lgsp_pipeline_rows_24h", "Rows pulled and changed by the batches started in the last 24 hours",
            ("pipeline", "kind"))
    for pipeline in sorted(pulled):
        f.add("lgsp_pipeline_rows_24h", "", pulled[pipeline], pipeline=pipeline, kind="pulled")
        f.add("lgsp_pipeline_rows_24h", "", changed[pipeline], pipeline=pipeline, kind="changed")


def families(wh: Any, catalog: Catalog, report: dict[str, Any]) -> list[Metric]:
    """The platform's gauges from a `lgsp.status.status_report`."""
    f = _Families()
    f.add("lgsp_status_up", "1: the warehouse answered and the state below is current", 1.0)
    f.add("lgsp_status_ok", "1: no problem of error severity (what `lgsp status` exits 1 on)",
          1.0 if report["ok"] else 0.0)
    for severity in ("error", "warning"):
        f.add("lgsp_status_problems", "Problems `lgsp status` lists, by severity",
              sum(1 for p in report["problems"] if p["severity"] == severity), severity=severity)
    _pipelines(f, report)
    _systems(f, report)
    _feeds(f, report)
    _references(f, report["references"])
    _group_checks(f, report.get("group_checks", []))
    _gateway_side(f, report)
    _backup(f, report)
    _scores(f, wh.engine, wh.system)
    _recent_runs(f, wh.engine, wh.system, report["checked_at"])
    return list(f.families.values())


def down(error: BaseException) -> list[Metric]:
    f = _Families()
    f.add("lgsp_status_up", "1: the warehouse answered and the state below is current", 0.0)
    log.warning("metrics: the platform's state could not be read: %s: %s", type(error).__name__, error)
    return list(f.families.values())


class PlatformCollector(Collector):
    """The platform's gauges, for a prometheus_client registry: the report kept `cache_s`, its scanned parts
    `scan_s`. `warehouse` is called once, at the first collection (a gateway worker opens its engine then)."""

    def __init__(self, warehouse: Callable[[], Any], catalog: Catalog, cache_s: float | None = None,
                 scan_s: float | None = None) -> None:
        self._warehouse_factory, self._wh = warehouse, None
        self.catalog = catalog
        self.cache_s = seconds_setting(CACHE_ENV, CACHE_S) if cache_s is None else cache_s
        self.scan_s = seconds_setting(SCAN_ENV, SCAN_S) if scan_s is None else scan_s
        self._lock = threading.Lock()
        self._kept: tuple[float, list[Metric]] | None = None
        self._scanned: tuple[float, dict[str, Any]] | None = None

    def _warehouse(self) -> Any:
        if self._wh is None:
            self._wh = self._warehouse_factory()
        return self._wh

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one computation at a time: concurrent scrapes share it
            now = time.monotonic()
            if self._kept is None or now - self._kept[0] >= self.cache_s:
                self._kept = (now, self._compute(now))
            yield from self._kept[1]

    def _compute(self, now: float) -> list[Metric]:
        from lgsp.status import scanned_parts, status_report

        started = time.perf_counter()
        try:
            wh, at = self._warehouse(), datetime.now(timezone.utc)
            if self._scanned is None or now - self._scanned[0] >= self.scan_s:
                self._scanned = (now, scanned_parts(wh, self.catalog, at))
            scanned = self._scanned[1]
            found = families(wh, self.catalog, status_report(wh, self.catalog, at, scanned=scanned))
            found.append(_gauge("lgsp_status_scanned_timestamp_seconds", "When the parts that scan whole tables "
                                "(references, group checks, unusual reads) were last computed",
                                scanned["checked_at"].timestamp()))
        except Exception as exc:  # noqa: BLE001 - said as lgsp_status_up 0 and in the log; the scrape stands
            self._scanned = None
            found = down(exc)
        found.append(_gauge("lgsp_status_collect_seconds", "How long computing the platform's state took",
                            time.perf_counter() - started))
        return found


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def registry(wh: Any, catalog: Catalog) -> CollectorRegistry:
    """A registry of the platform's gauges, computed when collected (nothing kept between collections)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PlatformCollector(lambda: wh, catalog, cache_s=0.0, scan_s=0.0))
    return reg


def text(wh: Any, catalog: Catalog) -> bytes:
    """The platform's gauges in Prometheus' text format."""
    return generate_latest(registry(wh, catalog))


def said(wh: Any, catalog: Catalog) -> str:
    """The metrics in a few words (the demo's line): samples, fresh pipelines, problems by severity."""
    found = {m.name: m for m in registry(wh, catalog).collect()}
    samples = sum(len(m.samples) for m in found.values())
    if found["lgsp_status_up"].samples[0].value != 1:
        return f"{samples} Prometheus samples; the warehouse did not answer (lgsp_status_up 0)"
    fresh = sum(1 for s in found["lgsp_pipeline_freshness"].samples if s.labels["state"] == "fresh" and s.value == 1)
    problems = {s.labels["severity"]: int(s.value) for s in found["lgsp_status_problems"].samples}
    return (f"{samples} Prometheus samples: {fresh} of {len(catalog.pipelines)} pipelines fresh, "
            f"{problems.get('error', 0)} error(s) and {problems.get('warning', 0)} warning(s) as lgsp status has them")


def write_textfile(path: str | Path, wh: Any, catalog: Catalog) -> Path:
    """The gauges written to `path` for node_exporter's textfile collector: a temporary file renamed into place,
    so the collector never reads half a file. Its folder must exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise MetricsError(f"cannot write metrics to {path}: folder {path.parent} does not exist (node_exporter's "
                           "--collector.textfile.directory is where they go)")
    if path.suffix != ".prom":
        raise MetricsError(f"{path}: node_exporter's textfile collector reads only files ending in .prom")
    write_to_textfile(str(path), registry(wh, catalog))
    return path


def textfile_setting() -> Path | None:
    """`LGSP_METRICS_TEXTFILE`, where the lgsp_freshness DAG writes the gauges (None: it does not)."""
    raw = os.environ.get(TEXTFILE_ENV, "").strip()
    return Path(raw) if raw else None
