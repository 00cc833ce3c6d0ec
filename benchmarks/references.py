"""Benchmark: what `lgsp references` and `lgsp quality` cost on a table of N citizens.

Fills a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one) with N synthetic
citizens through the warehouse's own merge (benchmarks/migrate.py's valid citizens of province 37)
and the official administrative units less one commune of province 37, whose citizens (about 1 in
129) become orphans of `citizen.commune_code -> admin_unit.code`. Then, each timed `--repeat` times
(the median printed; the first run is also printed, as `lgsp status` pays it on a cold cache):

  scan          the floor: one pass over the table, `SELECT count(*)`
  reference     lgsp.references.check of citizen.commune_code (rows, the anti-join's orphans and
                those past grace, the 5 missing values most named, the referenced table's count)
  group check   lgsp.group_checks.check of a rule across rows: at most one woman per commune and birth date
                (a GROUP BY into many small groups: 72,240 of ~14 rows at a million; households have ~3),
                groups and those breaking it (here all: the examples' second pass is paid), 5 examples
  scorecard     lgsp.scorecard without the profile (what the gateway computes, with the reference)
  profile       the scorecard with the profile (how often each column is filled: one more scan)

The orphans it finds are checked against the number of citizens of the left-out commune.
Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/references.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway_load import add_database_options, ratio, scratch_warehouse  # noqa: E402
from migrate import fill, without_phone  # noqa: E402

from catalog.models import GroupCheckSpec  # noqa: E402
from lgsp import group_checks  # noqa: E402
from lgsp.references import check, references  # noqa: E402
from lgsp.runner import _with_lineage  # noqa: E402
from lgsp.scorecard import scorecards  # noqa: E402
from warehouse import Warehouse  # noqa: E402


def admin_units(left_out: str) -> pa.Table:
    """Every official commune code (and province 37) but `left_out`, as the admin_unit pipeline lands them."""
    from quality.reference import commune_codes

    codes = ["37", *sorted(c for c in commune_codes() if c != left_out)]
    table = pa.table({"code": codes, "name": codes, "codename": codes,
                      "level": ["province" if len(c) == 2 else "commune" for c in codes],
                      "division_type": ["tỉnh" if len(c) == 2 else "xã" for c in codes],
                      "province_code": ["37"] * len(codes), "province_name": ["Ninh Bình"] * len(codes)})
    return _with_lineage(table, SimpleNamespace(system=SimpleNamespace(name="reference")), "bench-units")  # type: ignore


def timed(action: Any, repeat: int) -> tuple[float, float, Any]:
    """(first run's seconds, median seconds, the last result)."""
    seconds, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - started)
    return seconds[0], statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    add_database_options(parser)
    args = parser.parse_args()
    from quality.reference import province_communes

    communes = sorted(province_communes(37))
    left_out = communes[0]
    expected = sum(1 for i in range(args.rows) if i % len(communes) == 0)  # migrate.chunk: communes[i % len]
    catalog = without_phone()
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "rows": args.rows,
                               "repeat": args.repeat}
    with scratch_warehouse(args, "lgsp-bench-references-") as (url, home):
        print(f"==> {args.rows:,} citizens into {figures['database']}", flush=True)
        figures["fill_seconds"] = round(fill(url, catalog, args.rows), 2)
        wh = Warehouse(url, catalog)
        with wh.transaction() as conn:
            wh.write_chunks(conn, catalog.datasets["admin_unit"], [admin_units(left_out)])
        table = wh.metadata.tables["core_citizen"]
        [reference] = [r for r in references(catalog, "citizen") if r.column == "commune_code"]
        now = datetime.now(timezone.utc)

        def scan() -> int:
            with wh.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

        def one_reference() -> dict[str, Any]:
            with wh.engine.connect() as conn:
                return check(conn, wh.metadata.tables, catalog, reference, now)

        rule = group_checks.GroupCheck("citizen", "bench", GroupCheckSpec(
            group_by=["commune_code", "birth_date"], count={"sex": "female"}, max=1))

        def group_check() -> dict[str, Any]:
            with wh.engine.connect() as conn:
                return group_checks.check(conn, wh.metadata.tables, catalog, rule, now)

        def scorecard(profile: bool) -> dict[str, Any]:
            return scorecards(wh.engine, wh.metadata.tables, catalog, "citizen", now=now, profile=profile)[0]

        medians: dict[str, float] = {}
        for name, action in (("scan", scan), ("reference", one_reference), ("group_check", group_check),
                             ("scorecard", lambda: scorecard(False)), ("profile", lambda: scorecard(True))):
            first, median, result = timed(action, args.repeat)
            figures[name] = {"first_s": round(first, 6), "median_s": round(median, 6)}  # a tiny run's scan: < 1 ms
            medians[name] = median
            if name == "reference":
                assert result["orphans"] == expected and result["missing"][0]["value"] == left_out, result
                figures["orphans"] = result["orphans"]
            if name == "group_check":
                assert 0 < result["groups"] <= args.rows and len(result["examples"]) == min(5, result["breaking"])
                figures["groups"], figures["breaking_groups"] = result["groups"], result["breaking"]
        for name in ("reference", "group_check", "scorecard", "profile"):
            figures[name]["x_scan"] = ratio(medians[name], medians["scan"])  # unrounded: a tiny run's scan is ~0
        wh.engine.dispose()
    print(f"\n{'step':<12}{'first s':>10}{'median s':>10}{'x scan':>8}")
    for name in ("scan", "reference", "group_check", "scorecard", "profile"):
        f = figures[name]
        print(f"{name:<12}{f['first_s']:>10.4f}{f['median_s']:>10.4f}{str(f.get('x_scan', 1.0)):>8}")
    print(f"orphans found: {figures['orphans']:,} (the citizens of commune {left_out}, left out of admin_unit)")
    print(f"group check: {figures['groups']:,} groups (commune, birth date), {figures['breaking_groups']:,} with more "
          "than one woman")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
