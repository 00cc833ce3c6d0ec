"""Benchmark: the sharing gateway under load, 100-row pages over loopback, from a second process.

Sets up a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one),
loads the citizens from the sandbox with the real pipeline, registers an agency with a
grant on `citizen` (IDs pseudonymised, names masked: the full masking path), starts
`lgsp serve --workers N` as a separate process, walks the dataset once to collect the
page URLs (keyset cursors), then drives it with C keep-alive HTTP/1.1 connections
from this process (asyncio on uvloop if installed, raw sockets: no client library in the way), each request
one 100-row page with the agency's API key. Every request is authenticated,
authorised, masked and audited (group-committed audit rows) as in production.

Two runs: as fast as the connections go (closed loop: throughput), then, with `--rate`,
paced at that offered load (open loop: latency at a given load). Prints a table and,
as the last line, the figures as JSON.

    .venv/bin/python benchmarks/gateway_load.py --concurrency 50 --duration 20 --workers 2 --rate 500
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

# the population system's peak hours (catalog/systems.yaml) would slow its calls to 10/s in Vietnamese
# office hours: the figures are lgsp's, whatever the clock says (set LGSP_POPULATION_PEAK_HOURS to measure them)
os.environ.setdefault("LGSP_POPULATION_PEAK_HOURS", "none")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _postgres_database(admin_url: str) -> str:
    name = f"lgsp_bench_gateway_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_postgres_database(admin_url: str, url: str) -> None:
    admin = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    admin.dispose()


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """--sqlite and --admin-url: the warehouse a gateway benchmark runs on."""
    parser.add_argument("--sqlite", action="store_true", help="the embedded SQLite warehouse instead of PostgreSQL")
    parser.add_argument("--admin-url", default=os.environ.get("LGSP_TEST_DATABASE_URL",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"))


def warehouse_url(args: argparse.Namespace, home: Path) -> str:
    """A fresh warehouse: SQLite under `home`, or a new PostgreSQL database (drop it with _drop_postgres_database)."""
    return f"sqlite:///{home / 'warehouse.db'}" if args.sqlite else _postgres_database(args.admin_url)


def ratio(part: float, whole: float, digits: int = 1) -> float | None:
    """`part / whole` rounded, from unrounded seconds; None when `whole` is too small to time (a tiny run)."""
    return round(part / whole, digits) if whole > 0 else None


@contextmanager
def scratch_warehouse(args: argparse.Namespace, prefix: str) -> Iterator[tuple[str, Path]]:
    """A fresh warehouse (`warehouse_url`) and the temporary home it lives in; both removed on leaving."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    url = warehouse_url(args, home)
    try:
        yield url, home
    finally:
        if not args.sqlite:
            _drop_postgres_database(args.admin_url, url)
        shutil.rmtree(home, ignore_errors=True)


def load_warehouse(env: dict[str, str], citizens: int) -> float:
    """Run the citizen pipeline against a fresh sandbox into the warehouse of `env`; returns seconds."""
    from sandbox import start_sandbox

    started = time.monotonic()
    handle = start_sandbox(seed=37, citizens=citizens, dossiers=300, api_key=secrets.token_urlsafe(16))
    try:
        os.environ.update({**env, **handle.env()})
        from lgsp import runner

        runner.run_pipeline("population_citizens")
    finally:
        handle.stop()
    return time.monotonic() - started


def register_agency(database_url: str) -> str:
    """An agency granted `citizen` (personal columns protected), with a rate limit above the load."""
    from catalog import load_catalog
    from gateway.agencies import AgencyRegistry
    from gateway.service import _write_engine, prepare_database

    catalog = load_catalog()
    prepare_database(database_url, catalog)
    registry = AgencyRegistry(_write_engine(database_url), catalog)
    registry.add_agency("so_y_te", "Sở Y tế (benchmark)", rate_per_s=1_000_000)
    registry.grant("so_y_te", "citizen")
    return registry.issue_api_key("so_y_te")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], port: int, workers: int, log: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """`lgsp serve` in its own process group, its warnings and errors to `log` (an open file); waits until /health
    answers."""
    server = subprocess.Popen([str(ROOT / ".venv/bin/lgsp"), "serve", "--port", str(port), "--workers", str(workers),
                               "--log-level", "warning"], env={**os.environ, **env}, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                time.sleep(1.0 if workers > 1 else 0)  # let every worker finish starting
                return server
        except requests.ConnectionError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"gateway did not start: {server.stderr.read().decode()[-2000:] if server.stderr else ''}")


