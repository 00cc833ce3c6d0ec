"""The Parquet lake: compaction, and one dataset for pyarrow, pandas and DuckDB before and after it."""
from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from typer.testing import CliRunner

import warehouse.lake as lake_module
from warehouse.lake import Lake

DAYS = [date(2025, 8, 1), date(2025, 8, 2)]
NOW = timedelta(0)  # compact files however young they are
VN = timezone(timedelta(hours=7))

SCHEMA = pa.schema([
    ("dossier_id", pa.string()),
    ("commune_code", pa.int32()),
    ("submitted_at", pa.timestamp("us", tz="UTC")),
    ("due_date", pa.date32()),
    ("online", pa.bool_()),
    ("fee", pa.float64()),
])


def _batch(day: date, number: int, rows: int = 7) -> pa.Table:
    """A small batch of dossiers, like a validated TTHC page."""
    start = datetime(day.year, day.month, day.day, 8, tzinfo=VN)
    return pa.table({
        "dossier_id": [f"{day:%m%d}-{number:02d}-{i:03d}" for i in range(rows)],
        "commune_code": [4000 + (number * rows + i) % 129 for i in range(rows)],
        "submitted_at": [start + timedelta(minutes=number * 60 + i) for i in range(rows)],
        "due_date": [day + timedelta(days=15 + i) for i in range(rows)],
        "online": [(number + i) % 3 != 0 for i in range(rows)],
        "fee": [None if i == 2 else 15000.0 * i for i in range(rows)],
    }, schema=SCHEMA)


def _fill(lake: Lake, batches: int = 5) -> list[Path]:
    paths = []
    for day in DAYS:
        for number in range(batches):
            paths.append(lake.write_parquet(_batch(day, number), "dossier", day, f"tthc-{day:%Y%m%d}-{number:02d}"))
    return paths


def _multiset(rows: list[dict[str, object]]) -> Counter[tuple[object, ...]]:
    """Rows as comparable tuples: values normalised so the three readers agree on equal rows."""
    def norm(v: object) -> object:
        if v is None or (isinstance(v, float) and v != v) or v is pd.NaT:
            return None
        if isinstance(v, (pd.Timestamp, datetime)):
            return pd.Timestamp(v).tz_convert("UTC").isoformat() if pd.Timestamp(v).tzinfo else \
                pd.Timestamp(v).isoformat()
        if isinstance(v, date):
            return v.isoformat()
        if hasattr(v, "item"):
            return v.item()  # numpy scalars
        return v
    columns = [*SCHEMA.names, "ingest_date"]
    return Counter(tuple(norm(row[c]) if c != "ingest_date" else str(row[c])[:10] for c in columns) for row in rows)


def _expected(batches: int = 5) -> Counter[tuple[object, ...]]:
    rows = []
    for day in DAYS:
        for number in range(batches):
            rows += [{**r, "ingest_date": day} for r in _batch(day, number).to_pylist()]
    return _multiset(rows)


def _read_pyarrow(lake: Lake) -> Counter[tuple[object, ...]]:
    return _multiset(pads.dataset(lake.dataset_path("dossier"), format="parquet",
                                  partitioning="hive").to_table().to_pylist())


def _read_pandas(lake: Lake) -> Counter[tuple[object, ...]]:
    frame = pd.read_parquet(lake.dataset_path("dossier"))
    return _multiset(frame.astype(object).where(frame.notna(), None).to_dict("records"))


def _read_duckdb(lake: Lake) -> Counter[tuple[object, ...]]:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rel = con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true)",
                          [f"{lake.dataset_path('dossier')}/**/*.parquet"])
        names = [d[0] for d in rel.description]
        return _multiset([dict(zip(names, row)) for row in rel.fetchall()])


def _files(lake: Lake) -> list[Path]:
    return sorted(lake.dataset_path("dossier").rglob("*.parquet"))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


@pytest.mark.parametrize("reader", [_read_pyarrow, _read_pandas, _read_duckdb])
def test_every_reader_sees_the_same_rows_before_and_after_compaction(lake: Lake, reader: object) -> None:
    _fill(lake)
    expected = _expected()
    assert reader(lake) == expected  # type: ignore[operator]
    lake.compact("dossier", min_age=NOW)
    assert reader(lake) == expected  # type: ignore[operator]


def test_compaction_merges_files_and_is_idempotent(lake: Lake) -> None:
    _fill(lake)
    assert len(_files(lake)) == 10
    done = lake.compact("dossier", min_age=NOW)
    assert [(c.ingest_date, c.files_before, c.files_after, c.rows) for c in done] == \
        [(DAYS[0], 5, 1, 35), (DAYS[1], 5, 1, 35)]
    after = _files(lake)
    assert len(after) == 2
    assert lake.compact("dossier", min_age=NOW) == []
    assert _files(lake) == after
    assert [(p.files, p.rows) for p in lake.info("dossier")] == [(1, 35), (1, 35)]
    assert not list((lake.root / ".staging").rglob("*.parquet"))


