"""What the warehouse held of a record, and when (`warehouse.versions`): the versions replayed from the lake's
files and the change log as the merge applied them. Real syncs from a real peer over loopback (and the
sandbox's population service for a replayed quarantine row), SQLite and PostgreSQL.
"""
from __future__ import annotations

import shutil
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from typer.testing import CliRunner

from catalog.loader import CATALOG_DIR, load_catalog
from lgsp.cli import app as cli_app
from tests.test_discover import HoSoPeer, drafted_district

PIPELINE, RECORD, OTHER, BROKEN = "mot_cua_huyen_ho_sos", "HS-00007", "HS-00009", "HS-00011"


def _commits(wh: Any) -> dict[str, datetime]:
    from warehouse.store import utc

    change = wh.table("lgsp_change")
    with wh.engine.connect() as conn:
        return {b: utc(at) for b, at in conn.execute(sa.select(change.c.batch_id, change.c.committed_at))}


@pytest.mark.parametrize("mode", ["merge", "history"])
def test_the_versions_a_record_had_in_the_table_and_when(mode: str, tmp_path: Path, lgsp_env: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp import runner
    from loopback import serving
    from warehouse.lake import Lake
    from warehouse.versions import held_versions

    peer = HoSoPeer(60)
    with serving(peer) as base:
        target = drafted_district(tmp_path / "catalog", base, mode)
        catalog = load_catalog(target)
        spec, lake = catalog.datasets["ho_so"], Lake(lgsp_env.lake_root)

        def sync(**options: Any) -> str:
            return str(runner.run_pipeline(PIPELINE, catalog=catalog, settings=lgsp_env, **options)["batch_id"])

        def row(key: str) -> dict[str, Any]:
            return next(r for r in peer.rows if r["MaHoSo"] == key)

        def versions() -> list[tuple[str, Any, Any, str]]:
            found = held_versions(wh.engine, spec, lake, ["ma_ho_so"], RECORD)
            assert found.known_since is None
            return [(h.values["trang_thai"], h.since, h.until, h.batch_id) for h in found.held]

        first = sync()
        wh = runner.open_warehouse(catalog, lgsp_env)
        original = row(RECORD)["NgayCapNhat"]
        latest = max(datetime.fromisoformat(r["NgayCapNhat"]) for r in peer.rows)
        row(RECORD).update(TrangThai="moi", NgayCapNhat=(latest + timedelta(hours=1)).isoformat())
        changed = sync()
        # a backfill reads a late row of the record, older than the version held: the merge keeps the newer one
        # (while the batch changes another record, so it is a write of the change log)
        row(RECORD).update(TrangThai="xong", NgayCapNhat=(datetime.fromisoformat(original) + timedelta(minutes=5))
                           .isoformat())
        moved = datetime.fromisoformat(row(OTHER)["NgayCapNhat"]) + timedelta(minutes=3)
        row(OTHER).update(TrangThai="moi", NgayCapNhat=moved.isoformat())
        late = sync(since=datetime.fromisoformat(original), until=moved + timedelta(minutes=10))
        row(RECORD).update(DaXoa=True, NgayCapNhat=(latest + timedelta(hours=2)).isoformat())
        deleted = sync()

        at = _commits(wh)
        assert late in at, "the backfill changed the other record"
        assert versions() == [("xong", at[first], at[changed], first), ("moi", at[changed], at[deleted], changed)]
        other = held_versions(wh.engine, spec, lake, ["ma_ho_so"], OTHER).held
        assert [(h.values["trang_thai"], h.since, h.until) for h in other] == [
            ("xong", at[first], at[late]), ("moi", at[late], None)]

        # the source corrects the other record to a time before the version held: a full refresh takes it
        row(OTHER).update(TrangThai="xong", NgayCapNhat=(moved - timedelta(minutes=1)).isoformat())
        row(BROKEN).update(NgayTiepNhan="not a date")  # quarantined by the refresh: its version stays
        refresh = sync(full_refresh=True)
        at = _commits(wh)
        assert [(h.values["trang_thai"], h.since, h.until) for h in
                held_versions(wh.engine, spec, lake, ["ma_ho_so"], OTHER).held][1:] == [
            ("moi", at[late], at[refresh]), ("xong", at[refresh], None)]

        monkeypatch.setenv("LGSP_CATALOG_DIR", str(target))
        told = _record(RECORD)
        assert told["now"] is None and [(v["batch_id"], v["pipeline"], v["changed"]) for v in told["versions"]] == [
            (first, PIPELINE, None), (changed, PIPELINE, {"trang_thai": ["xong", "moi"], "ngay_cap_nhat": [
                datetime.fromisoformat(original), latest + timedelta(hours=1)]})], told
        assert [(d["batch_id"], d["pipeline"]) for d in told["deleted"]] == [(deleted, PIPELINE)]
        sent = [v["received"] for v in _record(RECORD, "--received")["versions"]]
        later = (latest + timedelta(hours=1)).isoformat()
        assert [(s["record"]["trang_thai"], s["record"]["ngay_cap_nhat"], Path(s["page"]).parent.name)
                for s in sent] == [("xong", original, first), ("moi", later, changed)], \
            "the values as the peer sent them (its zone, +07:00), under the columns' names"
        broken = _record(BROKEN)
        assert broken["now"]["trang_thai"] == "xong" and broken["now"]["batch_id"] == first, "its last good version"
        assert [(q["batch_id"], q["rule"], q["status"]) for q in broken["quarantined"]] == [
            (refresh, "type", "open")], broken["quarantined"]
        words = CliRunner().invoke(cli_app, ["record", "ho_so", RECORD], env={"COLUMNS": "300"})
        said = " ".join(words.output.split())
        assert words.exit_code == 0 and "ho_so ma_ho_so HS-00007: not in the table now" in said, said
        assert "Versions the table held (2)" in said and "deleted" in said and f"by {deleted} ({PIPELINE}" in said
        assert "trang_thai xong -> moi" in said, said
        wrong = CliRunner().invoke(cli_app, ["record", "ho_so", RECORD, "extra"])
        assert wrong.exit_code == 1 and "ho_so's key is ma_ho_so: give 1 value(s)" in " ".join(wrong.output.split())

        kept = versions()
        assert [c.files_after for c in lake.compact("ho_so", min_age=timedelta(0))] == [1]
        assert versions() == kept, "a compacted file says which batch wrote each row"
        assert held_versions(wh.engine, spec, lake, ["ma_ho_so"], "HS-99999").held == []

        today = lake.partitions("ho_so")[0]  # the lake restored from an older backup: the first day's files missing
        today.rename(today.with_name(f"ingest_date={date.today() + timedelta(days=1)}"))
        missing = held_versions(wh.engine, spec, lake, ["ma_ho_so"], RECORD)
        assert missing.known_since == date.today() + timedelta(days=1)
        assert [(h.since, h.until) for h in missing.held] == [(None, at[changed]), (at[changed], at[deleted])], \
            "the oldest version known is taken as held from the beginning"


def _record(*key: str) -> dict[str, Any]:
    """`lgsp record ho_so KEY --json`, parsed back (times as the JSON has them, then made datetimes)."""
    import json

    result = CliRunner().invoke(cli_app, ["record", "ho_so", *key, "--json"])
    assert result.exit_code == 0, result.output
    told = json.loads(result.stdout.strip().splitlines()[-1])
    for version in told["versions"]:
        for column, (old, new) in (version["changed"] or {}).items():
            if column == "ngay_cap_nhat":
                version["changed"][column] = [datetime.fromisoformat(old), datetime.fromisoformat(new)]
    return told


def test_a_replayed_quarantine_row_is_a_version_too(lgsp_env: Any, sandbox_handle: Any, tmp_path: Path) -> None:
    from lgsp import quarantine, runner
    from warehouse import Warehouse
    from warehouse.lake import Lake
    from warehouse.versions import held_versions

    runner.run_pipeline("population_citizens")
    phone_bad = sorted(k for k, kind in sandbox_handle.data.citizen_defects.items() if kind == "phone_format")
    fixed = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, fixed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = fixed / "datasets.yaml"
    path.write_text(path.read_text().replace("      - {rule: phone_vn, column: phone}\n", ""))
    assert quarantine.replay(runner.context("population_citizens", catalog=load_catalog(fixed)))["landed"]
    catalog = load_catalog()
    wh = Warehouse(lgsp_env.database_url, catalog)
    (replay,) = [b for b in _commits(wh) if b.startswith("replay-")]
    found = held_versions(wh.engine, catalog.datasets["citizen"], Lake(lgsp_env.lake_root), ["personal_id"],
                          phone_bad[0])
    assert [(h.values["personal_id"], h.since, h.until, h.batch_id) for h in found.held] == [
        (phone_bad[0], _commits(wh)[replay], None, replay)], "landed by the replay, not by a lake file"


def test_a_full_refresh_replaces_a_version_as_the_merge_does() -> None:
    """The rule of `Warehouse._update_when`, replayed: a full refresh's older row replaces what an earlier run of
    its source system wrote, not what its own run wrote (a partitioned run's slices, `<run>.<slice>`), nor what
    another system wrote."""
    from datetime import timezone

    from warehouse.versions import Writer, _timeline

    spec = load_catalog().datasets["citizen"]
    t = datetime(2025, 9, 1, 8, tzinfo=timezone.utc)
    writes = [("late", Writer("population", False), t + timedelta(hours=7), "A"),  # read 7 hours late
              ("run1.s1", Writer("population", True), t, "A"),  # the refresh: the right time, replaces it
              ("run1.s2", Writer("population", True), t - timedelta(hours=1), "B"),  # its other slice: older, kept out
              ("legacy-1", Writer("legacy", False), t + timedelta(hours=2), "C"),  # another system's newer row
              ("run2", Writer("population", True), t + timedelta(hours=1), "D")]  # older than another system's: out
    rows = [{"personal_id": "037090000001", "updated_at": at, "commune_code": commune, "_lake_batch": batch}
            for batch, _, at, commune in writes]
    commits = {batch: (n, t + timedelta(days=n)) for n, (batch, *_) in enumerate(writes, start=1)}
    held = _timeline(spec, rows, [], {}, commits, {batch: writer for batch, writer, *_ in writes}, [])
    assert [(h.batch_id, h.values["commune_code"]) for h in held] == [("late", "A"), ("run1.s1", "A"),
                                                                       ("legacy-1", "C")]
    assert [h.until for h in held] == [commits["run1.s1"][1], commits["legacy-1"][1], None]


def test_a_record_is_asked_for_by_its_whole_key_of_a_loaded_dataset() -> None:
    from lgsp.record_history import RecordError, typed_key

    catalog = load_catalog()
    assert typed_key(catalog, "citizen", ["037203001234"]) == {"personal_id": "037203001234"}
    refusals = {("nope", ("1",)): "no dataset 'nope'; the datasets: admin_unit, citizen",
                ("citizen", ("1", "2")): "citizen's key is personal_id: give 1 value(s) in that order, got 2",
                ("indicator_value", ("online_submission_rate", "x", "province", "37", "2025-10")):
                    "indicator_value is computed by lgsp from the core tables (the mart)",
                ("land_parcel", ()): "land_parcel's key is parcel_id: give 1 value(s)"}
    for (dataset, values), said in refusals.items():
        with pytest.raises(RecordError) as refused:
            typed_key(catalog, dataset, values)
        assert str(refused.value).startswith(said), str(refused.value)
    log = catalog.datasets["citizen"].model_copy(update={"write_mode": "append"})
    with pytest.raises(RecordError, match="citizen is an append log: it keeps every row it was sent"):
        typed_key(catalog.model_copy(update={"datasets": {**catalog.datasets, "citizen": log}}), "citizen", ["1"])


@pytest.mark.parametrize("asked", [3_000, 70_000])
def test_the_versions_of_more_records_than_a_statement_may_bind(asked: int, database_url: str, tmp_path: Path) -> None:
    """PostgreSQL refuses a statement of more than 65,535 parameters: the versions of that many records (a state
    indicator's first computation over a register) are looked up 1,000 keys a query, or in one pass over the
    lake, the tombstones and the quarantine beyond 50,000. Of the records asked about, one was written then
    deleted, one landed from the quarantine: both are found."""
    import json

    import pyarrow as pa

    from warehouse import Warehouse
    from warehouse.lake import Lake
    from warehouse.store import tombstone_key
    from warehouse.versions import versions_of

    catalog = load_catalog()
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    citizen, lake = catalog.datasets["citizen"], Lake(tmp_path / "lake")
    at = datetime(2026, 12, 1, 3, 0)
    row = {"full_name": "Nguyễn Văn A", "birth_date": "2000-01-01", "sex": "male", "commune_code": "14455",
           "address": "x", "updated_at": "2026-11-30T00:00:00Z"}
    lake.write_parquet(pa.table({"personal_id": ["037000000007"], **{c: [v] for c, v in row.items()}}),
                       "citizen", at.date(), "b-0")
    with wh.engine.begin() as conn:
        conn.execute(wh.table("lgsp_change").insert(), [
            {"change_seq": n + 1, "batch_id": f"b-{n}", "dataset": "citizen", "rows_changed": 1,
             "committed_at": at + timedelta(hours=n)} for n in range(3)])
        conn.execute(wh.table("lgsp_tombstone").insert(), [
            {"dataset": "citizen", "record_key": tombstone_key(["personal_id"], ("037000000007",)), "batch_id": "b-1",
             "deleted_at": at + timedelta(hours=1)}])
        conn.execute(wh.table("lgsp_quarantine").insert(), [
            {"quarantine_id": "q-1", "dataset": "citizen", "pipeline": "population_citizens", "batch_id": "b-x",
             "last_batch_id": "b-2", "rule": "r", "reason": "r", "record_key": "037000000011",
             "payload": json.dumps({"personal_id": "037000000011", **row}), "status": "replayed",
             "quarantined_at": at}])
    versions = versions_of(wh.engine, citizen, lake, {(f"037{n:09d}",) for n in range(asked)})
    wh.engine.dispose()
    found = [(h.key[0], h.batch_id, h.since.hour if h.since else None, h.until.hour if h.until else None)
             for h in versions.held]
    assert found == [("037000000007", "b-0", 3, 4), ("037000000011", "b-2", 5, None)], found


def test_a_key_range_holds_the_same_records_in_the_table_the_lake_and_python(database_url: str) -> None:
    """A register of millions is replayed a key range at a time: a record must fall in the same range whether the
    table (SQL), a lake file (Arrow) or Python says where, or its row now and its versions would be counted
    apart. On PostgreSQL the key column is given a language's collation (ICU's en-US: a < A < b < B, punctuation
    weighed apart), whose order is not the bytes' order: the ranges still agree, by `COLLATE "C"`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from warehouse.versions import KeyRange, key_ranges

    keys = ["a", "B", "a-b", "ab", "á", "Z", "1.2", "12", "1-3", "_x", "ä", "b", "Đà", "da"]
    engine = sa.create_engine(database_url)
    collation = None
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            collation = conn.execute(sa.text("SELECT collname FROM pg_collation WHERE collname IN "
                                             "('en-US-x-icu', 'en_US.utf8') ORDER BY collname LIMIT 1")).scalar()
    table = sa.Table("range_probe", sa.MetaData(), sa.Column("k", sa.Text(collation=collation), primary_key=True))
    table.drop(engine, checkfirst=True)
    table.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"k": k} for k in keys])
            if collation:  # the column's own order differs from the bytes': a range without COLLATE "C" would too
                assert [r.k for r in conn.execute(sa.select(table.c.k).order_by(table.c.k))] != sorted(keys)
            ranges = key_ranges(conn, table, ["k"], engine.dialect.name, 4)
            assert ranges[0].low is None and ranges[-1].high is None and len(ranges) == 4, ranges
            column = pa.chunked_array([pa.array(keys, pa.string())])
            seen: list[str] = []
            for within in ranges:
                in_sql = {r.k for r in conn.execute(sa.select(table.c.k).where(within.where(table.c.k,
                                                                                           engine.dialect.name)))}
                in_arrow = set(pc.filter(column, within.mask(column)).to_pylist())
                in_python = {k for k in keys if within.contains(k)}
                assert in_sql == in_arrow == in_python, (within, in_sql, in_arrow, in_python)
                seen += in_python
            assert sorted(seen) == sorted(keys)  # each record in one range
            assert [sum(1 for k in keys if within.contains(k)) for within in ranges] == [4, 4, 4, 2]
            assert key_ranges(conn, table, ["k"], engine.dialect.name, len(keys)) == [KeyRange()]
    finally:
        table.drop(engine)
        engine.dispose()
