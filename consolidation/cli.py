"""``lgsp merger``: run the province-merger consolidation, write its report, list the commune mapping.

    lgsp merger run [--sandbox]     pull the three legacy systems, consolidate, write merger_* + the HTML report
    lgsp merger report              rewrite the HTML report from the warehouse
    lgsp merger communes            the old communes and where they went (--status split|dissolved|mapped)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from consolidation.report import RECONCILIATION_COLUMNS

merger_app = typer.Typer(help="The province-merger consolidation (Ninh Binh, Nam Dinh, Ha Nam -> new Ninh Binh).",
                         no_args_is_help=True)
console = Console(highlight=False, emoji=False)


def _report_path(output: Path | None) -> Path:
    from lgsp.settings import load_settings

    return output or load_settings().home / "reports" / "merger.html"


def _print_reconciliation(rows: list[dict[str, object]]) -> None:
    table = Table(title="Reconciliation per legacy system")
    for header in ("system", "entity", "in", "mapped", "by names", "consolidated", "merged", "conflicts", "review",
                   "balanced"):
        table.add_column(header, justify="left" if header in ("system", "entity") else "right")
    for row in rows:
        cells = [str(row[c]) for c in RECONCILIATION_COLUMNS]
        table.add_row(cells[0].removeprefix("legacy_"), *cells[1:])
    console.print(table)


@merger_app.command("run")
def merger_run(sandbox: bool = typer.Option(False, help="serve the legacy sandbox in this process and read it"),
               seed: int = typer.Option(37, help="legacy sandbox seed (with --sandbox)"),
               citizens: int = typer.Option(400, help="own citizens per legacy system (with --sandbox)"),
               enterprises: int = typer.Option(150, help="own enterprises per legacy system (with --sandbox)"),
               dossiers: int = typer.Option(600, help="dossiers per legacy system (with --sandbox)"),
               output: Path = typer.Option(None, help="HTML report path (default: $LGSP_HOME/reports/merger.html)")
               ) -> None:
    """Pull, remap, match, resolve; write merger_* tables and the HTML report; print the reconciliation."""
    from connectors import ConnectorError
    from consolidation.pipeline import run_merger
    from consolidation.report import write_report
    from lgsp.settings import load_settings

    handle = None
    if sandbox:
        from sandbox.legacy import start_legacy_sandbox

        handle = start_legacy_sandbox(seed=seed, citizens=citizens, enterprises=enterprises, dossiers=dossiers)
        os.environ.update(handle.env())
    started = time.perf_counter()
    try:
        outcome = run_merger()
    except (ConnectorError, RuntimeError, ValueError) as exc:
        console.print(f"[bold red]error:[/] consolidation failed, nothing written: {exc}")
        raise typer.Exit(1) from None
    finally:
        if handle is not None:
            handle.stop()
    _print_reconciliation(outcome.reconciliation)
    totals = outcome.totals()
    console.print(f"run {outcome.run_id}: {totals['records_in']} records in, {totals['consolidated']} consolidated, "
                  f"{totals['in_review']} in review; {outcome.changed_rows()} warehouse rows changed "
                  f"({time.perf_counter() - started:.1f}s)")
    path = write_report(load_settings().database_url, _report_path(output))
    console.print(f"report: {path}")
    if not all(r["balanced"] for r in outcome.reconciliation):
        raise typer.Exit(1)


@merger_app.command("report")
def merger_report(output: Path = typer.Option(None, help="HTML report path (default: $LGSP_HOME/reports/merger.html)")
                  ) -> None:
    """Rewrite the HTML reconciliation report from the warehouse and print its path."""
    from consolidation.report import write_report
    from lgsp.settings import load_settings

    try:
        path = write_report(load_settings().database_url, _report_path(output))
    except LookupError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"report: {path}")


@merger_app.command("communes")
def merger_communes(status: str = typer.Option(None, help="only this status: mapped, split, dissolved, unjoined")
                    ) -> None:
    """The old communes of the three former provinces and the new commune each went into (or why not)."""
    from consolidation.mapping import STATUSES, commune_table

    if status is not None and status not in STATUSES:
        console.print(f"[bold red]error:[/] --status must be one of {', '.join(STATUSES)}, got {status!r}")
        raise typer.Exit(2)
    table = Table(title="Old communes -> new Ninh Binh")
    for column in ("province", "district", "commune", "status", "new commune", "reason"):
        table.add_column(column)
    rows = [m for m in commune_table().mappings.values() if status in (None, m.status)]
    for m in sorted(rows, key=lambda m: m.old.key):
        table.add_row(m.old.province_name, m.old.district_name, m.old.commune_name, m.status,
                      f"{m.new_name} ({m.new_code})" if m.new_code else "-", m.reason)
    console.print(table)
    console.print(f"{len(rows)} old communes; {len(commune_table().new_communes)} official new communes")
