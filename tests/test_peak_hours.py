"""A system's peak hours (`limits.peak` in catalog/systems.yaml): lgsp's background calls slow down while the
peer is busiest, a gateway lookup does not.

The windows are local hours on weekdays (unit tests with fixed instants); the catalog refuses a window it
cannot read, naming the file and field; `lgsp status` and the metrics say when a system is in its peak.
Against the real population service (zeep, its real WSDL), made to answer at most 4 requests a second (the
sandbox's `capacity_per_s`, a 503 "server busy" beyond, as VNeID does at peak hours), a drift check of 24
records meets no 503 in a peak at 2 a second, and at the system's own rate overloads it (some records are
not asked: 503s, then the breaker opens).
"""
from __future__ import annotations

import logging
import re
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from catalog import CatalogError, load_catalog
from catalog.loader import CATALOG_DIR
from catalog.models import LOCAL_TZ, Catalog, PeakSpec, peak_until, peak_windows
from connectors.limits import Limits, Peak, limits_for, peak_state, reset_limits
from lgsp import runner
from lgsp.drift import check_drift
from lgsp.metrics import families
from lgsp.status import peak_line, status_report
from warehouse import Warehouse

EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def local(text: str) -> datetime:
    """An instant written in local time (Asia/Ho_Chi_Minh)."""
    return datetime.fromisoformat(text).replace(tzinfo=LOCAL_TZ)


def _with_peak(catalog: Catalog, **peak: Any) -> Catalog:
    """The catalog with the population system's peak hours replaced (None: no peak)."""
    population = catalog.systems["population"]
    limits = population.limits.model_copy(update={"peak": PeakSpec(**peak) if peak else None})
    return catalog.model_copy(update={"systems": {**catalog.systems,
                                                  "population": population.model_copy(update={"limits": limits})}})


def test_a_peak_window_is_local_hours_on_the_weekdays_it_starts() -> None:
    office = peak_windows("07:30-11:30, 13:30-17:00")
    assert office == [(450, 690), (810, 1020)]
    weekdays = {0, 1, 2, 3, 4}
    # 2026-12-07 is a Monday
    assert peak_until(office, weekdays, local("2026-12-07T07:30:00")) == local("2026-12-07T11:30:00")
    assert peak_until(office, weekdays, local("2026-12-07T11:29:59")) == local("2026-12-07T11:30:00")
    assert peak_until(office, weekdays, local("2026-12-07T11:30:00")) is None  # the end is not in the window
    assert peak_until(office, weekdays, local("2026-12-07T07:29:00")) is None
    assert peak_until(office, weekdays, local("2026-12-07T16:00:00")) == local("2026-12-07T17:00:00")
    assert peak_until(office, weekdays, local("2026-12-12T09:00:00")) is None  # a Saturday
    # the same instant written in UTC: 02:00Z is 09:00 in Ho Chi Minh City
    at = datetime(2026, 12, 7, 2, 0, tzinfo=timezone.utc)
    assert peak_until(office, weekdays, at) == datetime(2026, 12, 7, 4, 30, tzinfo=timezone.utc)

    night = peak_windows("22:00-02:00")  # past midnight: it belongs to the day it starts
    assert peak_until(night, {4}, local("2026-12-11T23:00:00")) == local("2026-12-12T02:00:00")  # Friday night
    assert peak_until(night, {4}, local("2026-12-12T01:59:00")) == local("2026-12-12T02:00:00")  # into Saturday
    assert peak_until(night, {4}, local("2026-12-13T01:00:00")) is None  # Saturday's night is not one
    assert peak_until(night, {4}, local("2026-12-11T01:00:00")) is None  # nor Thursday's
    whole = peak_windows("00:00-24:00")
    assert peak_until(whole, set(range(7)), local("2026-12-13T12:00:00")) == local("2026-12-14T00:00:00")
    assert peak_windows("none") == peak_windows("") == []


@pytest.mark.parametrize("hours, said", [
    ("7:30-11:30", "peak hours '7:30-11:30': write HH:MM-HH:MM"),
    ("07:30-25:00", "peak hours '07:30-25:00': write HH:MM-HH:MM"),
    ("24:00-01:00", "peak hours '24:00-01:00': write HH:MM-HH:MM"),
    ("08:00-08:00", "peak hours '08:00-08:00': a window must end after it starts"),
])
def test_the_catalog_refuses_a_peak_window_it_cannot_read(tmp_path: Path, hours: str, said: str) -> None:
    copy = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = copy / "systems.yaml"
    text = path.read_text(encoding="utf-8")
    shipped = '"${LGSP_POPULATION_PEAK_HOURS:-07:30-11:30,13:30-17:00}"'
    assert shipped in text
    path.write_text(text.replace(shipped, f'"{hours}"'), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"systems\.yaml.*systems\.population\.limits\.peak\.hours") as err:
        load_catalog(copy)
    assert said in str(err.value)
    path.write_text(text.replace("days: [mon, tue, wed, thu, fri]", "days: [monday]"), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"systems\.population\.limits\.peak\.days"):
        load_catalog(copy)


