"""Benchmark: a batch's Data Docs publish as the site's history grows, lgsp's index builder against GX's.

Every batch stores its validation result and renders its page and the site index
(`quality.expectations.BatchCheck.publish`), so the index's cost is paid by every
incremental run. GX's own builders list every stored result and every page of the site
and read back the stored result of every listed run (up to `DOCS_INDEX_RUNS`) on every
batch; lgsp's (`quality.expectations._docs_builders`) keep what the index shows of each
listed run in a summary file and list nothing.

Three contenders, each in its own process and its own fresh LGSP_HOME: `lgsp` (as shipped:
the `DOCS_INDEX_RUNS` most recent runs listed), `gx` (the same list, GX's index and section
builders put back; lgsp's site builder stays) and `gx_500` (GX's builders listing 500 runs: lgsp before 22 Nov 2026). Each publishes
`--batches` batches of the `dossier` dataset (100 rows each) and times every publish.
Prints, per contender, the median publish time over windows of the history, and, as the
last line, the figures as JSON.

    .venv/bin/python benchmarks/data_docs.py --batches 300
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _contender(name: str, batches: int) -> list[float]:
    home = tempfile.mkdtemp(prefix=f"lgsp-docs-{name}-")
    try:
        return _publish(name, batches, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _publish(name: str, batches: int, home: str) -> list[float]:
    os.environ["LGSP_HOME"] = home
    os.environ.pop("LGSP_DATA_DOCS_DIR", None)
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from catalog import load_catalog
    from quality import expectations, run_row_checks
    from quality.reference import province_communes
    from schemas import coerce

    dataset = load_catalog().datasets["dossier"]
    communes = sorted(province_communes(37))
    records = [{"dossier_id": f"H37.{i:06d}", "procedure_code": "1.000046", "commune_code": communes[i % len(communes)],
                "received_at": "2025-08-01T08:00:00Z", "due_at": "2025-08-11T08:00:00Z", "status": "received",
                "channel": "online", "updated_at": "2025-08-02T09:30:00Z"} for i in range(100)]
    typed = coerce(records, dataset)
    row_ok = np.asarray(run_row_checks(typed.frame, dataset, typed.type_errors).passed, dtype=bool)
    if name == "gx_500":
        expectations.DOCS_INDEX_RUNS = 500  # read when GX's context is made, just below
    expectations.BatchCheck(dataset, "warm-up")  # GX's context: built once per process, not timed
    if name.startswith("gx"):  # GX's own builders back in place of lgsp's
        from great_expectations.render.renderer.site_builder import DefaultSiteIndexBuilder, DefaultSiteSectionBuilder

        for method in ("_build_validation_and_profiling_result_site_keys", "_add_validations_to_index_links"):
            setattr(expectations.LgspSiteIndexBuilder, method, getattr(DefaultSiteIndexBuilder, method))
        expectations.LgspSiteSectionBuilder.build = DefaultSiteSectionBuilder.build
    times = []
    for n in range(batches):
        check = expectations.BatchCheck(dataset, f"tthc_dossiers-{n:05d}")
        check.add(typed.frame, row_ok)
        started = time.perf_counter()
        check.publish()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print("RESULT " + json.dumps(_contender(args.contender, args.batches)), flush=True)
        return
    results: dict[str, Any] = {}
    for name in ("lgsp", "gx", "gx_500"):
        print(f"==> {name}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--contender", name, "--batches", str(args.batches)],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT "):])
    step = max(1, args.batches // 6)
    windows = [(start, min(start + step, args.batches)) for start in range(0, args.batches, step)]
    figures: dict[str, Any] = {"batches": args.batches, "median_publish_ms": {}}
    print(f"\n{'runs already listed':>20} " + " ".join(f"{name:>10}" for name in results) + "   (median ms a publish)")
    for start, stop in windows:
        label = f"{start}-{stop - 1}"
        row = {name: round(statistics.median(times[start:stop]) * 1000, 1) for name, times in results.items()}
        figures["median_publish_ms"][label] = row
        print(f"{label:>20} " + " ".join(f"{row[name]:>10.1f}" for name in results))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
