"""Validate and load stream a batch in chunks: the result is the same as one chunk, and
cursor and data commit together even when the process dies between them. A run's three
steps overlap (`lgsp.streaming`) and end exactly as when they run one after another;
a quality failure mid-stream loads nothing; a killed run takes its extract process with
it and the rerun converges.

Real sandbox peers over loopback, the real runner, SQLite and a real PostgreSQL.
"""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from catalog import load_catalog
from quality.reference import province_communes
from tests.test_sync_truth import assert_identical_to_truth
from tests.test_systems import PULLS, small_pages_catalog

ROOT = Path(__file__).resolve().parent.parent
COMMUNE = sorted(province_communes(37))[0]


@pytest.mark.parametrize("streaming", ["1", "0"], ids=["overlapping", "step-by-step"])
def test_every_pull_pipeline_in_tiny_chunks_ends_identical_to_truth(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streaming: str) -> None:
    """Chunks of 40 rows (every batch spans several, defects in most): same warehouse as the truth,
    whether extract, validate and load overlap or run one after another."""
    from lgsp import runner, streaming as streaming_module

    monkeypatch.setattr(runner, "CHUNK_ROWS", 40)
    monkeypatch.setenv("LGSP_STREAMING", streaming)
    calls: list[str] = []
    real = streaming_module.run_streaming
    monkeypatch.setattr(streaming_module, "run_streaming",
                        lambda ctx, **kw: calls.append(ctx.pipeline.name) or real(ctx, **kw))
    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=25))
    for name in PULLS:
        result = runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)
        assert result["rows_valid"] + result["rows_quarantined"] + result["rows_superseded"] == result["rows_pulled"]
        assert gc.get_freeze_count() == 0  # what a validation froze out of the collections is given back
    wh = runner.open_warehouse(catalog, lgsp_env)
    for name in PULLS:
        assert_identical_to_truth(wh, catalog, sandbox_handle, name)
        assert runner.run_pipeline(name, catalog=catalog, settings=lgsp_env, full_refresh=True)["rows_changed"] == 0
    assert calls == (PULLS + PULLS if streaming == "1" else []), calls  # each pipeline's run and its refresh


def test_a_batch_of_one_page_is_pulled_without_a_child_process(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose first page is its last (most incremental runs) is pulled by the run itself; the pages
    after the first of a longer batch are pulled by the extract child. Both end identical to the truth."""
    from lgsp import runner, streaming

    children: list[str] = []
    real = streaming._Extract.__init__
    monkeypatch.setattr(streaming._Extract, "__init__",
                        lambda self, ctx, start: children.append(ctx.pipeline.name) or real(self, ctx, start))
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    catalog = load_catalog(small_pages_catalog(tmp_path / "one", page_size=1000))
    pages = {name: runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)["pages"] for name in PULLS}
    assert children == [name for name in PULLS if pages[name] > 1], (children, pages)
    assert sum(pages[name] == 1 for name in PULLS) >= len(PULLS) // 2, pages
    wh = runner.open_warehouse(catalog, lgsp_env)
    for name in PULLS:
        assert_identical_to_truth(wh, catalog, sandbox_handle, name)
    wh.engine.dispose()

    children.clear()
    many = load_catalog(small_pages_catalog(tmp_path / "many", page_size=25))
    result = runner.run_pipeline(PULLS[0], catalog=many, settings=lgsp_env, full_refresh=True)
    assert result["pages"] > 1 and children == [PULLS[0]]


def test_a_one_page_batch_reads_the_rows_it_will_merge_ahead_while_it_is_checked(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the stored rows of a one-page batch's keys are read ahead as soon as the page has landed
    (before its bookkeeping, not when its load starts), once; the merge ends identical to the truth. SQLite
    reads nothing ahead."""
    import inspect

    from lgsp import runner
    from warehouse import store

    monkeypatch.setattr(store, "READ_AHEAD_MIN_ROWS", 1)
    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=1000))
    name = "population_citizens"  # merged on a one-column key
    first = runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)
    assert first["pages"] == 1 and first["rows_pulled"] > 1
    calls: list[tuple[str, int, str, bool]] = []
    readers = store.Warehouse._readers

    def spied(self: Any, table: sa.Table, key: str, keys: list[Any]) -> Any:
        stack = [frame.function for frame in inspect.stack()]
        calls.append((table.name, len(keys), stack[1], "pull_pages" in stack))
        return readers(self, table, key, keys)

    monkeypatch.setattr(store.Warehouse, "_readers", spied)
    again = runner.run_pipeline(name, catalog=catalog, settings=lgsp_env, full_refresh=True)
    assert again["pages"] == 1 and again["rows_changed"] == 0
    postgres = lgsp_env.database_url.startswith("postgresql")
    assert calls == ([("core_citizen", again["rows_pulled"], "read_ahead", True)] if postgres else []), calls
    wh = runner.open_warehouse(catalog, lgsp_env)
    assert_identical_to_truth(wh, catalog, sandbox_handle, name)
    wh.engine.dispose()


