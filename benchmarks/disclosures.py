"""Benchmark: what `lgsp audit subject ID` (gateway.disclosures) costs on an audit of N reads.

Fills a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one) with 2,000 synthetic
citizens (benchmarks/migrate.py's), makes the shared views and the gateway's tables, and writes N audit rows
as the gateway writes them (the same columns and query JSON; hashes not chained: `verify` is not timed
here): 200 agencies' reads of `citizen` and `land_parcel`, 60% record pages filtered by one of 129 communes,
20% lookups of a random citizen (the ID's pseudonym in the query), 10% unfiltered pages, 5% exports, 5%
change-feed pages. Then, each `--repeat` times (the median printed):

  scan      the floor: one pass over the audit, `SELECT count(*)`, and one of its query text
  report    `disclosures()` for one citizen: where they are, the reads that named them, the groups of
            reads that may have included them (with the agencies' grants)
  usage     `lgsp audit usage` over the whole audit (gateway.usage): every agency's reads per dataset
  usage_day `lgsp audit usage --since 1d` at the audit's last read: its last 24 hours (the unusual check's first
            pass; an agency's `GET /api/v1/usage?since=...`)
  unusual   the unusual-reads check (`lgsp status`, every lgsp_freshness run) at the audit's last read, both of
            its passes made (the floor of rows lowered to 0: every pair is compared with its week before)

With `--lake-rows` (default 1,000,000; 0: none) the citizens' lake is filled too (benchmarks/migrate.py's
batches of 50,000 over two days, then `--lake-batches` small batches of 1,000 rows, as incremental syncs
leave them, each in the change log), and two more steps are timed:

  lake_scan   the floor of the lake's part: every file's `personal_id` column read and compared with the ID
  report_lake `disclosures()` with the lake, as `lgsp audit subject` makes it: each read judged on the person's
              records as they were when read (warehouse.versions: the lake's rows of the person, then every
              row of their records, and the change log)

With `--held-rows` (default 600,000; about 20 years of a province's births, marriages and deaths) the
warehouse holds that many civil-status events (a dataset no agency is shared: the person is the spouse in one
and registered in another), and `--quarantine-rows` (default 50,000) quarantined rows (the person in two);
one more step is timed:

  held        what the report adds for them (`held`, `quarantined`): the events naming the person in a column no
              agency may read (no index: one pass over the table), the quarantined rows holding the ID

The audit spans N x 7 seconds (81 days at a million rows), so the last day is ~1% of it and the unusual
check's 8 days ~10%: what those cost against the scan says whether they read only their window.

Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/disclosures.py --rows 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway_load import add_database_options, ratio, scratch_warehouse  # noqa: E402
from migrate import chunk, fill, fill_lake, without_phone  # noqa: E402

from gateway import tables  # noqa: E402
from gateway.disclosures import _held, _quarantined, disclosures  # noqa: E402
from gateway.usage import unusual, usage  # noqa: E402
from gateway.policy import pseudonym  # noqa: E402
from gateway.tables import create_gateway_tables  # noqa: E402
from warehouse import Warehouse  # noqa: E402
from warehouse.lake import Lake  # noqa: E402
from warehouse.shared import create_shared_views  # noqa: E402

KEY = b"bench-disclosures-key-0123456789"
CHUNK = 20_000


def audit_rows(n: int, citizens: list[tuple[str, str]], communes: list[str], subject: str, seed: int = 37) -> Any:
    """`n` audit rows in chunks, as the gateway describes its reads (every 10,000th a lookup of `subject`)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for first in range(0, n, CHUNK):
        rows = []
        for i in range(first, min(n, first + CHUNK)):
            kind = 0.7 if i % 10_000 == 0 else rng.random()
            dataset = "citizen" if rng.random() < 0.8 or i % 10_000 == 0 else "land_parcel"
            filters: list[Any] = []
            action, returned = "records", 100
            if kind < 0.6:
                filters = [["commune_code", "eq", rng.choice(communes)]]
            elif kind < 0.8:
                action, returned = "lookup_live", 1
                column = "personal_id" if dataset == "citizen" else "holder_personal_id"
                filters = [[column, "eq", pseudonym(subject if i % 10_000 == 0 else rng.choice(citizens)[0], KEY)]]
            elif kind < 0.9:
                pass
            elif kind < 0.95:
                action, returned = "export_csv_done", 5000
            else:
                action, returned = "changes", 1000
            query = {"filters": filters, "sort": [], "fields": None, "q": None}
            rows.append({"chain": 0, "seq": i + 1, "recorded_at": start + timedelta(seconds=i * 7),
                         "agency_id": f"agency_{rng.randrange(200):03d}", "dataset": dataset, "action": action,
                         "query": json.dumps(query, separators=(",", ":")), "rows_returned": returned,
                         "status": 200, "prev_hash": "0" * 64, "row_hash": "0" * 64})
        yield rows


