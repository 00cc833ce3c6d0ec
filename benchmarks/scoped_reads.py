"""Benchmark: what a grant that covers one commune's rows costs a reader, on a table of N citizens.

Fills a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one) with N synthetic
citizens through the warehouse's own merge (benchmarks/migrate.py's valid citizens of province 37,
spread over its 129 communes in turn, so a commune's rows are 1 in 129 all along the key's order: the
hardest case for a read in key order), makes the shared views, and reads with the gateway's own
`Reader` (in process: no HTTP, no audit; personal columns in clear, so the figures are the reads):

  unscoped        as many rows as the commune has, the first by key, in pages of `--limit`
  scoped          every row of one commune through a grant scoped to it (`--scope commune_code=...`)
  filtered        the same rows asked with a filter (`commune_code=...`) on an unscoped grant
  scoped_indexed  `scoped` again once the scope's index is made (warehouse.shared.scope_index: on
                  (commune_code, personal_id), as `lgsp agencies grant --scope` makes it)

each `--repeat` times (the median printed), with the first page's time apart (a request's latency).
And what the index costs a load: the merge of 1% of the citizens moved to another commune (a new
address and commune code), timed `--repeat` times before the index is made and after.
Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/scoped_reads.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway_load import add_database_options, ratio, scratch_warehouse  # noqa: E402
from migrate import chunk, fill, without_phone  # noqa: E402

from gateway.agencies import Grant  # noqa: E402
from gateway.records import Filter, Reader, RecordQuery, read_engine  # noqa: E402
from gateway.settings import load_gateway_settings  # noqa: E402
from warehouse import Warehouse  # noqa: E402
from warehouse.shared import create_shared_views, scope_index, scope_index_name  # noqa: E402

CONTENDERS = ("unscoped", "scoped", "filtered", "scoped_indexed")


def read_all(reader: Reader, grant: Grant, query: RecordQuery, limit: int, at_most: int) -> tuple[int, float]:
    """Rows read following the cursors (at most `at_most`), and the first page's seconds."""
    cursor, rows, first = None, 0, 0.0
    while rows < at_most:
        started = time.perf_counter()
        records, cursor = reader.page("citizen", grant, query, min(limit, at_most - rows), cursor)
        first = first or time.perf_counter() - started
        rows += len(records)
        if cursor is None:
            break
    return rows, first


def moved(wh: Warehouse, start: int, rows: int, communes: list[str]) -> float:
    """Merge citizens `start`.. moved to the next commune (new address too); returns the seconds."""
    import pyarrow as pa

    table = chunk(start, rows)
    now = [communes[(communes.index(c) + 1) % len(communes)] for c in table.column("commune_code").to_pylist()]
    table = table.set_column(table.schema.get_field_index("commune_code"), "commune_code", pa.array(now))
    table = table.set_column(table.schema.get_field_index("address"), "address",
                             pa.array([f"Tổ {i % 40}, chuyển đến {c}" for i, c in enumerate(now)]))
    began = time.perf_counter()
    with wh.transaction() as conn:
        wh.write_chunks(conn, wh.catalog.datasets["citizen"], [table])
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=1000, help="rows per page (the gateway's most)")
    parser.add_argument("--repeat", type=int, default=3)
    add_database_options(parser)
    args = parser.parse_args()
    from quality.reference import province_communes

    os.environ.setdefault("LGSP_GATEWAY_PSEUDONYM_KEY", "bench-scoped-reads-key-0123456789abcdef")
    communes = sorted(province_communes(37))
    commune = communes[len(communes) // 2]
    expected = sum(1 for i in range(args.rows) if communes[i % len(communes)] == commune)
    catalog = without_phone()
    clear = frozenset(catalog.sharing["citizen"].personal)
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "rows": args.rows,
                               "commune": commune, "commune_rows": expected, "limit": args.limit,
                               "repeat": args.repeat}
    with scratch_warehouse(args, "lgsp-bench-scoped-") as (url, home):
        print(f"==> {args.rows:,} citizens into {figures['database']}", flush=True)
        figures["fill_seconds"] = round(fill(url, catalog, args.rows), 2)
        wh = Warehouse(url, catalog)
        create_shared_views(wh, catalog)
        settings = load_gateway_settings(url)
        engine = read_engine(url, 600.0)
        reader = Reader(engine, catalog, settings)
        scoped = Grant(clear, (("commune_code", (commune,)),))
        runs = {
            "unscoped": lambda: read_all(reader, Grant(clear), RecordQuery(), args.limit, expected),
            "scoped": lambda: read_all(reader, scoped, RecordQuery(), args.limit, args.rows),
            "filtered": lambda: read_all(reader, Grant(clear), RecordQuery(filters=[
                Filter("commune_code", "eq", commune)]), args.limit, args.rows),
        }
        medians: dict[str, float] = {}
        for name in CONTENDERS:
            if name == "scoped_indexed":
                figures["index_seconds"] = round(scope_index(wh.engine, catalog.datasets["citizen"],
                                                             "commune_code") or 0.0, 2)
                runs[name] = runs["scoped"]
            seconds, firsts = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                rows, first = runs[name]()
                seconds.append(time.perf_counter() - started)
                firsts.append(first)
                assert rows == expected, (name, rows, expected)
            medians[name] = statistics.median(seconds)
            figures[name] = {"median_s": round(statistics.median(seconds), 4),
                             "first_page_ms": round(statistics.median(firsts) * 1000, 2),
                             "rows_per_s": round(expected / statistics.median(seconds))}
        for name in CONTENDERS:
            figures[name]["x_unscoped"] = ratio(medians[name], medians["unscoped"], 2)
        changed, loads = max(1, args.rows // 100), {"with_index": [], "without_index": []}
        index = f'"{scope_index_name("core_citizen", "commune_code")}"'
        for i in range(args.repeat):  # interleaved, so the table's growing bloat weighs on both alike
            loads["with_index"].append(moved(wh, 2 * i * changed, changed, communes))
            with wh.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP INDEX {index}")
            loads["without_index"].append(moved(wh, (2 * i + 1) * changed, changed, communes))
            scope_index(wh.engine, catalog.datasets["citizen"], "commune_code")
        figures["load_moved"] = {"rows": changed, **{k: round(statistics.median(v), 4) for k, v in loads.items()}}
        figures["load_moved"]["x_without"] = ratio(statistics.median(loads["with_index"]),
                                                   statistics.median(loads["without_index"]), 2)
        engine.dispose()
        wh.engine.dispose()
    print(f"\none commune ({commune}): {expected:,} of {args.rows:,} citizens, pages of {args.limit}")
    print(f"{'read':<16}{'median s':>10}{'rows/s':>12}{'first page ms':>15}{'x unscoped':>12}")
    for name in CONTENDERS:
        f = figures[name]
        print(f"{name:<16}{f['median_s']:>10}{f['rows_per_s']:>12,}{f['first_page_ms']:>15}{str(f['x_unscoped']):>12}")
    load = figures["load_moved"]
    print(f"the index: made in {figures['index_seconds']} s; a merge of {load['rows']:,} citizens who moved commune: "
          f"{load['with_index']} s with it, {load['without_index']} s without ({load['x_without']}x)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