def test_a_one_page_batch_is_expected_while_postgresql_merges_it(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL, a batch of one chunk: its expectations (GX, pure Python) start once its rows are staged
    and the server merges them, not while the loading thread still hashes and stages them; the result is
    the truth. SQLite loads after validating: nothing to wait for."""
    from lgsp import runner
    from quality.expectations import BatchCheck
    from warehouse import store

    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=1000))
    name = "population_citizens"
    runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)
    events: list[str] = []
    stage, add = store.Warehouse._copy_to_stage, BatchCheck.add

    def staged(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return stage(self, *args, **kwargs)
        finally:
            events.append("staged")

    def expected(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("expected")
        return add(self, *args, **kwargs)

    monkeypatch.setattr(store.Warehouse, "_copy_to_stage", staged)
    monkeypatch.setattr(BatchCheck, "add", expected)
    again = runner.run_pipeline(name, catalog=catalog, settings=lgsp_env, full_refresh=True)
    assert again["pages"] == 1 and again["rows_pulled"] >= store.COPY_MIN_ROWS and again["rows_changed"] == 0
    postgres = lgsp_env.database_url.startswith("postgresql")
    assert events == (["staged", "expected"] if postgres else ["expected"]), events
    wh = runner.open_warehouse(catalog, lgsp_env)
    assert_identical_to_truth(wh, catalog, sandbox_handle, name)
    wh.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the merge that waits is PostgreSQL's
@pytest.mark.parametrize("streaming", ["1", "0"], ids=["streaming", "steps"])
def test_a_one_page_batch_whose_merge_postgresql_refuses_fails_and_the_rerun_converges(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, streaming: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The expectations of a one-page batch wait for its merge: when PostgreSQL refuses the merge (a
    constraint added by hand), the run still ends, with the server's error, nothing of the batch
    written, the cursor where it was and the batch left validated with the reason; once the constraint
    is gone, the next run loads that batch and ends as the truth. The same with the steps one after
    another (LGSP_STREAMING=0)."""
    from lgsp import runner

    monkeypatch.setenv("LGSP_STREAMING", streaming)
    from lgsp.report import last_failure

    catalog = load_catalog(small_pages_catalog(tmp_path, page_size=1000))
    name = "population_citizens"
    runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)
    wh = runner.open_warehouse(catalog, lgsp_env)
    cursor, before = wh.get_cursor(name), wh.count("core_citizen")
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE core_citizen SET _row_hash = _row_hash + 1")  # every row will be merged again
        # no row written from now on passes it; the stored rows are not checked
        conn.exec_driver_sql("ALTER TABLE core_citizen ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
    started = time.monotonic()
    with pytest.raises(sa.exc.IntegrityError, match="refuse_all"):
        runner.run_pipeline(name, catalog=catalog, settings=lgsp_env, full_refresh=True)
    assert time.monotonic() - started < 60

    def latest() -> Any:  # batch ids made in the same second do not sort by time: started_at does
        with wh.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT batch_id, status, message FROM lgsp_batch "
                                        "ORDER BY started_at DESC LIMIT 1").one()

    refused = latest()
    assert refused.status == "validated" and "refuse_all" in refused.message and "next run" in refused.message
    assert "INSERT" not in refused.message  # the server's reason, not the statement
    assert last_failure(wh, name) == refused.message  # what `lgsp demo` prints as the cause
    with wh.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM core_citizen WHERE _batch_id = %(b)s",
                                    {"b": refused.batch_id}).scalar() == 0
    assert wh.get_cursor(name) == cursor and wh.count("core_citizen") == before
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE core_citizen DROP CONSTRAINT refuse_all")
    again = runner.run_pipeline(name, catalog=catalog, settings=lgsp_env)
    assert again["batch_id"] == refused.batch_id and again["pages"] == 1 and again["rows_changed"] == before
    assert latest().status == "loaded" and latest().message is None and last_failure(wh, name) is None
    assert wh.get_cursor(name) == cursor
    assert_identical_to_truth(wh, catalog, sandbox_handle, name)
    wh.engine.dispose()


