"""Every indicator in the mart equals an independent computation over the sandbox's ground truth.

The truth side is plain Python over `sandbox_handle.data` (the rows the sandbox
serves, minus the ones it made defective, which lgsp quarantines), with its own
definition of each indicator, periods in Vietnam time (UTC+7) and every unit
level: numerators and denominators must match exactly, on SQLite and PostgreSQL.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from catalog import load_catalog
from indicators import compute_range, read_indicator
from tests.indicator_data import pull_and_compute
from warehouse import Warehouse

VN = timezone(timedelta(hours=7))
SETTLED = ("early", "on_time", "late")
Row = dict[str, Any]


def _settled(d: Row) -> bool:
    return d["settlement"] in SETTLED


def _seconds(d: Row) -> int:
    return int((d["finished_at"] - d["received_at"]).total_seconds())


TRUTH: dict[str, tuple[str, str, Callable[[Row], bool], Callable[[Row], int]]] = {
    # indicator: (dataset, date field, in the denominator?, numerator contribution)
    "online_submission_rate": ("dossier", "received_at", lambda d: True, lambda d: d["channel"] == "online"),
    "on_time_settlement_rate": ("dossier", "finished_at", _settled,
                                lambda d: d["finished_at"] <= d["due_at"]),
    "overdue_dossier_rate": ("dossier", "received_at", lambda d: True, lambda d: d["overdue"]),
    "online_payment_rate": ("dossier", "received_at", lambda d: d["channel"] == "online",
                            lambda d: d["paid_online"]),
    "dossier_digitisation_rate": ("dossier", "received_at", lambda d: True, lambda d: d["digitised"]),
    "result_digitisation_rate": ("dossier", "finished_at", _settled, lambda d: d["result_digitised"]),
    "portal_sync_rate": ("dossier", "received_at", lambda d: True, lambda d: d["portal_synced"]),
    "satisfaction_rate": ("dossier", "returned_at", lambda d: d["satisfaction"] is not None,
                          lambda d: d["satisfaction"] == "satisfied"),
    "signed_document_rate": ("document", "issued_on", lambda d: d["direction"] == "outgoing",
                             lambda d: d["digitally_signed"]),
    "average_settlement_days": ("dossier", "finished_at", _settled, _seconds),
}
HELD: dict[str, tuple[str, Callable[[Row], bool]]] = {
    # indicators of what the warehouse holds at each period's end (as_of: period_end): the portal's catalogue,
    # the land register (parcels the land database serves, except those lgsp quarantines)
    "boundary_free_procedure_rate": ("procedure", lambda p: p["KhongPhuThuocDiaGioi"] is True),
    "full_online_procedure_rate": ("procedure", lambda p: p["MucDo"] == "toan_trinh"),
    "land_certificate_rate": ("land_parcel", lambda p: p["certificate_no"] is not None),
}
UNITS = {"dossier": {"commune": "commune_code", "agency": "receiving_agency_code", "procedure": "procedure_code"},
         "document": {"agency": "agency_code"}, "land_parcel": {"commune": "commune_code"}}


def _local_day(value: date | datetime) -> date:
    return value.astimezone(VN).date() if isinstance(value, datetime) else value


def _periods(day: date) -> list[str]:
    return [day.strftime("%Y-%m"), f"{day.year}-Q{(day.month + 2) // 3}", str(day.year)]


def _clean_rows(truth: Any, dataset: str) -> list[Row]:
    defects = truth.defects(dataset)
    key = {"dossier": "dossier_id", "document": "document_id"}[dataset]
    return [r for r in truth.records(dataset) if r[key] not in defects]


def expected_cells(truth: Any, name: str, day_range: tuple[date, date] | None = None) -> dict[tuple, tuple[int, int]]:
    """{(unit_level, unit_code, period): (numerator, denominator)} computed from the ground truth."""
    if name in HELD:  # synced once, now: what the source serves (without lgsp's quarantine), in the periods under way
        labels = _periods(datetime.now(VN).date()) if day_range is None else [f"{day_range[0]}..{day_range[1]}"]
        dataset, counted = HELD[name]
        defects, key = truth.defects(dataset), {"procedure": "MaTTHC", "land_parcel": "parcel_id"}[dataset]
        records = [r for r in truth.records(dataset) if r[key] not in defects]
        held: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        for record in records:
            units = [("province", "37")] + [(level, record[col]) for level, col in UNITS.get(dataset, {}).items()]
            for unit, label in ((unit, label) for unit in units for label in labels):
                held[(*unit, label)][0] += counted(record)
                held[(*unit, label)][1] += 1
        return {cell: (n, d) for cell, (n, d) in held.items()}
    dataset, field, counted, contributes = TRUTH[name]
    procedures = truth.defects("procedure")  # a dossier's level: its procedure's in the catalogue lgsp holds
    level_of = {p["MaTTHC"]: p["CapThucHien"] for p in truth.records("procedure") if p["MaTTHC"] not in procedures}
    cells: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for row in _clean_rows(truth, dataset):
        if row[field] is None or not counted(row):
            continue
        day = _local_day(row[field])
        if day_range is None:
            labels = _periods(day)
        elif day_range[0] <= day <= day_range[1]:
            labels = [f"{day_range[0]}..{day_range[1]}"]
        else:
            continue
        units = [("province", "37")] + [(level, row[col]) for level, col in UNITS[dataset].items()]
        if dataset == "dossier" and level_of.get(row["procedure_code"]) is not None:
            units.append(("procedure_level", level_of[row["procedure_code"]]))
        for (level, unit) in units:
            for label in labels:
                cell = cells[(level, unit, label)]
                cell[0] += int(contributes(row))
                cell[1] += 1
    return {k: (n, d) for k, (n, d) in cells.items()}


def _mart_cells(wh: Warehouse, name: str, period_type: str | None) -> dict[tuple, tuple[int, int]]:
    rows = read_indicator(wh, name, period_type=period_type)
    if period_type is None:
        rows = [r for r in rows if r["period_type"] != "range"]
    return {(r["unit_level"], r["unit_code"], r["period"]): (r["numerator"], r["denominator"]) for r in rows}


@pytest.fixture
def loaded(lgsp_env: Any) -> Warehouse:
    """Dossiers and documents pulled from the sandbox into a fresh warehouse, every indicator computed."""
    return pull_and_compute(lgsp_env.database_url)[1]


def test_every_indicator_matches_the_ground_truth_exactly(loaded: Warehouse, sandbox_handle: Any) -> None:
    catalog = load_catalog()
    assert set(TRUTH) | set(HELD) == set(catalog.indicators), "every catalog indicator has an independent definition"
    for name, spec in catalog.indicators.items():
        expected = expected_cells(sandbox_handle.data, name)
        mart = _mart_cells(loaded, name, None)
        assert mart == expected, name
        levels = {level for level, _, _ in mart}
        assert levels == {"province", *spec.units}, name
        for row in read_indicator(loaded, name, period_type=None):
            scale = 86400 if spec.measure == "average" else 1
            assert row["value"] == pytest.approx(row["numerator"] / row["denominator"] / scale), (name, row)
    communes = {u for lvl, u, _ in _mart_cells(loaded, "online_submission_rate", "month") if lvl == "commune"}
    assert len(communes) == 129
    years = _mart_cells(loaded, "online_submission_rate", "year")  # by the level that settles it (Binh Duong's)
    levels = {u: pair for (lvl, u, _), pair in years.items() if lvl == "procedure_level"}
    assert set(levels) == {"Tỉnh", "Xã"}, levels
    assert sum(d for _, d in levels.values()) <= sum(d for (lvl, _, _), (_, d) in years.items() if lvl == "province")


def test_quarters_and_years_are_sums_of_months(loaded: Warehouse) -> None:
    months = _mart_cells(loaded, "on_time_settlement_rate", "month")
    years = _mart_cells(loaded, "on_time_settlement_rate", "year")
    province_2025 = [v for (lvl, _, p), v in months.items() if lvl == "province" and p.startswith("2025-")]
    assert years[("province", "37", "2025")] == tuple(map(sum, zip(*province_2025)))
    quarters = _mart_cells(loaded, "on_time_settlement_rate", "quarter")
    assert {p for _, _, p in quarters} <= {"2025-Q3", "2025-Q4"} and ("province", "37", "2025-Q3") in quarters


def test_a_date_range_matches_the_ground_truth(loaded: Warehouse, sandbox_handle: Any) -> None:
    catalog = load_catalog()
    first, last = date(2025, 7, 1), date(2025, 7, 23)  # the articles' "to 2025-07-23"
    for name in ("online_submission_rate", "on_time_settlement_rate", "signed_document_rate"):
        assert compute_range(loaded, catalog.indicators[name], first, last) > 0
        mart = {k: v for k, v in _mart_cells(loaded, name, "range").items()}
        assert mart == expected_cells(sandbox_handle.data, name, (first, last)), name
    assert compute_range(loaded, catalog.indicators["online_submission_rate"], first, last) == 0  # idempotent


def test_a_state_indicator_reads_a_unit_through_a_reference(loaded: Warehouse, sandbox_handle: Any) -> None:
    """The dossiers the warehouse holds now, per their procedure's level: the table joined with the catalogue
    (`indicators.query.state_cells`); a replayed version takes its level from the catalogue as it is now
    (`Tally`'s lookups); a dossier whose procedure lgsp does not hold counts for the province only."""
    from catalog.models import IndicatorSpec, UnitVia
    from indicators import compute_indicator
    from indicators.snapshot import Tally
    from warehouse.versions import Held

    spec = IndicatorSpec(name="online_dossiers_held", version=1, name_vi="x", name_en="x", dataset="dossier",
                         as_of="period_end", units={"procedure_level": UnitVia(via="procedure_code", column="level")},
                         numerator={"channel": "online"}, reads=["dossier", "procedure"])
    assert compute_indicator(loaded, spec) > 0
    month = datetime.now(VN).strftime("%Y-%m")
    cells = {(r["unit_level"], r["unit_code"]): (r["numerator"], r["denominator"])
             for r in read_indicator(loaded, spec.name, unit_level=None, period_type="month") if r["period"] == month}
    truth = sandbox_handle.data
    level_of = {p["MaTTHC"]: p["CapThucHien"] for p in truth.records("procedure")
                if p["MaTTHC"] not in truth.defects("procedure")}
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in _clean_rows(truth, "dossier"):
        units = [("province", "37")] + ([("procedure_level", level_of[row["procedure_code"]])]
                                        if row["procedure_code"] in level_of else [])
        for unit in units:
            expected[unit][0] += row["channel"] == "online"
            expected[unit][1] += 1
    assert cells == {unit: (n, d) for unit, (n, d) in expected.items()}
    assert {u for level, u in cells if level == "procedure_level"} == {"Tỉnh", "Xã"}

    held = [Held(("d1",), {"procedure_code": "p1", "channel": "online"}, None, None, "b"),
            Held(("d2",), {"procedure_code": "p2", "channel": "paper"}, None, None, "b"),
            Held(("d3",), {"procedure_code": "gone", "channel": "online"}, None, None, "b")]
    counted = Tally(held, spec, {"procedure_level": {"p1": "Tỉnh", "p2": "Xã"}}).at(datetime.now(timezone.utc))
    assert counted == {("province", "37"): (2, 3), ("procedure_level", "Tỉnh"): (1, 1),
                       ("procedure_level", "Xã"): (0, 1)}