def test_target_rows_gives_a_few_files_without_splitting_a_batch(lake: Lake) -> None:
    _fill(lake)
    done = lake.compact("dossier", ingest_date=DAYS[0], target_rows=15, min_age=NOW)
    assert [(c.files_before, c.files_after) for c in done] == [(5, 3)]  # 14 + 14 + 7 rows
    assert [(p.files, p.rows) for p in lake.info("dossier")] == [(3, 35), (5, 35)]  # DAYS[1] untouched
    assert lake.compact("dossier", ingest_date=DAYS[0], target_rows=15, min_age=NOW) == []
    assert _read_duckdb(lake) == _expected()


def test_new_batches_after_compaction_are_merged_with_the_compacted_file(lake: Lake) -> None:
    _fill(lake)
    lake.compact("dossier", min_age=NOW)
    lake.write_parquet(_batch(DAYS[0], 9), "dossier", DAYS[0], "tthc-late")
    lake.compact("dossier", min_age=NOW)
    assert [(p.files, p.rows) for p in lake.info("dossier")] == [(1, 42), (1, 35)]
    assert lake.read_dataset("dossier").num_rows == 77


def test_young_partitions_are_left_alone(lake: Lake) -> None:
    _fill(lake)
    assert lake.compact("dossier") == []  # files younger than the default hour: loads may be pending
    old = (datetime.now() - timedelta(hours=2)).timestamp()
    for path in lake.partitions("dossier", DAYS[0])[0].glob("*.parquet"):
        os.utime(path, (old, old))
    assert [c.ingest_date for c in lake.compact("dossier")] == [DAYS[0]]


def test_types_are_preserved(lake: Lake) -> None:
    _fill(lake)
    lake.compact("dossier", min_age=NOW)
    table = lake.read_dataset("dossier")
    for field in SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.field("ingest_date").type == pa.date32()
    with duckdb.connect() as con:
        types = dict(con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = true))",
            [f"{lake.dataset_path('dossier')}/**/*.parquet"]).fetchall())
    assert types["submitted_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["due_date"] == "DATE" and types["online"] == "BOOLEAN" and types["ingest_date"] == "DATE"


def test_a_batch_stays_readable_by_its_path_after_compaction(lake: Lake) -> None:
    paths = _fill(lake)
    lake.compact("dossier", target_rows=15, min_age=NOW)
    for path in paths:
        assert not path.exists()
    day, number = DAYS[1], 3
    assert lake.read_batch(paths[5 + number]).equals(_batch(day, number))


@pytest.mark.parametrize("failing_step", ["_exchange_dirs", "_discard"])
def test_a_crash_mid_compaction_loses_and_doubles_nothing(lake: Lake, monkeypatch: pytest.MonkeyPatch,
                                                          failing_step: str) -> None:
    """Killed after the compacted file is written: before the swap, or after it but before the inputs go."""
    _fill(lake)
    real = getattr(lake_module, failing_step)

    def crash(*args: Path) -> None:
        if failing_step == "_exchange_dirs" or args[0].exists():
            raise KeyboardInterrupt("killed")
        real(*args)

    monkeypatch.setattr(lake_module, failing_step, crash)
    with pytest.raises(KeyboardInterrupt):
        lake.compact("dossier", min_age=NOW)
    assert list((lake.root / ".staging").rglob("*.parquet"))  # the debris is there, out of sight
    for reader in (_read_pyarrow, _read_pandas, _read_duckdb):
        assert reader(lake) == _expected()
    monkeypatch.setattr(lake_module, failing_step, real)
    lake.compact("dossier", min_age=NOW)
    assert len(_files(lake)) == 2
    assert not [p for p in (lake.root / ".staging").rglob("*") if p.is_file()]
    assert _read_duckdb(lake) == _expected()


def test_a_concurrent_reader_never_sees_a_row_twice_or_misses_one(lake: Lake) -> None:
    """A reader listing the lake while batches are written and compacted sees each row at most once,
    and every batch whose write had finished before its listing began."""
    stop = threading.Event()
    written: list[int] = [0]
    errors: list[str] = []

    def writer() -> None:
        for number in range(30):
            lake.write_parquet(_batch(DAYS[0], number, rows=3), "dossier", DAYS[0], f"b{number:03d}")
            written[0] = (number + 1) * 3
            if number % 3 == 2:
                lake.compact("dossier", min_age=NOW, target_rows=20)
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            floor = written[0]
            try:
                ids = pads.dataset(lake.dataset_path("dossier"), format="parquet").to_table(
                    columns=["dossier_id"]).column(0).to_pylist()
            except (FileNotFoundError, OSError):
                continue  # its listing went stale under a compaction: read again
            if len(ids) != len(set(ids)) or len(ids) < floor:
                errors.append(f"{len(ids)} rows, {len(set(ids))} distinct, {floor} written before")

    lake.write_parquet(_batch(DAYS[0], 99, rows=1), "dossier", DAYS[0], "seed")
    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]
    assert lake.read_dataset("dossier").num_rows == 91


