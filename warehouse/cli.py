"""`lgsp warehouse ...`: bring core tables to their changed definitions (warehouse.migrate).

    lgsp warehouse plan [DATASET ...]                       what differs between each table and its definition
    lgsp warehouse migrate [DATASET ...] [--drop-previous]  rebuild the tables that differ, in one transaction each
    lgsp warehouse migrations                               the migrations made (lgsp_migration)
"""
from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True,
                  help="Bring core tables to their datasets' changed definitions: plan, migrate, migrations.")
console = Console(highlight=False, emoji=False)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _open(datasets: list[str] | None) -> tuple[Any, Any, list[str]]:
    """(catalog, warehouse, the core datasets named or all); tables created, shapes not checked."""
    from catalog import load_catalog
    from lgsp.settings import load_settings
    from warehouse.store import Warehouse

    catalog = load_catalog()
    core = [n for n, ds in catalog.datasets.items() if ds.layer == "core"]
    unknown = [n for n in datasets or [] if n not in core]
    if unknown:
        _fail(f"not a core dataset of catalog/datasets.yaml: {', '.join(unknown)} (known: {', '.join(core)})")
    warehouse = Warehouse(load_settings().database_url, catalog)
    warehouse.create_all(check_shapes=False)
    return catalog, warehouse, list(datasets or core)


@app.command("plan")
def plan_command(datasets: list[str] = typer.Argument(None, help="core datasets (default: all)")) -> None:
    """Say what differs between each core table and its dataset's definition, and what `migrate` would do.

    Exits 1 when a table must be migrated before it can be loaded again (write mode, key or a type changed).
    """
    from warehouse.migrate import plan

    catalog, warehouse, names = _open(datasets)
    plans = plan(warehouse, catalog, names)
    for p in plans:
        if not p.steps:
            console.print(f"{p.dataset} ({p.table}, {p.rows} rows): up to date")
            continue
        verdict = ("[bold red]must migrate before the next load[/]" if p.blocking else
                   "migrate to apply" if p.needed else "nothing to migrate")
        console.print(f"{p.dataset} ({p.table}, {p.rows} rows): {verdict}")
        for step in p.steps:
            console.print(f"  - {step.text}")
    if any(p.blocking for p in plans):
        console.print("run `lgsp warehouse migrate` (the tables as they were are kept as <table>__before_<time>)")
        raise typer.Exit(1)


@app.command("migrate")
def migrate_command(datasets: list[str] = typer.Argument(None, help="core datasets (default: every one that differs)"),
                    drop_previous: bool = typer.Option(False, help="drop each table as it was instead of keeping it"),
                    quarantine_failing: bool = typer.Option(
                        False, help="move rows a row rule rejects to the quarantine instead of refusing")) -> None:
    """Rebuild each table that differs from its definition, one transaction per table.

    Values move as a load of the same records would put them, and every row is checked by the
    row rules again; a table whose rows do not fit (a value that does not convert, a required
    column with no value, a row a rule rejects) is left as it was, with the reason, and the
    command exits 1 (`--quarantine-failing`: the rejected rows go to the quarantine instead).
    """
    from warehouse.migrate import MigrationError, migrate_dataset

    catalog, warehouse, names = _open(datasets)
    failed = False
    for name in names:
        try:
            done = migrate_dataset(warehouse, catalog, name, drop_previous=drop_previous,
                                   quarantine_failing=quarantine_failing)
        except MigrationError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            failed = True
            continue
        if done is None:
            if datasets:
                console.print(f"{name}: up to date, nothing to migrate")
            continue
        kept = f"; the table as it was is kept as {done.previous_table}" if done.previous_table else ""
        console.print(f"{name}: migrated {done.rows_before} -> {done.rows_after} rows, {done.rows_changed} changed "
                      f"(change {done.migration_id}) in {done.seconds:.1f}s{kept}")
        for text in done.steps:
            console.print(f"  - {text}")
        if done.quarantined:
            console.print(f"  - {done.quarantined} row(s) a row rule rejects moved to the quarantine (`lgsp "
                          f"quarantine list --dataset {name}`; `lgsp quarantine replay` lands them once they pass)")
        _conform_lake(catalog, name)
        if done.retyped_shared:
            _reload_gateway(done.retyped_shared)
        _index_scopes(warehouse, catalog, name)  # after the reload: the workers get the new catalog first
    if failed:
        raise typer.Exit(1)


def _index_scopes(warehouse: Any, catalog: Any, name: str) -> None:
    """The new table indexed on the columns the gateway's scoped grants name (the old one's index stayed with it)."""
    import sqlalchemy as sa

    from gateway.agencies import AgencyRegistry

    if sa.inspect(warehouse.engine).has_table("gateway_grant"):
        for (_, column), seconds in AgencyRegistry(warehouse.engine, catalog).index_scopes(name).items():
            console.print(f"  - indexed by {column} again for the gateway's scoped grants ({seconds:.1f}s)")


def _reload_gateway(columns: list[str]) -> None:
    """A shared column's type changed: a running gateway must read the catalog and prepare its statements again."""
    from gateway.serving import pid_file, reload_running

    why = (f"the type of shared column(s) {', '.join(columns)} changed, and a gateway reads the catalog, and "
           "prepares its statements, as they were when its workers started")
    pid = reload_running()
    if pid is not None:
        console.print(f"  - told the running gateway (pid {pid}) to reload (SIGHUP): {why}; its workers are "
                      "replaced one by one, serving throughout")
    else:
        console.print(f"[bold yellow]reload `lgsp serve` now[/] (kill -HUP its pid, in {pid_file()} on its "
                      f"machine, or restart it): {why}")


def _conform_lake(catalog: Any, name: str) -> None:
    """After a table's migration, the dataset's lake files too (`lgsp lake conform`); a refusal is told, not
    raised: the table is migrated, and the files keep their old shape until the command is run again."""
    from lgsp.settings import load_settings
    from warehouse.conform import conform_lake
    from warehouse.lake import Lake

    lake = Lake(load_settings().lake_root)
    if name not in lake.datasets():
        return
    try:
        done = conform_lake(lake, catalog.datasets[name])
    except (OSError, ValueError) as exc:
        console.print(f"[bold yellow]the lake's files were left as they were:[/] {exc}")
        return
    if done.files:
        console.print(f"  - the lake: {done.files} file(s) in {done.partitions} partition(s) rewritten in the declared "
                      f"shape ({done.rows} rows)")


@app.command("migrations")
def migrations_command(dataset: str = typer.Argument(None, help="one dataset (default: all)")) -> None:
    """The migrations made, newest first."""
    import sqlalchemy as sa

    _, warehouse, _ = _open([dataset] if dataset else None)
    t = warehouse.system["lgsp_migration"]
    query = sa.select(t).order_by(t.c.applied_at.desc())
    if dataset:
        query = query.where(t.c.dataset == dataset)
    with warehouse.engine.connect() as conn:
        found = conn.execute(query).all()
    for row in found:
        console.print(f"{row.applied_at:%Y-%m-%d %H:%M} {row.dataset}: {row.rows_before} -> {row.rows_after} rows, "
                      f"{row.rows_changed} changed ({row.migration_id}); as it was: "
                      + (f"{row.previous_table} (dropped {row.previous_dropped_at:%Y-%m-%d} by retention)"
                         if row.previous_dropped_at else row.previous_table or "dropped"))
        for text in json.loads(row.steps):
            console.print(f"  - {text}")
    if not found:
        console.print("no migration yet")
