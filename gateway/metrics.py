"""The gateway's own metrics for Prometheus, and `GET /metrics` (with the platform's gauges: lgsp.metrics).

- `lgsp_gateway_requests_total{route,method,status}`: every request, by its route's template (a dataset's
  routes are named per dataset; a path no route matches is `unmatched`), so a hostile caller cannot grow
  the label set;
- `lgsp_gateway_request_duration_seconds{route}`: a histogram of the time to the response's end;
- `lgsp_gateway_reads_total{dataset,action,status}` and `lgsp_gateway_rows_sent_total{dataset,agency}`:
  what the audit recorded (every read, refusals too; rows of answered reads).

`lgsp serve` runs several worker processes: each keeps its counts in files under
`$LGSP_HOME/run/metrics` (prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`), and whichever
worker answers a scrape sums them all, so a scrape sees the whole gateway and a worker replaced by a reload
(SIGHUP) loses none of its counts. `lgsp serve` empties the folder when it starts: counters start at 0
again, which Prometheus' `rate()` expects of a restart. A gateway in a thread (the demo, the tests) counts
in its process.
"""
from __future__ import annotations

import hmac
import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OWN = CollectorRegistry(auto_describe=False)  # this process's counts (in-process gateway)
REQUESTS = Counter("lgsp_gateway_requests", "Requests answered by the gateway, by route template, method and status",
                   ["route", "method", "status"], registry=_OWN)
DURATION = Histogram("lgsp_gateway_request_duration_seconds", "Time from a request's arrival to its response's end",
                     ["route"], buckets=BUCKETS, registry=_OWN)
READS = Counter("lgsp_gateway_reads", "Reads of shared datasets as audited (refusals too), by dataset, action "
                "and status", ["dataset", "action", "status"], registry=_OWN)
ROWS = Counter("lgsp_gateway_rows_sent", "Rows sent by answered reads, by dataset and agency (the audit's "
               "agency label)", ["dataset", "agency"], registry=_OWN)


def prepare_folder(home: Path) -> Path:
    """The workers' metrics folder, emptied (`lgsp serve` calls it before starting them, and puts it in the
    environment they inherit)."""
    folder = home / "run" / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def request_done(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    DURATION.labels(route).observe(seconds)


def read_audited(dataset: str, action: str, agency: str, status: int, rows: int | None) -> None:
    READS.labels(dataset, action, str(status)).inc()
    if rows:
        ROWS.labels(dataset, agency).inc(rows)


def gateway_text() -> bytes:
    """The gateway's counters: every worker's, summed, under `lgsp serve`; this process's otherwise."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return generate_latest(_OWN)
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=folder)
    return generate_latest(registry)


def authorized(expected: bytes | None, authorization: str | None) -> bool:
    """Whether `Authorization: Bearer <token>` carries the metrics token (compared in constant time)."""
    if expected is None or not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def route_label(scope: dict[str, Any], static_paths: frozenset[str]) -> str:
    """The request's route template: FastAPI's matched route, else the path when it is one of the app's own
    paths (the records route answered before FastAPI's router), else `unmatched`."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    path = scope.get("path", "")
    return path if path in static_paths else "unmatched"