def test_cli_lake_info_and_compact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.cli import app

    monkeypatch.setenv("LGSP_HOME", str(tmp_path))
    monkeypatch.delenv("LGSP_LAKE", raising=False)
    lake = Lake(tmp_path / "lake")
    _fill(lake)
    runner = CliRunner()
    info = runner.invoke(app, ["lake", "info"])
    assert info.exit_code == 0, info.output
    assert "dossier" in info.output and "2025-08-01" in info.output
    result = runner.invoke(app, ["lake", "compact", "dossier", "--min-age-minutes", "0"])
    assert result.exit_code == 0, result.output
    assert "5 files -> 1 (35 rows)" in result.output and "compacted 2 partition(s)" in result.output
    assert len(_files(lake)) == 2
    missing = runner.invoke(app, ["lake", "compact", "nope"])
    assert missing.exit_code == 1 and "no dataset 'nope'" in missing.output


def test_a_page_lands_as_one_line_and_pages_landed_one_record_per_line_still_read(lake: Lake) -> None:
    """`page-N.json` is `{"rows": N, "records": [...]}` on one line; an earlier `page-N.jsonl` reads the same."""
    import orjson

    first = [{"id": 1, "name": "Nguyễn Văn An", "at": datetime(2025, 8, 1, tzinfo=timezone.utc)}, {"id": 2}]
    path = lake.write_page("p", "b1", 1, first)
    assert path.name == "page-00001.json" and path.read_bytes().count(b"\n") == 1
    older = [{"id": 3, "note": "a,b},{c"}, {"id": 4}, {"id": 5}]  # the rewrap joins lines, never splits them
    (path.parent / "page-00002.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in older))
    lake.write_page("p", "b1", 10, [{"id": 6}])
    assert [p.name for p in lake.page_paths("p", "b1")] == ["page-00001.json", "page-00002.jsonl", "page-00010.json"]
    assert [lake.read_page(p)[0] for p in lake.page_paths("p", "b1")] == [2, 3, 1]
    assert [r["id"] for r in lake.read_records("p", "b1")] == [1, 2, 3, 4, 5, 6]
    assert next(iter(lake.read_records("p", "b1")))["at"] == "2025-08-01T00:00:00+00:00"
    assert lake.landed_page("p", "b1", 2) == path.parent / "page-00002.jsonl" and lake.landed_page("p", "b1", 3) is None
    assert list(lake.read_records("p", "b1"))[2]["note"] == "a,b},{c"


def test_a_damaged_page_is_named_with_what_to_do(lake: Lake) -> None:
    """A page file that is not `{"rows": N, ...}` fails with its path and the remedy, not a bare ValueError."""
    path = lake.write_page("p", "b2", 1, [{"id": 1}])
    path.write_bytes(b'[{"id": 1}]\n')
    with pytest.raises(ValueError, match=r"page-00001\.json does not start with .*rerun the pipeline"):
        lake.read_page(path)


def test_a_column_declared_later_is_read_with_the_older_files_and_kept_by_compaction(lake: Lake) -> None:
    lake.write_parquet(_batch(DAYS[0], 1), "dossier", DAYS[0], "tthc-1")  # before `channel` was declared
    newer = _batch(DAYS[1], 2)
    lake.write_parquet(newer.append_column("channel", pa.array(["online"] * newer.num_rows)), "dossier", DAYS[1],
                       "tthc-2")
    table = lake.read_dataset("dossier")
    assert table.num_rows == 14 and table.column("channel").to_pylist() == [None] * 7 + ["online"] * 7
    with duckdb.connect() as con:  # DuckDB unifies the files by name when asked to
        found = con.execute("SELECT count(channel) FROM read_parquet(?, hive_partitioning = true, "
                            "union_by_name = true)", [f"{lake.dataset_path('dossier')}/**/*.parquet"]).fetchone()
    assert found == (7,)
    lake.write_parquet(_batch(DAYS[1], 3), "dossier", DAYS[1], "tthc-3")  # a late batch without it, same day
    lake.compact("dossier", min_age=NOW)
    assert lake.read_dataset("dossier").column("channel").null_count == 14

    retyped = _batch(DAYS[1], 4)
    lake.write_parquet(retyped.set_column(1, "commune_code", pa.array(["x"] * retyped.num_rows)), "dossier",
                       DAYS[1], "tthc-4")
    with pytest.raises(ValueError, match="lake dataset dossier: its files disagree on a column's type"):
        lake.read_dataset("dossier")
    lake.write_parquet(retyped.set_column(1, "commune_code", pa.array(["y"] * retyped.num_rows)), "dossier",
                       DAYS[1], "tthc-5")
    done = lake.compact("dossier", min_age=NOW)  # the files before the type change apart from those after it
    assert [(c.files_before, c.files_after) for c in done] == [(3, 2)]
    assert lake.compact("dossier", min_age=NOW) == []  # and again: nothing to do
    kinds = sorted(str(pads.dataset(f).schema.field("commune_code").type) for f in lake.partitions(
        "dossier", DAYS[1])[0].glob("*.parquet"))
    assert kinds == ["int32", "string"]