def fill_held(wh: Warehouse, catalog: Any, rows: int, quarantined: int, subject: str) -> None:
    """`rows` civil-status events (the subject registered in the first, the spouse in the second) and `quarantined`
    rejected rows (the subject's ID in the first two payloads) into the warehouse."""
    from lgsp.runner import _with_lineage, quarantine_row
    from schemas.arrow import arrow_schema

    spec = catalog.datasets["civil_status_event"]
    t0 = datetime(2006, 1, 1, tzinfo=timezone.utc)

    def events(start: int, n: int) -> pa.Table:
        ids = range(start, start + n)
        person = [subject if i == 0 else f"0371{i % 10**8:08d}" for i in ids]
        spouse = [subject if i == 1 else f"0370{i % 10**8:08d}" if i % 4 == 1 else None for i in ids]
        day = [date(2006, 1, 1) + timedelta(days=i % 7300) for i in ids]
        table = pa.table({
            "event_id": [f"HT37-{i:08d}" for i in ids],
            "event_type": ["marriage" if s else "birth" if i % 2 else "death" for i, s in zip(ids, spouse)],
            "registration_no": [f"{i % 999}/{2006 + i % 20}" for i in ids], "registered_on": day, "event_date": day,
            "personal_id": person, "full_name": [f"Trần Thị {i % 9973}" for i in ids],
            "sex": ["female" if i % 2 else "male" for i in ids], "birth_date": [date(1980, 1, 1)] * n,
            "spouse_personal_id": spouse, "commune_code": ["14455"] * n,
            "updated_at": [t0 + timedelta(seconds=i) for i in ids]}, schema=arrow_schema(spec))
        return _with_lineage(table, SimpleNamespace(system=SimpleNamespace(name="civil_status")),  # type: ignore
                             "bench-held")

    with wh.transaction() as conn:
        wh.write_chunks(conn, spec, (events(start, min(CHUNK, rows - start)) for start in range(0, rows, CHUNK)))
        q = wh.system["lgsp_quarantine"]
        for start in range(0, quarantined, CHUNK):
            conn.execute(q.insert(), [quarantine_row(spec, "civil_status_events", "bench-quarantine", {
                "event_id": f"HT37-Q{i:07d}", "event_type": "adoption", "personal_id": subject if i < 2 else
                f"0372{i:08d}", "full_name": f"Lê Văn {i}", "registered_on": "2025-08-01"}, "enum:event_type",
                "event_type 'adoption' is not one of birth, marriage, death")
                for i in range(start, min(start + CHUNK, quarantined))])


