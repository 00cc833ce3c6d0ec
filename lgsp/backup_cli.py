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
    for column in ("restored (UTC)", "backup", "what", "by", "rows changed"):
        table.add_column(column, justify="right" if column == "rows changed" else "left")
    for r in done:
        what = r["what"] if not r["where"] else f"{r['what']} {_where_said(r['where'])}"
        table.add_row(f"{r['restored_at']:%Y-%m-%d %H:%M:%S}", r["backup"], what, r["restored_by"] or "-",
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
                                                          "tells (the rest untouched; the gateway may run)"),
                   where: list[str] = typer.Option([], help="with --dataset: only the records whose COLUMN holds one "
                                                            "of the values, in the backup or now: COLUMN=V1,V2 or "
                                                            "COLUMN=@FILE (one a line); repeat: every column"),
                   dry_run: bool = typer.Option(False, "--dry-run", help="with --dataset: say what would change, "
                                                                         "change nothing")) -> None:
    """Put the store, the lake and GX's results back as they were in a backup; pipelines then resume from its
    cursors. Stop `lgsp serve` and pause the DAGs first. With --dataset: only that dataset's table (with --where:
    only some of its records)."""
    root = _root(to)
    try:
        chosen = backups.find(name, root)
    except BackupError as exc:
        _fail(str(exc))
        return
    console = _console()
    if dataset is not None:
        _restore_dataset(console, chosen, dataset, yes, where, dry_run)
        return
    if where or dry_run:
        _fail("--where and --dry-run go with --dataset D: a whole restore puts back everything")
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


def _say_differences(console: Any, differences: dict[str, Any] | None) -> None:
    """Of the rows written: the columns that differed here and in how many rows, those missing here, examples."""
    if not differences or not (differences["columns"] or differences["missing_here"]):
        return
    columns = ", ".join(f"{c} {n:,}" for c, n in sorted(differences["columns"].items(), key=lambda i: -i[1]))
    console.print(f"  rows held differently here, by column: {columns or '-'}; rows missing here: "
                  f"{differences['missing_here']:,}", soft_wrap=True)
    for example in differences["examples"]:
        key = ", ".join(f"{k}={v}" for k, v in example["key"].items())
        console.print(f"    {key}: {', '.join(example['columns']) or 'its lineage only (_row_hash)'}", soft_wrap=True)


def _where_said(where: dict[str, list[Any]]) -> str:
    """`with commune_code in 25210, 25213 and ...` (at most 5 values a column shown)."""
    def values(listed: list[Any]) -> str:
        return ", ".join(map(str, listed[:5])) + (f" and {len(listed) - 5:,} more" if len(listed) > 5 else "")
    return "with " + " and ".join(f"{column} in {values(listed)}" for column, listed in where.items())


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")


def _restore_dataset(console: Any, chosen: Any, dataset: str, yes: bool, where: list[str], dry_run: bool) -> None:
    from lgsp.backup_dataset import parse_where, restore_dataset

    try:
        scope = parse_where(where)
    except BackupError as exc:
        _fail(str(exc))
        return
    records = f"the records of {dataset} {_where_said(scope)}" if scope else f"{dataset}'s table"
    if not yes and not dry_run:
        _fail(f"this puts {records} back as {chosen.name} holds {'them' if scope else 'it'} "
              f"({chosen.manifest['created_at']}): rows "
              "written or changed since are undone; `--dry-run` says what would change; run again with --yes")
    try:
        done = restore_dataset(chosen, dataset, where=scope, dry_run=dry_run)
    except BackupError as exc:
        _fail(str(exc))
        return
    named = "" if done.where is None else \
        f"{done.records_in_scope:,} record{'' if done.records_in_scope == 1 else 's'} {_where_said(done.where)}: "
    if done.dry_run:
        console.print(f"Dry run, nothing changed: restoring {dataset} from {chosen.name} would give {named}"
                      f"{done.rows:,} rows as the backup holds them; {done.written:,} written, {done.deleted:,} "
                      f"deleted ({done.records_gone:,} records gone). `--yes` without `--dry-run` does it",
                      soft_wrap=True)
        _say_differences(console, done.differences)
        return
    console.print(f"Restored {dataset} from {chosen.name}: {named}{done.rows:,} rows as the backup holds them; "
                  f"{done.written:,} written, {done.deleted:,} deleted ({done.records_gone:,} records gone), "
                  f"as write {done.restore_id} (the change feed tells agencies' copies) in {done.took_s:.1f} s",
                  soft_wrap=True)
    _say_differences(console, done.differences)
    for pipeline, cursor in sorted(done.cursors.items()):
        if cursor["backup"] and cursor["backup"] != cursor["now"]:
            console.print(f"  {pipeline}: its cursor stays at {cursor['now'] or '-'}; what the source changed since "
                          f"the backup is pulled again by `lgsp run {pipeline} --since {cursor['backup']}`",
                          soft_wrap=True)