def page_paths(port: int, key: str, pages: int) -> list[str]:
    """The paths of the first `pages` 100-row pages of `citizen`, following next_cursor."""
    from urllib.parse import quote

    paths, cursor = [], None
    while len(paths) < pages:
        path = "/api/v1/datasets/citizen/records?limit=100" + (f"&cursor={quote(cursor)}" if cursor else "")
        body = requests.get(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": key}, timeout=30).json()
        assert len(body["records"]) == 100 or body["next_cursor"] is None, body
        paths.append(path)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    return paths


async def _connection(port: int, requests_: list[bytes], stop_at: float, warm_until: float, interval: float,
                      latencies: list[float], errors: list[str], offset: int) -> None:
    """One keep-alive connection: send a request, read the whole response, repeat until `stop_at`.

    With `interval` > 0 the connection is paced (one request per interval, open loop): a
    request's latency counts from when it was due, so a slow server is not hidden by the
    client waiting (no coordinated omission).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    due = time.perf_counter() + interval * (offset % 50) / 50
    try:
        while (now := time.perf_counter()) < stop_at:
            if interval:
                if due > now:
                    await asyncio.sleep(due - now)
                start, due = due, due + interval
            else:
                start = now
            writer.write(requests_[i % len(requests_)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status != 200:
                errors.append(str(status))
            if start >= warm_until:
                latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def drive(port: int, paths: list[str], key: str, concurrency: int, warmup_s: float,
                duration_s: float, rate: float = 0.0) -> tuple[list[float], list[str], float]:
    """`concurrency` connections for warmup + duration (paced to `rate` requests/s in total if given);
    latencies of requests due after the warm-up."""
    requests_ = [(f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
                  "Connection: keep-alive\r\n\r\n").encode() for p in paths]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    warm_until, stop_at = start + warmup_s, start + warmup_s + duration_s
    interval = concurrency / rate if rate else 0.0
    await asyncio.gather(*(_connection(port, requests_, stop_at, warm_until, interval, latencies, errors, n * 7)
                           for n in range(concurrency)))
    return latencies, errors, time.perf_counter() - warm_until


def _run(coroutine: Any) -> Any:
    """Run the load on uvloop when it is installed (the client shares the cores with the server: keep it cheap)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _cpu_seconds(root_pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by the gateway (`root_pid` and its descendants) and by PostgreSQL."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                name_end = (text := handle.read()).rindex(")")
            fields = text[name_end + 2:].split()
            stats[int(entry)] = (int(fields[1]), text[text.index("(") + 1:name_end], (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, ValueError):
            continue
    gateway, family = 0.0, {root_pid}
    for _ in range(3):  # uvicorn's workers are children of the `lgsp serve` process
        family |= {pid for pid, (parent, _, _) in stats.items() if parent in family}
    gateway = sum(stats[pid][2] for pid in family if pid in stats)
    postgres = sum(cpu for _, name, cpu in stats.values() if name.startswith("postgres"))
    return gateway, postgres


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--citizens", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="also measure latency at this offered load (requests/s, paced, open loop), e.g. 500")
    add_database_options(parser)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lgsp-bench-gateway-"))
    url = warehouse_url(args, home)
    env = {"LGSP_HOME": str(home), "LGSP_DATABASE_URL": url, "GX_ANALYTICS_ENABLED": "False",
           "LGSP_GATEWAY_PSEUDONYM_KEY": secrets.token_urlsafe(32)}
    server = None
    try:
        load_s = load_warehouse(env, args.citizens)
        key = register_agency(url)
        port = _free_port()
        server = start_server(env, port, args.workers)
        paths = page_paths(port, key, pages=args.citizens // 100)
        before = _cpu_seconds(server.pid)
        client_cpu = time.process_time()
        latencies, errors, measured_s = _run(
            drive(port, paths, key, args.concurrency, args.warmup, args.duration))
        after = _cpu_seconds(server.pid)
        client_cpu = time.process_time() - client_cpu
        paced = _run(drive(port, paths, key, args.concurrency, args.warmup, args.duration, args.rate)) \
            if args.rate else None
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        if not args.sqlite:
            _drop_postgres_database(args.admin_url, url)
    figures = {"database": "sqlite" if args.sqlite else "postgresql", "workers": args.workers,
               "concurrency": args.concurrency, "page_rows": 100, "distinct_pages": len(paths),
               "load_s": round(load_s, 1), "saturated": _figures(latencies, errors, measured_s)}
    served = figures["saturated"]["requests"] + len(errors)  # the warm-up's requests are in the CPU figures too
    total = served * (args.duration + args.warmup) / args.duration
    figures["cpu_ms_per_request"] = {"gateway": round((after[0] - before[0]) / total * 1000, 2),
                                     "postgresql": round((after[1] - before[1]) / total * 1000, 2),
                                     "load_generator": round(client_cpu / total * 1000, 3)}
    if paced is not None:
        figures["paced"] = {"offered_per_s": args.rate, **_figures(*paced)}
    print(f"{'load':<22} {'requests':>9} {'errors':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for label, run in (("as fast as possible", figures["saturated"]), (f"paced at {args.rate:g}/s", figures.get("paced"))):
        if run:
            print(f"{label:<22} {run['requests']:>9} {run['errors']:>6} {run['requests_per_s']:>8} "
                  f"{run['p50_ms']:>7} {run['p99_ms']:>7} {run['max_ms']:>7}")
    cpu = figures["cpu_ms_per_request"]
    print(f"({figures['database']}, {args.workers} workers, {args.concurrency} connections, 100-row pages of citizen; "
          f"CPU per request: gateway {cpu['gateway']} ms, PostgreSQL {cpu['postgresql']} ms, "
          f"this load generator {cpu['load_generator']} ms)")
    print(json.dumps(figures))


def _figures(latencies: list[float], errors: list[str], seconds: float) -> dict[str, Any]:
    return {"requests": len(latencies), "errors": len(errors), "seconds": round(seconds, 2),
            "requests_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1)}

if __name__ == "__main__":
    main()
