"""Indicators of a catalogue's state (`as_of: period_end`): the procedures with no administrative boundary per
month, quarter and year are those the warehouse held at each period's end (Binh Duong: 275, then 570). An ended
period keeps its value when the portal widens its list later; the period under way follows it; the values reach
the government reporting system like the rates of dossiers. The real sandbox portal and reporting service over
loopback, the real runner, CLI and outbox; SQLite and a real PostgreSQL.
"""
from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from typer.testing import CliRunner

from catalog import load_catalog
from catalog.models import IndicatorSpec
from lgsp.cli import app as lgsp_app

NAME = "boundary_free_procedure_rate"


def _months_back(now: datetime, months: int) -> datetime:
    """The 15th, 03:00 UTC, of the month `months` before `now`'s (local time)."""
    local = now.astimezone(timezone(timedelta(hours=7)))
    year, month = divmod(local.year * 12 + local.month - 1 - months, 12)
    return datetime(year, month + 1, 15, 3, tzinfo=timezone.utc)


def _as_if_written_at(wh: Any, lake: Any, dataset: str, at: datetime) -> None:
    """Move the dataset's last write (made just now) to `at`, as if its sync had run then: its commit time in the
    change log and its lake partition (what the versions, and so the snapshot indicators, read time from)."""
    change = wh.system["lgsp_change"]
    recent = datetime.now(timezone.utc) - timedelta(hours=1)
    with wh.engine.begin() as conn:
        moved = conn.execute(change.update().where(change.c.dataset == dataset, change.c.committed_at > recent)
                             .values(committed_at=at)).rowcount
    assert moved == 1
    today = lake.partitions(dataset)[-1]
    assert today.name == f"ingest_date={datetime.now(timezone.utc).date().isoformat()}", today
    today.rename(today.with_name(f"ingest_date={at.date().isoformat()}"))


def _cells(wh: Any) -> dict[tuple[str, str], tuple[int, int]]:
    from indicators import read_indicator

    return {(r["period_type"], r["period"]): (r["numerator"], r["denominator"])
            for r in read_indicator(wh, NAME, unit_level="province", period_type=None)}


