"""Benchmark: telling agencies' webhooks that a shared dataset changed (gateway.webhooks).

N agencies, each granted `enterprise` with one webhook at its own path of one receiver on loopback
(a threading HTTP server in a child process, so the endpoints' work is not the dispatcher's). The
warehouse is fresh (PostgreSQL by default, `--sqlite` for the embedded one); changes are stamped as
a load stamps them (`Warehouse.stamp_change`). Each scenario is one `Webhooks.dispatch()`, timed:

  idle       nothing changed since every endpoint was told: what `lgsp_notify` costs every 5 minutes
  all_told   one load of `enterprise`: N notifications, signed and sent, up to 8 at once
  one_slow   the same, one endpoint answering after --slow-s seconds: the others are not held up
  backlog    --backlog loads, then one dispatch: still N notifications (the changes coalesced)

Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/webhooks.py --webhooks 200
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from gateway_load import _drop_postgres_database, add_database_options, warehouse_url  # noqa: E402

RECEIVER = """
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
counts, lock, slow = {}, threading.Lock(), float(sys.argv[1])
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
        if self.path == "/slow":
            time.sleep(slow)
        self.send_response(204); self.end_headers()
    def do_GET(self):
        with lock:
            body = str(sum(counts.values())).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_port, flush=True)
server.serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webhooks", type=int, default=200, help="agencies, one webhook each")
    parser.add_argument("--slow-s", type=float, default=2.0, help="how long the slow endpoint takes to answer")
    parser.add_argument("--backlog", type=int, default=50, help="loads stamped before the backlog's dispatch")
    add_database_options(parser)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lgsp-bench-webhooks-"))
    url = warehouse_url(args, home)
    os.environ.update({"LGSP_HOME": str(home), "LGSP_DATABASE_URL": url})
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(args.slow_s)], stdout=subprocess.PIPE,
                                text=True)
    try:
        base = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"  # type: ignore[union-attr]
        figures = run(args, url, base)
    finally:
        receiver.kill()
        if not args.sqlite:
            _drop_postgres_database(args.admin_url, url)
    print_table(figures)
    print(json.dumps(figures))


def run(args: argparse.Namespace, url: str, base: str) -> dict[str, Any]:
    from catalog import load_catalog
    from gateway.agencies import AgencyRegistry
    from gateway.service import _write_engine
    from gateway.tables import create_gateway_tables
    from gateway.webhooks import Webhooks
    from warehouse import Warehouse

    catalog = load_catalog()
    warehouse = Warehouse(url, catalog)
    warehouse.create_all()
    engine = _write_engine(url)
    create_gateway_tables(engine)
    registry, hooks = AgencyRegistry(engine, catalog), Webhooks(engine, catalog, b"bench-key-not-a-secret-0123456789")
    for i in range(args.webhooks):
        agency = f"agency_{i:04d}"
        registry.add_agency(agency, agency)
        registry.grant(agency, "enterprise")
        hooks.add(agency, "enterprise", f"{base}/slow" if i == 0 else f"{base}/hook/{i}")
    loads = 0

    def stamp(count: int) -> None:
        nonlocal loads
        for _ in range(count):
            loads += 1
            with warehouse.transaction() as conn:
                warehouse.stamp_change(conn, f"bench-load-{loads}", "enterprise", 25)

    def received() -> int:
        return int(requests.get(base, timeout=10).text)

    def dispatch(name: str) -> dict[str, Any]:
        before = received()
        started = time.perf_counter()
        done = hooks.dispatch()
        seconds = time.perf_counter() - started
        outcomes = {o: sum(d.outcome == o for d in done) for o in sorted({d.outcome for d in done})}
        figure = {"scenario": name, "seconds": round(seconds, 4), "notifications": len(done),
                  "received": received() - before, "outcomes": outcomes,
                  "slowest_ms": max((d.duration_ms for d in done), default=0),
                  "per_notification_ms": round(seconds * 1000 / len(done), 2) if done else None}
        return figure

    def slow_endpoint(present: bool) -> None:
        """The slow endpoint's webhook in (its missed changes then pending) or out of the dispatches."""
        from gateway.tables import webhook

        with engine.begin() as conn:
            conn.execute(webhook.update().where(webhook.c.url == f"{base}/slow")
                         .values(removed_at=None if present else time_now()))

    results = []
    slow_endpoint(False)  # sits out all but one_slow
    stamp(1)
    results.append(dispatch("all_told"))
    results.append(dispatch("idle"))
    slow_endpoint(True)
    stamp(1)
    results.append(dispatch("one_slow"))
    slow_endpoint(False)
    stamp(args.backlog)
    results.append(dispatch("backlog"))
    engine.dispose()
    warehouse.engine.dispose()
    return {"webhooks": args.webhooks, "database": "sqlite" if args.sqlite else "postgresql",
            "slow_s": args.slow_s, "backlog": args.backlog, "results": results}


def time_now() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def print_table(figures: dict[str, Any]) -> None:
    print(f"{figures['webhooks']} webhooks on {figures['database']}; slow endpoint {figures['slow_s']} s; "
          f"backlog {figures['backlog']} loads")
    print(f"{'scenario':<10} {'s':>8} {'sent':>6} {'received':>9} {'ms each':>8} {'slowest ms':>11}  outcomes")
    for r in figures["results"]:
        each = "" if r["per_notification_ms"] is None else f"{r['per_notification_ms']:.2f}"
        print(f"{r['scenario']:<10} {r['seconds']:>8.3f} {r['notifications']:>6} {r['received']:>9} {each:>8} "
              f"{r['slowest_ms']:>11}  {r['outcomes']}")


if __name__ == "__main__":
    main()
