"""`lgsp indicators ...`: compute, list, export, dashboard and rank (a typer sub-app of the `lgsp` CLI).

    lgsp indicators compute [NAME] [--full] [--from 2025-07-01 --to 2025-07-23]
    lgsp indicators list [NAME] [--level commune] [--period-type month] [--version 1]
    lgsp indicators export [--folder var/open_data]
    lgsp indicators dashboard [--output var/dashboard/index.html]
    lgsp indicators rank [RANKING] [--period 2025]
"""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Service-quality indicators: compute, list, export, dashboard, rank.")
console = Console(highlight=False, emoji=False)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _open() -> tuple[Any, Any, Any]:
    """(catalog, warehouse, settings), the warehouse's tables created."""
    from catalog import load_catalog
    from lgsp.runner import open_warehouse
    from lgsp.settings import load_settings

    catalog, settings = load_catalog(), load_settings()
    return catalog, open_warehouse(catalog, settings), settings


def _specs(catalog: Any, name: str | None) -> list[Any]:
    if name is None:
        return list(catalog.indicators.values())
    if name not in catalog.indicators:
        _fail(f"no indicator named '{name}' in catalog/indicators.yaml (known: {', '.join(catalog.indicators)})")
    return [catalog.indicators[name]]


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        _fail(f"{option} {text!r} is not a date; use YYYY-MM-DD, e.g. {option} 2025-07-01")
    return None


def default_dashboard_path(settings: Any) -> Path:
    """`$LGSP_HOME/dashboard/index.html`."""
    return Path(settings.home) / "dashboard" / "index.html"


def default_open_data_folder(settings: Any) -> Path:
    """`$LGSP_HOME/open_data/`."""
    return Path(settings.home) / "open_data"


@app.command("compute")
def compute(name: str = typer.Argument(None, help="one indicator (default: all)"),
            full: bool = typer.Option(False, "--full", help="every month, not only those new rows touch (an "
                                      "indicator of the state at each period's end: its ended periods too)"),
            first: str = typer.Option(None, "--from", help="also compute a date range from this day (YYYY-MM-DD)"),
            last: str = typer.Option(None, "--to", help="... to this day, included")) -> None:
    """Recompute indicators into the mart (idempotent: unchanged values are not rewritten)."""
    from indicators import IndicatorVersionError, compute_indicator, compute_range, compute_touched

    catalog, wh, _ = _open()
    start, end = _day(first, "--from"), _day(last, "--to")
    if (start is None) != (end is None):
        _fail("give both --from and --to (a date range, both days included)")
    for spec in _specs(catalog, name):
        try:
            if start and end:
                written = compute_range(wh, spec, start, end)
                console.print(f"{spec.name} v{spec.version}: {start}..{end}: {written} row(s) written")
                continue
            if full:
                written = compute_indicator(wh, spec, recount=True)
                console.print(f"{spec.name} v{spec.version}: every month: {written} row(s) written")
                continue
            result = compute_touched(wh, spec)
            months = result["months"] if isinstance(result["months"], str) else ", ".join(result["months"]) or "none"
            console.print(f"{spec.name} v{spec.version}: months {months}: {result['written']} row(s) written")
        except IndicatorVersionError as exc:
            _fail(str(exc))


@app.command("list")
def list_values(name: str = typer.Argument(None, help="one indicator's values (default: a summary of all)"),
                level: str = typer.Option("province", help="province, commune, agency, procedure or procedure_level"),
                period_type: str = typer.Option("month", help="month, quarter, year or range"),
                version: int = typer.Option(None, help="an older version (default: the latest computed)")) -> None:
    """Show indicator values: a summary of every indicator, or one indicator's rows."""
    from indicators import read_indicator
    from indicators.ranking import unit_names
    from indicators.summary import format_value, print_indicators

    catalog, wh, _ = _open()
    if name is None:
        print_indicators(console, wh, catalog)
        return
    spec = _specs(catalog, name)[0]
    rows = read_indicator(wh, spec.name, version=version, unit_level=level, period_type=period_type)
    if not rows:
        _fail(f"no values for {name} ({level}, {period_type}); run `lgsp indicators compute {name}` first")
    names = unit_names(wh, level)
    table = Table(title=f"{spec.name_en} ({spec.name_vi}), v{rows[0]['version']}, {level} per {period_type}")
    for column in ("period", "unit", "name", "numerator", "denominator", "value", "computed at"):
        table.add_column(column, justify="right" if column in ("numerator", "denominator", "value") else "left")
    for r in rows:
        table.add_row(r["period"], r["unit_code"], names.get(r["unit_code"], ""), f"{r['numerator']:,}",
                      f"{r['denominator']:,}", format_value(spec, r["value"]), str(r["computed_at"])[:19])
    console.print(table)


@app.command("export")
def export(folder: Path = typer.Option(None, help="where to write (default: $LGSP_HOME/open_data)")) -> None:
    """Write the open-data files: CSV, Parquet, JSON, the definitions and a datapackage.json."""
    from indicators.dashboard import SYNTHETIC_NOTE
    from indicators.open_data import export_open_data

    catalog, wh, settings = _open()
    paths = export_open_data(wh, catalog, folder or default_open_data_folder(settings), note=SYNTHETIC_NOTE)
    for kind, path in paths.items():
        console.print(f"{kind:12} {path}")


@app.command("dashboard")
def dashboard(output: Path = typer.Option(None, help="the HTML file (default: $LGSP_HOME/dashboard/index.html)"),
              ) -> None:
    """Write the operations dashboard: one static HTML file with charts, opened from disk (no server)."""
    from indicators.dashboard import write_dashboard

    catalog, wh, settings = _open()
    path = write_dashboard(wh, catalog, output or default_dashboard_path(settings))
    console.print(f"dashboard: {path} (open it in a browser: file://{path.resolve()})")


@app.command("rank")
def rank(name: str = typer.Argument(None, help="a ranking of catalog/rankings.yaml (default: all)"),
         period: str = typer.Option(None, help="e.g. 2025 (default: the latest)"),
         top: int = typer.Option(20, help="rows to show")) -> None:
    """Rank units by their composite score (weights in catalog/rankings.yaml)."""
    from indicators.ranking import rank_units

    catalog, wh, _ = _open()
    if name is not None and name not in catalog.rankings:
        _fail(f"no ranking named '{name}' in catalog/rankings.yaml (known: {', '.join(catalog.rankings)})")
    for ranking in [catalog.rankings[name]] if name else catalog.rankings.values():
        ranked = rank_units(wh, catalog, ranking, period)
        weights = ", ".join(f"{k} {v:g}" for k, v in ranking.weights.items())
        table = Table(title=f"{ranking.title_en} ({ranking.title_vi}), {ranked[0]['period'] if ranked else '-'}",
                      caption=f"weights: {weights}; {len(ranked)} units ranked")
        for column in ("rank", "unit", "name", "score"):
            table.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for r in ranked[:top]:
            table.add_row(str(r["rank"]), r["unit_code"], r["unit_name"], f"{r['score']:.2f}")
        console.print(table)


def publish(wh: Any, catalog: Any, settings: Any) -> dict[str, Path]:
    """What `lgsp demo` writes after the indicators: the dashboard and the open-data files under $LGSP_HOME."""
    from indicators.dashboard import SYNTHETIC_NOTE, write_dashboard
    from indicators.open_data import export_open_data

    exports = export_open_data(wh, catalog, default_open_data_folder(settings), note=SYNTHETIC_NOTE)
    return {"dashboard": write_dashboard(wh, catalog, default_dashboard_path(settings)),
            "open data": exports["datapackage"].parent}
