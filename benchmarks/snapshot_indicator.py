"""Benchmark: what an indicator of a dataset's state at each period's end (`as_of: period_end`) costs.

For each `--rows` N (a catalogue of thousands to a register of a hundred thousand), fills a fresh warehouse
(SQLite by default here: `--postgres` for PostgreSQL) with N synthetic citizens (benchmarks/migrate.py's) and
their lake: the first write on 2025-01-15, then `--versions` monthly writes of 10% of the records each (a
new version of each: another address), every write in the change log at its month. The indicator counts the
women among the citizens held at each period's end, for the province and each of its 129 communes, per month,
quarter and year, from the first write's month to now. Each timed `--repeat` times (the median printed):

  lake      the floor: every lake file read whole (what the versions are built from)
  versions  warehouse.versions.dataset_versions: every version of every record, with its span
  compute   indicators.compute.compute_indicator: the versions, the counts at each period's end, the mart
            written (the first run) or compared and left alone (the others)

Each month's count is checked: N citizens, the women among them, in every period after the first write.
Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/snapshot_indicator.py --rows 2000,20000,100000
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from migrate import chunk, fill, without_phone  # noqa: E402
from references import timed  # noqa: E402

from catalog.models import IndicatorSpec  # noqa: E402
from indicators import compute_indicator, read_indicator  # noqa: E402
from warehouse import Warehouse  # noqa: E402
from warehouse.lake import Lake  # noqa: E402
from warehouse.versions import dataset_versions  # noqa: E402

FIRST = datetime(2025, 1, 15, 3, tzinfo=timezone.utc)
SPEC = IndicatorSpec(name="bench_women_held", version=1, name_vi="x", name_en="x", dataset="citizen",
                     as_of="period_end", units={"commune": "commune_code"}, numerator={"sex": "female"})


def fill_lake(wh: Warehouse, lake: Lake, rows: int, versions: int) -> int:
    """The first write of every record, then `versions` monthly writes of 10% of them; returns the lake's rows."""
    batches, written = [], 0
    for start in range(0, rows, 50_000):
        table = chunk(start, min(50_000, rows - start))
        lake.write_parquet(table, "citizen", FIRST.date(), f"bench-first-{start:08d}")
        batches.append((f"bench-first-{start:08d}", FIRST))
        written += table.num_rows
    tenth = max(rows // 10, 1)
    for month in range(1, versions + 1):
        at = datetime(2025 + month // 12, month % 12 + 1, 15, 3, tzinfo=timezone.utc)
        start = (month * tenth) % max(rows - tenth, 1)
        table = chunk(start, tenth)
        table = table.set_column(table.schema.get_field_index("address"), "address",
                                 pc.binary_join_element_wise(table["address"], f" (v{month})", ""))
        lake.write_parquet(table, "citizen", at.date(), f"bench-v{month:03d}")
        batches.append((f"bench-v{month:03d}", at))
        written += table.num_rows
    with wh.engine.begin() as conn:
        conn.execute(wh.table("lgsp_change").insert(), [
            {"change_seq": n + 1, "batch_id": b, "dataset": "citizen", "rows_changed": 1, "committed_at": at}
            for n, (b, at) in enumerate(batches)])
    return written


def run(rows: int, versions: int, repeat: int, url: str | None, home: Path) -> dict[str, Any]:
    catalog = without_phone()
    url = url or f"sqlite:///{home / 'warehouse.db'}"
    fill(url, catalog, rows)
    wh, lake = Warehouse(url, catalog), Lake(home / "lake")
    lake_rows = fill_lake(wh, lake, rows, versions)
    women = sum(1 for i in range(rows) if (i // 80) % 2 == 1)  # migrate.chunk's women
    figures: dict[str, Any] = {"rows": rows, "lake_rows": lake_rows}

    def read_lake() -> int:
        return sum(pq.read_table(p).num_rows for p in lake.dataset_path("citizen").glob("*/*.parquet"))

    def versions_of() -> int:
        return len(dataset_versions(wh.engine, catalog.datasets["citizen"], lake).held)

    medians = {}
    for name, action in (("lake", read_lake), ("versions", versions_of),
                         ("compute", lambda: compute_indicator(wh, SPEC, lake=lake))):
        first, median, result = timed(action, repeat)
        figures[name] = {"first_s": round(first, 4), "median_s": round(median, 4)}
        medians[name] = median
        if name == "versions":
            figures["held_versions"] = result
    months = read_indicator(wh, SPEC.name, unit_level="province", period_type="month")
    wrong = [(r["period"], r["numerator"], r["denominator"]) for r in months
             if (r["numerator"], r["denominator"]) != (women, rows)]
    assert months and not wrong, wrong
    assert months[0]["period"] == "2025-01", months[0]
    figures["mart_rows"] = len(read_indicator(wh, SPEC.name, unit_level=None, period_type=None))
    figures["compute"]["x_lake"] = round(medians["compute"] / medians["lake"], 1) if medians["lake"] else None
    figures["compute"]["versions_per_s"] = round(figures["held_versions"] / medians["compute"])
    wh.engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2000,20000,100000", help="comma-separated record counts")
    parser.add_argument("--versions", type=int, default=12, help="monthly writes of 10%% of the records")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", metavar="ADMIN_URL", nargs="?",
                        const="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="run on a new PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        home = Path(tempfile.mkdtemp(prefix="lgsp-bench-snapshot-"))
        url = None
        try:
            if args.postgres:
                from gateway_load import _drop_postgres_database, _postgres_database

                url = _postgres_database(args.postgres)
            print(f"==> {rows:,} records, {args.versions} monthly writes of 10%", flush=True)
            results.append(run(rows, args.versions, args.repeat, url, home))
        finally:
            if url:
                _drop_postgres_database(args.postgres, url)
            shutil.rmtree(home, ignore_errors=True)
    print(f"\n{'records':>9}{'versions':>10}{'mart rows':>10}{'lake s':>9}{'versions s':>11}{'compute s':>10}"
          f"{'first s':>9}{'x lake':>8}{'versions/s':>12}")
    for f in results:
        print(f"{f['rows']:>9,}{f['held_versions']:>10,}{f['mart_rows']:>10,}{f['lake']['median_s']:>9.3f}"
              f"{f['versions']['median_s']:>11.3f}{f['compute']['median_s']:>10.3f}{f['compute']['first_s']:>9.3f}"
              f"{f['compute']['x_lake'] or 0:>8}{f['compute']['versions_per_s']:>12,}")
    print(json.dumps({"database": "postgresql" if args.postgres else "sqlite", "versions": args.versions,
                      "runs": results}))


if __name__ == "__main__":
    main()
