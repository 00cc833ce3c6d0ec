"""Benchmark: what `lgsp backup create|verify|restore` (lgsp.backup) costs on a warehouse of N citizens.

Fills a fresh warehouse (PostgreSQL by default; `--sqlite` for the embedded one) with N synthetic
citizens (benchmarks/migrate.py's) and the lake with the same rows as Parquet batches of 50,000, then
times, against the floors of the same work with the tools alone:

  floor_store    PostgreSQL: `pg_dump --format=custom` of the database alone; SQLite: a copy of the file
  floor_lake     a plain copy of the lake's files (shutil.copyfile), no hashing
  create         `lgsp backup create`: the store in one snapshot, its row counts, the lake with every
                 file's SHA-256, the manifest
  verify         every file read back against its SHA-256, and the store's copy checked
                 (SQLite: integrity_check and row counts; PostgreSQL: `pg_restore --list`)
  floor_restore  PostgreSQL: `pg_restore --single-transaction` into an empty database; SQLite: a file copy
  restore        `lgsp backup restore` (without the safety backup): verify, the store put back in one
                 transaction, the lake's folders swapped, the restore recorded
  create_again   the next night's backup, after a batch of 1% more rows landed: the store again, the new
                 file copied, every unchanged lake file hard-linked from the previous backup
  restore_dataset  `lgsp backup restore --dataset citizen` after 1% of the citizens changed in the store:
                 the backup verified, the table's rows staged from it and compared, the changed rows put back
                 as a write the change feed tells
  restore_commune  `... --dataset citizen --where commune_code=C` after every citizen of commune C (1/129 of
                 them) changed: the same staging, then only that commune's records compared and put back
  restore_keys   `... --where personal_id=@FILE` of 1,000 changed citizens' keys

Prints a table and, as the last line, the figures as JSON.

    .venv/bin/python benchmarks/backup.py --rows 1000000 [--sqlite]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway_load import (  # noqa: E402
    _drop_postgres_database,
    _postgres_database,
    add_database_options,
    ratio,
    scratch_warehouse,
)
from migrate import chunk, fill, fill_lake  # noqa: E402

from catalog import load_catalog  # noqa: E402
from lgsp import backup  # noqa: E402
from lgsp.settings import load_settings  # noqa: E402
from warehouse import Lake  # noqa: E402


def _timed(run: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def _copy_files(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(source).parts):
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / path.relative_to(source))


def _floor_store(url: str, scratch: Path) -> float:
    if url.startswith("sqlite"):
        return _timed(lambda: shutil.copyfile(backup._sqlite_path(url), scratch / "floor.db"))[0]
    conninfo, env = backup._pg_conninfo(url)
    command = [backup._pg_tool("pg_dump"), "--format=custom", f"--file={scratch / 'floor.pgdump'}",
               f"--dbname={conninfo}"]
    return _timed(lambda: subprocess.run(command, env=env, check=True))[0]


def _floor_restore(args: argparse.Namespace, made: backup.Backup, scratch: Path) -> float:
    if args.sqlite:
        return _timed(lambda: shutil.copyfile(made.path / "store.sqlite", scratch / "restored.db"))[0]
    url = _postgres_database(args.admin_url)
    try:
        conninfo, env = backup._pg_conninfo(url)
        command = [backup._pg_tool("pg_restore"), "--no-owner", "--single-transaction", "--exit-on-error",
                   f"--dbname={conninfo}", str(made.path / "store.pgdump")]
        return _timed(lambda: subprocess.run(command, env=env, check=True))[0]
    finally:
        _drop_postgres_database(args.admin_url, url)


def _spoil(url: str, which: Any) -> list[str]:
    """Change the citizens `which(table)` picks, as a bad load would; their keys."""
    from warehouse import Warehouse

    wh = Warehouse(url, load_catalog())
    table = wh.core["citizen"]
    try:
        with wh.transaction() as conn:
            return list(conn.execute(table.update().where(which(table)).values(
                full_name=table.c.full_name + " (sai)", _row_hash=table.c._row_hash + 1)
                .returning(table.c.personal_id)).scalars())
    finally:
        wh.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_database_options(parser)
    args = parser.parse_args()
    figures: dict[str, Any] = {"database": "sqlite" if args.sqlite else "postgresql", "rows": args.rows}
    with scratch_warehouse(args, "lgsp-bench-backup-") as (url, home):
        os.environ.update({"LGSP_HOME": str(home), "LGSP_DATABASE_URL": url})
        os.environ.pop("LGSP_LAKE", None)
        settings = load_settings()
        print(f"==> {args.rows:,} citizens into {figures['database']} and the lake", flush=True)
        fill(url, load_catalog(), args.rows)
        fill_lake(Lake(settings.lake_root), args.rows)
        root, scratch = home / "backups", Path(tempfile.mkdtemp(prefix="lgsp-bench-floor-", dir=home))
        seconds: dict[str, float] = {}
        seconds["floor_store"] = _floor_store(url, scratch)
        seconds["floor_lake"] = _timed(lambda: _copy_files(settings.lake_root / "raw", scratch / "raw"))[0]
        seconds["create"], made = _timed(lambda: backup.create(settings, root, keep=0))
        seconds["verify"], checked = _timed(lambda: backup.verify(made))
        assert checked.ok, checked.problems
        assert made.manifest["store"]["tables"]["core_citizen"] == args.rows
        assert made.manifest["lake_rows"]["citizen"] == args.rows
        seconds["floor_restore"] = _floor_restore(args, made, scratch)
        seconds["restore"], done = _timed(lambda: backup.restore(made, settings, safety=False, root=root))
        assert done.rows == made.rows
        figures["backup_bytes"] = made.bytes
        figures["store_bytes"] = made.manifest["files"][made.manifest["store"]["file"]][0]
        Lake(settings.lake_root).write_parquet(chunk(args.rows, max(args.rows // 100, 1)), "citizen",
                                               date(2025, 8, 3), "bench-next")
        seconds["create_again"], again = _timed(lambda: backup.create(settings, root, keep=0))
        figures["again_bytes_copied"] = again.manifest["bytes_copied"]
        figures["again_files_linked"] = again.manifest["linked"]["files"]
        changed = max(args.rows // 100, 1)
        # 1% of the citizens changed since the backup (as a bad load would)
        _spoil(url, lambda t: t.c.personal_id.in_(sa.select(t.c.personal_id).order_by(t.c.personal_id)
                                                  .limit(changed).scalar_subquery()))
        from lgsp.backup_dataset import parse_where, restore_dataset
        from quality.reference import province_communes

        seconds["restore_dataset"], put_back = _timed(lambda: restore_dataset(made, "citizen"))
        assert (put_back.written, put_back.deleted) == (changed, 0), put_back
        figures["restore_dataset_written"] = put_back.written
        commune = min(province_communes(37))
        _spoil(url, lambda t: t.c.commune_code == commune)
        seconds["restore_commune"], put_back = _timed(
            lambda: restore_dataset(made, "citizen", where={"commune_code": [commune]}))
        assert put_back.written == put_back.records_in_scope > 0 and put_back.deleted == 0, put_back
        figures["restore_commune_written"] = put_back.written
        keys = _spoil(url, lambda t: t.c.personal_id.in_(sa.select(t.c.personal_id).order_by(t.c.personal_id.desc())
                                                         .limit(min(1000, args.rows)).scalar_subquery()))
        listed = scratch / "keys.txt"
        listed.write_text("\n".join(keys) + "\n")
        seconds["restore_keys"], put_back = _timed(
            lambda: restore_dataset(made, "citizen", where=parse_where([f"personal_id=@{listed}"])))
        assert put_back.written == len(keys) and put_back.deleted == 0, put_back
        figures["restore_keys_written"] = put_back.written
    floor_backup = seconds["floor_store"] + seconds["floor_lake"]
    figures.update({name: round(value, 3) for name, value in seconds.items()})
    figures["create_x_floor"] = ratio(seconds["create"], floor_backup, 2)
    figures["restore_x_floor"] = ratio(seconds["restore"], seconds["floor_restore"] + seconds["floor_lake"], 2)
    figures["create_mb_per_s"] = round(figures["backup_bytes"] / 1e6 / seconds["create"], 1)
    figures["restore_dataset_x_restore"] = ratio(seconds["restore_dataset"], seconds["restore"], 2)
    for step in ("restore_commune", "restore_keys"):
        figures[f"{step}_x_dataset"] = ratio(seconds[step], seconds["restore_dataset"], 2)
    print(f"\n{'step':<15}{'seconds':>10}  what")
    for name, what in (("floor_store", "the store copied by the tool alone"),
                       ("floor_lake", "the lake's files copied, no hashing"),
                       ("create", f"lgsp backup create: {figures['backup_bytes'] / 1e6:,.1f} MB, "
                                  f"{figures['create_x_floor']}x the two floors"),
                       ("verify", "every file read back against its SHA-256, the store's copy checked"),
                       ("floor_restore", "the store restored by the tool alone"),
                       ("restore", f"lgsp backup restore: {figures['restore_x_floor']}x its floors (+ floor_lake)"),
                       ("create_again", f"after 1% more rows: {figures['again_bytes_copied'] / 1e6:,.1f} MB copied, "
                                        f"{figures['again_files_linked']} files linked"),
                       ("restore_dataset", f"citizen alone, {figures['restore_dataset_written']:,} rows put back: "
                                           f"{figures['restore_dataset_x_restore']}x the whole restore"),
                       ("restore_commune", f"one commune's {figures['restore_commune_written']:,} citizens put back: "
                                           f"{figures['restore_commune_x_dataset']}x the table's"),
                       ("restore_keys", f"{figures['restore_keys_written']:,} citizens by key, from a file: "
                                        f"{figures['restore_keys_x_dataset']}x the table's")):
        print(f"{name:<15}{figures[name]:>10}  {what}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
