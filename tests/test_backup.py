"""Backups and restores (`lgsp backup`), on SQLite and on a real PostgreSQL.

The warehouse is loaded by the real pipelines from the real sandbox services and served by the real
gateway (uvicorn in a thread, HTTP on loopback); PostgreSQL's store is dumped and restored by the
real pg_dump and pg_restore; the lake is real Parquet files.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from lgsp import backup as backups
from lgsp import runner
from lgsp.backup import BackupError
from lgsp.settings import load_settings
from test_gateway_changes import Env, Mirror, _changed_snapshot, env  # noqa: F401 - env: the gateway fixture
from warehouse import Lake
from warehouse.store import make_engine


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


VERSIONS = ("SELECT tax_code, status, name, is_current FROM core_enterprise "
            "ORDER BY tax_code, valid_from, is_current")


def _lake_keys(dataset: str) -> list[tuple[str, str]]:
    """(batch, key) of every row of the lake's dataset: a row twice would show twice."""
    files = sorted(Lake(load_settings().lake_root).dataset_path(dataset).glob("ingest_date=*/*.parquet"))
    return sorted((f.stem, code) for f in files
                  for code in pq.read_table(f, columns=["tax_code"])["tax_code"].to_pylist())


def test_a_restore_undoes_what_came_after_the_backup_and_the_next_sync_converges(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the fixture
    from sandbox import start_sandbox

    root = tmp_path / "backups"
    mirror = Mirror(env, "enterprise", limit=1000)
    mirror.poll()
    before = env.export("enterprise")
    versions_before, lake_before = _rows(env.url, VERSIONS), _lake_keys("enterprise")
    made = backups.create(root=root)
    assert backups.verify(made).ok
    assert made.manifest["store"]["tables"]["core_enterprise"] == len(versions_before)
    assert made.manifest["lake_rows"]["enterprise"] == len(lake_before)
    assert "business_enterprises" in made.manifest["pipelines"]

    changed, _, suspended = _changed_snapshot(env.sandbox.data)
    with start_sandbox(data=changed, api_key="test-key-not-secret") as newer:
        for name, value in newer.env().items():
            monkeypatch.setenv(name, value)
        runner.run_pipeline("business_enterprises", catalog=env.catalog)
        mirror.poll()  # the agency has the writes the restore will undo
        after = env.export("enterprise")
        versions_after, lake_after = _rows(env.url, VERSIONS), _lake_keys("enterprise")
        assert after != before and len(lake_after) > len(lake_before)
        token = mirror.token

        done = backups.restore(made, root=root)
        assert done.safety is not None and done.safety.name.endswith("-before-restore")
        assert done.safety.manifest["store"]["tables"]["core_enterprise"] == len(versions_after)
        assert env.export("enterprise") == before, "the gateway serves the backup's records"
        assert _rows(env.url, VERSIONS) == versions_before
        assert _lake_keys("enterprise") == lake_before, "the lake's files are the backup's, no later batch"
        assert done.changes_to >= done.changes_from, "the undone writes' numbers"
        expired = env.get("/api/v1/datasets/enterprise/changes", since=token)
        assert expired.status_code == 410, expired.text
        assert f"restored from a backup ({made.name}" in expired.json()["error"]["message"]
        reader = Mirror(env, "enterprise", limit=1000)  # an agency starting afresh right after the restore
        reader.poll()
        assert reader.rows == before and reader.poll() == [], "its new token is good"

        runner.run_pipeline("business_enterprises", catalog=env.catalog)  # resumes from the backup's cursor
    assert env.export("enterprise") == after, "the same records as before the restore"
    assert _rows(env.url, VERSIONS) == versions_after, "every version once: no duplicate, none lost"
    again = _lake_keys("enterprise")
    assert len(again) == len(lake_after) and len(set(again)) == len(again)
    assert sorted(c["record"]["tax_code"] for c in reader.poll()) == sorted(suspended)
    assert reader.rows == after, "told the synced changes, by numbers above the undone ones"
    fresh = Mirror(env, "enterprise", limit=1000)
    fresh.poll()
    assert fresh.rows == after and {r["status"] for k, r in fresh.rows.items() if k[0] in suspended} == {"suspended"}
    restored = backups.restores(env.url)
    assert [r["backup"] for r in restored] == [made.name]

    back = backups.restore(done.safety, root=root, safety=False)  # and back to where it was
    assert env.export("enterprise") == after and back.safety is None
    assert [r["backup"] for r in backups.restores(env.url)] == [done.safety.name], "the store as it was then"


def _small_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An LGSP_HOME with a SQLite store (two tables), a lake (two Parquet files, a landed page) and GX results."""
    import pyarrow as pa

    home = tmp_path / "home"
    monkeypatch.setenv("LGSP_HOME", str(home))
    monkeypatch.delenv("LGSP_DATABASE_URL", raising=False)
    monkeypatch.delenv("LGSP_LAKE", raising=False)
    monkeypatch.delenv(backups.BACKUP_DIR_ENV, raising=False)
    home.mkdir()
    conn = sqlite3.connect(home / "warehouse.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE core_thing (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO core_thing VALUES (?, ?)", [(i, f"thing {i}") for i in range(500)])
    conn.execute("CREATE TABLE lgsp_cursor (pipeline TEXT PRIMARY KEY, cursor_value TEXT, synced_at TEXT, "
                 "batch_id TEXT)")
    conn.execute("INSERT INTO lgsp_cursor VALUES ('things', '2025-10-01T00:00:00+00:00', NULL, 'b1')")
    conn.commit()
    conn.close()
    lake = Lake(home / "lake")
    for n in (1, 2):
        lake.write_parquet(pa.table({"id": list(range(n * 10))}), "thing", datetime(2025, 10, n).date(), f"b{n}")
    lake.write_page("things", "b1", 1, [{"id": 1}])
    (home / "gx" / "results").mkdir(parents=True)
    (home / "gx" / "results" / "run.json").write_text("{}")
    return home


def test_a_backup_is_whole_or_absent_named_by_its_second_and_only_the_newest_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    home = _small_home(tmp_path, monkeypatch)
    root = home / "backups"
    t0 = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
    first = backups.create(now=t0, keep=2)
    assert first.name == "lgsp-20261206T030000Z" and first.path.parent == root
    assert first.manifest["store"]["tables"] == {"core_thing": 500, "lgsp_cursor": 1}
    assert first.manifest["lake_rows"] == {"thing": 30}
    assert first.manifest["pipelines"]["things"]["cursor"] == "2025-10-01T00:00:00+00:00"
    assert set(first.manifest["files"]) == {
        "store.sqlite", "lake/raw/thing/ingest_date=2025-10-01/b1.parquet",
        "lake/raw/thing/ingest_date=2025-10-02/b2.parquet", "lake/landing/things/b1/page-00001.json",
        "gx/results/run.json"}
    second = backups.create(now=t0, keep=2)
    assert second.name == "lgsp-20261206T030000Z-2", "two within a second"
    assert second.manifest["linked"] == {"files": 4, "from": first.name}, "the unchanged files linked, not copied"
    assert second.manifest["bytes_copied"] == second.manifest["files"]["store.sqlite"][0]
    page = "lake/landing/things/b1/page-00001.json"
    assert (second.path / page).stat().st_ino == (first.path / page).stat().st_ino
    assert second.manifest["files"] == first.manifest["files"] and backups.verify(second).ok
    (root / ".partial-lgsp-20261206T040000Z").mkdir()  # what a backup killed half-way leaves
    (root / ".partial-lgsp-20261206T040000Z" / "store.sqlite").write_bytes(b"half")
    assert [b.name for b in backups.backups(root)] == ["lgsp-20261206T030000Z", "lgsp-20261206T030000Z-2"]
    Lake(home / "lake").write_parquet(pa.table({"id": [1]}), "thing", datetime(2025, 10, 2).date(), "b3")
    third = backups.create(now=t0 + timedelta(hours=1), label="nightly", keep=2)
    assert third.name == "lgsp-20261206T040000Z-nightly"
    assert third.manifest["linked"] == {"files": 4, "from": second.name} and third.manifest["lake_rows"] == {
        "thing": 31}, "the new batch file copied"
    assert [b.name for b in backups.backups(root)] == ["lgsp-20261206T030000Z-2", third.name]
    assert not list(root.glob(".partial-*")), "the killed one cleared"
    assert backups.find("latest").name == third.name and backups.find(str(third.path)).name == third.name
    with pytest.raises(BackupError, match="no backup named 'nope'"):
        backups.find("nope")
    with pytest.raises(BackupError, match="label"):
        backups.create(label="../x")


def test_a_backup_is_one_instant_while_a_writer_holds_a_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LGSP_DATABASE_URL", database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE core_thing (id INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO core_thing VALUES (1), (2)"))
        with engine.connect() as writer:
            writer.execute(sa.text("INSERT INTO core_thing VALUES (3)"))  # not committed while the backup runs
            made = backups.create(root=tmp_path / "backups")
            writer.commit()
    finally:
        engine.dispose()
    assert made.manifest["store"]["tables"]["core_thing"] == 2
    assert backups.verify(made).ok
    if database_url.startswith("postgresql"):
        assert made.manifest["store"]["file"] == "store.pgdump" and made.manifest["store"]["server_version"]
    else:
        copy = sqlite3.connect(made.path / "store.sqlite")
        assert copy.execute("SELECT count(*) FROM core_thing").fetchone() == (2,)
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",), "one file, no WAL beside it"
        copy.close()


def test_a_restore_on_postgresql_puts_back_tables_and_views_in_one_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "home"))
    secret = "not-a-real-password-7e1"  # trust auth takes it; pg_dump gets it from PGPASSWORD, never its argv
    pg_url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    monkeypatch.setenv("LGSP_DATABASE_URL", pg_url)
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE core_thing (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(sa.text("INSERT INTO core_thing SELECT g, 'thing ' || g FROM generate_series(1, 1000) g"))
            conn.execute(sa.text("CREATE VIEW shared_thing AS SELECT id FROM core_thing WHERE id <= 10"))
        made = backups.create(root=tmp_path / "backups")
        assert secret not in (made.path / "manifest.json").read_text() and "***" in made.manifest["store"]["url"]
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM core_thing WHERE id > 500"))
            conn.execute(sa.text("UPDATE core_thing SET name = 'changed'"))
        done = backups.restore(made, root=tmp_path / "backups")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*), count(*) FILTER (WHERE name = 'changed') "
                                        "FROM core_thing")).one() == (1000, 0)
            assert conn.execute(sa.text("SELECT count(*) FROM shared_thing")).scalar() == 10
        assert done.safety is not None and done.safety.manifest["store"]["tables"]["core_thing"] == 500
        dump = made.path / "store.pgdump"
        dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])  # cut short
        checked = backups.verify(made)
        assert [p.split(":")[0] for p in checked.problems] == ["store.pgdump"]
        with pytest.raises(BackupError, match="is damaged, nothing was restored"):
            backups.restore(made, root=tmp_path / "backups")
    finally:
        engine.dispose()


def test_a_damaged_backup_names_each_file_and_is_never_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _small_home(tmp_path, monkeypatch)
    made = backups.create()
    parquet = made.path / "lake/raw/thing/ingest_date=2025-10-02/b2.parquet"
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    parquet.write_bytes(bytes(data))
    (made.path / "gx/results/run.json").unlink()
    (made.path / "lake/raw/thing/stray.parquet").write_bytes(b"not ours")
    checked = backups.verify(made)
    assert checked.problems == [
        "gx/results/run.json: missing",
        "lake/raw/thing/ingest_date=2025-10-02/b2.parquet: its content changed since the backup (SHA-256 differs)",
        "lake/raw/thing/stray.parquet: not written by the backup"]
    conn = sqlite3.connect(home / "warehouse.db")
    conn.execute("DELETE FROM core_thing WHERE id >= 100")
    conn.commit()
    conn.close()
    with pytest.raises(BackupError, match="is damaged, nothing was restored: gx/results/run.json: missing"):
        backups.restore(made)
    conn = sqlite3.connect(home / "warehouse.db")
    assert conn.execute("SELECT count(*) FROM core_thing").fetchone() == (100,), "the store untouched"
    conn.close()
    assert len(backups.backups()) == 1, "no safety backup either"

    second = backups.create()
    store = second.path / "store.sqlite"
    with store.open("r+b") as handle:  # a page of the copy overwritten, its hash recomputed: SQLite's check finds it
        handle.seek(4096 + 100)
        handle.write(b"\x00" * 2000)
    second.manifest["files"]["store.sqlite"] = list(backups._hash(store))
    checked = backups.verify(second)
    assert len(checked.problems) == 1 and checked.problems[0].startswith("store.sqlite: ")


def test_a_sqlite_restore_brings_back_store_lake_and_gx_and_can_be_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    home = _small_home(tmp_path, monkeypatch)
    made = backups.create()
    conn = sqlite3.connect(home / "warehouse.db")  # after the backup: rows changed, a batch landed, results kept
    conn.execute("DELETE FROM core_thing WHERE id >= 100")
    conn.execute("INSERT INTO core_thing VALUES (1000, 'new')")
    conn.commit()
    lake = Lake(home / "lake")
    lake.write_parquet(pa.table({"id": [7]}), "thing", datetime(2025, 10, 3).date(), "b3")
    (home / "gx" / "results" / "later.json").write_text("{}")
    reader = sqlite3.connect(home / "warehouse.db")  # a reader open during the restore, as a gateway's would be
    assert reader.execute("SELECT count(*) FROM core_thing").fetchone() == (101,)
    monkeypatch.setenv(backups.KEEP_ENV, "1")
    for _ in range(2):  # a restore killed half-way is run again
        done = backups.restore(made)
    assert reader.execute("SELECT count(*), max(id) FROM core_thing").fetchone() == (500, 499), "seen at once"
    reader.close()
    assert pq.read_table(home / "lake" / "raw" / "thing").num_rows == 30
    assert sorted(p.name for p in (home / "gx" / "results").iterdir()) == ["run.json"]
    assert (home / "lake" / "landing" / "things" / "b1" / "page-00001.json").exists()
    assert not list((home / "lake" / ".staging").glob("*")) and not list(home.glob(".restore-*")), "no debris"
    assert done.rows == 501 and done.lake_files == 3
    safety = [b for b in backups.backups() if b.name.endswith("before-restore")]
    assert len(safety) == 2 and safety[0].manifest["store"]["tables"]["core_thing"] == 101
    assert len(backups.backups()) == 3, "a restore deletes no backup, whatever LGSP_BACKUP_KEEP says"
    assert safety[0].manifest["lake_rows"] == {"thing": 31}
    assert [r["backup"] for r in backups.restores(f"sqlite:///{home / 'warehouse.db'}")] == [made.name], \
        "the second restore's record; the first's went with the store it was in"
    integrity = sqlite3.connect(home / "warehouse.db")
    assert integrity.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    integrity.close()


def test_a_restore_refuses_while_the_gateway_runs_and_into_another_kind_of_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _small_home(tmp_path, monkeypatch)
    made = backups.create()
    (home / "gateway.pid").write_text(f"{os.getpid()} 127.0.0.1:8000\n")  # a live process, as `lgsp serve` writes
    with pytest.raises(BackupError, match=rf"the gateway \(`lgsp serve`, pid {os.getpid()}\) is running"):
        backups.restore(made)
    (home / "gateway.pid").unlink()
    monkeypatch.setenv("LGSP_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(BackupError, match="holds a sqlite store and this lgsp's is postgresql"):
        backups.restore(made)


def _cli(*args: str) -> Any:
    from lgsp.cli import app

    return CliRunner().invoke(app, ["backup", *args])


def test_the_cli_creates_lists_verifies_and_restores_only_when_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lgsp.cli

    monkeypatch.setattr(lgsp.cli.console, "_width", 400)
    home = _small_home(tmp_path, monkeypatch)
    assert "No backup in" in _cli("list").output
    made = _cli("create", "--label", "before-upgrade")
    assert made.exit_code == 0, made.output
    assert "Backup: " in made.output and ": sqlite store, 2 tables, 501 rows; 3 lake files (30 Parquet rows)" \
        in made.output
    assert "Verified: 5 files read back against their SHA-256" in made.output
    listed = json.loads(_cli("list", "--json").output)
    assert [(b["label"], b["tables"]["core_thing"], b["lake_rows"]) for b in listed] == [
        ("before-upgrade", 500, {"thing": 30})]
    name = listed[0]["name"]
    assert name in _cli("list").output
    assert _cli("verify").exit_code == 0
    refused = _cli("restore", name)
    assert refused.exit_code == 1 and "run again with --yes" in refused.output
    conn = sqlite3.connect(home / "warehouse.db")
    conn.execute("DELETE FROM core_thing")
    conn.commit()
    assert conn.execute("SELECT count(*) FROM core_thing").fetchone() == (0,), "not restored without --yes"
    conn.close()
    done = _cli("restore", name, "--yes")
    assert done.exit_code == 0, done.output
    assert f"Restored {name}: 2 tables, 501 rows, 3 lake files" in done.output
    assert "things: cursor 2025-10-01T00:00:00+00:00" in done.output and "-before-restore" in done.output
    shutil.copy(home / "backups" / name / "store.sqlite", tmp_path / "spare.sqlite")
    (home / "backups" / name / "store.sqlite").write_bytes(b"x")
    damaged = _cli("verify", name)
    assert damaged.exit_code == 1 and "store.sqlite: 1 bytes, the backup wrote" in damaged.output
    assert "restore another" in damaged.output
    elsewhere = _cli("create", "--to", str(tmp_path / "other"), "--no-verify")
    assert elsewhere.exit_code == 0 and str(tmp_path / "other") in elsewhere.output


def test_status_warns_without_a_backup_and_when_the_latest_is_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catalog import load_catalog
    from lgsp.status import status_report
    from warehouse import Warehouse

    _small_home(tmp_path, monkeypatch)
    wh = Warehouse(load_settings().database_url, load_catalog())
    wh.create_all()
    now = datetime.now(timezone.utc)

    def backup_problems(at: datetime = now) -> list[str]:
        return [p["problem"] for p in status_report(wh, wh.catalog, at)["problems"] if "backup" in p["problem"]]

    assert backup_problems()[0].startswith(f"no backup in {tmp_path / 'home' / 'backups'}: `lgsp backup create`")
    backups.create(now=now - timedelta(hours=1))
    assert backup_problems() == []
    assert status_report(wh, wh.catalog, now)["backup"]["age_s"] == pytest.approx(3600, abs=1)
    assert backup_problems(now + timedelta(days=2)) == [
        f"the latest backup (lgsp-{now - timedelta(hours=1):%Y%m%dT%H%M%S}Z) is 2d 1h old (warn after 2d): is the "
        "lgsp_backup DAG running? `lgsp backup create` makes one now"]
    monkeypatch.setenv(backups.MAX_AGE_ENV, "off")
    assert backup_problems(now + timedelta(days=30)) == []
    monkeypatch.setenv(backups.MAX_AGE_ENV, "soon")
    report = status_report(wh, wh.catalog, now)
    assert report["ok"] is False and "LGSP_BACKUP_MAX_AGE_HOURS='soon' is not a number" in backup_problems()[0]
    wh.engine.dispose()


_KILLABLE = """
import sys
import pyarrow.parquet
import warehouse.store
from lgsp import backup
print("go", flush=True)
if sys.argv[1] == "create":
    backup.create()
else:
    backup.restore(backup.find(sys.argv[2]), safety=False)
print("done", flush=True)
"""


def _killed_after(delay: float, *args: str) -> bool:
    """Run a backup or a restore in another process and SIGKILL it `delay` seconds in; True if it finished first."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.stdout is not None and proc.stdout.readline() == "go\n"
    time.sleep(delay)
    proc.kill()
    out, _ = proc.communicate()
    return "done" in out


def test_a_backup_or_a_restore_killed_at_any_moment_leaves_no_half_backup_and_runs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    home = _small_home(tmp_path, monkeypatch)
    lake = Lake(home / "lake")
    for n in range(300):  # enough files that a kill lands in the middle of the copy
        lake.write_parquet(pa.table({"id": list(range(n, n + 2000))}), "thing", datetime(2025, 11, 1).date(),
                           f"k{n:03d}")
    finished = halves = 0
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6):
        finished += _killed_after(delay, "create")
        listed = backups.backups()  # one killed after its rename is whole: listed, and it reads back
        assert len(listed) >= finished and all(backups.verify(b).ok for b in listed), "a half backup is never listed"
        halves += bool(list((home / "backups").glob(".partial-*")))
    assert halves, "some kill landed half-way through a backup"
    whole = backups.create()  # and the next one clears what the killed ones left
    assert not list((home / "backups").glob(".partial-*")) and backups.verify(whole).ok
    expected = whole.manifest["lake_rows"]["thing"]
    conn = sqlite3.connect(home / "warehouse.db")
    conn.execute("DELETE FROM core_thing WHERE id >= 10")
    conn.commit()
    conn.close()
    for dataset_file in list((home / "lake" / "raw" / "thing").glob("*/k1*.parquet")):
        dataset_file.unlink()
    for delay in (0.0, 0.1, 0.3):
        _killed_after(delay, "restore", whole.name)
    backups.restore(whole, safety=False)  # run again after the kills: as the backup was
    conn = sqlite3.connect(home / "warehouse.db")
    assert conn.execute("SELECT count(*) FROM core_thing").fetchone() == (500,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert pq.read_table(home / "lake" / "raw" / "thing").num_rows == expected


def test_a_new_machine_is_brought_back_from_a_backup_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_home(tmp_path, monkeypatch)
    monkeypatch.setenv(backups.BACKUP_DIR_ENV, str(tmp_path / "elsewhere"))  # another disk
    made = backups.create()
    assert made.path.parent == tmp_path / "elsewhere"
    shutil.rmtree(tmp_path / "home")  # the machine is gone
    monkeypatch.setenv("LGSP_HOME", str(tmp_path / "new-home"))
    done = backups.restore(backups.find(str(made.path)))
    assert done.safety is None, "nothing to keep on an empty machine"
    conn = sqlite3.connect(tmp_path / "new-home" / "warehouse.db")
    assert conn.execute("SELECT count(*) FROM core_thing").fetchone() == (500,)
    assert conn.execute("SELECT cursor_value FROM lgsp_cursor").fetchone() == ("2025-10-01T00:00:00+00:00",)
    conn.close()
    assert pq.read_table(tmp_path / "new-home" / "lake" / "raw" / "thing").num_rows == 30
    assert (tmp_path / "new-home" / "gx" / "results" / "run.json").exists()
    assert backups.verify(backups.create()).ok, "and it backs up again"


_LIMITED = """
import resource, signal
from lgsp import backup
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    backup.create()
except backup.BackupError as exc:
    print("refused:", exc)
"""


def test_a_backup_that_fails_or_would_not_fit_keeps_nothing_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    from collections import namedtuple

    import pyarrow as pa

    home = _small_home(tmp_path, monkeypatch)
    Lake(home / "lake").write_parquet(pa.table({"blob": [os.urandom(300_000).hex()]}), "thing",
                                      datetime(2025, 10, 5).date(), "big")  # larger than the process may write
    done = subprocess.run([sys.executable, "-c", _LIMITED], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused: the backup failed, nothing was kept: [Errno 27] File too large")
    assert [p.name for p in (home / "backups").iterdir()] == [".lock"], \
        "the half-written backup deleted: its space given back"

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100_000, 100_000))
    with pytest.raises(BackupError, match=r"has 0\.1 MB free and the backup needs about 0\.[3-9] MB: free some space"):
        backups.create()
    assert backups.backups() == [] and not list((home / "backups").glob(".partial-*"))

    monkeypatch.undo()
    monkeypatch.setenv("LGSP_HOME", str(home))
    monkeypatch.setenv("LGSP_DATABASE_URL", "postgresql://lgsp@127.0.0.1:1/nowhere")
    with pytest.raises(BackupError, match=r"cannot reach the store postgresql://lgsp@127.0.0.1:1/nowhere"):
        backups.create()
    assert not list((home / "backups").glob(".partial-*"))


