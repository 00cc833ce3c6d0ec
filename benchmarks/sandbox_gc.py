"""Benchmark: a SOAP page from the in-process sandbox while the process holds a big heap, spyne's GC on and off.

The test suite and `lgsp demo` run the sandbox's services as threads of the process that also
runs lgsp, whose heap grows to about a gigabyte late in the suite. spyne (the sandbox's SOAP
services) ran a full `gc.collect()` after a request once a second had passed since the last
one; a full collection walks the whole heap holding the GIL, so a 15-record page took longer
than the tests' 1.5 s call timeout (`tests/test_systems.py`, `tests/test_sync_truth.py` failed
in CI that way). `sandbox._spyne_compat` turns that off. This script holds `--heap` Python objects
alive, then asks for a 15-record page of `ListChangedCitizens` `--requests` times, each more than
a second after the last, first with spyne's own setting (`MIN_GC_INTERVAL = 1`), then as lgsp
sets it (never), alternating in rounds:

    .venv/bin/python benchmarks/sandbox_gc.py --heap 3000000 --requests 8

Prints one full collection's time with that heap, per setting the median and the longest
answer, and, as the last line, the figures as JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = {"spyne_default": 1.0, "lgsp": float("inf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heap", type=int, default=3_000_000, help="small dicts kept alive (3 objects each)")
    parser.add_argument("--requests", type=int, default=8, help="pages asked per setting")
    parser.add_argument("--gap", type=float, default=1.1, help="seconds between two pages (spyne's interval: 1)")
    args = parser.parse_args()

    import spyne.const
    import zeep

    from sandbox import start_sandbox

    heap = [{"i": i, "s": str(i), "l": [i]} for i in range(args.heap)]
    started = time.perf_counter()
    gc.collect()
    collect_s = time.perf_counter() - started
    answers: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with start_sandbox(seed=7, citizens=200, dossiers=10) as sandbox:
        client = zeep.Client(sandbox.population_wsdl)
        for _ in range(args.requests):
            for name, interval in SETTINGS.items():  # alternating: both meet the same machine
                spyne.const.MIN_GC_INTERVAL = interval
                time.sleep(args.gap)
                started = time.perf_counter()
                page = client.service.ListChangedCitizens(since=None, page=1, page_size=15)
                answers[name].append(time.perf_counter() - started)
                assert len(page["items"]) == 15
    spyne.const.MIN_GC_INTERVAL = SETTINGS["lgsp"]
    results = {name: {"median_ms": round(statistics.median(times) * 1000, 1),
                      "max_ms": round(max(times) * 1000, 1)} for name, times in answers.items()}
    print(f"heap: {len(heap):,} dicts; one full gc.collect(): {collect_s * 1000:.0f} ms")
    print(f"{'setting':<16}{'median ms':>12}{'max ms':>10}")
    for name, row in results.items():
        print(f"{name:<16}{row['median_ms']:>12}{row['max_ms']:>10}")
    ratio = results["spyne_default"]["median_ms"] / max(results["lgsp"]["median_ms"], 0.1)
    print(f"spyne's default over lgsp's setting (median): {ratio:.1f}x")
    print(json.dumps({"heap": len(heap), "collect_ms": round(collect_s * 1000, 1), "results": results,
                      "ratio_median": round(ratio, 1)}))


if __name__ == "__main__":
    main()