def test_a_quality_failure_mid_stream_loads_nothing(lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half the rows are bad: chunks already written by the overlapping load are rolled back with the batch."""
    from lgsp import runner
    from quality import QualityError
    from sandbox import start_sandbox
    from warehouse import Warehouse

    monkeypatch.setattr(runner, "CHUNK_ROWS", 40)
    with start_sandbox(seed=11, citizens=400, dossiers=10, defect_rate=0.5) as bad:
        monkeypatch.setenv("LGSP_POPULATION_WSDL", bad.population_wsdl)
        with pytest.raises(QualityError, match=r"dataset citizen, batch .*expect_column_values_to_be_in_set"):
            runner.run_pipeline("population_citizens")
        pulled, defects = len(bad.data.citizens), len(bad.data.citizen_defects)
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    assert wh.count("core_citizen") == 0, "rows of a batch that failed its checks were loaded"
    assert wh.count("lgsp_quarantine") == defects > 0
    assert wh.get_cursor("population_citizens") is None
    batches = wh.table("lgsp_batch")
    with wh.engine.connect() as conn:
        status, rows, message = conn.execute(sa.select(batches.c.status, batches.c.rows_pulled,
                                                       batches.c.message)).one()
    assert status == "failed" and "expectation" in message
    assert rows == pulled, "the extract did not finish landing the batch"


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def test_a_killed_run_takes_its_extract_with_it_and_the_rerun_converges(
        lgsp_env: Any, sandbox_handle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the run while its extract child is paging: the child dies too; the rerun resumes the batch."""
    from lgsp import runner

    catalog_dir = small_pages_catalog(tmp_path, page_size=25)
    monkeypatch.setenv("LGSP_CATALOG_DIR", str(catalog_dir))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sandbox_handle.faults.latency_s = 0.2  # 36 pages of dossiers: about 7 s of paging
    script = "from lgsp import runner; runner.run_pipeline('tthc_dossiers')"
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    landing = lgsp_env.lake_root / "landing" / "tthc_dossiers"
    try:
        deadline = time.monotonic() + 120
        while len(list(landing.glob("*/page-*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "no page landed"
            time.sleep(0.05)
        children = _children(proc.pid)
        assert children, "no extract process"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sandbox_handle.faults.latency_s = 0.0
    deadline = time.monotonic() + 2  # left alone, the extract would page on for about 6 s more
    while not all(_gone(pid) for pid in children):
        assert time.monotonic() < deadline, f"extract process(es) {children} outlived the run"
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(list(landing.glob("*/page-*.json"))) < 36, "the extract went on paging after the run was killed"
    catalog = load_catalog(catalog_dir)
    result = runner.run_pipeline("tthc_dossiers", catalog=catalog, settings=lgsp_env)
    assert result["pages"] == 36 and len(list(landing.glob("*/page-*.json"))) == 36  # resumed, not restarted
    assert_identical_to_truth(runner.open_warehouse(catalog, lgsp_env), catalog, sandbox_handle, "tthc_dossiers")


def _land(ctx: Any, records: list[dict[str, Any]], per_page: int) -> str:
    """Land `records` as a batch of the context's pipeline, as extract would."""
    from lgsp import runner

    batch_id = runner._start_batch(ctx, "incremental", None, None)
    pages = [records[i:i + per_page] for i in range(0, len(records), per_page)]
    for number, page in enumerate(pages, start=1):
        ctx.lake.write_page(ctx.pipeline.name, batch_id, number, page)
    ctx.lake.write_manifest(ctx.pipeline.name, batch_id, {
        "batch_id": batch_id, "pipeline": ctx.pipeline.name, "dataset": ctx.pipeline.dataset, "pages": len(pages),
        "rows_pulled": len(records), "mode": "incremental", "cursor_from": None, "cursor_until": None})
    runner._update_batch(ctx, batch_id, status="extracted", rows_pulled=len(records))
    return batch_id


def test_a_record_repeated_across_chunks_keeps_its_newest_version(
        lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Newer then older (and older then newer) versions of one key, chunks apart: the newest wins."""
    from lgsp import runner

    monkeypatch.setattr(runner, "CHUNK_ROWS", 2)
    ctx = runner.context("population_citizens", settings=lgsp_env)
    t0 = datetime(2025, 8, 1, tzinfo=timezone.utc)
    base = {"full_name": "Nguyễn Văn An", "birth_date": "1990-01-01", "sex": "male", "commune_code": COMMUNE,
            "phone": "0912345678"}
    records = [
        {**base, "personal_id": "037090000101", "address": "new", "updated_at": (t0 + timedelta(days=2)).isoformat()},
        {**base, "personal_id": "037090000102", "address": "old", "updated_at": t0.isoformat()},
        {**base, "personal_id": "037090000103", "address": "x", "updated_at": t0.isoformat()},
        {**base, "personal_id": "037090000101", "address": "old", "updated_at": t0.isoformat()},
        {**base, "personal_id": "037090000102", "address": "new", "updated_at": (t0 + timedelta(days=2)).isoformat()},
    ]
    batch_id = _land(ctx, records, per_page=1)
    validated = runner.validate(ctx, batch_id)
    assert (validated["rows_valid"], validated["rows_superseded"]) == (5, 0)  # the repeats are chunks apart
    runner.load(ctx, batch_id)
    table = ctx.warehouse.core["citizen"]
    with ctx.warehouse.engine.connect() as conn:
        rows = dict(conn.execute(sa.select(table.c.personal_id, table.c.address)).all())
    assert rows == {"037090000101": "new", "037090000102": "new", "037090000103": "x"}


def test_a_chunk_with_a_wrongly_typed_value_is_read_exactly(lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A number where a string belongs sends its chunk off the Arrow fast path; the row goes to quarantine."""
    from lgsp import runner

    monkeypatch.setattr(runner, "CHUNK_ROWS", 2)
    ctx = runner.context("population_citizens", settings=lgsp_env)
    good = {"full_name": "Trần Thị Bình", "birth_date": "1990-01-01", "sex": "female", "commune_code": COMMUNE,
            "address": "Thôn 1", "phone": "0912345678", "updated_at": "2025-08-01T00:00:00+00:00"}
    records = [{**good, "personal_id": f"037190000{n:03d}"} for n in range(6)]
    records[3]["full_name"] = 12345
    batch_id = _land(ctx, records, per_page=2)
    result = runner.validate(ctx, batch_id)
    assert (result["rows_valid"], result["rows_quarantined"]) == (5, 1)
    q = ctx.warehouse.system["lgsp_quarantine"]
    with ctx.warehouse.engine.connect() as conn:
        (rule, payload), = conn.execute(sa.select(q.c.rule, q.c.payload).where(q.c.batch_id == batch_id)).all()
    assert rule == "type" and '"full_name": 12345' in payload


LOAD_SCRIPT = """
import sys
from lgsp import runner
ctx = runner.context("business_enterprises")
runner.load(ctx, sys.argv[1])
"""


@pytest.mark.postgres
def test_a_load_killed_after_writing_data_but_before_commit_loses_and_doubles_nothing(
        pg_url: str, sandbox_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The load blocks on the cursor table (locked by the test) after writing its rows; SIGKILL; rerun."""
    from lgsp import runner
    from lgsp.settings import load_settings

    env = {**os.environ, "LGSP_HOME": str(tmp_path), "LGSP_DATABASE_URL": pg_url, "PYTHONPATH": str(ROOT)}
    monkeypatch.setenv("LGSP_HOME", str(tmp_path))
    monkeypatch.setenv("LGSP_DATABASE_URL", pg_url)
    ctx = runner.context("business_enterprises", settings=load_settings())
    batch_id = runner.extract(ctx)["batch_id"]
    validated = runner.validate(ctx, batch_id)
    table, cursor = ctx.warehouse.core["enterprise"], ctx.warehouse.system["lgsp_cursor"]
    locker = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with locker.connect() as lock:
        lock.exec_driver_sql("BEGIN")
        lock.exec_driver_sql("LOCK TABLE lgsp_cursor IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, batch_id], env=env)
        try:
            deadline = time.monotonic() + 120
            while not _waits_on_lock(lock, "lgsp_cursor"):
                assert proc.poll() is None, "the load ended instead of blocking on the cursor"
                assert time.monotonic() < deadline, "the load never reached the cursor update"
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        lock.exec_driver_sql("ROLLBACK")
    with ctx.warehouse.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0, "rows without a cursor"
        assert conn.execute(sa.select(cursor.c.cursor_value)).first() is None, "a cursor without its rows"
    assert runner.run_pipeline("business_enterprises", settings=load_settings())["batch_id"] == batch_id
    with ctx.warehouse.engine.connect() as conn:
        landed = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
        assert conn.execute(sa.select(cursor.c.cursor_value)).scalar() is not None
    assert landed == validated["rows_valid"]


def _waits_on_lock(conn: sa.Connection, relation: str) -> bool:
    """True when another backend waits for a lock on `relation`."""
    return bool(conn.exec_driver_sql(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE c.relname = %(rel)s AND NOT l.granted", {"rel": relation}).scalar())


def _primary_key(conn: sa.Connection, table: str) -> tuple[str, list[str]] | None:
    row = conn.exec_driver_sql(
        "SELECT c.conname, array_agg(a.attname ORDER BY a.attnum) FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
        "WHERE c.conrelid = %(t)s::regclass AND c.contype = 'p' GROUP BY c.conname", {"t": table}).first()
    return (row[0], list(row[1])) if row else None


@pytest.mark.postgres
def test_the_first_load_of_an_empty_table_rebuilds_its_key_and_never_waits_on_a_reader(
        pg_url: str, sandbox_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty table loads through drop-key/COPY/add-key and keeps its key; a reader holding a lock
    on another empty table sends that load the ordinary way instead of making either wait."""
    import threading

    from lgsp import runner
    from lgsp.settings import load_settings

    monkeypatch.setenv("LGSP_HOME", str(tmp_path))
    monkeypatch.setenv("LGSP_DATABASE_URL", pg_url)
    monkeypatch.setattr(runner, "CHUNK_ROWS", 100)
    ctxs = {name: runner.context(name, settings=load_settings()) for name in ("population_citizens", "tthc_dossiers")}
    batches = {}
    for name, ctx in ctxs.items():
        batches[name] = runner.extract(ctx)["batch_id"]
        runner.validate(ctx, batches[name])
    wh = ctxs["tthc_dossiers"].warehouse
    with wh.engine.connect() as conn:
        keys_before = {t: _primary_key(conn, t) for t in ("core_citizen", "core_dossier")}
    assert all(keys_before.values())

    runner.load(ctxs["tthc_dossiers"], batches["tthc_dossiers"])  # nobody else: the bulk path

    reader = wh.engine.connect()
    reader.exec_driver_sql("BEGIN")
    assert reader.exec_driver_sql("SELECT count(*) FROM core_citizen").scalar() == 0  # holds ACCESS SHARE
    done: list[Any] = []
    loading = threading.Thread(target=lambda: done.append(runner.load(ctxs["population_citizens"],
                                                                      batches["population_citizens"])))
    loading.start()
    loading.join(timeout=30)
    loaded_beside_the_reader = bool(done)
    reader.exec_driver_sql("ROLLBACK")
    reader.close()
    loading.join(timeout=60)
    assert loaded_beside_the_reader, "the load of citizens waited for the reader (or failed)"
    with wh.engine.connect() as conn:
        assert {t: _primary_key(conn, t) for t in keys_before} == keys_before
        for table, name in (("core_citizen", "population_citizens"), ("core_dossier", "tthc_dossiers")):
            count = conn.exec_driver_sql(f"SELECT count(*), count(DISTINCT _batch_id) FROM {table}").one()
            assert count == (runner.context(name).lake.read_manifest(name, batches[name])["rows_valid"], 1)


def test_a_batch_landed_one_record_per_line_by_an_earlier_version_validates_the_same(
        lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old `.jsonl` pages (a batch landed before the upgrade) and new pages give the same rows and quarantine."""
    import orjson

    from lgsp import runner

    monkeypatch.setattr(runner, "CHUNK_ROWS", 3)
    ctx = runner.context("population_citizens", settings=lgsp_env)
    good = {"full_name": "Trần Thị Bình", "birth_date": "1990-01-01", "sex": "female", "commune_code": COMMUNE,
            "address": "Thôn 1", "phone": "0912345678", "updated_at": "2025-08-01T00:00:00+00:00"}
    records = [{**good, "personal_id": f"037190000{n:03d}"} for n in range(7)]
    records[4]["phone"] = "12345"  # a row rule's reject on the fast path: its original comes from its own page
    outcomes = []
    for old in (False, True):
        batch_id = _land(ctx, records, per_page=2)
        if old:
            for path in ctx.lake.page_paths(ctx.pipeline.name, batch_id):
                lines = b"".join(orjson.dumps(r) + b"\n" for r in ctx.lake.page_records(ctx.lake.read_page(path)[1]))
                path.with_suffix(".jsonl").write_bytes(lines)
                path.unlink()
            assert all(p.suffix == ".jsonl" for p in ctx.lake.page_paths(ctx.pipeline.name, batch_id))
        result = runner.validate(ctx, batch_id)
        q = ctx.warehouse.system["lgsp_quarantine"]
        with ctx.warehouse.engine.connect() as conn:
            quarantined = conn.execute(sa.select(q.c.record_key, q.c.rule, q.c.payload)
                                       .where(q.c.last_batch_id == batch_id)).all()
        outcomes.append((result["rows_valid"], result["rows_quarantined"], [tuple(r) for r in quarantined]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == (6, 1) and outcomes[0][2][0][0] == "037190000004"
    assert '"phone": "12345"' in outcomes[0][2][0][2]