def _dissolved(data: Any, how_many: int, exclude: set[str], days: int = 3) -> tuple[Any, set[str]]:
    """The sandbox's data with `how_many` active enterprises (not in `exclude`) dissolved `days` after anything."""
    import dataclasses

    enterprises = [dict(e) for e in data.enterprises]
    later = max(e["updated_at"] for e in enterprises) + timedelta(days=days)
    chosen = [e for e in enterprises if e["tax_code"] not in set(data.enterprise_defects) | exclude
              and e["status"] == "active"][-how_many:]
    for enterprise in chosen:
        enterprise.update(status="dissolved", updated_at=later)
    enterprises.sort(key=lambda e: (e["updated_at"], e["tax_code"]))
    return dataclasses.replace(data, enterprises=enterprises), {e["tax_code"] for e in chosen}


def test_one_dataset_is_restored_as_a_write_the_feed_tells_and_nothing_else_moves(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the fixture
    from lgsp.backup_dataset import restore_dataset
    from sandbox import start_sandbox

    root = tmp_path / "backups"
    mirror = Mirror(env, "enterprise", limit=1000)
    mirror.poll()
    before, versions_before = env.export("enterprise"), _rows(env.url, VERSIONS)
    made = backups.create(root=root)
    changed, dissolved = _dissolved(env.sandbox.data, 4, set())
    with start_sandbox(data=changed, api_key="test-key-not-secret") as newer:
        for name, value in newer.env().items():
            monkeypatch.setenv(name, value)
        runner.run_pipeline("business_enterprises", catalog=env.catalog)
        mirror.poll()
        after, versions_after = env.export("enterprise"), _rows(env.url, VERSIONS)
        assert {k[0] for k, r in after.items() if r["status"] == "dissolved"} >= dissolved and after != before
        from warehouse import Warehouse

        wh = Warehouse(env.url, env.catalog)  # and a record no source sent (a bad hand edit): gone after the restore
        table = wh.core["enterprise"]
        with wh.transaction() as conn:
            row = dict(conn.execute(sa.select(table).where(table.c.is_current).limit(1)).mappings().one())
            conn.execute(table.insert().values({**row, "tax_code": "0999999999"}))
        wh.engine.dispose()
        assert ("0999999999",) in env.export("enterprise")
        others = {t: _rows(env.url, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("core_citizen", "lgsp_cursor")}
        changes = _rows(env.url, "SELECT change_seq, batch_id, dataset FROM lgsp_change ORDER BY change_seq")
        token = mirror.token

        done = restore_dataset(made, "enterprise")
        assert env.export("enterprise") == before and _rows(env.url, VERSIONS) == versions_before
        assert done.rows == len(versions_before) and done.deleted >= len(dissolved) and done.written >= len(dissolved)
        assert {t: _rows(env.url, f"SELECT * FROM {t} ORDER BY 1, 2") for t in others} == others, "nothing else"
        now = _rows(env.url, "SELECT change_seq, batch_id, dataset FROM lgsp_change ORDER BY change_seq")
        assert now[:-1] == changes and now[-1][1:] == (done.restore_id, "enterprise"), "one write, numbered next"
        told = mirror.poll()  # the agency's token is still good: told what the restore changed
        assert env.get("/api/v1/datasets/enterprise/changes", since=token).status_code == 200
        assert mirror.rows == before and {c["record"]["tax_code"] for c in told if "record" in c} >= dissolved
        assert done.cursors["business_enterprises"]["now"] != done.cursors["business_enterprises"]["backup"]

        again = restore_dataset(made, "enterprise")  # run again: changes nothing
        assert (again.written, again.deleted) == (0, 0)
        assert _rows(env.url, "SELECT change_seq, batch_id, dataset FROM lgsp_change ORDER BY change_seq") == now

        since = datetime.fromisoformat(done.cursors["business_enterprises"]["backup"])
        runner.run_pipeline("business_enterprises", catalog=env.catalog, since=since)  # as the CLI says
    assert env.export("enterprise") == after and _rows(env.url, VERSIONS) == versions_after
    mirror.poll()
    assert mirror.rows == after

    engine = make_engine(env.url)
    with engine.begin() as conn:  # a table not as its definition says, then a backup of another shape: refused
        conn.execute(sa.text("ALTER TABLE core_enterprise ADD COLUMN fax_number TEXT"))
    try:
        with pytest.raises(BackupError, match="core_enterprise is not as enterprise's definition says"):
            restore_dataset(made, "enterprise")
        other_shape = backups.create(root=root, label="fax")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE core_enterprise DROP COLUMN fax_number"))
        engine.dispose()
    with pytest.raises(BackupError, match="core_enterprise has other columns here than in backup .*fax_number"):
        restore_dataset(other_shape, "enterprise")
    store = other_shape.path / other_shape.manifest["store"]["file"]
    store.write_bytes(store.read_bytes()[:-4096])  # a damaged backup: refused before anything is read from it
    with pytest.raises(BackupError, match=f"backup {other_shape.path} is damaged, nothing was restored"):
        restore_dataset(other_shape, "enterprise")
    assert env.export("enterprise") == after
    with pytest.raises(BackupError, match="'nothing' is not a core dataset of the catalog"):
        restore_dataset(made, "nothing")
    from lgsp.cli import app as lgsp_app

    cli = CliRunner()
    asked = cli.invoke(lgsp_app, ["backup", "restore", made.name, "--to", str(root), "--dataset", "enterprise"],
                       env={"COLUMNS": "200"})
    assert asked.exit_code == 1 and "run again with --yes" in " ".join(asked.output.split())
    assert env.export("enterprise") == after
    said = cli.invoke(lgsp_app, ["backup", "restore", made.name, "--to", str(root), "--dataset", "enterprise",
                                 "--yes"], env={"COLUMNS": "300"})
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())
    assert f"Restored enterprise from {made.name}" in text and "lgsp run business_enterprises --since" in text
    assert env.export("enterprise") == before
    listing = cli.invoke(lgsp_app, ["backup", "restores", "--json"])
    assert listing.exit_code == 0, (listing.output, repr(listing.exception))
    listed = json.loads(listing.stdout)
    mine = [r for r in listed if r["backup"] == made.name and r["what"] == "enterprise"]
    assert [r["rows_changed"] for r in mine] == [done.changed, 0, mine[2]["rows_changed"]], "the one run again too"
    assert mine[2]["rows_changed"] > 0 and all(r["restored_by"] and r["where"] is None for r in mine)
    shown = cli.invoke(lgsp_app, ["backup", "restores"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and made.name in shown.stdout and "enterprise" in shown.stdout


ENTERPRISES = ("SELECT tax_code, status, name, commune_code, is_current, _row_hash FROM core_enterprise "
               "ORDER BY tax_code, valid_from, is_current")
CITIZENS = "SELECT personal_id, full_name, commune_code, _row_hash FROM core_citizen ORDER BY personal_id"


def _by_record(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    records: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        records.setdefault(row[0], []).append(row)
    return records


def _expected(before: list[tuple[Any, ...]], now: list[tuple[Any, ...]], named: Any) -> list[tuple[Any, ...]]:
    """`now`'s rows with the records `named(rows)` picks (by their rows in the backup or now) as in `before`."""
    old, new = _by_record(before), _by_record(now)
    chosen = {k for k in old.keys() | new.keys() if named(old.get(k, [])) or named(new.get(k, []))}
    return sorted([r for k, rows in old.items() if k in chosen for r in rows]
                  + [r for k, rows in new.items() if k not in chosen for r in rows], key=repr)


def _held(url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of `sql`, in one order whatever the store's collation."""
    return sorted(_rows(url, sql), key=repr)


def test_some_records_of_a_dataset_are_restored_by_key_or_by_commune_and_a_dry_run_changes_nothing(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the fixture
    from lgsp.backup_dataset import history, parse_where, restore_dataset
    from sandbox import start_sandbox
    from warehouse import Warehouse

    root = tmp_path / "backups"
    mirror = Mirror(env, "enterprise", limit=1000)
    mirror.poll()
    made = backups.create(root=root, label="scoped")
    before, citizens_before = _held(env.url, ENTERPRISES), _held(env.url, CITIZENS)
    changed, dissolved = _dissolved(env.sandbox.data, 4, set(), days=7)
    with start_sandbox(data=changed, api_key="test-key-not-secret") as newer:
        for name, value in newer.env().items():
            monkeypatch.setenv(name, value)
        runner.run_pipeline("business_enterprises", catalog=env.catalog)
    current = {r[0]: r for r in _rows(env.url, ENTERPRISES) if r[4]}
    first, *rest = sorted(dissolved)
    commune = current[rest[0]][3]  # the second one's commune: every record of it, in the backup or now
    mover = next(k for k, r in current.items() if r[3] != commune and k not in dissolved)
    wh = Warehouse(env.url, env.catalog)
    table, people = wh.core["enterprise"], wh.core["citizen"]
    with wh.transaction() as conn:  # by hand: one enterprise moved into the commune, one that no source sent
        conn.execute(table.update().where(table.c.tax_code == mover, table.c.is_current)
                     .values(commune_code=commune, _row_hash=11))
        row = dict(conn.execute(sa.select(table).where(table.c.tax_code == mover, table.c.is_current)).mappings().one())
        conn.execute(table.insert().values({**row, "tax_code": "0999999998", "_row_hash": 12}))
        ward = conn.execute(sa.select(people.c.commune_code).limit(1)).scalar_one()
        inside, outside = [conn.execute(sa.select(people.c.personal_id).where(where).order_by(people.c.personal_id)
                                        .limit(1)).scalar_one()
                           for where in (people.c.commune_code == ward, people.c.commune_code != ward)]
        for personal_id in (inside, outside):  # a merge dataset: one edit in the ward, one beyond it
            conn.execute(people.update().where(people.c.personal_id == personal_id)
                         .values(full_name="Sửa tay", _row_hash=13))
        extra = dict(conn.execute(sa.select(people).where(people.c.personal_id == inside)).mappings().one())
        conn.execute(people.insert().values({**extra, "personal_id": "099999999999"}))
    wh.engine.dispose()
    now, citizens_now = _held(env.url, ENTERPRISES), _held(env.url, CITIZENS)
    changes = _rows(env.url, "SELECT change_seq, batch_id FROM lgsp_change ORDER BY change_seq")

    tried = restore_dataset(made, "enterprise", where={"tax_code": [first]}, dry_run=True)
    assert tried.dry_run and tried.records_in_scope == 1 and tried.written >= 1 and tried.deleted >= 1
    assert _held(env.url, ENTERPRISES) == now, "a dry run changes nothing"
    assert _rows(env.url, "SELECT change_seq, batch_id FROM lgsp_change ORDER BY change_seq") == changes
    assert not [r for r in history(env.url) if r["where"]], "and is not recorded"
    assert tried.differences == {"missing_here": 0, "columns": {"valid_to": 1, "is_current": 1}, "examples": [
        {"key": {"tax_code": first, "valid_from": tried.differences["examples"][0]["key"]["valid_from"]},
         "columns": ["valid_to", "is_current"]}]}, "its version closed by the sync: open in the backup"
    from lgsp.cli import app as lgsp_app

    cli = CliRunner()
    base = ["backup", "restore", made.name, "--to", str(root)]
    dry = cli.invoke(lgsp_app, [*base, "--dataset", "enterprise", "--where", f"tax_code={first}", "--dry-run"],
                     env={"COLUMNS": "300"})
    assert dry.exit_code == 0, dry.output
    said = " ".join(dry.output.split())
    assert "Dry run, nothing changed" in said and f"1 record with tax_code in {first}" in said, said
    assert f"{tried.written} written, {tried.deleted} deleted" in said and f"tax_code={first}, valid_from=" in said
    assert "by column: valid_to 1, is_current 1; rows missing here: 0" in said and _held(env.url, ENTERPRISES) == now

    one = restore_dataset(made, "enterprise", where={"tax_code": [first]})
    assert (one.written, one.deleted, one.records_in_scope) == (tried.written, tried.deleted, 1)
    assert one.rows == len(_by_record(before)[first])
    expected = _expected(before, now, lambda rows: any(r[0] == first for r in rows))
    assert _held(env.url, ENTERPRISES) == expected, "only the one record back"
    assert {r[0] for r in expected if r[1] == "dissolved" and r[4]} - {r[0] for r in before if r[1] == "dissolved"
                                                                     and r[4]} == set(rest), "three stay dissolved"

    by_commune = restore_dataset(made, "enterprise", where={"commune_code": [commune]})
    then = expected
    expected = _expected(before, then, lambda rows: any(r[3] == commune and r[4] for r in rows))
    assert _held(env.url, ENTERPRISES) == expected
    assert mover in {r[0] for r in _rows(env.url, ENTERPRISES) if r[4] and r[3] != commune}, "moved back out"
    assert "0999999998" not in {r[0] for r in expected} and by_commune.records_gone >= 1
    assert by_commune.records_in_scope == len({k for k, rows in _by_record(before + then).items()
                                               if any(r[3] == commune and r[4] for r in rows)})

    keys = tmp_path / "keys.txt"
    keys.write_text("# the rest of the dissolved enterprises\n\n" + "\n".join(rest) + "\n")
    where = parse_where([f"tax_code=@{keys}"])
    assert sorted(where["tax_code"]) == sorted(rest)
    restore_dataset(made, "enterprise", where=where)
    assert _held(env.url, ENTERPRISES) == before, "every record as the backup holds it"
    assert mirror.poll() and mirror.rows == env.export("enterprise"), "the agency's copy told each write"
    again = restore_dataset(made, "enterprise", where={"commune_code": [commune]})
    assert (again.written, again.deleted) == (0, 0)

    people_done = restore_dataset(made, "citizen", where={"commune_code": [ward]})
    assert people_done.written == 1 and people_done.deleted == people_done.records_gone == 1
    assert people_done.differences == {"missing_here": 0, "columns": {"full_name": 1},
                                       "examples": [{"key": {"personal_id": inside}, "columns": ["full_name"]}]}
    assert _held(env.url, CITIZENS) == _expected(citizens_before, citizens_now,
                                                 lambda rows: any(r[2] == ward for r in rows))
    assert [r for r in _rows(env.url, CITIZENS) if r[0] == outside][0][1] == "Sửa tay", "beyond the ward: as it was"

    listed = [r for r in history(env.url) if r["backup"] == made.name]
    assert [(r["what"], r["where"], r["rows_changed"]) for r in listed] == [
        ("enterprise", {"tax_code": [first]}, one.changed),
        ("enterprise", {"commune_code": [commune]}, by_commune.changed),
        ("enterprise", {"tax_code": sorted(rest)}, listed[2]["rows_changed"]),
        ("enterprise", {"commune_code": [commune]}, 0),
        ("citizen", {"commune_code": [ward]}, 2)]
    assert all(r["restored_by"] for r in listed)

    for wrong, message in ((["fax=1"], "'fax' is not a column of enterprise"),
                           (["updated_at=2025-01-01T00:00:00"], "'updated_at' is a timestamp column"),
                           (["tax_code"], "--where 'tax_code': write COLUMN=VALUE"),
                           ([f"tax_code=@{tmp_path / 'none.txt'}"], "cannot read the file of values"),
                           ([f"tax_code=@{tmp_path / 'backups'}"], "cannot read the file of values")):
        with pytest.raises(BackupError, match=message):
            restore_dataset(made, "enterprise", where=parse_where(wrong))
    dry = cli.invoke(lgsp_app, [*base, "--dataset", "enterprise", "--where", f"commune_code={commune}", "--dry-run"],
                     env={"COLUMNS": "300"})
    assert dry.exit_code == 0, dry.output
    assert "Dry run, nothing changed" in " ".join(dry.output.split()) and "0 written, 0 deleted" in dry.output
    for args, message in ((["--where", "x=1"], "--where and --dry-run go with --dataset D"),
                          (["--dataset", "enterprise", "--where", "tax_code="], "write COLUMN=VALUE"),
                          (["--dataset", "enterprise", "--where", f"tax_code={first}"], "`--dry-run` says what")):
        refused = cli.invoke(lgsp_app, [*base, *args], env={"COLUMNS": "300"})
        assert refused.exit_code == 1 and message in " ".join(refused.output.split()), refused.output
    shown = cli.invoke(lgsp_app, ["backup", "restores"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and f"enterprise with commune_code in {commune}" in shown.stdout
