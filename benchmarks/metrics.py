"""Benchmark: what Prometheus metrics cost lgsp (lgsp.metrics, gateway.metrics).

1. **Per request**: the gateway's counters as each request pays them (`request_done` + `read_audited`: a
   counter, a histogram, two more counters), in a child process counting into files as `lgsp serve`'s
   workers do (prometheus_client's multiprocess mode) and in memory as an in-process gateway does,
   `--calls` times; then what a scrape pays to sum two workers' files (`gateway_text`).
2. **Per scrape** of the platform's state, on a warehouse of N citizens (PostgreSQL by default,
   `--sqlite` for the embedded one; benchmarks/migrate.py's valid citizens through the warehouse's
   merge, as benchmarks/references.py fills it) whose `lgsp_batch` holds `--batches` earlier batches (by
   default a year of the catalog's pipelines each every 15 minutes), each `--repeat` times, the median:

     scan        the floor: `SELECT count(*)` of the citizens
     status      `lgsp status`'s report (lgsp.status.status_report: the references' anti-join included)
     scrape      a scrape computing everything (the first, or one after LGSP_METRICS_SCAN_S)
     kept        a scrape with the scanned parts kept (every other scrape within LGSP_METRICS_SCAN_S)

Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/metrics.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway_load import add_database_options, ratio, scratch_warehouse  # noqa: E402
from migrate import fill, without_phone  # noqa: E402

COUNTING = """
import sys, time
from gateway.metrics import gateway_text, read_audited, request_done
calls = int(sys.argv[1])
started = time.perf_counter()
for i in range(calls):
    request_done("/api/v1/datasets/citizen/records", "GET", 200, 0.004)
    read_audited("citizen", "records", "so_y_te", 200, 100)
per_call = (time.perf_counter() - started) / calls
started = time.perf_counter()
for _ in range(20):
    body = gateway_text()
from prometheus_client.parser import text_string_to_metric_families
summed = sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
             if s.name == "lgsp_gateway_requests_total")
print(per_call, (time.perf_counter() - started) / 20, len(body), int(summed))
"""


def per_request(calls: int) -> dict[str, Any]:
    """Seconds per request's counting, in files (two processes, as two workers) and in memory; a scrape's sum."""
    repo = str(Path(__file__).resolve().parent.parent)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lgsp-bench-metrics-") as folder:
        for mode, extra in (("files", {"PROMETHEUS_MULTIPROC_DIR": folder}), ("memory", {})):
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            env.update(extra, PYTHONPATH=repo)
            runs = [subprocess.run([sys.executable, "-c", COUNTING, str(calls)], env=env, check=True,
                                   capture_output=True, text=True).stdout.split() for _ in range(2)]
            figures[mode] = {"us_per_request": round(min(float(r[0]) for r in runs) * 1e6, 2),
                             "scrape_ms": round(float(runs[-1][1]) * 1000, 2), "bytes": int(runs[-1][2]),
                             "requests_summed": int(runs[-1][3])}  # files: both processes' requests
        figures["files"]["worker_files"] = len(os.listdir(folder)) if os.path.isdir(folder) else 0
    return figures


def fill_batches(wh: Any, catalog: Any, batches: int | None) -> int:
    """`batches` loaded batches in lgsp_batch (default: each pipeline every 15 minutes for a year), the latest a
    minute ago, and each pipeline's cursor as its latest left it; how many."""
    from datetime import datetime, timedelta, timezone

    pipelines = list(catalog.pipelines.values())
    batches = len(pipelines) * 96 * 365 if batches is None else batches
    now, table = datetime.now(timezone.utc), wh.system["lgsp_batch"]
    with wh.transaction() as conn:
        for start in range(0, batches, 20_000):
            rows = []
            for i in range(start, min(start + 20_000, batches)):
                spec = pipelines[i % len(pipelines)]
                at = now - timedelta(minutes=1 + 15 * ((batches - i) // len(pipelines)))
                rows.append({"batch_id": f"bench-{i}", "pipeline": spec.name, "dataset": spec.dataset,
                             "source_system": spec.source.system, "status": "loaded", "started_at": at,
                             "finished_at": at + timedelta(seconds=5), "rows_pulled": 100, "rows_landed": 100,
                             "rows_quarantined": 0, "rows_superseded": 0, "rows_changed": 1, "mode": "incremental"})
            conn.execute(table.insert(), rows)
        last = {r["pipeline"]: r for r in rows}  # each pipeline's cursor as its latest sync left it
        conn.execute(wh.system["lgsp_cursor"].insert(), [
            {"pipeline": p, "cursor_value": r["started_at"], "batch_id": r["batch_id"], "updated_at": r["finished_at"],
             "synced_at": r["finished_at"]} for p, r in last.items()])
    return batches


def timed(action: Any, repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=None, help="earlier batches in lgsp_batch (default: a year's)")
    add_database_options(parser)
    args = parser.parse_args()
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "rows": args.rows,
                               "repeat": args.repeat, "calls": args.calls}
    print(f"==> {args.calls:,} requests counted, in files and in memory", flush=True)
    figures["per_request"] = per_request(args.calls)
    catalog = without_phone()
    with scratch_warehouse(args, "lgsp-bench-metrics-") as (url, home):
        os.environ["LGSP_HOME"] = str(home)  # backups are looked for there (none: the metric says so)
        print(f"==> {args.rows:,} citizens into {figures['database']}", flush=True)
        figures["fill_seconds"] = round(fill(url, catalog, args.rows), 2)
        from lgsp.metrics import PlatformCollector
        from lgsp.status import status_report
        from warehouse import Warehouse

        wh = Warehouse(url, catalog)
        table = wh.metadata.tables["core_citizen"]
        figures["batches"] = fill_batches(wh, catalog, args.batches)

        def scan() -> None:
            with wh.engine.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

        everything = PlatformCollector(lambda: wh, catalog, cache_s=0.0, scan_s=0.0)
        kept = PlatformCollector(lambda: wh, catalog, cache_s=0.0, scan_s=float("inf"))
        list(kept.collect())  # its scan, once
        samples = sum(len(m.samples) for m in everything.collect())
        medians = {"scan": timed(scan, args.repeat), "status": timed(lambda: status_report(wh, catalog), args.repeat),
                   "scrape": timed(lambda: list(everything.collect()), args.repeat),
                   "kept": timed(lambda: list(kept.collect()), args.repeat)}
        wh.engine.dispose()
    figures["samples"] = samples
    figures["per_scrape"] = {name: {"median_s": round(s, 4), "x_scan": ratio(s, medians["scan"])}
                             for name, s in medians.items()}
    p = figures["per_request"]
    print(f"\n{'per request':<28}{'us':>10}{'scrape ms':>11}{'bytes':>8}")
    for mode in ("files", "memory"):
        print(f"{'counting in ' + mode:<28}{p[mode]['us_per_request']:>10}{p[mode]['scrape_ms']:>11}"
              f"{p[mode]['bytes']:>8}")
    print(f"\n{'per scrape (' + format(args.rows, ',') + ' citizens)':<34}{'median s':>10}{'x scan':>8}")
    for name, f in figures["per_scrape"].items():
        print(f"{name:<34}{f['median_s']:>10}{str(f['x_scan']):>8}")
    print(f"{samples} samples a scrape; {figures['batches']:,} batches in lgsp_batch")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
