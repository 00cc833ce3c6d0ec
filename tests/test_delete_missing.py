"""Records deleted at the source without a marker: `lgsp run P --full-refresh --delete-missing`.

An incremental sync never hears of them, `lgsp reconcile` counts them as `extra`. A full refresh with
`delete_missing` removes them (merge: the row; history: its current version is closed), records each as
deleted (the change feed tells mirrors) and keeps the rows as they were in the lake's `removed/`. A
record the refresh quarantined is still at the source, and stays. When more than the given share would
go, or the source answered nothing, nothing is removed and the batch says why. Real peer over loopback,
real syncs into SQLite and PostgreSQL.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from catalog.loader import load_catalog
from tests.test_discover import HoSoPeer, drafted_district

PIPELINE = "mot_cua_huyen_ho_sos"


class Overcounting(HoSoPeer):
    """The district peer, counting `extra` records more than it serves (`totalCount`): a pull that stops short."""

    extra = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = b"".join(super().__call__(environ, start_response))
        answer = json.loads(body)
        if "totalCount" in answer:
            answer["totalCount"] += self.extra
        return [json.dumps(answer).encode()]


def _held(wh: Any) -> set[str]:
    """The records the copy holds now (a history: those with a current version)."""
    table = wh.core["ho_so"]
    current = [table.c.is_current.is_(True)] if "is_current" in table.c else []
    with wh.engine.connect() as conn:
        return {k for (k,) in conn.execute(sa.select(table.c.ma_ho_so).where(*current))}


def _message(wh: Any, batch_id: str) -> str | None:
    with wh.engine.connect() as conn:
        return conn.execute(sa.text("SELECT message FROM lgsp_batch WHERE batch_id = :b"), {"b": batch_id}).scalar()


@pytest.mark.parametrize("mode", ["merge", "history"])
def test_a_full_refresh_removes_what_the_source_no_longer_has_and_keeps_it(mode: str, tmp_path: Path,
                                                                            lgsp_env: Any) -> None:
    from lgsp import runner
    from lgsp.reconcile import reconcile
    from loopback import serving

    peer = Overcounting(230)
    with serving(peer) as base:
        catalog = load_catalog(drafted_district(tmp_path / "catalog", base, mode))
        assert catalog.datasets["ho_so"].write_mode == mode

        def sync(**options: Any) -> dict[str, Any]:
            return runner.run_pipeline(PIPELINE, catalog=catalog, settings=lgsp_env, **options)

        sync()
        wh = runner.open_warehouse(catalog, lgsp_env)
        assert _held(wh) == {r["MaHoSo"] for r in peer.rows if not r["DaXoa"]}  # 225: 5 carried a deletion marker
        stored = {r["ma_ho_so"]: r for r in _rows(wh)}
        counted = reconcile(catalog, wh, PIPELINE)  # the source serves and counts the 5 marked ones
        assert (counted.status, counted.source_total, counted.in_copy, counted.deleted_at_source) == \
            ("complete", 230, 225, 5), counted

        gone = {"HS-00001", "HS-00002", "HS-00003"}  # deleted at the source, no marker
        peer.rows = [r for r in peer.rows if r["MaHoSo"] not in gone]
        broken = next(r for r in peer.rows if r["MaHoSo"] == "HS-00010")
        broken["NgayTiepNhan"] = "not a date"  # still at the source: quarantined by the refresh, not removed
        assert "rows_deleted" not in sync()  # an incremental sync cannot tell
        with pytest.raises(ValueError, match="only a full refresh reads every record the source has"):
            sync(delete_missing=0.1)
        assert _held(wh) == {r["MaHoSo"] for r in peer.rows if not r["DaXoa"]} | gone

        refresh = sync(full_refresh=True, delete_missing=0.1)
        assert (refresh["rows_deleted"], refresh["rows_quarantined"]) == (3, 1)
        assert _held(wh) == {r["MaHoSo"] for r in peer.rows if not r["DaXoa"]}
        assert "HS-00010" in _held(wh)
        with wh.engine.connect() as conn:
            assert {json.loads(k)["ma_ho_so"] for (k,) in conn.execute(sa.text(
                "SELECT record_key FROM lgsp_tombstone WHERE batch_id = :b"), {"b": refresh["batch_id"]})} == gone
        kept = pq.read_table(Path(lgsp_env.lake_root) / "removed" / "ho_so" / f"{refresh['batch_id']}.parquet")
        assert {r["ma_ho_so"]: r for r in kept.to_pylist()} == {k: stored[k] for k in gone}  # as they were
        if mode == "history":  # the versions stay, closed
            with wh.engine.connect() as conn:
                closed = conn.execute(sa.text("SELECT ma_ho_so FROM core_ho_so WHERE NOT is_current")).scalars()
                assert set(closed) == gone
        assert sync(full_refresh=True, delete_missing=0.1)["rows_deleted"] == 0  # again: nothing more
        counted = reconcile(catalog, wh, PIPELINE)  # 227 served: 222 in the copy (one quarantined too), 5 marked
        assert (counted.status, counted.held, counted.deleted_at_source) == ("complete", 227, 5), counted
        purged = {"HS-00050", "HS-00100"}  # marked deleted, then purged by the source: it counts them no more
        peer.rows = [r for r in peer.rows if r["MaHoSo"] not in purged]
        assert reconcile(catalog, wh, PIPELINE).status == "extra"  # until a full refresh sees they are gone
        sync(full_refresh=True)
        counted = reconcile(catalog, wh, PIPELINE)
        assert (counted.status, counted.held, counted.deleted_at_source) == ("complete", 225, 3), counted

        many = {r["MaHoSo"] for r in peer.rows[20:60] if not r["DaXoa"]}  # more than 10% of the records
        peer.rows = [r for r in peer.rows if r["MaHoSo"] not in many]
        careful = sync(full_refresh=True, delete_missing=0.1)
        assert careful["rows_deleted"] == 0 and many <= _held(wh)
        assert f"{len(many)} of the 222 records mot_cua_huyen gave before are not in this full refresh, more " \
               "than 10%, so none was deleted" in (_message(wh, careful["batch_id"]) or "")
        assert f"`lgsp run {PIPELINE} --full-refresh --delete-missing --delete-max 1`" in \
               (_message(wh, careful["batch_id"]) or "")
        assert sync(full_refresh=True, delete_missing=1.0)["rows_deleted"] == len(many)
        assert not many & _held(wh)

        dropped = [r["MaHoSo"] for r in peer.rows if not r["DaXoa"]][:2]
        peer.rows = [r for r in peer.rows if r["MaHoSo"] not in dropped]  # 2 more deleted; 5 counted, not served
        peer.extra = 5
        short = sync(full_refresh=True, delete_missing=1.0)
        assert short["rows_deleted"] == 0 and short["rows_pulled"] == len(peer.rows)
        assert f"the full refresh received {len(peer.rows)} records and mot_cua_huyen counted {len(peer.rows) + 5} " \
               "when it began, so none was deleted as missing" in (_message(wh, short["batch_id"]) or "")
        peer.extra = 0
        assert sync(full_refresh=True, delete_missing=0.1)["rows_deleted"] == 2

        everything = peer.rows
        peer.rows = []  # a source answering nothing: nothing is removed
        empty = sync(full_refresh=True, delete_missing=1.0)
        assert empty["rows_deleted"] == 0 and _held(wh) == {r["MaHoSo"] for r in everything if not r["DaXoa"]}
        assert "the full refresh received no record, so none was deleted as missing" in \
               (_message(wh, empty["batch_id"]) or "")


class TwoDesks(HoSoPeer):
    """The district peer with a second endpoint, `/api/hoso-giay`: the paper dossiers (HG-), none online, none
    marked deleted."""

    def __init__(self, online: int, paper: int) -> None:
        super().__init__(online)
        self.online = self.rows
        self.paper = [{**r, "MaHoSo": r["MaHoSo"].replace("HS-", "HG-"), "DaXoa": False} for r in HoSoPeer(paper).rows]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        paper = environ["PATH_INFO"] == "/api/hoso-giay"
        self.rows = self.paper if paper else self.online
        return super().__call__({**environ, "PATH_INFO": "/api/hoso"} if paper else environ, start_response)


@pytest.mark.parametrize("mode", ["merge", "history"])
@pytest.mark.parametrize("paper_system", ["mot_cua_huyen", "mot_cua_giay"])
def test_two_pipelines_into_one_dataset_remove_and_count_only_what_each_gave(mode: str, paper_system: str,
                                                                              tmp_path: Path, lgsp_env: Any) -> None:
    """Two endpoints into one dataset (online and paper dossiers), of one system or of two: a full refresh of one
    removes what its own source deleted and never the other's records, which its source never sends; `lgsp
    reconcile` counts each against its own rows (before, the whole table: 'extra', which hides a loss)."""
    from lgsp import runner
    from lgsp.reconcile import reconcile
    from loopback import serving

    peer = TwoDesks(200, 15)  # the paper desk's 15 records: under the 10% guard, so nothing else would stop it
    with serving(peer) as base:
        target = drafted_district(tmp_path / "catalog", base, mode)
        pipelines = (target / "pipelines.yaml").read_text(encoding="utf-8")
        online = pipelines[pipelines.index(f"  {PIPELINE}:"):]
        paper = online.replace(f"  {PIPELINE}:", "  mot_cua_huyen_ho_so_giays:").replace("/api/hoso", "/api/hoso-giay")
        paper = paper.replace("system: mot_cua_huyen", f"system: {paper_system}")
        (target / "pipelines.yaml").write_text(pipelines.rstrip("\n") + "\n\n" + paper, encoding="utf-8")
        if paper_system != "mot_cua_huyen":
            with (target / "systems.yaml").open("a", encoding="utf-8") as systems:
                systems.write(f"  {paper_system}:\n    title: The district's paper desk\n    protocol: rest\n"
                              f"    endpoint: {base}\n")
        catalog = load_catalog(target)
        assert {p.source.system for p in catalog.pipelines.values() if p.dataset == "ho_so"} == \
            {"mot_cua_huyen", paper_system}

        def sync(pipeline: str, **options: Any) -> dict[str, Any]:
            return runner.run_pipeline(pipeline, catalog=catalog, settings=lgsp_env, **options)

        sync(PIPELINE)
        sync("mot_cua_huyen_ho_so_giays")
        wh = runner.open_warehouse(catalog, lgsp_env)
        papers = {r["MaHoSo"] for r in peer.paper}
        assert _held(wh) == {r["MaHoSo"] for r in peer.online if not r["DaXoa"]} | papers
        for pipeline, served, marked in ((PIPELINE, len(peer.online), 4), ("mot_cua_huyen_ho_so_giays", 15, 0)):
            counted = reconcile(catalog, wh, pipeline)
            assert (counted.status, counted.source_total, counted.held, counted.deleted_at_source) == \
                ("complete", served, served, marked), counted

        gone = {"HS-00001", "HS-00002"}
        peer.online = [r for r in peer.online if r["MaHoSo"] not in gone]
        refresh = sync(PIPELINE, full_refresh=True, delete_missing=0.1)
        assert refresh["rows_deleted"] == 2, refresh
        assert _held(wh) == {r["MaHoSo"] for r in peer.online if not r["DaXoa"]} | papers, "the paper desk's stay"

        paper_gone = "HG-00003"
        peer.paper = [r for r in peer.paper if r["MaHoSo"] != paper_gone]
        assert sync("mot_cua_huyen_ho_so_giays", full_refresh=True, delete_missing=0.1)["rows_deleted"] == 1
        assert _held(wh) == {r["MaHoSo"] for r in peer.online if not r["DaXoa"]} | (papers - {paper_gone})

        peer.paper = peer.paper[:5]  # 9 of 14: more than 10% of what the paper desk gave, not of the dataset
        careful = sync("mot_cua_huyen_ho_so_giays", full_refresh=True, delete_missing=0.1)
        assert careful["rows_deleted"] == 0
        giver = "mot_cua_huyen (mot_cua_huyen_ho_so_giays)" if paper_system == "mot_cua_huyen" else paper_system
        assert f"9 of the 14 records {giver} gave before" in (_message(wh, careful["batch_id"]) or "")

        with wh.engine.begin() as conn:  # 3 online records lost behind lgsp's back: the paper desk's 14 hid them
            conn.execute(sa.text("DELETE FROM core_ho_so WHERE ma_ho_so IN ('HS-00005', 'HS-00006', 'HS-00007')"))
        assert reconcile(catalog, wh, PIPELINE).status == "lost"


def _rows(wh: Any) -> list[dict[str, Any]]:
    table = wh.core["ho_so"]
    with wh.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings()]


@pytest.mark.airflow
def test_the_dags_remove_what_the_source_no_longer_has_partitioned_or_not(tmp_path: Path,
                                                                        sandbox_handle: Any) -> None:
    """`lgsp run P --full-refresh --delete-missing` on real Airflow (the DAG's `delete_missing` param): a record the
    copy holds and the civil-status registry no longer has is removed; so is a parcel the land database no longer
    has, by a partitioned run once all its slices have loaded."""
    from airflow_helpers import lgsp_env, run
    from warehouse import Warehouse

    sandbox_handle.faults.clear()
    home = tmp_path / "home"
    env = lgsp_env(home, **sandbox_handle.env())
    proc = run(["lgsp", "run", "civil_status_events", "--no-retries"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    url = f"sqlite:///{home / 'warehouse.db'}"
    wh = Warehouse(url, load_catalog())

    def plant(dataset: str, column: str, value: str) -> tuple[sa.Table, int]:
        """A record the copy holds and the source has since deleted: (its table, the rows the table then has)."""
        table = wh.dataset_table(load_catalog().datasets[dataset])
        with wh.transaction() as conn:
            row = dict(conn.execute(sa.select(table).limit(1)).mappings().one())
            conn.execute(table.insert().values({**row, column: value}))
            return table, conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    table, before = plant("civil_status_event", "event_id", "EV-DELETED-AT-SOURCE")
    proc = run(["lgsp", "run", "civil_status_events", "--full-refresh", "--delete-missing", "--no-retries"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == before - 1
        assert conn.execute(sa.select(table.c.event_id).where(table.c.event_id == "EV-DELETED-AT-SOURCE")).first() \
            is None
        tombstones = conn.execute(sa.text("SELECT batch_id, record_key FROM lgsp_tombstone")).all()
    assert [json.loads(key) for _, key in tombstones] == [{"event_id": "EV-DELETED-AT-SOURCE"}]
    kept = pq.read_table(home / "lake" / "removed" / "civil_status_event" / f"{tombstones[0][0]}.parquet")
    assert kept.column("event_id").to_pylist() == ["EV-DELETED-AT-SOURCE"]

    # a partitioned pipeline: the record goes once every slice has loaded (`publish`), as the run's one removal
    proc = run(["lgsp", "run", "land_parcels", "--no-retries"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parcels, held = plant("land_parcel", "parcel_id", "PARCEL-MERGED-AWAY")
    proc = run(["lgsp", "run", "land_parcels", "--full-refresh", "--delete-missing", "--no-retries"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(parcels)).scalar_one() == held - 1
        removal = conn.execute(sa.text("SELECT batch_id, record_key FROM lgsp_tombstone "
                                       "WHERE dataset = 'land_parcel'")).all()
        slices = conn.execute(sa.text("SELECT batch_id FROM lgsp_batch WHERE mode = 'full_refresh' "
                                      "AND pipeline = 'land_parcels'")).scalars().all()
    assert [json.loads(key) for _, key in removal] == [{"parcel_id": "PARCEL-MERGED-AWAY"}]
    assert len(slices) == 4 and removal[0][0] == slices[0].rsplit(".", 1)[0] + ".missing"  # the run's removal
    kept = pq.read_table(home / "lake" / "removed" / "land_parcel" / f"{removal[0][0]}.parquet")
    assert kept.column("parcel_id").to_pylist() == ["PARCEL-MERGED-AWAY"]
    wh.engine.dispose()


def test_a_partitioned_runs_removal_reads_every_slice_and_notes_a_refusal_on_its_last(lgsp_env: Any) -> None:
    """The slices' functions as the partitioned DAG runs them (plan, then extract/validate/load each): with 0% allowed
    the parcel stays and the run's last-started slice says why; with 100% it goes, once, as `<run>.missing`."""
    from datetime import datetime, timezone

    from lgsp import partitions, runner

    catalog = load_catalog()
    runner.run_pipeline("land_parcels", catalog=catalog, settings=lgsp_env)
    ctx = runner.context("land_parcels", catalog, lgsp_env)
    table = ctx.warehouse.dataset_table(ctx.dataset)
    with ctx.warehouse.transaction() as conn:
        row = dict(conn.execute(sa.select(table).limit(1)).mappings().one())
        conn.execute(table.insert().values({**row, "parcel_id": "PARCEL-MERGED-AWAY"}))

    def refresh(share: float) -> tuple[dict[str, Any], list[str]]:
        assert ctx.pipeline.partition is not None
        parts = partitions.plan(None, 0, ctx.pipeline.partition, True, run=runner.new_batch_id("land_parcels"))
        batches = []
        for part in parts:
            until = datetime.fromisoformat(part["until"]).astimezone(timezone.utc)
            batch_id = runner.extract(ctx, full_refresh=True, until=until, run=part["run"],
                                      partition=partitions.request_filter(part["filter"]))["batch_id"]
            runner.validate(ctx, batch_id)
            runner.load(ctx, batch_id)
            batches.append(batch_id)
        return runner.delete_missing_of_run(ctx, parts[0]["run"], batches, share), batches

    refused, batches = refresh(0.0)
    assert refused["rows_deleted"] == 0 and "1 of the" in refused["note"]
    with ctx.warehouse.engine.connect() as conn:
        notes = dict(conn.execute(sa.text("SELECT batch_id, message FROM lgsp_batch WHERE batch_id IN "
                                          f"({', '.join(repr(b) for b in batches)})")).all())
    assert [b for b, m in notes.items() if m and refused["note"] in m] == [batches[-1]]
    done, batches = refresh(1.0)
    assert done == {"rows_deleted": 1, "note": None}
    with ctx.warehouse.engine.connect() as conn:
        assert conn.execute(sa.select(table.c.parcel_id).where(table.c.parcel_id == "PARCEL-MERGED-AWAY")).first() \
            is None
        assert conn.execute(sa.text("SELECT batch_id FROM lgsp_tombstone")).scalars().all() == [
            batches[0].rsplit(".", 1)[0] + ".missing"]
