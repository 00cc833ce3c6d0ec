"""Benchmark: what an indicator of a dataset's state at each period's end (`as_of: period_end`) costs.

For each `--rows` N (a catalogue of thousands to a register of millions), fills a fresh warehouse (SQLite by
default here: `--postgres` for PostgreSQL) with N synthetic citizens (benchmarks/migrate.py's) and their lake:
the first write on the 15th of the month `--versions` + 1 months ago, then `--versions` monthly writes of 10% of
the records each (a new version of each: another address; merged into the table too), the last one this month,
every write in the change log at its month. The indicator counts the women among the citizens held at each
period's end, for the province and each of its 129 communes, per month, quarter and year, from the first write's
month to now.
Each timed `--repeat` times (the median printed):

  lake         the floor of a replay: every lake file read whole
  replay       the whole dataset's versions (`warehouse.versions.dataset_versions`) counted at every period's
               end: what a computation did before periods were settled (`--no-replay` skips it)
  first        the first computation (`compute_indicator`): the table now, corrected by the versions of the
               records written since the first period's end (here: nearly all), the mart written
  daily        a computation once every ended period is settled: the table now (one GROUP BY), nothing replayed
  month_ended  the first computation after a month ended: the records written since its end replayed
  recount      `lgsp indicators compute --full`: every ended period counted again

Each step's peak resident memory is printed too (VmHWM, reset before the step: what the replay holds). A replay
takes `--slice` records at a time (`indicators.snapshot.SLICE`, 200,000); `--slice 100000000` replays a dataset
of millions at once, as before slicing, for comparison.

Each month's count is checked: N citizens, the women among them, in every period after the first write; and
(with the replay) every cell of the mart equals the replay's.
Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/snapshot_indicator.py --rows 20000,100000,1000000
    .venv/bin/python benchmarks/snapshot_indicator.py --rows 1000000 --repeat 1 --no-replay --slice 100000000
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from migrate import chunk, fill, without_phone  # noqa: E402
from references import timed  # noqa: E402

from catalog.models import IndicatorSpec  # noqa: E402
from lgsp.runner import _with_lineage  # noqa: E402
from indicators import compute_indicator, periods, read_indicator  # noqa: E402
from indicators.compute import Counts  # noqa: E402
from indicators.definitions import settled_until  # noqa: E402
from indicators import snapshot  # noqa: E402
from indicators.snapshot import Tally, counted_columns, period_end, snapshot_counts  # noqa: E402
from warehouse import Warehouse  # noqa: E402
from warehouse.lake import Lake  # noqa: E402
from warehouse.versions import dataset_versions, key_ranges, versions_of  # noqa: E402

SPEC = IndicatorSpec(name="bench_women_held", version=1, name_vi="x", name_en="x", dataset="citizen",
                     as_of="period_end", units={"commune": "commune_code"}, numerator={"sex": "female"})


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (VmHWM) in MB since the last reset; `reset`: start a new peak
    (Linux: writing 5 to /proc/self/clear_refs)."""
    status = Path("/proc/self/status")
    peak = next((int(l.split()[1]) / 1024 for l in status.read_text().splitlines() if l.startswith("VmHWM:")),
                float("nan"))
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux, or not allowed: the peaks are the process's
            pass
    return peak


def month_back(now: datetime, months: int, day: int) -> datetime:
    """Day `day`, 03:00 UTC, of the month `months` before `now`'s (not after `now`)."""
    year, month = divmod(now.year * 12 + now.month - 1 - months, 12)
    return min(datetime(year, month + 1, day, 3, tzinfo=timezone.utc), now - timedelta(minutes=1))