def test_the_boundary_free_count_of_each_period_is_what_the_warehouse_held_at_its_end(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from indicators import compute_indicator, definitions, periods, snapshot
    from indicators.snapshot import Snapshot, period_end
    from lgsp import outbox, runner
    from lgsp.settings import load_settings
    from sandbox import DATASET_KEYS, start_sandbox
    from test_gateway import gateway_env
    from test_procedure_catalogue import widen
    from warehouse.lake import Lake

    sandbox = start_sandbox(seed=11, citizens=5, dossiers=5, sizes=dict.fromkeys(DATASET_KEYS, 0) | {"procedure": 120})
    try:
        with gateway_env(sandbox, tmp_path / "home", database_url):
            catalog = load_catalog()
            portal = sandbox.dvcqg.procedures
            before = sum(p["KhongPhuThuocDiaGioi"] for p in portal)
            assert 0 < before < len(portal) == 120
            assert runner.run_pipeline("dvcqg_procedures", catalog=catalog)["rows_landed"] == 120
            wh, lake = runner.open_warehouse(catalog), Lake(load_settings().lake_root)
            now = datetime.now(timezone.utc)
            first = _months_back(now, 4)  # the first sync ran four months ago: an ended quarter at least
            _as_if_written_at(wh, lake, "procedure", first)
            widen(sandbox, 10)  # two months ago the province widened it
            assert runner.run_pipeline("dvcqg_procedures", catalog=catalog)["rows_changed"] == 10
            middle = _months_back(now, 2)
            _as_if_written_at(wh, lake, "procedure", middle)

            widen(sandbox, 5)  # and today again
            assert runner.run_pipeline("dvcqg_procedures", catalog=catalog)["rows_changed"] == 5

            computed = CliRunner().invoke(lgsp_app, ["indicators", "compute", NAME], env={"COLUMNS": "300"})
            assert computed.exit_code == 0, computed.output
            written = int(re.search(r"(\d+) row\(s\) written", computed.output).group(1))  # type: ignore[union-attr]

            cells = _cells(wh)
            month = first.astimezone(periods.VN_TZ).strftime("%Y-%m")
            months = []
            while month <= now.astimezone(periods.VN_TZ).strftime("%Y-%m"):
                months.append(month)
                month = periods.next_month_start(month).strftime("%Y-%m")
            labels = {(kind, periods.roll_up(m, kind)) for m in months for kind in ("month", "quarter", "year")}
            assert set(cells) == labels and written == len(labels), (cells, written)  # nothing before the first sync
            for (kind, label), pair in cells.items():
                end = period_end(label)
                held = before + (0 if end <= middle else 10 if end <= now else 15)
                assert pair == (held, 120), (kind, label, pair)
            assert cells[("month", months[0])] == (before, 120)
            assert cells[("month", months[-1])] == (before + 15, 120)
            assert any(period_end(label) <= now for kind, label in cells if kind == "quarter")

            # every ended period is settled: counted at its end, left alone by later computations
            spec = catalog.indicators[NAME]
            this_month = periods.local_midnight_utc(periods.month_start(months[-1]))
            assert definitions.settled_until(wh, spec) == this_month
            mart = wh.system["mart_indicator_value"]
            one = (mart.c.indicator == NAME, mart.c.period == months[1], mart.c.unit_level == "province")
            with wh.engine.begin() as conn:  # a hand-made error in a settled month ...
                conn.execute(mart.update().where(*one).values(numerator=0))
            assert compute_indicator(wh, spec, lake=lake) == 0  # ... which a computation leaves alone
            again = CliRunner().invoke(lgsp_app, ["indicators", "compute", NAME, "--full"])  # and --full counts again
            assert again.exit_code == 0 and "1 row(s) written" in again.output, again.output
            assert _cells(wh) == cells
            again = CliRunner().invoke(lgsp_app, ["indicators", "compute", NAME, "--full"])
            assert again.exit_code == 0 and "0 row(s) written" in again.output, again.output  # idempotent

            # the first computation after a month ended replays only the records written since its end
            last_month = months[-2]
            with wh.engine.begin() as conn:  # as if the last computation ran before last month ended
                conn.execute(mart.delete().where(mart.c.indicator == NAME, mart.c.period == last_month))
                table = wh.system["mart_indicator_definition"]
                conn.execute(table.update().where(table.c.indicator == NAME).values(
                    settled_until=periods.local_midnight_utc(periods.month_start(last_month))))
            counted = snapshot.snapshot_counts(wh, spec, lake, definitions.settled_until(wh, spec))
            files = {p.parent.name: pq.read_table(p, columns=["procedure_code"])["procedure_code"].to_pylist()
                     for p in lake.dataset_path("procedure").glob("*/*.parquet")}
            (sent_today,) = [codes for part, codes in files.items() if part == f"ingest_date={now.date()}"]
            assert 5 <= len(set(sent_today)) < 120  # the five widened today (and what the sync's overlap sent again)
            every = [code for codes in files.values() for code in codes]
            assert counted.replayed == sum(1 for code in every if code in set(sent_today)), counted.replayed
            assert counted.found["month"][0][("province", "37", last_month)] == cells[("month", last_month)]
            assert compute_indicator(wh, spec, lake=lake) > 0
            assert _cells(wh) == cells
            assert snapshot.snapshot_counts(wh, spec, lake, definitions.settled_until(wh, spec)).replayed == 0

            # a register too big to replay at once is replayed a key range at a time: the same counts
            whole = snapshot.snapshot_counts(wh, spec, lake)
            monkeypatch.setattr(snapshot, "SLICE", 7)
            sliced = snapshot.snapshot_counts(wh, spec, lake)
            assert sliced.replayed == whole.replayed > 15, (sliced.replayed, whole.replayed)
            assert sliced.found == whole.found
            assert Snapshot(wh, spec, lake, [first + timedelta(days=1)]).slices == 120 // 7 + 1
            assert Snapshot(wh, spec, lake, [middle + timedelta(days=1)]).slices == 120 // 7 + 1
            monkeypatch.undo()

            kept = tmp_path / "lake-kept"  # the lake lost (a disk replaced, no backup): the table as it is now only
            shutil.move(lake.dataset_path("procedure"), kept)
            assert compute_indicator(wh, catalog.indicators[NAME], lake=lake) == 0  # the ended periods stay as reported
            assert _cells(wh) == cells
            shutil.move(kept, lake.dataset_path("procedure"))

            day = first.date() + timedelta(days=3)  # a date range: what was held at its last day's end
            ranged = CliRunner().invoke(lgsp_app, ["indicators", "compute", NAME, "--from", f"{day:%Y-%m-01}",
                                                   "--to", day.isoformat()])
            assert ranged.exit_code == 0, ranged.output
            early = day - timedelta(days=10)  # ends before the first sync: the warehouse held nothing
            CliRunner().invoke(lgsp_app, ["indicators", "compute", NAME, "--from", early.isoformat(), "--to",
                                          early.isoformat()])
            from indicators import read_indicator

            ranges = {r["period"]: (r["numerator"], r["denominator"])
                      for r in read_indicator(wh, NAME, unit_level="province", period_type="range")}
            assert ranges == {f"{day:%Y-%m-01}..{day.isoformat()}": (before, 120)}

            pushed = outbox.push(wh, catalog, "government_report")  # the months reach the reporting system
            assert pushed["acked"] == pushed["queued"] > 0, pushed
            reports = sandbox.reporting_inbox.reports.values()
            received = {r["period"]: (r["numerator"], r["denominator"]) for r in reports if r["indicator_code"] == NAME}
            assert received == {m: cells[("month", m)] for m in months}
            with wh.engine.connect() as conn:
                mart = wh.system["mart_indicator_value"]
                assert conn.execute(sa.select(sa.func.count()).select_from(mart).where(
                    mart.c.indicator == "full_online_procedure_rate")).scalar() == 0  # computed only when asked
    finally:
        sandbox.stop()


def test_a_write_committing_while_the_table_is_read_is_counted_again(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A sync of the portal commits between the snapshot's read of the table and its replay, with a commit time
    before the read (`stamp_change` stamps just before the commit): the table's count misses its five widened
    procedures while the replay holds them. Counted as it was, last month would show five too few; the snapshot
    sees the write and counts again: last month as the warehouse held it."""
    import logging

    from indicators import snapshot
    from indicators.snapshot import period_end
    from lgsp import runner
    from lgsp.settings import load_settings
    from sandbox import DATASET_KEYS, start_sandbox
    from test_gateway import gateway_env
    from test_procedure_catalogue import widen
    from warehouse.lake import Lake

    sandbox = start_sandbox(seed=12, citizens=5, dossiers=5, sizes=dict.fromkeys(DATASET_KEYS, 0) | {"procedure": 60})
    try:
        with gateway_env(sandbox, tmp_path / "home", database_url):
            catalog = load_catalog()
            before = sum(p["KhongPhuThuocDiaGioi"] for p in sandbox.dvcqg.procedures)
            assert runner.run_pipeline("dvcqg_procedures", catalog=catalog)["rows_landed"] == 60
            wh, lake = runner.open_warehouse(catalog), Lake(load_settings().lake_root)
            now = datetime.now(timezone.utc)
            _as_if_written_at(wh, lake, "procedure", _months_back(now, 2))
            widen(sandbox, 5)
            change = wh.system["lgsp_change"]
            started = datetime.now(timezone.utc)
            real, synced = snapshot._lookups, []

            def lookups_then_a_sync(*args: Any) -> Any:  # right after the table's count, in the same connection
                if not synced:
                    synced.append(runner.run_pipeline("dvcqg_procedures", catalog=catalog)["rows_changed"])
                    with wh.engine.begin() as conn:  # its commit time: before the table was read
                        conn.execute(change.update().where(change.c.change_seq == sa.select(
                            sa.func.max(change.c.change_seq)).scalar_subquery()).values(
                            committed_at=started - timedelta(seconds=1)))
                return real(*args)

            monkeypatch.setattr(snapshot, "_lookups", lookups_then_a_sync)
            caplog.set_level(logging.INFO, logger="lgsp.indicators")
            counted = snapshot.snapshot_counts(wh, catalog.indicators[NAME], lake)
            assert synced == [5]
            last_month = _months_back(now, 1).astimezone(timezone(timedelta(hours=7))).strftime("%Y-%m")
            assert period_end(last_month) < started
            months = counted.found["month"][0]
            assert months[("province", "37", last_month)] == (before, 60), months  # five fewer without the recount
            this_month = now.astimezone(timezone(timedelta(hours=7))).strftime("%Y-%m")
            assert months[("province", "37", this_month)] == (before + 5, 60)
            assert any("committed while the table was read; counting again (2 of 3)" in r.getMessage()
                       for r in caplog.records), caplog.text
            wh.engine.dispose()
    finally:
        sandbox.stop()


def test_an_indicator_says_whether_it_counts_dated_rows_or_what_is_held_at_each_periods_end() -> None:
    spec = {"name": "x", "version": 1, "name_vi": "x", "name_en": "x", "dataset": "procedure",
            "numerator": {"boundary_free": True}}
    assert IndicatorSpec(**spec, as_of="period_end").date_column is None
    with pytest.raises(ValidationError, match="either 'date_column'.*or 'as_of: period_end'"):
        IndicatorSpec(**spec)
    with pytest.raises(ValidationError, match="not both"):
        IndicatorSpec(**spec, as_of="period_end", date_column="updated_at")
    with pytest.raises(ValidationError, match="measure is a rate"):
        IndicatorSpec(**{**spec, "numerator": {}}, as_of="period_end", measure="average",
                      sum_seconds=("a", "b"))


def test_a_history_dataset_is_counted_in_the_versions_current_at_each_periods_end(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry suspends five enterprises today: `enterprise` (write mode history) keeps both versions of
    each; the months ended before count them active, the one under way suspended, each enterprise once."""
    import dataclasses

    from indicators import compute_indicator, periods, read_indicator, snapshot
    from indicators.snapshot import period_end
    from lgsp import runner
    from lgsp.settings import load_settings
    from sandbox import DATASET_KEYS, start_sandbox
    from test_gateway import gateway_env
    from warehouse.lake import Lake

    spec = IndicatorSpec(name="active_enterprise_rate", version=1, name_vi="x", name_en="x", dataset="enterprise",
                         as_of="period_end", units={"commune": "commune_code"}, numerator={"status": "active"})
    sizes = dict.fromkeys(DATASET_KEYS, 0) | {"enterprise": 150, "procedure": 30}
    sandbox = start_sandbox(seed=5, citizens=5, dossiers=5, sizes=sizes)
    try:
        with gateway_env(sandbox, tmp_path / "home", database_url) as env:
            catalog = load_catalog()
            data = sandbox.data
            landed = [e for e in data.enterprises if e["tax_code"] not in data.enterprise_defects]
            active = {e["tax_code"] for e in landed if e["status"] == "active"}
            assert runner.run_pipeline("business_enterprises", catalog=catalog)["rows_landed"] == len(landed)
            wh, lake = runner.open_warehouse(catalog), Lake(load_settings().lake_root)
            now = datetime.now(timezone.utc)
            _as_if_written_at(wh, lake, "enterprise", _months_back(now, 3))

            enterprises = [dict(e) for e in data.enterprises]  # the registry suspends five today
            later = max(e["updated_at"] for e in enterprises) + timedelta(hours=1)
            suspended = sorted(active)[:5]
            for enterprise in enterprises:
                if enterprise["tax_code"] in suspended:
                    enterprise.update(status="suspended", updated_at=later)
            enterprises.sort(key=lambda e: (e["updated_at"], e["tax_code"]))
            with start_sandbox(data=dataclasses.replace(data, enterprises=enterprises)) as newer:
                for name, value in newer.env().items():
                    env.setenv(name, value)
                assert runner.run_pipeline("business_enterprises", catalog=catalog)["rows_changed"] == 5

            table = wh.core["enterprise"]
            with wh.engine.connect() as conn:  # two versions of each suspended enterprise
                assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == len(landed) + 5
            assert compute_indicator(wh, spec, lake=lake) > 0
            cells = {(r["period_type"], r["period"]): (r["numerator"], r["denominator"])
                     for r in read_indicator(wh, spec.name, unit_level="province", period_type=None)}
            assert len(cells) >= 4 and any(period_end(p) <= now for _, p in cells)
            for (kind, label), pair in cells.items():
                ended = period_end(label) <= now
                assert pair == (len(active) - (0 if ended else 5), len(landed)), (kind, label, pair)
            month = now.astimezone(periods.VN_TZ).strftime("%Y-%m")
            communes = read_indicator(wh, spec.name, unit_level="commune", period_type="month")
            assert sum(r["denominator"] for r in communes if r["period"] == month) == len(landed)
            assert sum(r["numerator"] for r in communes if r["period"] == month) == len(active) - 5

            whole = snapshot.snapshot_counts(wh, spec, lake)  # a key range at a time: the same counts
            monkeypatch.setattr(snapshot, "SLICE", 20)
            sliced = snapshot.snapshot_counts(wh, spec, lake)
            assert sliced.found == whole.found and sliced.replayed == whole.replayed >= 10, sliced.replayed
    finally:
        sandbox.stop()


def test_a_register_with_a_composite_key_is_replayed_a_key_range_at_a_time(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Household members (key: household and person) synced three months ago; today the registry records eight heads
    as spouses. The ended months are replayed, cut by the household, in ranges of 17 records as at once: the same
    counts; each ended month holds the eight heads more than the table now."""
    import dataclasses

    from indicators import periods, snapshot
    from indicators.snapshot import Snapshot
    from lgsp import runner
    from lgsp.settings import load_settings
    from sandbox import DATASET_KEYS, start_sandbox
    from test_gateway import gateway_env
    from warehouse.lake import Lake

    spec = IndicatorSpec(name="household_heads_held", version=1, name_vi="x", name_en="x",
                         dataset="household_member", as_of="period_end", units={"commune": "commune_code"},
                         numerator={"relation": "head"})
    sandbox = start_sandbox(seed=3, citizens=5, dossiers=5,
                            sizes=dict.fromkeys(DATASET_KEYS, 0) | {"household_member": 200, "procedure": 30})
    try:
        with gateway_env(sandbox, tmp_path / "home", database_url) as env:
            catalog = load_catalog()
            landed = runner.run_pipeline("civil_status_household_members", catalog=catalog)["rows_landed"]
            wh, lake = runner.open_warehouse(catalog), Lake(load_settings().lake_root)
            now = datetime.now(timezone.utc)
            _as_if_written_at(wh, lake, "household_member", _months_back(now, 3))
            data = sandbox.data
            members = [dict(m) for m in data.household_members]
            later = max(m["updated_at"] for m in members) + timedelta(hours=1)
            heads = [m for m in members if m["relation"] == "head"
                     and f"{m['household_id']}|{m['personal_id']}" not in data.household_member_defects][:8]
            for member in heads:
                member.update(relation="spouse", updated_at=later)
            with start_sandbox(data=dataclasses.replace(data, household_members=members)) as newer:
                for name, value in newer.env().items():
                    env.setenv(name, value)
                again = runner.run_pipeline("civil_status_household_members", catalog=catalog)
            assert landed > 100 and again["rows_changed"] == 8, again

            whole = snapshot.snapshot_counts(wh, spec, lake)
            monkeypatch.setattr(snapshot, "SLICE", 17)
            sliced = snapshot.snapshot_counts(wh, spec, lake)
            assert sliced.found == whole.found and sliced.replayed == whole.replayed >= 16, sliced.replayed
            assert Snapshot(wh, spec, lake, [now - timedelta(days=1)]).slices > 5
            months = whole.found["month"][0]
            this_month = now.astimezone(periods.VN_TZ).strftime("%Y-%m")
            ended = {label for _, _, label in months} - {this_month}
            assert len(ended) >= 2
            for label in ended:  # the eight were heads then
                then, held = months[("province", "37", label)], months[("province", "37", this_month)]
                assert then == (held[0] + 8, held[1]), (label, then, held)
    finally:
        sandbox.stop()


@pytest.mark.parametrize(("filters", "expected"), [
    ({"c": "a"}, ["a"]), ({"c": ["a", "b"]}, ["a", "b"]), ({"c": None}, [None]),
    ({"c": {"not": None}}, ["a", "b"]), ({"c": {"not": "a"}}, ["b"]), ({"c": {"not": ["a", "b"]}}, []),
])
def test_a_filter_means_the_same_in_sql_and_over_the_versions(database_url: str, filters: dict[str, Any],
                                                               expected: list[Any]) -> None:
    """The table now is counted in SQL (`indicators.query.condition`), what it held earlier over the versions in
    Python (`indicators.snapshot.matches`): the same rows pass both; a null value passes neither a value nor its
    `not`."""
    from indicators.query import condition
    from indicators.snapshot import matches

    engine = sa.create_engine(database_url)
    table = sa.Table("filtered", sa.MetaData(), sa.Column("n", sa.Integer, primary_key=True), sa.Column("c", sa.Text))
    rows = [{"n": 1, "c": None}, {"n": 2, "c": "a"}, {"n": 3, "c": "b"}]
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), rows)
            in_sql = [r.c for r in conn.execute(sa.select(table.c.c).where(condition(table, filters))
                                                .order_by(table.c.n))]
    finally:
        with engine.begin() as conn:
            table.drop(conn, checkfirst=True)
        engine.dispose()
    assert in_sql == [r["c"] for r in rows if matches(r, filters)] == expected


def test_a_filter_is_a_value_a_list_null_or_not_one_of_those() -> None:
    spec = {"name": "x", "version": 1, "name_vi": "x", "name_en": "x", "dataset": "land_parcel", "as_of": "period_end"}
    certified = {"certificate_no": {"not": None}}
    assert IndicatorSpec(**spec, numerator=certified).numerator == certified
    for wrong in ({"nope": None}, {"not": {"not": None}}, [["a"]]):
        with pytest.raises(ValidationError, match="filter on 'certificate_no': give a value, a list of values, null"):
            IndicatorSpec(**spec, numerator={"certificate_no": wrong})