def test_the_shipped_peak_hours_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    population = load_catalog().systems["population"]
    monkeypatch.delenv("LGSP_POPULATION_PEAK_HOURS")
    state = peak_state(population, local("2026-12-07T09:00:00"))
    assert state is not None and state["hours"] == ["07:30-11:30", "13:30-17:00"] and state["rate_per_s"] == 10
    assert state["until"] == local("2026-12-07T11:30:00")
    assert peak_state(population, local("2026-12-07T12:00:00"))["until"] is None  # type: ignore[index]
    monkeypatch.setenv("LGSP_POPULATION_PEAK_HOURS", "none")  # what the test suite runs with
    assert peak_state(population) is None and Limits(population).peak is not None
    assert Limits(population).peak.until() is None  # type: ignore[union-attr]


def test_only_background_calls_wait_for_the_peak_rate_and_only_in_a_peak() -> None:
    catalog = _with_peak(load_catalog(), hours="07:30-11:30", days=EVERY_DAY, rate_per_s=1000)
    limits = Limits(catalog.systems["population"])
    assert limits.peak is not None
    limits.peak.clock = lambda: local("2026-12-07T08:00:00")
    limits.throttle()
    limits.throttle(background=False)  # a lookup
    assert limits.peak.calls == 1
    limits.peak.clock = lambda: local("2026-12-07T12:00:00")
    limits.throttle()
    assert limits.peak.calls == 1
    slow = Peak("population", PeakSpec(hours="00:00-24:00", days=EVERY_DAY, rate_per_s=0.5),
                clock=lambda: local("2026-12-07T08:00:00"))
    slow.bucket.clock, slow.bucket.updated = iter([0.0, 0.0, 2.0]).__next__, 0.0  # its clock: 2 s pass
    slow.bucket.acquire(sleep=lambda s: None)
    waited = slow.bucket.acquire(sleep=lambda s: None)
    assert waited == pytest.approx(2.0)  # 0.5 a second: one token every 2 s


def test_background_calls_in_a_peak_do_not_overload_the_population_service(
        lgsp_env: Any, sandbox_handle: Any, caplog: pytest.LogCaptureFixture) -> None:
    plan = sandbox_handle.faults["population"]
    plan.capacity_per_s = 4
    try:
        reset_limits()
        catalog = _with_peak(load_catalog(), hours="00:00-24:00", days=EVERY_DAY, rate_per_s=2)
        before = dict(plan.injected_by_kind)
        caplog.set_level(logging.INFO, logger="lgsp")
        pulled = runner.run_pipeline("population_citizens", catalog=catalog)
        assert pulled["rows_pulled"] == len(sandbox_handle.data.citizens), pulled
        said = [r.getMessage() for r in caplog.records if "peak" in r.getMessage()]
        assert any(m.startswith("population is in its peak hours until 00:00 local time: lgsp's background calls "
                                "slow to 2/s") for m in said), said
        assert any(re.fullmatch(r"population_citizens: \d+ call\(s\) in population's peak hours waited [\d.]+ s "
                                r"in all for its peak rate \(2/s\)", m) for m in said), said
        calm = check_drift(catalog, lgsp_env.database_url, "citizen", sample=24)
        assert plan.injected_by_kind.get("overloaded", 0) == before.get("overloaded", 0), plan.injected_by_kind
        assert calm.counts()["same"] == 24, calm.counts()  # every record asked, none failed
        peak = limits_for(catalog.systems["population"]).peak
        assert peak is not None and peak.calls >= 24 and peak.waited_s > 0

        reset_limits()
        rushed = check_drift(_with_peak(load_catalog()), lgsp_env.database_url, "citizen", sample=24)
        overloaded = plan.injected_by_kind.get("overloaded", 0) - before.get("overloaded", 0)
        assert overloaded > 0, "at the system's own rate 24 calls overload a service of 4 a second"
        assert rushed.counts()["same"] < 24, rushed.counts()  # some not asked: 503s, then the breaker opened
    finally:
        plan.capacity_per_s = 0
        reset_limits()


def _next_monday() -> date:
    today = datetime.now(LOCAL_TZ).date()
    return today + timedelta(days=(7 - today.weekday()) % 7 or 7)


