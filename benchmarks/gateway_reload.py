"""Benchmark: reloading the sharing gateway under load (`kill -HUP`, as `lgsp warehouse migrate` does), and
what the clients saw.

Sets up a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one) with the sandbox's
citizens and an agency granted `citizen`, as `gateway_load.py` does, starts `lgsp serve --workers N`,
then reads 100-row pages of `citizen` from `--clients` threads while the supervisor is sent SIGHUP
`--reloads` times, each after the previous reload has replaced every worker. Half of the threads open a
connection per request (a client without a pool: the one a closing worker's listening socket or its
shutdown cut), half keep theirs (a `requests.Session`). Every failed request is counted by its kind.

Prints a table and, as the last line, the figures as JSON:

    .venv/bin/python benchmarks/gateway_reload.py --reloads 20 --clients 8 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_load import (_free_port, _percentile, add_database_options, load_warehouse,  # noqa: E402
                          page_paths, register_agency, scratch_warehouse, start_server)

from gateway.serving import workers_of  # noqa: E402 - gateway_load put the repository on the path


def reload_all(supervisor: int, workers: int, timeout_s: float = 150.0) -> float | None:
    """SIGHUP to the supervisor, then wait until every worker it had is replaced; returns seconds, or None when
    one was not within `timeout_s` (the supervisor gave up on a replacement: the gateway's log says why)."""
    before, started = workers_of(supervisor), time.monotonic()
    os.kill(supervisor, signal.SIGHUP)
    while True:
        now = workers_of(supervisor)
        if not now & before and len(now) == workers:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.05)


def read(base: str, paths: list[str], key: str, pooled: bool, stop: threading.Event,
         latencies: list[float], errors: Counter[str]) -> None:
    """Read the pages round and round until `stop`; each answer's time, or its failure's kind."""
    session = requests.Session() if pooled else requests
    headers, index = {"X-API-Key": key}, 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            answer = session.get(base + paths[index % len(paths)], headers=headers, timeout=30)
            if answer.status_code == 200:
                latencies.append(time.monotonic() - started)
            else:
                errors[f"HTTP {answer.status_code}"] += 1
        except requests.RequestException as exc:
            cause = exc.args[0] if exc.args else exc
            reason = getattr(cause, "reason", None) or (cause.args[1] if getattr(cause, "args", ())[1:] else cause)
            errors[f"{type(exc).__name__}: {type(reason).__name__}"] += 1
        index += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8, help="reading threads (half pooled, half not)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--citizens", type=int, default=2000)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between one reload's end and the next")
    add_database_options(parser)
    args = parser.parse_args()

    with scratch_warehouse(args, "lgsp-bench-reload-") as (url, home):
        env = {"LGSP_HOME": str(home), "LGSP_DATABASE_URL": url, "GX_ANALYTICS_ENABLED": "False",
               "LGSP_GATEWAY_PSEUDONYM_KEY": secrets.token_urlsafe(32)}
        load_warehouse(env, args.citizens)
        key = register_agency(url)
        port = _free_port()
        log = (home / "gateway.log").open("wb")
        server = start_server(env, port, args.workers, log)
        try:
            paths = page_paths(port, key, pages=max(1, args.citizens // 100))
            stop = threading.Event()
            runs = {pooled: ([], Counter()) for pooled in (False, True)}
            threads = [threading.Thread(target=read, args=(f"http://127.0.0.1:{port}", paths, key, i % 2 == 1, stop,
                                                           *runs[i % 2 == 1]), daemon=True)
                       for i in range(args.clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            took = []
            try:
                for _ in range(args.reloads):
                    time.sleep(args.pause)
                    took.append(reload_all(server.pid, args.workers))
                time.sleep(args.pause)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            seconds = time.monotonic() - started
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            log.close()
            said = [line for line in (home / "gateway.log").read_text(errors="replace").splitlines()
                    if " ERROR " in line or " WARNING " in line]
    done = [t for t in took if t is not None]
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "workers": args.workers,
                               "clients": args.clients, "reloads": args.reloads, "seconds": round(seconds, 1),
                               "reloads_incomplete": len(took) - len(done),
                               "reload_s": {"mean": round(sum(done) / max(1, len(done)), 2),
                                            "max": round(max(done, default=0), 2)},
                               "gateway_errors": len(said)}
    for pooled, (latencies, errors) in runs.items():
        figures["pooled" if pooled else "connection_per_request"] = {
            "requests": len(latencies) + sum(errors.values()), "errors": sum(errors.values()),
            "error_kinds": dict(errors), "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1)}
    print(f"{'clients':<26} {'requests':>9} {'errors':>6} {'p99 ms':>7} {'max ms':>7}  kinds of error")
    for label in ("connection_per_request", "pooled"):
        run = figures[label]
        print(f"{label.replace('_', ' '):<26} {run['requests']:>9} {run['errors']:>6} {run['p99_ms']:>7} "
              f"{run['max_ms']:>7}  {', '.join(f'{k} x{n}' for k, n in run['error_kinds'].items()) or '-'}")
    print(f"({figures['database']}, {args.workers} workers, {args.reloads} reloads in {figures['seconds']} s, "
          f"each replacing every worker in {figures['reload_s']['mean']} s on average, at most "
          f"{figures['reload_s']['max']} s; {figures['reloads_incomplete']} left a worker not replaced)")
    for line in said[:10]:
        print(f"gateway: {line}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
