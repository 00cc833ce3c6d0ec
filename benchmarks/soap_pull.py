"""Benchmark: a SOAP pull of N citizens from the sandbox's population service, flat records parsed two ways.

The sandbox (`python -m sandbox`, spyne) runs in its own process; this process pulls every
page of `ListChangedCitizens` (500 records a page, as the catalog asks) with lgsp's SOAP
transport, alternating, in fresh transports each round:

    one_pass   as shipped: the flat record type parsed in one pass (`connectors.soap_records`)
    zeep       zeep parses every field itself (`SoapTransport(..., fast_records=False)`), as
               before the one-pass parser

Both give the same records (checked here, page by page). Printed per way: the best and the
median wall time, and the client's own CPU time (this process: what the parse costs lgsp;
the wall time also holds the server's time, which a real national database has too).

    .venv/bin/python benchmarks/soap_pull.py --citizens 100000 --rounds 3

Prints a table and, as the last line, the figures as JSON.
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

# the population system's peak hours (catalog/systems.yaml) would slow its calls to 10/s in Vietnamese
# office hours: the figures are lgsp's, whatever the clock says (set LGSP_POPULATION_PEAK_HOURS to measure them)
os.environ.setdefault("LGSP_POPULATION_PEAK_HOURS", "none")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WAYS = ("one_pass", "zeep")


def _start_sandbox(citizens: int, env_file: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--citizens", str(citizens), "--dossiers", "10",
                             "--env-file", str(env_file)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    for line in proc.stdout:  # the last line it prints says it is serving
        if "Ctrl-C to stop" in line:
            return proc
    raise RuntimeError(f"the sandbox exited (code {proc.wait()}) before serving")


def _load_env(env_file: Path) -> None:
    import shlex

    for line in env_file.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name] = shlex.split(value)[0] if value else ""


def _pull(fast: bool) -> tuple[float, float, list[list[dict[str, Any]]]]:
    from catalog import load_catalog
    from catalog.loader import resolve_endpoint
    from connectors import iter_pages
    from connectors.soap import SoapTransport

    spec = load_catalog().pipeline("population_citizens")
    system = load_catalog().systems[spec.source.system]
    transport = SoapTransport(system, resolve_endpoint(system), spec.source.operation, fast_records=fast)
    transport._connect()  # the WSDL is read outside the timing
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        pages = [list(page.records) for page in iter_pages(system, spec.source, transport, None)]
        return time.perf_counter() - wall, time.process_time() - cpu, pages
    finally:
        transport.close()


def benchmark(citizens: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lgsp-soap-bench-") as work:
        env_file = Path(work) / "sandbox.env"
        proc = _start_sandbox(citizens, env_file)
        try:
            _load_env(env_file)
            os.environ["LGSP_HOME"] = work
            times: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
            rows = 0
            for _round in range(rounds):
                pulled = {}
                for way in WAYS:
                    wall, cpu, pulled[way] = _pull(way == "one_pass")
                    times[way].append((wall, cpu))
                if pulled["one_pass"] != pulled["zeep"]:
                    raise AssertionError("the two ways pulled different records")
                rows = sum(map(len, pulled["one_pass"]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    results = {way: {"rows": rows, "best_s": round(min(w for w, _ in runs), 3),
                     "median_s": round(statistics.median(w for w, _ in runs), 3),
                     "median_client_cpu_s": round(statistics.median(c for _, c in runs), 3),
                     "rows_per_s": round(rows / min(w for w, _ in runs))} for way, runs in times.items()}
    ratios = {"zeep_over_one_pass_wall": round(results["zeep"]["median_s"] / results["one_pass"]["median_s"], 2),
              "zeep_over_one_pass_client_cpu": round(results["zeep"]["median_client_cpu_s"]
                                                     / results["one_pass"]["median_client_cpu_s"], 2)}
    return {"citizens": citizens, "rounds": rounds, "results": results, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--citizens", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = benchmark(args.citizens, args.rounds)
    print(f"{'way':<10} {'rows':>9} {'best s':>8} {'median s':>9} {'client CPU s':>13} {'rows/s':>9}")
    for way, r in figures["results"].items():
        print(f"{way:<10} {r['rows']:>9} {r['best_s']:>8} {r['median_s']:>9} {r['median_client_cpu_s']:>13} "
              f"{r['rows_per_s']:>9}")
    print(f"zeep alone / one pass: wall {figures['ratios']['zeep_over_one_pass_wall']}x, "
          f"client CPU {figures['ratios']['zeep_over_one_pass_client_cpu']}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
