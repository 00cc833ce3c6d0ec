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
                               "background calls at 5/s, lookups at the full rate; now in one until 11:30 local")
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
