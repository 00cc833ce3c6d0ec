"""What the demo and `lgsp indicators list` print: every indicator's province figures, then a unit ranking."""
from __future__ import annotations

from typing import Any

from rich.console import Console

from catalog import Catalog
from catalog.models import IndicatorSpec
from indicators.compute import read_indicator
from indicators.periods import previous_period
from warehouse import Warehouse


def format_value(spec: IndicatorSpec, value: float | None) -> str:
    """``'77.9%'`` for a rate, ``'4.2 days'`` for an average, ``'-'`` when there is no value."""
    if value is None:
        return "-"
    return f"{value:.1%}" if spec.measure == "rate" else f"{value:.1f} {spec.value_unit}"


def province_figures(wh: Warehouse, spec: IndicatorSpec) -> dict[str, Any]:
    """The province's latest month, the month before it, and the latest quarter and year of one indicator."""
    figures: dict[str, Any] = {"indicator": spec.name}
    for period_type in ("month", "quarter", "year"):
        rows = read_indicator(wh, spec.name, version=spec.version, unit_level="province", period_type=period_type)
        by_period = {r["period"]: r for r in rows}
        latest = max(by_period) if by_period else None
        figures[period_type] = by_period.get(latest) if latest else None
        if period_type == "month" and latest:
            figures["previous_month"] = by_period.get(previous_period(latest) or "")
    return figures


def _figure(spec: IndicatorSpec, row: dict[str, Any] | None, with_counts: bool = False) -> str:
    if row is None:
        return "-"
    text = f"{row['period']} {format_value(spec, row['value'])}"
    return f"{text} ({row['numerator']:,}/{row['denominator']:,})" if with_counts else text


def _by_level(wh: Warehouse, spec: IndicatorSpec, year: dict[str, Any] | None) -> str:
    """The year's figure per procedure level (Tỉnh, Xã: Binh Duong's online rate by level), when it has them."""
    if "procedure_level" not in spec.units or year is None:
        return ""
    rows = [r for r in read_indicator(wh, spec.name, version=spec.version, unit_level="procedure_level",
                                      period_type="year") if r["period"] == year["period"]]
    levels = ", ".join(f"{r['unit_code']} {format_value(spec, r['value'])}" for r in rows)
    return f"; by procedure level {levels}" if levels else ""


def print_indicators(console: Console, wh: Warehouse, catalog: Catalog) -> None:
    """One line per indicator: the latest month against the previous one, the latest quarter, the year (and the
    year per procedure level)."""
    console.print("[bold]Indicators, province by month[/] (latest; previous), quarter, year "
                  "(numerator/denominator); synthetic sandbox data:")
    for spec in catalog.indicators.values():
        figures = province_figures(wh, spec)
        previous = figures.get("previous_month")
        console.print(f"  [bold]{spec.name_en}[/] (v{spec.version}): {_figure(spec, figures['month'])}"
                      f" (previous {format_value(spec, previous['value']) if previous else '-'}); "
                      f"{_figure(spec, figures['quarter'])}; {_figure(spec, figures['year'], with_counts=True)}"
                      f"{_by_level(wh, spec, figures['year'])}")
    console.print("  [dim]details: lgsp indicators list NAME --level commune; rankings: lgsp indicators rank[/]")
