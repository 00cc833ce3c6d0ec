"""A big sync split into mapped tasks (one per range of commune codes) lands exactly what one task does;
a full refresh through the slices puts back rows an earlier run stored wrong, and the cursor with them."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_helpers import lgsp_env, run, warehouse_snapshot
from catalog import load_catalog
from catalog.models import PartitionSpec
from lgsp.partitions import request_filter, slices
from sandbox.communes import UNKNOWN_COMMUNE, commune_codes
from warehouse import Warehouse

pytestmark = pytest.mark.airflow


def _land_partition() -> PartitionSpec:
    spec = load_catalog().pipelines["land_parcels"].partition
    assert spec is not None
    return spec


def test_slices_cover_every_commune_code_once() -> None:
    spec = _land_partition()
    parts = slices(spec)
    assert len(parts) == spec.partitions
    for code in [*commune_codes(), UNKNOWN_COMMUNE, "", "00000"]:
        owners = [p for p in parts
                  if (p["commune_from"] or "") <= code and (p["commune_to"] is None or code < p["commune_to"])]
        assert len(owners) == 1, code


def _read_seven_hours_late(url: str) -> None:
    """What an earlier run reading local times as UTC left: every parcel (and the cursor) 7 hours late,
    with content of its own (another area)."""
    wh = Warehouse(url, load_catalog())
    table, cursors = wh.dataset_table(load_catalog().datasets["land_parcel"]), wh.system["lgsp_cursor"]
    with wh.transaction() as conn:
        for key, at in conn.execute(sa.select(table.c.parcel_id, table.c.updated_at)).all():
            conn.execute(table.update().where(table.c.parcel_id == key).values(
                updated_at=at + timedelta(hours=7), area_m2=table.c.area_m2 * 2, _row_hash="read-wrong"))
        at = conn.execute(sa.select(cursors.c.cursor_value).where(cursors.c.pipeline == "land_parcels")).scalar_one()
        conn.execute(cursors.update().where(cursors.c.pipeline == "land_parcels")
                     .values(cursor_value=at + timedelta(hours=7)))
    wh.engine.dispose()


def test_mapped_slices_land_what_one_task_lands(tmp_path: Path, sandbox_handle: Any) -> None:
    sandbox_handle.faults.clear()
    single, mapped = tmp_path / "single", tmp_path / "mapped"
    proc = run(["lgsp", "run", "land_parcels", "--inline"], lgsp_env(single, **sandbox_handle.env()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run(["lgsp", "run", "land_parcels", "--no-retries"], lgsp_env(mapped, **sandbox_handle.env()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "XCom not found" not in proc.stdout + proc.stderr  # publish reads the slices' results in one request

    one = warehouse_snapshot(f"sqlite:///{single / 'warehouse.db'}", "land_parcel", "land_parcels")
    many = warehouse_snapshot(f"sqlite:///{mapped / 'warehouse.db'}", "land_parcel", "land_parcels")
    truth = sandbox_handle.data
    assert len(one["rows"]) == len(truth.records("land_parcel")) - len(truth.defects("land_parcel"))
    assert many == one  # same rows, same quarantine, same cursor

    engine = sa.create_engine(f"sqlite:///{mapped / 'warehouse.db'}")
    with engine.connect() as conn:
        batches = conn.execute(sa.text("select batch_id, rows_pulled, status from lgsp_batch")).all()
    assert len(batches) == 4 and {b.status for b in batches} == {"loaded"}
    assert sum(b.rows_pulled for b in batches) == len(truth.records("land_parcel"))
    assert all(b.rows_pulled > 0 for b in batches)  # every slice pulled its own share
    landing = mapped / "lake" / "landing" / "land_parcels"
    filters = sorted(json.dumps(json.loads(m.read_text())["partition"], sort_keys=True)
                     for m in landing.glob("*/manifest.json"))
    assert filters == sorted(json.dumps(request_filter(p), sort_keys=True) for p in slices(_land_partition()))
    airflow_db = sa.create_engine(f"sqlite:///{mapped / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        states = conn.execute(sa.text("select task_id, map_index, state from task_instance "
                                      "where dag_id = 'lgsp_land_parcels'")).all()
    assert sorted((t, i) for t, i, _ in states if t == "extract") == [("extract", i) for i in range(4)]
    assert {s for _, _, s in states} == {"success"}
    with engine.connect() as conn:  # publish: every slice read the source to the end, so it synced now
        synced = conn.execute(sa.text("select synced_at from lgsp_cursor where pipeline = 'land_parcels'")).scalar()
    assert synced is not None

    # a second, incremental run through the slices lands nothing new and leaves the same warehouse
    proc = run(["lgsp", "run", "land_parcels", "--no-retries"], lgsp_env(mapped, **sandbox_handle.env()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert warehouse_snapshot(f"sqlite:///{mapped / 'warehouse.db'}", "land_parcel", "land_parcels") == one
    with engine.connect() as conn:  # nothing new, and still a complete sync
        assert conn.execute(sa.text("select synced_at from lgsp_cursor where pipeline = 'land_parcels'")
                            ).scalar() > synced

    # a full refresh through the slices, after an earlier run stored every parcel 7 hours late: the refresh's
    # rows are older, yet they are the source's truth now, and so is its newest time as the cursor
    url = f"sqlite:///{mapped / 'warehouse.db'}"
    _read_seven_hours_late(url)
    wrong = warehouse_snapshot(url, "land_parcel", "land_parcels")
    assert wrong["cursor"] != one["cursor"] and not set(wrong["rows"]) & set(one["rows"])  # type: ignore[arg-type]
    proc = run(["lgsp", "run", "land_parcels", "--full-refresh", "--no-retries"],
               lgsp_env(mapped, **sandbox_handle.env()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert warehouse_snapshot(url, "land_parcel", "land_parcels") == one
    with engine.connect() as conn:
        refresh = conn.execute(sa.text("select batch_id, mode, cursor_from from lgsp_batch where batch_id not in "
                                       f"({', '.join(repr(b.batch_id) for b in batches)}) and mode <> 'backfill'"
                                       )).all()
    assert len(refresh) == 4 and {(b.mode, b.cursor_from) for b in refresh} == {("full_refresh", None)}
    assert len({b.batch_id.rsplit(".", 1)[0] for b in refresh}) == 1  # one run: its slices share its id
