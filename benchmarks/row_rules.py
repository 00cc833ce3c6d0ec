"""Benchmark: throughput of the citizen row rules (quality.run_row_checks) on one core.

Builds N synthetic citizen rows directly as typed columns (no sandbox, no I/O),
with ~1% defects, and times the row rules alone, then the coercion step for
comparison. Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/row_rules.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

from catalog import load_catalog
from quality import run_row_checks
from quality.reference import province_communes


def citizens_frame(rows: int, seed: int = 37) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    born = pd.to_datetime("1940-01-01") + pd.to_timedelta(rng.integers(0, 31000, rows), unit="D")
    female = rng.random(rows) < 0.5
    digit4 = (born.year // 100 - 19) * 2 + female
    serial = rng.integers(0, 1_000_000, rows)
    ids = pd.Series([f"037{d}{y % 100:02d}{s:06d}" for d, y, s in zip(digit4, born.year, serial)], dtype="string")
    communes = np.array(list(province_communes(37)))
    frame = pd.DataFrame({
        "personal_id": ids,
        "full_name": pd.Series(["Nguyễn Văn An"] * rows, dtype="string"),
        "birth_date": born,
        "sex": pd.Series(np.where(female, "female", "male"), dtype="string"),
        "commune_code": pd.Series(communes[rng.integers(0, len(communes), rows)], dtype="string"),
        "address": pd.Series(["Thôn 1"] * rows, dtype="string"),
        "phone": pd.Series([f"09{n:08d}" for n in rng.integers(0, 10**8, rows)], dtype="string"),
        "updated_at": pd.Timestamp("2025-08-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**7, rows), unit="s"),
    })
    bad = rng.choice(rows, size=rows // 100, replace=False)
    frame.loc[bad[0::3], "commune_code"] = "99999"
    frame.loc[bad[1::3], "phone"] = "12345"
    frame.loc[bad[2::3], "personal_id"] = "03709000123"
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dataset = load_catalog().datasets["citizen"]
    frame = citizens_frame(args.rows)
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = run_row_checks(frame, dataset)
        timings.append(time.perf_counter() - started)
    best = min(timings)
    figures = {"rows": args.rows, "rejected": len(result.rejections), "best_s": round(best, 3),
               "rows_per_s": round(args.rows / best), "cpu_count": os.cpu_count(),
               "goal_rows_per_s_per_core": 500_000, "meets_goal": args.rows / best >= 500_000}
    print(f"{'rows':>12} {'rejected':>9} {'best s':>8} {'rows/s':>12}")
    print(f"{args.rows:>12,} {len(result.rejections):>9,} {best:>8.3f} {args.rows / best:>12,.0f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