def test_status_and_metrics_say_when_a_system_is_in_its_peak(lgsp_env: Any) -> None:
    runner.run_pipeline("population_citizens")
    catalog = _with_peak(load_catalog(), hours="07:30-11:30,13:30-17:00", days=["mon", "tue", "wed", "thu", "fri"],
                         rate_per_s=5)
    wh = Warehouse(lgsp_env.database_url, catalog)
    monday = _next_monday()
    at = datetime(monday.year, monday.month, monday.day, 8, 0, tzinfo=LOCAL_TZ)  # over 3 h after the sync: late
    report = status_report(wh, catalog, at.astimezone(timezone.utc))
    peak = next(p for p in report["peak_hours"] if p["system"] == "population")
    assert peak["until"] == at.replace(hour=11, minute=30)
    assert peak_line(peak) == ("population's peak hours: mon-fri 07:30-11:30, 13:30-17:00 local (Asia/Ho_Chi_Minh): "
                               "background calls at 5/s, full refreshes and backfills wait for their end, lookups at "
                               "the full rate; now in one until 11:30 local")
    late = [p["problem"] for p in report["problems"] if p.get("pipeline") == "population_citizens"]
    assert any(text.endswith("(population is in its peak hours until 11:30 local: pulls run at 5/s)")
               for text in late), late
    gauges = {(m.name, s.labels.get("system")): s.value for m in families(wh, catalog, report) for s in m.samples}
    assert gauges[("lgsp_system_peak", "population")] == 1.0
    assert gauges[("lgsp_system_peak_rate_per_second", "population")] == 5.0

    evening = status_report(wh, catalog, at.replace(hour=18).astimezone(timezone.utc))
    peak = next(p for p in evening["peak_hours"] if p["system"] == "population")
    assert peak["until"] is None and peak_line(peak).endswith("now off peak")
    assert not any("peak hours" in p["problem"] for p in evening["problems"])
    wh.engine.dispose()


def test_the_sandbox_serves_a_population_service_of_a_given_capacity() -> None:
    from sandbox.__main__ import _parser
    from sandbox.faults import FaultPlan

    assert _parser().parse_args(["--capacity", "population=5"]).capacity == [("population", 5.0)]
    for wrong in ("nosuch=5", "population=0", "population"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--capacity", wrong])
    plan = FaultPlan(capacity_per_s=3)
    assert [plan.overloaded() for _ in range(5)] == [False, False, False, True, True]  # within one second
    assert plan.injected_by_kind == {"overloaded": 2}
    plan.clear()
    assert plan.capacity_per_s == 0 and not plan.overloaded()


def _catalog_with_peak_every_day(tmp_path: Path) -> Path:
    """A copy of the catalog whose population peak hours (LGSP_POPULATION_PEAK_HOURS) hold every day."""
    copy = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = copy / "systems.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("days: [mon, tue, wed, thu, fri]", "days: [mon, tue, wed, thu, fri, sat, sun]"),
                    encoding="utf-8")
    return copy


def _batches(url: str) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table("lgsp_batch"):
            return []
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("SELECT batch_id, mode, status, started_at FROM lgsp_batch "
                                                          "ORDER BY started_at")).mappings()]
    finally:
        engine.dispose()


