"""`lgsp backup create|list|verify|restore`: the CLI of lgsp.backup (docs/deploy.md#backups).

    lgsp backup create [--to DIR] [--label L] [--keep 7]   store + lake + GX results, one consistent folder
    lgsp backup list [--json]                               the backups, newest last
    lgsp backup verify [NAME|PATH|latest]                   every file read back against its SHA-256
    lgsp backup restore NAME|PATH|latest --yes              put everything back as it was (after a safety backup)
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from lgsp import backup as backups
from lgsp.backup import Backup, BackupError

backup_app = typer.Typer(help="Back up the store, the lake and GX's results; verify and restore a backup.",
                         no_args_is_help=True)


def _console() -> Any:
    from lgsp.cli import console

    return console


def _fail(message: str) -> None:
    from lgsp.cli import fail

    fail(message)


def _root(to: str | None) -> Path:
    return Path(to).resolve() if to else backups.backup_root()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _age(created: datetime) -> str:
    hours = (datetime.now(timezone.utc) - created).total_seconds() / 3600
    if hours < 1:
        return f"{hours * 60:.0f} min ago"
    return f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.0f} d ago"


def said(made: Backup) -> str:
    """One line: what a backup holds."""
    m = made.manifest
    linked = m.get("linked", {}).get("files", 0)
    return (f"{made.path}: {m['store']['kind']} store, {len(m['store']['tables'])} tables, {made.rows:,} rows; "
            f"{made.lake_files:,} lake files ({sum(m['lake_rows'].values()):,} Parquet rows); {_size(made.bytes)}"
            + (f", {_size(m['bytes_copied'])} of it copied, {linked:,} unchanged files linked from "
               f"{m['linked']['from']}" if linked else ""))


@backup_app.command("create")
def backup_create(to: str = typer.Option(None, help="backup root (default LGSP_BACKUP_DIR or $LGSP_HOME/backups)"),
                  label: str = typer.Option(None, help="a word added to the backup's name"),
                  keep: int = typer.Option(None, help="backups kept, the newest (default LGSP_BACKUP_KEEP or 7)"),
                  check: bool = typer.Option(True, "--verify/--no-verify", help="read it back once written")) -> None:
    """Back up the store (one consistent instant), the lake and GX's results into a new folder; keep the newest."""
    try:
        made = backups.create(root=_root(to), label=label, keep=keep)
        checked = backups.verify(made) if check else None
    except BackupError as exc:
        _fail(str(exc))
        return
    console = _console()
    console.print(f"Backup: {said(made)}; took {made.manifest['took_s']:.1f} s", soft_wrap=True)
    if checked is not None and not checked.ok:
        _fail(f"the backup just written does not read back: {'; '.join(checked.problems[:5])}")
    if checked is not None:
        console.print(f"Verified: {checked.files:,} files read back against their SHA-256; the store's copy is whole")


@backup_app.command("list")
def backup_list(to: str = typer.Option(None, help="backup root (default LGSP_BACKUP_DIR or $LGSP_HOME/backups)"),
                as_json: bool = typer.Option(False, "--json", help="print the list as JSON")) -> None:
    """The backups, oldest first: when, what store, rows, lake files, size."""
    root = _root(to)
    found = backups.backups(root)
    if as_json:
        print(json.dumps([{"name": b.name, "path": str(b.path), "created_at": b.manifest["created_at"],
                           "label": b.manifest.get("label"), "store": b.manifest["store"]["kind"],
                           "tables": b.manifest["store"]["tables"], "lake_rows": b.manifest["lake_rows"],
                           "pipelines": b.manifest["pipelines"], "bytes": b.bytes} for b in found], indent=1))
        return
    console = _console()
    if not found:
        console.print(f"No backup in {root}: `lgsp backup create` makes one (the lgsp_backup DAG, daily)")
        return
    table = Table(title=f"Backups in {root}")
    for column in ("name", "created (UTC)", "age", "store", "rows", "lake files", "size"):
        table.add_column(column, justify="right" if column in ("rows", "lake files", "size") else "left")
    for b in found:
        table.add_row(b.name, f"{b.created_at:%Y-%m-%d %H:%M:%S}", _age(b.created_at), b.manifest["store"]["kind"],
                      f"{b.rows:,}", f"{b.lake_files:,}", _size(b.bytes))
    console.print(table)


@backup_app.command("restores")
def backup_restores(as_json: bool = typer.Option(False, "--json", help="print the list as JSON")) -> None:
    """Every restore into this store, oldest first: whole ones and those of one dataset (`--dataset`)."""
    from lgsp.backup_dataset import history
    from lgsp.settings import load_settings

    done = history(load_settings().database_url)
    if as_json:
        print(json.dumps(done, indent=1, default=str))
        return
    console = _console()
    if not done:
        console.print("No restore into this store")
        return
    table = Table(title="Restores into this store")
    for column in ("restored (UTC)", "backup", "what", "rows changed"):
        table.add_column(column, justify="right" if column == "rows changed" else "left")
    for r in done:
        table.add_row(f"{r['restored_at']:%Y-%m-%d %H:%M:%S}", r["backup"], r["what"],
                      "-" if r["rows_changed"] is None else f"{r['rows_changed']:,}")
    console.print(table)