def fill_lake(wh: Warehouse, lake: Lake, rows: int, versions: int) -> int:
    """The first write of every record, then `versions` monthly writes of 10% of them; returns the lake's rows."""
    now = datetime.now(timezone.utc)
    first = month_back(now, versions + 1, 15)
    batches, written = [], 0
    for start in range(0, rows, 50_000):
        table = chunk(start, min(50_000, rows - start))
        lake.write_parquet(table, "citizen", first.date(), f"bench-first-{start:08d}")
        batches.append((f"bench-first-{start:08d}", first))
        written += table.num_rows
    tenth = max(rows // 10, 1)
    for month in range(1, versions + 1):
        at = month_back(now, versions - month, 1)
        start = (month * tenth) % max(rows - tenth, 1)
        table = chunk(start, tenth).drop_columns(["_batch_id", "_source_system", "_loaded_at", "_row_hash"])
        table = table.set_column(table.schema.get_field_index("address"), "address",
                                 pc.binary_join_element_wise(table["address"], f" (v{month})", ""))
        table = _with_lineage(table, SimpleNamespace(system=SimpleNamespace(name="population")), f"bench-v{month:03d}")
        lake.write_parquet(table, "citizen", at.date(), f"bench-v{month:03d}")
        with wh.transaction() as conn:  # the table holds each record's last version, as a sync leaves it
            wh.write_chunks(conn, wh.catalog.datasets["citizen"], [table])
        batches.append((f"bench-v{month:03d}", at))
        written += table.num_rows
    with wh.engine.begin() as conn:
        conn.execute(wh.table("lgsp_change").insert(), [
            {"change_seq": n + 1, "batch_id": b, "dataset": "citizen", "rows_changed": 1, "committed_at": at}
            for n, (b, at) in enumerate(batches)])
    return written


def replay(wh: Warehouse, lake: Lake) -> Counts:
    """Every cell counted from the whole dataset's versions (a `Tally` of them at every period's end)."""
    held = dataset_versions(wh.engine, wh.catalog.datasets["citizen"], lake).held
    tally, now = Tally(held, SPEC), datetime.now(timezone.utc)
    first = min(h.since for h in held if h.since is not None)
    months, month = [], first.astimezone(periods.VN_TZ).strftime("%Y-%m")
    while month <= now.astimezone(periods.VN_TZ).strftime("%Y-%m"):
        months.append(month)
        month = periods.next_month_start(month).strftime("%Y-%m")
    labels = sorted({periods.roll_up(m, kind) for m in months for kind in SPEC.periods})
    return {(level, unit, label): pair for label in labels
            for (level, unit), pair in tally.at(min(period_end(label), now)).items()}


def count_versions(wh: Warehouse, lake: Lake) -> int:
    """The versions the lake holds of every record, counted a key range at a time (`snapshot.SLICE`)."""
    dataset = wh.catalog.datasets["citizen"]
    with wh.engine.connect() as conn:
        ranges = key_ranges(conn, wh.core["citizen"], dataset.key, wh.dialect, snapshot.SLICE)
    return sum(len(versions_of(wh.engine, dataset, lake, None, (), counted_columns(dataset, SPEC), within).held)
               for within in ranges)


def unsettle_last_month(wh: Warehouse) -> None:
    """As if the last computation ran before last month ended: it is counted again, at its end."""
    now = datetime.now(timezone.utc).astimezone(periods.VN_TZ)
    last = f"{now.year - (now.month == 1)}-{(now.month - 2) % 12 + 1:02d}"
    table = wh.table("mart_indicator_definition")
    with wh.engine.begin() as conn:
        conn.execute(table.update().where(table.c.indicator == SPEC.name).values(
            settled_until=periods.local_midnight_utc(periods.month_start(last))))


def run(rows: int, versions: int, repeat: int, url: str | None, home: Path, with_replay: bool) -> dict[str, Any]:
    catalog = without_phone()
    url = url or f"sqlite:///{home / 'warehouse.db'}"
    fill(url, catalog, rows)
    wh, lake = Warehouse(url, catalog), Lake(home / "lake")
    lake_rows = fill_lake(wh, lake, rows, versions)
    women = sum(1 for i in range(rows) if (i // 80) % 2 == 1)  # migrate.chunk's women
    figures: dict[str, Any] = {"rows": rows, "lake_rows": lake_rows}

    def read_lake() -> int:
        return sum(pq.read_table(p).num_rows for p in lake.dataset_path("citizen").glob("*/*.parquet"))

    def month_ended() -> int:
        unsettle_last_month(wh)
        return compute_indicator(wh, SPEC, lake=lake)

    steps: list[tuple[str, Any, int]] = [("lake", read_lake, repeat)]
    if with_replay:
        steps.append(("replay", lambda: replay(wh, lake), repeat))
    steps += [("first", lambda: compute_indicator(wh, SPEC, lake=lake), 1),
              ("daily", lambda: compute_indicator(wh, SPEC, lake=lake), repeat),
              ("month_ended", month_ended, repeat),
              ("recount", lambda: compute_indicator(wh, SPEC, lake=lake, recount=True), repeat)]
    results: dict[str, Any] = {}
    for name, action, times in steps:
        peak_rss_mb(reset=True)
        first, median, results[name] = timed(action, times)
        figures[name] = {"first_s": round(first, 4), "median_s": round(median, 4), "peak_rss_mb": round(peak_rss_mb())}
    unsettle_last_month(wh)
    figures["versions"] = count_versions(wh, lake)
    figures["replayed_month_ended"] = snapshot_counts(wh, SPEC, lake, settled_until(wh, SPEC)).replayed
    months = read_indicator(wh, SPEC.name, unit_level="province", period_type="month")
    wrong = [(r["period"], r["numerator"], r["denominator"]) for r in months
             if (r["numerator"], r["denominator"]) != (women, rows)]
    assert months and not wrong, wrong
    mart = {(r["unit_level"], r["unit_code"], r["period"]): (r["numerator"], r["denominator"])
            for r in read_indicator(wh, SPEC.name, unit_level=None, period_type=None)}
    if with_replay:
        assert mart == results["replay"], "the mart differs from the whole replay"
    assert results["daily"] == 0 and results["recount"] == 0, results  # settled, and nothing changed
    figures["mart_rows"] = len(mart)
    wh.engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2000,20000,100000", help="comma-separated record counts")
    parser.add_argument("--versions", type=int, default=12, help="monthly writes of 10%% of the records")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-replay", action="store_true", help="skip the whole replay (memory: ~2 KB a version)")
    parser.add_argument("--slice", type=int, default=snapshot.SLICE,
                        help="records replayed at once (indicators.snapshot.SLICE; a huge one: all at once)")
    parser.add_argument("--postgres", metavar="ADMIN_URL", nargs="?",
                        const="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="run on a new PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    snapshot.SLICE = args.slice
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        home = Path(tempfile.mkdtemp(prefix="lgsp-bench-snapshot-"))
        url = None
        try:
            if args.postgres:
                from gateway_load import _drop_postgres_database, _postgres_database

                url = _postgres_database(args.postgres)
            print(f"==> {rows:,} records, {args.versions} monthly writes of 10%", flush=True)
            results.append(run(rows, args.versions, args.repeat, url, home, not args.no_replay))
        finally:
            if url:
                _drop_postgres_database(args.postgres, url)
            shutil.rmtree(home, ignore_errors=True)
    steps = ("lake", "replay", "first", "daily", "month_ended", "recount")
    print(f"\n{'records':>10}{'versions':>11}{'mart rows':>10}" + "".join(f"{s + ' s':>14}" for s in steps)
          + f"{'replayed, month ended':>23}" + "".join(f"{s + ' MB':>14}" for s in ("replay", "first", "recount")))
    for f in results:
        times = "".join(f"{f[s]['median_s']:>14.3f}" if s in f else f"{'-':>14}" for s in steps)
        peaks = "".join(f"{f[s]['peak_rss_mb']:>14,}" if s in f else f"{'-':>14}"
                        for s in ("replay", "first", "recount"))
        print(f"{f['rows']:>10,}{f['versions']:>11,}{f['mart_rows']:>10,}{times}"
              f"{f['replayed_month_ended']:>23,}{peaks}")
    print(json.dumps({"database": "postgresql" if args.postgres else "sqlite", "versions": args.versions,
                      "slice": args.slice,
                      "runs": results}))


if __name__ == "__main__":
    main()
