"""Benchmark: an agency keeping its copy of `citizen` in sync through the change feed, against a full export.

Starts the loopback citizen source (`citizen_source.py`, N records), loads them into a fresh warehouse
(PostgreSQL by default; `--sqlite` for the embedded one) with lgsp's real pipeline, registers an agency
granted `citizen` (IDs pseudonymised, names masked: the full protection path) and starts `lgsp serve`
with one worker as a separate process. Then, from this process, as the agency would:

  export_full      GET /export?format=jsonl: the whole dataset, one streamed answer
  feed_snapshot    GET /changes, `limit` per page, following `next` while `more`: the whole dataset
  (the source changes `--fraction` of its records, and lgsp's incremental sync loads them)
  feed_changes     GET /changes?since=<the snapshot's token>: just those records
  export_again     the full export again (what an agency without the feed does after each sync)
  feed_few         a tenth as many changed and synced, then GET /changes?since=<the last token>
  feed_idle        GET /changes?since=<the last token> with nothing new: one request

Each scenario is timed from the first request to the last byte, with the records parsed (orjson),
and counts what it received. Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/changes.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from full_sync import _change, _lgsp_home, _start_source  # noqa: E402
from gateway_load import (_drop_postgres_database, _free_port, add_database_options, register_agency,  # noqa: E402
                          start_server, warehouse_url)


def sync(env: dict[str, str]) -> dict[str, Any]:
    """lgsp's pipeline from the benchmark source, in a child process (as a scheduled run would be)."""
    code = ("import json; from lgsp import runner; r = runner.run_pipeline('bench_citizens'); "
            "print('RESULT ' + json.dumps({k: r[k] for k in ('rows_landed', 'rows_changed')}))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"the sync failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])  # type: ignore[no-any-return]


def export(session: requests.Session, base: str) -> tuple[float, int]:
    started, rows = time.perf_counter(), 0
    with session.get(f"{base}/api/v1/datasets/citizen/export", params={"format": "jsonl"}, stream=True,
                     timeout=3600) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line:
                orjson.loads(line)
                rows += 1
    return time.perf_counter() - started, rows


def follow(session: requests.Session, base: str, token: str | None, limit: int) -> tuple[dict[str, Any], str]:
    """Follow the feed from `token` until `more` is false: the scenario's figures, and the last token."""
    started, changes, pages, slowest = time.perf_counter(), 0, 0, 0.0
    while True:
        params = {"limit": limit, **({"since": token} if token else {})}
        asked = time.perf_counter()
        answer = session.get(f"{base}/api/v1/datasets/citizen/changes", params=params, timeout=600)
        answer.raise_for_status()
        body = orjson.loads(answer.content)
        slowest = max(slowest, time.perf_counter() - asked)
        changes, pages, token = changes + len(body["changes"]), pages + 1, body["next"]
        if not body["more"]:
            return {"seconds": time.perf_counter() - started, "records": changes, "requests": pages,
                    "slowest_request_s": slowest}, token


def changed_and_synced(base: str, fraction: float, seed: int, env: dict[str, str]) -> tuple[int, int]:
    """The source changes `fraction` of its records; lgsp's incremental sync loads them."""
    changed = _change(base, fraction, seed)
    print(f"==> the source changed {changed:,} records; incremental sync", flush=True)
    return changed, int(sync(env)["rows_changed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fraction", type=float, default=0.01, help="share of the records the source changes")
    parser.add_argument("--limit", type=int, default=1000, help="changes per feed page (the gateway's maximum)")
    add_database_options(parser)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lgsp-bench-changes-"))
    url = warehouse_url(args, home)
    source, base = _start_source(args.rows)
    server = None
    figures: dict[str, Any] = {}
    try:
        _lgsp_home(home, base)
        env = {"LGSP_HOME": str(home), "LGSP_CATALOG_DIR": str(home / "catalog"), "LGSP_DATABASE_URL": url,
               "GX_ANALYTICS_ENABLED": "False", "LGSP_GATEWAY_PSEUDONYM_KEY": secrets.token_urlsafe(32),
               "LGSP_GATEWAY_MAX_EXPORT_ROWS": str(args.rows * 2)}
        print(f"==> full sync of {args.rows:,} citizens", flush=True)
        loaded = sync(env)
        os.environ.update(env)
        key = register_agency(url)
        port = _free_port()
        server = start_server(env, port, workers=1)
        gateway = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.headers["X-API-Key"] = key
        scenarios: dict[str, dict[str, Any]] = {}
        seconds, rows = export(session, gateway)
        scenarios["export_full"] = {"seconds": seconds, "records": rows, "requests": 1}
        scenarios["feed_snapshot"], token = follow(session, gateway, None, args.limit)
        changed, synced = changed_and_synced(base, args.fraction, 1, env)
        scenarios["feed_changes"], token = follow(session, gateway, token, args.limit)
        seconds, rows = export(session, gateway)
        scenarios["export_again"] = {"seconds": seconds, "records": rows, "requests": 1}
        few, few_synced = changed_and_synced(base, args.fraction / 10, 2, env)
        scenarios["feed_few"], token = follow(session, gateway, token, args.limit)
        scenarios["feed_idle"], token = follow(session, gateway, token, args.limit)
        figures = {"database": "sqlite" if args.sqlite else "postgresql", "rows": args.rows,
                   "loaded": loaded["rows_landed"], "source_changed": changed, "sync_changed": synced,
                   "source_changed_few": few, "sync_changed_few": few_synced, "limit": args.limit,
                   "scenarios": {n: {**s, "seconds": round(s["seconds"], 3),
                                     "slowest_request_s": round(s.get("slowest_request_s", s["seconds"]), 3),
                                     "records_per_s": round(s["records"] / s["seconds"]) if s["seconds"] else None}
                                 for n, s in scenarios.items()}}
        figures["feed_changes_over_export_again"] = round(scenarios["feed_changes"]["seconds"]
                                                          / scenarios["export_again"]["seconds"], 4)
    finally:
        for process in (server, source):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM) if process is server else process.kill()
                process.wait(timeout=30)
        if not args.sqlite:
            _drop_postgres_database(args.admin_url, url)
    print(f"{'scenario':<14} {'requests':>8} {'records':>10} {'seconds':>9} {'records/s':>10} "
          f"{'slowest request s':>18}")
    for name, s in figures["scenarios"].items():
        print(f"{name:<14} {s['requests']:>8} {s['records']:>10,} {s['seconds']:>9} {s['records_per_s'] or '-':>10} "
              f"{s['slowest_request_s']:>18}")
    print(f"({figures['database']}, one gateway worker; the incremental sync changed {figures['sync_changed']:,} "
          f"rows; the feed's changes took {figures['feed_changes_over_export_again']:.2%} of a full export's time)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