@backup_app.command("verify")
def backup_verify(name: str = typer.Argument("latest", help="a backup's name or folder, or latest"),
                  to: str = typer.Option(None, help="backup root (default LGSP_BACKUP_DIR or $LGSP_HOME/backups)")
                  ) -> None:
    """Read every file of a backup back against its SHA-256 and check the store's copy; exit 1 if damaged."""
    try:
        checked = backups.verify(backups.find(name, _root(to)))
    except BackupError as exc:
        _fail(str(exc))
        return
    if not checked.ok:
        for problem in checked.problems:
            _console().print(f"[red]damaged:[/] {problem}", soft_wrap=True)
        _fail(f"backup {checked.backup.path} is damaged ({len(checked.problems)} problem(s)): restore another "
              "(`lgsp backup list`)")
    _console().print(f"Verified: {said(checked.backup)}; {checked.files:,} files as written", soft_wrap=True)


@backup_app.command("restore")
def backup_restore(name: str = typer.Argument(..., help="a backup's name or folder, or latest"),
                   to: str = typer.Option(None, help="backup root (default LGSP_BACKUP_DIR or $LGSP_HOME/backups)"),
                   yes: bool = typer.Option(False, "--yes", help="really replace the store and the lake"),
                   safety: bool = typer.Option(True, "--safety-backup/--no-safety-backup",
                                               help="back up the current state first (label before-restore)"),
                   dataset: str = typer.Option(None, help="only this dataset's table, as a write the change feed "
                                                          "tells (the rest untouched; the gateway may run)")) -> None:
    """Put the store, the lake and GX's results back as they were in a backup; pipelines then resume from its
    cursors. Stop `lgsp serve` and pause the DAGs first. With --dataset: only that dataset's table."""
    root = _root(to)
    try:
        chosen = backups.find(name, root)
    except BackupError as exc:
        _fail(str(exc))
        return
    console = _console()
    if dataset is not None:
        _restore_dataset(console, chosen, dataset, yes)
        return
    if not yes:
        _fail(f"a restore replaces this lgsp's store and lake with {chosen.name} "
              f"({chosen.manifest['created_at']}): run again with --yes")
    try:
        done = backups.restore(chosen, safety=safety, root=root)
    except BackupError as exc:
        _fail(str(exc))
        return
    console.print(f"Restored {chosen.name}: {done.tables} tables, {done.rows:,} rows, {done.lake_files:,} lake files "
                  f"in {done.took_s:.1f} s", soft_wrap=True)
    if done.safety is not None:
        console.print(f"The state before it: {done.safety.path} (`lgsp backup restore {done.safety.name} --yes` "
                      "goes back)", soft_wrap=True)
    pipelines = chosen.manifest["pipelines"]
    if pipelines:
        console.print("Each pipeline resumes from its cursor in the backup; its next sync pulls again what changed "
                      "since and merges it without duplicates:")
        for pipeline, point in sorted(pipelines.items()):
            console.print(f"  {pipeline}: cursor {point['cursor'] or '-'}, last complete sync "
                          f"{point['synced_at'] or '-'}")
    if done.changes_to >= done.changes_from:
        console.print(f"Agencies' change-feed tokens after change {done.changes_from - 1} name writes the restore "
                      "undid: the gateway answers them 410 (read afresh; `lgsp mirror` does)", soft_wrap=True)
    console.print("Next: start `lgsp serve` again, unpause the DAGs (or `lgsp run PIPELINE`); `lgsp status` says "
                  "what is behind", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")


def _restore_dataset(console: Any, chosen: Any, dataset: str, yes: bool) -> None:
    from lgsp.backup_dataset import restore_dataset

    if not yes:
        _fail(f"this puts {dataset}'s table back as {chosen.name} holds it ({chosen.manifest['created_at']}): rows "
              "written or changed since are undone; run again with --yes")
    try:
        done = restore_dataset(chosen, dataset)
    except BackupError as exc:
        _fail(str(exc))
        return
    console.print(f"Restored {dataset} from {chosen.name}: {done.rows:,} rows as the backup holds them; "
                  f"{done.written:,} written, {done.deleted:,} deleted ({done.records_gone:,} records gone), "
                  f"as write {done.restore_id} (the change feed tells agencies' copies) in {done.took_s:.1f} s",
                  soft_wrap=True)
    for pipeline, cursor in sorted(done.cursors.items()):
        if cursor["backup"] and cursor["backup"] != cursor["now"]:
            console.print(f"  {pipeline}: its cursor stays at {cursor['now'] or '-'}; what the source changed since "
                          f"the backup is pulled again by `lgsp run {pipeline} --since {cursor['backup']}`",
                          soft_wrap=True)
