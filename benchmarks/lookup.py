"""Benchmark: what a live lookup costs a clerk, against a read of lgsp's copy, with the source up and down.

Starts the sandbox in its own process (`python -m sandbox`), loads the citizens into a fresh
warehouse with the real pipeline (PostgreSQL by default; `--sqlite` for the embedded one),
registers an agency granted `citizen` with its IDs in clear, and starts `lgsp serve` as a
separate process. Then, one request at a time from this process (a clerk's desk, not a load
test; `gateway_load.py` is that), each scenario asks for `--lookups` citizens:

  copy_read      GET /api/v1/datasets/citizen/records?personal_id=...  (lgsp's copy, the baseline)
  live           GET /api/v1/datasets/citizen/lookup?personal_id=...   (the population service
                 asked now: zeep, SOAP over loopback, row rules, message log, audit)
  cached         the same citizens again (answered from the worker's cache, cache_s = 60)
  source_down    the sandbox killed: each lookup tries the source (connection refused, 2 attempts,
                 backoff) and answers from the copy, until the circuit breaker opens
  breaker_open   then: answered from the copy at once, the source not called

Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/lookup.py --citizens 5000 --lookups 300
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gateway_load import (_drop_postgres_database, _free_port, _percentile, add_database_options,  # noqa: E402
                          start_server, warehouse_url)


def start_sandbox(citizens: int, home: Path) -> subprocess.Popen[bytes]:
    """`python -m sandbox` in its own process group (output to `home`/sandbox.log); returns once it serves and has
    written its environment to `home`/sandbox.env."""
    log = home / "sandbox.log"
    with log.open("wb") as out:
        sandbox = subprocess.Popen([sys.executable, "-m", "sandbox", "--citizens", str(citizens), "--dossiers", "300",
                                    f"--api-key={secrets.token_urlsafe(16)}", "--env-file", str(home / "sandbox.env")],
                                   cwd=ROOT, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sandbox.poll() is None:
        if b"Ctrl-C to stop" in log.read_bytes():
            return sandbox
        time.sleep(0.2)
    sandbox.kill()
    raise RuntimeError("the sandbox did not start:\n" + log.read_text(errors="replace")[-3000:])


def read_env_file(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines `python -m sandbox --env-file` wrote."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def prepare(env: dict[str, str], database_url: str) -> tuple[str, list[str]]:
    """Load the citizens with the real pipeline, create the shared views, register an agency granted
    `citizen` with personal IDs in clear; its API key and the personal IDs of the landed citizens."""
    os.environ.update(env)
    import sqlalchemy as sa

    from catalog import load_catalog
    from gateway.agencies import AgencyRegistry
    from gateway.service import _write_engine, prepare_database
    from lgsp import runner

    catalog = load_catalog()
    runner.run_pipeline("population_citizens", catalog=catalog)
    prepare_database(database_url, catalog)
    engine = _write_engine(database_url)
    registry = AgencyRegistry(engine, catalog)
    registry.add_agency("mot_cua", "Bộ phận một cửa (benchmark)", rate_per_s=1_000_000)
    registry.grant("mot_cua", "citizen", ["personal_id"])
    with engine.connect() as conn:
        ids = [row[0] for row in conn.execute(sa.text("SELECT personal_id FROM core_citizen ORDER BY personal_id"))]
    engine.dispose()
    return registry.issue_api_key("mot_cua"), ids


def timed(session: requests.Session, url: str, key: str, personal_id: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = session.get(url, params={"personal_id": personal_id}, headers={"X-API-Key": key}, timeout=60)
    seconds = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"{url} for one citizen answered {answer.status_code}: {answer.text[:300]}")
    return seconds, answer.json()


def summary(latencies: list[float]) -> dict[str, Any]:
    return {"requests": len(latencies), "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
            "p95_ms": round(_percentile(latencies, 0.95) * 1000, 2), "max_ms": round(max(latencies) * 1000, 2)}


def run(base: str, key: str, ids: list[str], lookups: int, sandbox: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The five scenarios, in order (the last two after the sandbox is killed)."""
    if len(ids) < 3 * lookups + 2:
        raise SystemExit(f"--lookups {lookups} needs at least {3 * lookups + 2} landed citizens; "
                         f"raise --citizens (landed: {len(ids)})")
    lookup, records = f"{base}/api/v1/datasets/citizen/lookup", f"{base}/api/v1/datasets/citizen/records"
    session = requests.Session()
    timed(session, lookup, key, ids[-1])  # warm-up: the worker loads the WSDL and opens its connections
    timed(session, records, key, ids[-1])
    asked = ids[:lookups]
    results: dict[str, list[float]] = {"copy_read": [], "live": [], "cached": [], "source_down": [],
                                       "breaker_open": []}
    for pid in asked:
        seconds, body = timed(session, records, key, pid)
        assert len(body["records"]) == 1, body
        results["copy_read"].append(seconds)
    for scenario in ("live", "cached"):
        for pid in asked:
            seconds, body = timed(session, lookup, key, pid)
            assert (body["source"], body["cached"]) == ("live", scenario == "cached"), body
            results[scenario].append(seconds)
    os.killpg(sandbox.pid, signal.SIGTERM)
    sandbox.wait(timeout=30)
    down = iter(ids[lookups:])
    for pid in down:  # until the breaker opens
        seconds, body = timed(session, lookup, key, pid)
        assert body["source"] == "warehouse", body
        if "circuit open" in body["live_error"]:
            results["breaker_open"].append(seconds)
            break
        results["source_down"].append(seconds)
    for pid, _ in zip(down, range(lookups - 1)):
        seconds, body = timed(session, lookup, key, pid)
        assert body["source"] == "warehouse" and "circuit open" in body["live_error"], body
        results["breaker_open"].append(seconds)
    return {name: summary(latencies) for name, latencies in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--citizens", type=int, default=5000)
    parser.add_argument("--lookups", type=int, default=300, help="citizens asked for in each scenario")
    add_database_options(parser)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lgsp-bench-lookup-"))
    url = warehouse_url(args, home)
    sandbox = server = None
    try:
        sandbox = start_sandbox(args.citizens, home)
        env = {**read_env_file(home / "sandbox.env"), "LGSP_HOME": str(home), "LGSP_DATABASE_URL": url,
               "GX_ANALYTICS_ENABLED": "False", "LGSP_GATEWAY_PSEUDONYM_KEY": secrets.token_urlsafe(32)}
        key, ids = prepare(env, url)
        port = _free_port()
        server = start_server(env, port, workers=1)
        scenarios = run(f"http://127.0.0.1:{port}", key, ids, args.lookups, sandbox)
    finally:
        for process in (server, sandbox):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
        if not args.sqlite:
            _drop_postgres_database(args.admin_url, url)
    base = scenarios["copy_read"]["p50_ms"]
    figures = {"database": "sqlite" if args.sqlite else "postgresql", "citizens": args.citizens,
               "lookups": args.lookups, "scenarios": scenarios,
               "p50_over_copy_read": {name: round(s["p50_ms"] / base, 2) for name, s in scenarios.items()}}
    print(f"{'scenario':<14} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 / copy_read':>16}")
    for name, s in scenarios.items():
        print(f"{name:<14} {s['requests']:>8} {s['p50_ms']:>8} {s['p95_ms']:>8} {s['max_ms']:>8} "
              f"{figures['p50_over_copy_read'][name]:>16}")
    print(f"({figures['database']}, one gateway worker, one request at a time; the population sandbox in its own "
          "process, spyne over loopback)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
