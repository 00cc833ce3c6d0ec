"""Benchmark: `lgsp warehouse migrate` on a table of N citizens, against rewriting the table in SQL alone.

Fills a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one) with N synthetic
citizens through the warehouse's own merge, `phone` undeclared (so every row keeps it in `_extras`,
as a load does with a field the definition does not declare yet). Then:

  plan           `lgsp warehouse plan` for the table: one scan, counting what waits in `_extras`
  sql_rewrite    the floor of any rebuild: CREATE TABLE ... AS SELECT * and its primary key, in SQL
  promote        `phone` declared: every row's phone moves from `_extras` into its column
  to_history     the write mode becomes history: every row becomes its record's current version
  lake_copy      the floor of rewriting the same rows' Parquet files (read, write, no change)
  lake_promote   `lgsp lake conform` (what the migration runs next): every file's phones moved from
                 `_extras` into the column, the files rewritten and their partitions swapped

Each migration is one transaction, the rows passed through the loader's typing, checked by the
dataset's row rules and hashed again.
Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/migrate.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from gateway_load import add_database_options, scratch_warehouse  # noqa: E402

from catalog import load_catalog  # noqa: E402
from catalog.models import Catalog  # noqa: E402
from lgsp.runner import _with_lineage  # noqa: E402
from warehouse import Warehouse  # noqa: E402
from warehouse.conform import conform_lake  # noqa: E402
from warehouse.lake import Lake  # noqa: E402
from warehouse.migrate import migrate_dataset, plan  # noqa: E402

T0 = datetime(2025, 7, 1, tzinfo=timezone.utc)
CHUNK = 50_000


def catalog_with(citizen_update: dict[str, Any]) -> Catalog:
    catalog = load_catalog()
    citizen = catalog.datasets["citizen"].model_copy(update=citizen_update)
    return catalog.model_copy(update={"datasets": {**catalog.datasets, "citizen": citizen}})


def without_phone() -> Catalog:
    """The catalog as before `citizen.phone` was declared (its values stay in `_extras`)."""
    real = load_catalog().datasets["citizen"]
    return catalog_with({"columns": {k: v for k, v in real.columns.items() if k != "phone"},
                         "checks": [c for c in real.checks if "phone" not in c.model_dump().values()]})


def chunk(start: int, rows: int) -> pa.Table:
    """Citizens `start`.. as a validated chunk: declared columns, then `_extras` holding the phone.

    Every row passes the citizen rules (the migration checks them again): a CCCD whose 4th digit and
    5th-6th digits agree with the sex and birth year, an official commune code of province 37.
    """
    from quality.reference import province_communes

    communes = sorted(province_communes(37))
    ids = range(start, start + rows)
    years = [1940 + i % 80 for i in ids]
    female = [(i // 80) % 2 == 1 for i in ids]
    table = pa.table({
        "personal_id": [f"037{(y // 100 - 19) * 2 + f}{y % 100:02d}{i // 160:06d}"
                        for i, y, f in zip(ids, years, female)],
        "full_name": [f"Nguyễn Văn {i % 9973}" for i in ids],
        "birth_date": pa.array([date(y, 1 + i % 12, 1 + i % 28) for i, y in zip(ids, years)], pa.date32()),
        "sex": ["female" if f else "male" for f in female],
        "commune_code": [communes[i % len(communes)] for i in ids],
        "address": [f"Thôn {i % 50}, xã {i % 129}" for i in ids],
        "updated_at": pa.array([T0 + timedelta(seconds=i) for i in ids], pa.timestamp("us", "UTC")),
        "_extras": [json.dumps({"phone": f"09{i % 10**8:08d}"}) for i in ids],
    })
    return _with_lineage(table, SimpleNamespace(system=SimpleNamespace(name="population")), "bench-1")  # type: ignore


def fill(url: str, catalog: Catalog, rows: int) -> float:
    started = time.perf_counter()
    wh = Warehouse(url, catalog)
    wh.create_all()
    with wh.transaction() as conn:
        wh.write_chunks(conn, catalog.datasets["citizen"],
                        (chunk(start, min(CHUNK, rows - start)) for start in range(0, rows, CHUNK)))
    wh.engine.dispose()
    return time.perf_counter() - started


def fill_lake(lake: Lake, rows: int) -> None:
    """The same citizens as Parquet batches of CHUNK rows, over two ingest dates."""
    for number, start in enumerate(range(0, rows, CHUNK)):
        day = date(2025, 8, 1 + number % 2)
        lake.write_parquet(chunk(start, min(CHUNK, rows - start)), "citizen", day, f"bench-{number:04d}")


def lake_copy(lake: Lake) -> float:
    """Every file read and written again beside it, unchanged: what any rewrite of the files costs."""
    started = time.perf_counter()
    for path in lake.dataset_path("citizen").glob("*/*.parquet"):
        pq.write_table(pq.read_table(path), path.with_suffix(".copy"), compression="zstd")
        path.with_suffix(".copy").unlink()
    return time.perf_counter() - started


def sql_rewrite(wh: Warehouse) -> float:
    """CREATE TABLE AS SELECT * + its primary key, rolled back: what a rebuild costs the database alone."""
    started = time.perf_counter()
    with wh.engine.connect() as conn:
        if wh.dialect == "sqlite":
            conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql('CREATE TABLE "bench_copy" AS SELECT * FROM "core_citizen"')
        conn.exec_driver_sql('CREATE UNIQUE INDEX "bench_copy_key" ON "bench_copy" ("personal_id")')
        conn.rollback()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_database_options(parser)
    args = parser.parse_args()

    undeclared = without_phone()
    declared = load_catalog()
    history = catalog_with({"write_mode": "history"})
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "rows": args.rows}
    with scratch_warehouse(args, "lgsp-bench-migrate-") as (url, home):
        print(f"==> {args.rows:,} citizens into {figures['database']}", flush=True)
        figures["fill_seconds"] = round(fill(url, undeclared, args.rows), 2)
        wh = Warehouse(url, declared)
        wh.create_all()
        started = time.perf_counter()
        [planned] = plan(wh, declared, ["citizen"])
        figures["plan_seconds"] = round(time.perf_counter() - started, 3)
        figures["plan_steps"] = [s.text for s in planned.steps]
        rewrite = sql_rewrite(wh)
        figures["sql_rewrite_seconds"] = round(rewrite, 3)
        for name, catalog in (("promote", declared), ("to_history", history)):
            wh = Warehouse(url, catalog)
            wh.create_all(check_shapes=False)
            done = migrate_dataset(wh, catalog, "citizen", drop_previous=True)
            assert done is not None and done.rows_after == args.rows, done
            figures[name] = {"seconds": round(done.seconds, 2), "rows_changed": done.rows_changed,
                             "rows_per_s": round(args.rows / done.seconds),
                             "x_sql_rewrite": round(done.seconds / rewrite, 1)}
            wh.engine.dispose()
        lake = Lake(home / "lake")
        fill_lake(lake, args.rows)
        copy = lake_copy(lake)
        figures["lake_copy_seconds"] = round(copy, 3)
        started = time.perf_counter()
        conformed = conform_lake(lake, declared.datasets["citizen"])
        seconds = time.perf_counter() - started
        assert conformed.rows == args.rows, conformed
        figures["lake_promote"] = {"seconds": round(seconds, 2), "rows_changed": conformed.rows,
                                   "rows_per_s": round(args.rows / seconds), "x_lake_copy": round(seconds / copy, 1)}
    print(f"\n{'scenario':<14}{'seconds':>10}{'rows/s':>12}{'x SQL':>8}  rows changed")
    print(f"{'plan':<14}{figures['plan_seconds']:>10}")
    rewrite_rate = round(args.rows / rewrite)  # from the unrounded seconds: a small run's rounds to 0
    print(f"{'sql_rewrite':<14}{figures['sql_rewrite_seconds']:>10}{rewrite_rate:>12}")
    for name in ("promote", "to_history"):
        f = figures[name]
        print(f"{name:<14}{f['seconds']:>10}{f['rows_per_s']:>12}{f['x_sql_rewrite']:>8}  {f['rows_changed']}")
    f = figures["lake_promote"]
    print(f"{'lake_copy':<14}{figures['lake_copy_seconds']:>10}{round(args.rows / copy):>12}")
    print(f"{'lake_promote':<14}{f['seconds']:>10}{f['rows_per_s']:>12}{f['x_lake_copy']:>8}  {f['rows_changed']}"
          "  (x: of lake_copy)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