def fill_lake_batches(wh: Warehouse, lake: Lake, rows: int, small: int) -> None:
    """The citizens' lake: migrate.py's batches of `rows` citizens, then `small` batches of 1,000 of them (a
    citizen's later versions, the same values), every batch a write of the change log, in that order."""
    fill_lake(lake, rows)
    batches = sorted(p.stem for p in lake.dataset_path("citizen").glob("*/*.parquet"))
    for number in range(small):
        start = (number * 1_000) % max(rows - 1_000, 1)
        batch = f"bench-inc-{number:05d}"
        lake.write_parquet(chunk(start, 1_000), "citizen", date(2025, 8, 3), batch)
        batches.append(batch)
    begin = datetime(2025, 8, 1, tzinfo=timezone.utc)
    with wh.engine.begin() as conn:
        conn.execute(wh.table("lgsp_change").insert(), [
            {"change_seq": n + 1, "batch_id": b, "dataset": "citizen", "rows_changed": 1,
             "committed_at": begin + timedelta(minutes=n)} for n, b in enumerate(batches)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="audit rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lake-rows", type=int, default=1_000_000, help="citizen rows in the lake (0: no lake)")
    parser.add_argument("--lake-batches", type=int, default=200, help="small batches of 1,000 rows after them")
    parser.add_argument("--held-rows", type=int, default=600_000, help="civil-status events (not shared; 0: none)")
    parser.add_argument("--quarantine-rows", type=int, default=50_000, help="quarantined rows")
    add_database_options(parser)
    args = parser.parse_args()
    from quality.reference import province_communes

    os.environ.setdefault("LGSP_GATEWAY_PSEUDONYM_KEY", KEY.decode())
    catalog = without_phone()
    communes = sorted(province_communes(37))
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "audit_rows": args.rows,
                               "repeat": args.repeat}
    with scratch_warehouse(args, "lgsp-bench-disclosures-") as (url, home):
        fill(url, catalog, 2000)
        lake = Lake(home / "lake")
        wh = Warehouse(url, catalog)
        create_shared_views(wh, catalog)
        create_gateway_tables(wh.engine)
        with wh.engine.connect() as conn:
            citizens = [tuple(r) for r in conn.execute(sa.text(
                "SELECT personal_id, commune_code FROM shared_citizen ORDER BY personal_id"))]
        subject = citizens[len(citizens) // 2][0]
        print(f"==> {args.rows:,} audit rows into {figures['database']}", flush=True)
        began = time.perf_counter()
        with wh.engine.begin() as conn:
            for rows in audit_rows(args.rows, citizens, communes, subject):
                conn.execute(tables.audit.insert(), rows)
        figures["fill_seconds"] = round(time.perf_counter() - began, 1)
        if args.lake_rows:
            print(f"==> {args.lake_rows:,} citizen rows and {args.lake_batches} small batches into the lake",
                  flush=True)
            fill_lake_batches(wh, lake, args.lake_rows, args.lake_batches)
            figures["lake_rows"], figures["lake_batches"] = args.lake_rows, args.lake_batches
        if args.held_rows:
            print(f"==> {args.held_rows:,} civil-status events and {args.quarantine_rows:,} quarantined rows",
                  flush=True)
            fill_held(wh, catalog, args.held_rows, args.quarantine_rows, subject)
            figures["held_rows"], figures["quarantine_rows"] = args.held_rows, args.quarantine_rows
        if wh.dialect == "postgresql":  # as autovacuum leaves an audit written over weeks: visibility, statistics
            with wh.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in ("gateway_audit", catalog.datasets["civil_status_event"].table_name, "lgsp_quarantine"):
                    conn.exec_driver_sql(f"VACUUM ANALYZE {table}")

        def scan() -> int:
            with wh.engine.connect() as conn:
                return int(conn.execute(sa.text("SELECT count(*), sum(length(query)) FROM gateway_audit")).first()[0])

        def report() -> dict[str, Any]:
            return disclosures(wh.engine, catalog, KEY, subject)

        def lake_scan() -> int:
            return sum(int(pc.sum(pc.equal(pq.read_table(f, columns=["personal_id"])["personal_id"], subject)).as_py()
                           or 0) for f in lake.dataset_path("citizen").glob("*/*.parquet"))

        def held() -> tuple[Any, Any]:
            with wh.engine.connect() as conn:
                inspector = sa.inspect(conn)
                existing = set(inspector.get_table_names()) | set(inspector.get_view_names())
                return _held(conn, catalog, subject, existing), _quarantined(conn, subject, existing)

        def report_lake() -> dict[str, Any]:
            return disclosures(wh.engine, catalog, KEY, subject, lake=lake)

        with wh.engine.connect() as conn:
            expected = conn.execute(sa.text("SELECT sum(CASE WHEN action LIKE '%_done' THEN 0 ELSE 1 END), "
                                            "sum(rows_returned) FROM gateway_audit")).first()
        medians: dict[str, float] = {}
        last_read = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=(args.rows - 1) * 7)
        second = timedelta(seconds=1)
        steps = (("scan", scan), ("report", report), ("usage", lambda: usage(wh.engine)),
                 ("usage_day", lambda: usage(wh.engine, last_read - timedelta(days=1), last_read + second)),
                 ("unusual", lambda: unusual(wh.engine, last_read + timedelta(seconds=1), min_rows=0)))
        if args.held_rows:
            steps += (("held", held),)
        if args.lake_rows:
            steps += (("lake_scan", lake_scan), ("report_lake", report_lake))
        for name, action in steps:
            seconds, result = [], None
            for _ in range(args.repeat):
                started = time.perf_counter()
                result = action()
                seconds.append(time.perf_counter() - started)
            figures[name] = {"first_s": round(seconds[0], 3), "median_s": round(statistics.median(seconds), 3)}
            medians[name] = statistics.median(seconds)
            if name == "report":
                figures["named"] = len(result["named"])  # type: ignore[index]
                assert figures["named"] >= len(range(0, args.rows, 10_000)), figures  # and random lookups of them
                figures["may_have_groups"] = len(result["may_have"])  # type: ignore[index]
                assert result["records"]["citizen"][0]["personal_id"] == subject  # type: ignore[index]
            if name == "held":
                events, rejected = result  # type: ignore[misc]
                figures["held_found"] = [len(events.get("civil_status_event", [])),
                                         len(rejected.get("civil_status_event", []))]
                assert figures["held_found"] == [2 if args.held_rows > 1 else 1, min(2, args.quarantine_rows)], figures
            if name == "report_lake":
                figures["lake_versions"] = 1 + len(result["earlier"].get("citizen", []))  # type: ignore[index]
                assert result["named"] == report()["named"], "the lake changes which reads may have, not who named"
                # the person's versions here all hold the same values, from before the audit's first read
                assert len(result["may_have"]) == figures["may_have_groups"], figures  # type: ignore[index]
            if name == "unusual":
                figures["unusual_flagged"] = len(result)  # type: ignore[arg-type]
            if name == "usage":
                figures["usage_groups"] = len(result)  # type: ignore[arg-type]
                assert (sum(u["requests"] for u in result), sum(u["rows"] for u in result)) == \
                    tuple(int(v) for v in expected), (figures, expected)  # type: ignore[union-attr]
        for name in [n for n in ("report", "usage", "usage_day", "unusual", "held") if n in figures]:  # unrounded
            figures[name]["x_scan"] = ratio(medians[name], medians["scan"])
        if args.lake_rows:  # the lake's part of the report against reading the lake's ID column once
            figures["report_lake"]["x_lake_scan"] = ratio(medians["report_lake"] - medians["report"],
                                                          medians["lake_scan"])
        wh.engine.dispose()
    print(f"\n{'step':<12}{'first s':>10}{'median s':>10}{'x scan':>8}")
    for name in ("scan", "report", "usage", "usage_day", "unusual", "held", "lake_scan", "report_lake"):
        if name in figures:
            f = figures[name]
            print(f"{name:<12}{f['first_s']:>10}{f['median_s']:>10}{str(f.get('x_scan', 1.0)):>8}")
    if "report_lake" in figures:
        print(f"the lake's part of the report (report_lake - report): {figures['report_lake']['x_lake_scan']}x "
              f"the lake scan; {figures['lake_versions']} version(s) of the person found")
    if "held" in figures:
        print(f"held: {figures['held_found'][0]} event(s) and {figures['held_found'][1]} quarantined row(s) of the "
              f"person among {figures['held_rows']:,} and {figures['quarantine_rows']:,}; "
              f"{figures['held']['median_s'] / figures['report']['median_s']:.2f}x the report")
    print(f"the report: {figures['named']} read(s) named the person, {figures['may_have_groups']} group(s) of reads "
          f"may have included them; usage: {figures['usage_groups']} agency-dataset pair(s); unusual: "
          f"{figures['unusual_flagged']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
