"""`lgsp backfill`: one Airflow DAG run per data interval, reading and writing only those intervals; a rerun
changes nothing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_helpers import lgsp_env, run
from lgsp.backfill import VN, covered, data_intervals

pytestmark = pytest.mark.airflow

FROM, TO = datetime(2025, 8, 4, tzinfo=VN), datetime(2025, 8, 8, tzinfo=VN)


def test_intervals_tile_the_range_at_the_schedule() -> None:
    days = data_intervals(FROM, TO, "@daily")
    assert [i.start.astimezone(VN).day for i in days] == [4, 5, 6, 7]
    assert covered(days) == TO - FROM and all(a.end == b.start for a, b in zip(days, days[1:]))
    ragged = data_intervals(FROM + timedelta(hours=5), TO, "@daily")  # an unaligned start is kept, not rounded
    assert ragged[0].start == FROM + timedelta(hours=5) and covered(ragged) == TO - FROM - timedelta(hours=5)
    assert len(data_intervals(FROM, TO, "0 */6 * * *")) == 16
    with pytest.raises(ValueError, match="must be after"):
        data_intervals(TO, FROM, "@daily")


def _table(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql))]
    engine.dispose()
    return rows


def _as_utc(value: Any) -> datetime:
    stamp = datetime.fromisoformat(str(value)) if not isinstance(value, datetime) else value
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def test_backfill_reads_and_writes_exactly_the_intervals(tmp_path: Path, sandbox_handle: Any) -> None:
    sandbox_handle.faults.clear()
    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env())
    command = ["lgsp", "backfill", "business_enterprises", "--from", "2025-08-04", "--to", "2025-08-08"]
    proc = run(command, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warehouse = f"sqlite:///{home / 'warehouse.db'}"

    truth = sandbox_handle.data
    in_day = {i.start: [r for r in truth.records("enterprise") if i.start <= r["updated_at"] < i.end]
              for i in data_intervals(FROM, TO, "@daily")}
    batches = _table(warehouse, "select cursor_from, cursor_until, rows_pulled, mode, status from lgsp_batch")
    assert len(batches) == 4 and {(b[3], b[4]) for b in batches} == {("backfill", "loaded")}
    pulled = {_as_utc(b[0]): b[2] for b in batches}
    assert pulled == {start: len(rows) for start, rows in in_day.items()}  # the source sent only each day's rows
    assert all(_as_utc(b[1]) - _as_utc(b[0]) == timedelta(days=1) for b in batches)

    expected = {r["tax_code"] for rows in in_day.values() for r in rows} - set(truth.defects("enterprise"))
    assert expected and {r[0] for r in _table(warehouse, "select tax_code from core_enterprise")} == expected
    assert _table(warehouse, "select * from lgsp_cursor") == []  # a backfill never moves the cursor

    airflow_db = f"sqlite:///{home / 'airflow' / 'airflow.db'}"
    runs = _table(airflow_db, "select logical_date, state from dag_run where dag_id = 'lgsp_business_enterprises'")
    assert sorted(_as_utc(r[0]) for r in runs) == sorted(in_day) and {r[1] for r in runs} == {"success"}

    before = _table(warehouse, "select * from core_enterprise order by tax_code")
    quarantine = _table(warehouse, "select quarantine_id, status from lgsp_quarantine order by 1")
    proc = run(command, env)  # the same backfill again
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _table(warehouse, "select * from core_enterprise order by tax_code") == before  # not one byte moved
    assert _table(warehouse, "select quarantine_id, status from lgsp_quarantine order by 1") == quarantine
    again = _table(warehouse, "select rows_pulled, rows_changed from lgsp_batch order by started_at")[4:]
    assert [r[0] for r in again] == [b[2] for b in sorted(batches, key=lambda b: str(b[0]))]
    assert {r[1] for r in again} == {0}
    assert _table(warehouse, "select * from lgsp_cursor") == []


def test_backfill_refuses_a_range_that_is_not_one(tmp_path: Path) -> None:
    proc = run(["lgsp", "backfill", "business_enterprises", "--from", "2025-08-08", "--to", "2025-08-04"],
               lgsp_env(tmp_path / "home"))
    assert proc.returncode == 1 and "must be after" in proc.stdout