def test_a_full_refresh_or_a_backfill_does_not_start_in_a_peak(lgsp_env: Any, sandbox_handle: Any) -> None:
    """`limits.peak.bulk: wait`: a bulk pull is refused before anything starts, saying until when and what to do;
    an incremental run goes on (at the peak rate), and so does a bulk pull with `in_peak`, or with `bulk: slow`."""
    catalog = _with_peak(load_catalog(), hours="00:00-24:00", days=EVERY_DAY, rate_per_s=1000)
    midnight = (datetime.now(LOCAL_TZ) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with pytest.raises(runner.InPeakHours) as err:
        runner.run_pipeline("population_citizens", full_refresh=True, catalog=catalog)
    assert err.value.until == midnight
    assert str(err.value) == (
        "population_citizens: a full refresh or a backfill does not start in population's peak hours, which end at "
        f"00:00 local time ({midnight.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC; limits.peak.bulk: wait in "
        "catalog/systems.yaml): `--off-peak` waits for their end (on Airflow the extract task is rescheduled to it), "
        "`--in-peak` runs it now at the peak rate (1000/s)")
    with pytest.raises(runner.InPeakHours):
        runner.run_pipeline("population_citizens", since=datetime(2026, 1, 1, tzinfo=timezone.utc),
                            until=datetime(2026, 2, 1, tzinfo=timezone.utc), catalog=catalog)
    assert _batches(lgsp_env.database_url) == []  # nothing started
    assert runner.run_pipeline("population_citizens", catalog=catalog)["mode"] == "incremental"
    assert runner.run_pipeline("population_citizens", full_refresh=True, catalog=catalog, in_peak=True)["mode"] == \
        "full_refresh"
    slow = _with_peak(load_catalog(), hours="00:00-24:00", days=EVERY_DAY, rate_per_s=1000, bulk="slow")
    assert runner.run_pipeline("population_citizens", full_refresh=True, catalog=slow)["mode"] == "full_refresh"
    assert [b["status"] for b in _batches(lgsp_env.database_url)] == ["loaded"] * 3


def test_the_cli_refuses_a_bulk_pull_in_a_peak_and_says_what_to_do(lgsp_env: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from lgsp.cli import app

    monkeypatch.setenv("LGSP_CATALOG_DIR", str(_catalog_with_peak_every_day(tmp_path)))
    monkeypatch.setenv("LGSP_POPULATION_PEAK_HOURS", "00:00-24:00")
    cli = CliRunner()

    def said(*args: str) -> tuple[int, str]:
        result = cli.invoke(app, list(args), env={"COLUMNS": "300"})
        return result.exit_code, " ".join(result.output.split())

    code, text = said("run", "population_citizens", "--full-refresh", "--inline")
    assert code == 1 and "a full refresh or a backfill does not start in population's peak hours" in text, text
    assert "`--off-peak` waits for their end" in text and "`--in-peak` runs it now at the peak rate (10/s)" in text
    code, text = said("backfill", "population_citizens", "--from", "2026-11-01", "--to", "2026-11-02", "--inline")
    assert code == 1 and "does not start in population's peak hours" in text, text
    code, text = said("run", "population_citizens", "--full-refresh", "--inline", "--in-peak", "--off-peak")
    assert code == 1 and "give one or the other" in text, text
    assert _batches(lgsp_env.database_url) == []
    code, text = said("run", "population_citizens", "--full-refresh", "--inline", "--in-peak")
    assert code == 0, text
    assert [(b["mode"], b["status"]) for b in _batches(lgsp_env.database_url)] == [("full_refresh", "loaded")]


@pytest.mark.airflow
def test_on_airflow_a_full_refresh_in_a_peak_waits_for_its_end(tmp_path: Path, sandbox_handle: Any) -> None:
    """The real Airflow (`lgsp run --off-peak`, dag.test): the extract task is rescheduled to the end of a peak
    that ends two to three minutes from now, holds no worker meanwhile, then pulls; the batch starts after it."""
    import sqlalchemy as sa

    from airflow_helpers import lgsp_env as airflow_env_of, run

    now = datetime.now(LOCAL_TZ).replace(second=0, microsecond=0)
    start, end = now - timedelta(minutes=2), now + timedelta(minutes=3)
    hours = f"{start:%H:%M}-{end:%H:%M}"
    home = tmp_path / "home"
    env = airflow_env_of(home, **sandbox_handle.env(), LGSP_CATALOG_DIR=str(_catalog_with_peak_every_day(tmp_path)))
    env["LGSP_POPULATION_PEAK_HOURS"] = hours
    refused = run(["lgsp", "run", "population_citizens", "--full-refresh"], env)
    assert refused.returncode == 1 and "--off-peak" in refused.stdout, refused.stdout[-2000:]
    proc = run(["lgsp", "run", "population_citizens", "--full-refresh", "--off-peak"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"the extract task waits on Airflow until {end:%H:%M} local time (rescheduled)" in \
        " ".join(proc.stdout.split())
    waits = (proc.stdout + proc.stderr).count("No tasks to run")  # dag.test() says it every second: once a minute
    assert 1 <= waits <= 4, waits
    (batch,) = _batches(f"sqlite:///{home / 'warehouse.db'}")
    started = batch["started_at"] if isinstance(batch["started_at"], datetime) else \
        datetime.fromisoformat(str(batch["started_at"]))
    assert (batch["mode"], batch["status"]) == ("full_refresh", "loaded")
    assert started.replace(tzinfo=started.tzinfo or timezone.utc) >= end, (started, end)
    airflow_db = sa.create_engine(f"sqlite:///{home / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        rescheduled = conn.execute(sa.text("select reschedule_date from task_reschedule")).scalars().all()
        states = dict(conn.execute(sa.text(
            "select task_id, state from task_instance where dag_id = 'lgsp_population_citizens'")).all())
    airflow_db.dispose()
    assert len(rescheduled) == 1, rescheduled
    assert states == {"extract": "success", "validate": "success", "load": "success"}
