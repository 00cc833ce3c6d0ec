"""Dates and times a source writes its own way: a column's `format` and `timezone` (catalog.models.ColumnSpec).

Vietnamese systems write `15/08/1990` and `20250815093000`, and local times without a zone. Read as ISO 8601
and UTC, the first two went to quarantine and the third landed seven hours late. Each test below uses the real
typing code, the real sandbox portal, real syncs into both stores, and `lgsp discover` against a real peer.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from catalog.loader import CATALOG_DIR, CatalogError, load_catalog
from catalog.models import ColumnSpec, DatasetSpec
from schemas.arrow import coerce, coerce_arrow, json_schema
from tests.test_discover import HoSoPeer, _district_system

UTC = timezone.utc
VN = timezone(timedelta(hours=7))
DATASET = DatasetSpec(name="t", title="t", key=["k"], columns={
    "k": ColumnSpec(type="string"),
    "born": ColumnSpec(type="date", format="%d/%m/%Y"),
    "portal": ColumnSpec(type="timestamp", format="%Y%m%d%H%M%S", timezone="Asia/Ho_Chi_Minh"),
    "local": ColumnSpec(type="timestamp", timezone="Asia/Ho_Chi_Minh"),
    "zoned": ColumnSpec(type="timestamp", format="%d/%m/%Y %H:%M:%S%z"),
    "plain": ColumnSpec(type="timestamp"),
})
RECORDS = [  # (record, what each value is read as)
    {"k": "a", "born": "15/08/1990", "portal": "20250815093000", "local": "2025-08-15 09:30:00",
     "zoned": "15/08/2025 09:30:00+0700", "plain": "2025-08-15T09:30:00"},
    {"k": "b", "born": "01/02/1991", "portal": "20251231235959", "local": "2025-08-15T09:30:00Z",
     "zoned": "15/08/2025 09:30:00+0000", "plain": "2025-08-15T09:30:00+07:00"},
    {"k": "c", "born": "1990-08-15", "portal": "20250815093000", "local": "2025-08-15T09:30:00+07:00",
     "zoned": None, "plain": None},
    {"k": "d", "born": "31/02/1990", "portal": None, "local": None, "zoned": None, "plain": None},
    {"k": "e", "born": None, "portal": "2025-08-15", "local": "2025-08-15", "zoned": None, "plain": "2025-08-15"},
]
READ = {
    "a": {"born": date(1990, 8, 15), "portal": datetime(2025, 8, 15, 2, 30, tzinfo=UTC),
          "local": datetime(2025, 8, 15, 2, 30, tzinfo=UTC), "zoned": datetime(2025, 8, 15, 2, 30, tzinfo=UTC),
          "plain": datetime(2025, 8, 15, 9, 30, tzinfo=UTC)},  # no timezone said: UTC, as before
    "b": {"born": date(1991, 2, 1), "portal": datetime(2025, 12, 31, 16, 59, 59, tzinfo=UTC),
          "local": datetime(2025, 8, 15, 9, 30, tzinfo=UTC), "zoned": datetime(2025, 8, 15, 9, 30, tzinfo=UTC),
          "plain": datetime(2025, 8, 15, 2, 30, tzinfo=UTC)},  # a time with its zone is read in it
    "c": {"portal": datetime(2025, 8, 15, 2, 30, tzinfo=UTC), "local": datetime(2025, 8, 15, 2, 30, tzinfo=UTC)},
    "e": {"local": datetime(2025, 8, 14, 17, 0, tzinfo=UTC), "plain": datetime(2025, 8, 15, tzinfo=UTC)},
}
WRONG = {"c": "born: '1990-08-15' is not a valid date (format %d/%m/%Y)",
         "d": "born: '31/02/1990' is not a valid date (format %d/%m/%Y)",
         "e": "portal: '2025-08-15' is not a valid timestamp (format %Y%m%d%H%M%S)"}


def _values(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        out[row["k"]] = {c: (v.date() if c == "born" else v.to_pydatetime())
                         for c, v in row.items() if c != "k" and not pd.isna(v)}
    return out


def _reasons(batch: Any, frame: pd.DataFrame) -> dict[str, str]:
    return {frame["k"].iloc[pos]: reason for pos, reason in batch.type_errors.items()}


def test_each_written_form_is_read_alike_on_both_typing_paths() -> None:
    """`coerce` (any record) and `coerce_arrow` (JSON lines read by Arrow, the fast path) agree value for value, and
    a value not in the column's form goes to quarantine saying the form expected."""
    batch = coerce(RECORDS, DATASET)
    assert _values(batch.frame) == {k: READ.get(k, {}) for k in "abcde"}
    assert _reasons(batch, batch.frame) == WRONG
    table = pa.Table.from_pylist(RECORDS, schema=json_schema(DATASET))
    fast = coerce_arrow(table, DATASET)
    assert fast is not None
    assert _values(fast.frame) == _values(batch.frame)
    assert _reasons(fast, fast.frame) == WRONG
    assert str(fast.frame["local"].dtype) == str(batch.frame["local"].dtype) == "datetime64[us, UTC]"

    # every time of a zone-less column without a zone: Arrow reads them in the column's zone
    naive = pa.table({name: pa.array([None, None], pa.string()) for name in DATASET.columns} |
                     {"k": ["x", "y"], "local": ["2025-08-15 09:30:00", "2025-01-01T00:00:00"]})
    assert coerce_arrow(naive, DATASET).frame["local"].tolist() == [
        pd.Timestamp("2025-08-15T02:30:00Z"), pd.Timestamp("2024-12-31T17:00:00Z")]


def test_the_date_and_time_objects_soap_gives_are_read_in_the_columns_zone() -> None:
    """zeep gives `date` and `datetime` objects; one without a zone is a time of the column's zone, and a format
    (for text) does not apply to them."""
    records = [{"k": "a", "born": date(1990, 8, 15), "portal": datetime(2025, 8, 15, 9, 30),
                "local": datetime(2025, 8, 15, 9, 30, tzinfo=UTC), "plain": datetime(2025, 8, 15, 9, 30)},
               {"k": "b", "born": "15/08/1990", "portal": "20250815093000", "local": datetime(2025, 8, 15, 9, 30),
                "plain": None}]
    batch = coerce(records, DATASET)
    assert batch.type_errors == {}
    assert _values(batch.frame) == {
        "a": {"born": date(1990, 8, 15), "portal": datetime(2025, 8, 15, 2, 30, tzinfo=UTC),
              "local": datetime(2025, 8, 15, 9, 30, tzinfo=UTC), "plain": datetime(2025, 8, 15, 9, 30, tzinfo=UTC)},
        "b": {"born": date(1990, 8, 15), "portal": datetime(2025, 8, 15, 2, 30, tzinfo=UTC),
              "local": datetime(2025, 8, 15, 2, 30, tzinfo=UTC)}}


@pytest.mark.parametrize("column, said", [
    ("format: \"yyyyMMddHHmmss\"", "has no %-directive: it is a strptime pattern"),
    ("format: \"%Y%m%d%H%M%Q\"", "unknown directive(s) %Q"),
    ("timezone: Hanoi", "timezone 'Hanoi' is not an IANA time zone name"),
])
def test_a_wrong_form_or_zone_is_refused_naming_the_file_and_field(column: str, said: str, tmp_path: Path) -> None:
    target = tmp_path / "catalog"
    target.mkdir()
    for source in CATALOG_DIR.glob("*.yaml"):
        text = source.read_text(encoding="utf-8")
        if source.name == "datasets.yaml":
            shipped = "format: \"%Y%m%d%H%M%S\"" if column.startswith("format") else "timezone: Asia/Ho_Chi_Minh"
            assert text.count(shipped) == 1
            text = text.replace(shipped, column)
        (target / source.name).write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(target)
    message = str(caught.value)
    assert "datasets.yaml" in message and "procedure" in message and "updated_at" in message and said in message


def test_format_and_timezone_only_where_they_mean_something() -> None:
    with pytest.raises(ValueError, match="format is for date and timestamp columns, not string"):
        ColumnSpec(type="string", format="%d/%m/%Y")
    with pytest.raises(ValueError, match="timezone is for timestamp columns, not date"):
        ColumnSpec(type="date", timezone="Asia/Ho_Chi_Minh")


def _held(wh: Any, dataset: str, key: str, column: str) -> dict[str, Any]:
    """{key: value} of a core table, read through its typed SQLAlchemy table (SQLite's times come back naive UTC)."""
    table = wh.core[dataset]
    current = [table.c.is_current.is_(True)] if "is_current" in table.c else []  # a history: its current versions
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c[key], table.c[column]).where(*current)).all()
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for k, v in rows}


def test_the_portals_times_are_read_in_vietnams_time_and_drive_its_cursor(lgsp_env: Any,
                                                                          sandbox_handle: Any) -> None:
    """The DVCQG writes `NgayCapNhat` as yyyyMMddHHmmss in Vietnam's time: `procedure.updated_at` holds the instant
    it means, on both stores, and is the cursor of the catalogue's (now incremental) sync and of its backfill."""
    from lgsp import runner
    from sandbox.dvcqg_rest import parse_portal_time

    truth = {p["MaTTHC"]: parse_portal_time(p["NgayCapNhat"]) for p in sandbox_handle.data.procedures}
    first = runner.run_pipeline("dvcqg_procedures", settings=lgsp_env)
    assert (first["rows_pulled"], first["rows_quarantined"]) == (len(truth), 0)
    wh = runner.open_warehouse(None, lgsp_env)
    assert _held(wh, "procedure", "procedure_code", "updated_at") == truth  # aware instants compare as such

    again = runner.run_pipeline("dvcqg_procedures", settings=lgsp_env)
    newest = max(truth.values())
    within_lookback = sum(1 for t in truth.values() if t >= newest - timedelta(hours=1))
    assert again["mode"] == "incremental" and 0 < again["rows_pulled"] == within_lookback < len(truth)
    assert again["rows_changed"] == 0

    since, until = datetime(2025, 8, 10, tzinfo=VN), datetime(2025, 8, 20, tzinfo=VN)
    inside = sum(1 for t in truth.values() if since <= t < until)
    assert 0 < inside < len(truth)
    window = runner.run_pipeline("dvcqg_procedures", since=since, until=until, settings=lgsp_env)
    assert (window["mode"], window["rows_pulled"], window["rows_changed"]) == ("backfill", inside, 0)


class LegacyPeer(HoSoPeer):
    """The district peer as an older system writes it: the receipt date `dd/mm/yyyy`, the change time in Vietnam's
    time without a zone (its `TuNgay`/`DenNgay` still take ISO 8601 with a zone)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        for row in self.rows:
            row["NgayTiepNhan"] = date.fromisoformat(row["NgayTiepNhan"]).strftime("%d/%m/%Y")
            row["NgayCapNhat"] = datetime.fromisoformat(row["NgayCapNhat"]).strftime("%Y-%m-%d %H:%M:%S")

    def when(self, row: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(row["NgayCapNhat"]).replace(tzinfo=VN)


def test_discover_drafts_a_peers_own_forms_and_the_sync_reads_them(tmp_path: Path, lgsp_env: Any) -> None:
    from lgsp import runner
    from lgsp.discover import compare, discover, write_draft
    from loopback import serving

    peer = LegacyPeer(230)
    with serving(peer) as base:
        target = _district_system(tmp_path / "catalog", base)
        draft = discover(load_catalog(target), "mot_cua_huyen", "/api/hoso", dataset="ho_so")
        assert draft.columns["ngay_tiep_nhan"].spec() == {"type": "date", "format": "%d/%m/%Y"}
        assert draft.columns["ngay_cap_nhat"].spec() == {"type": "timestamp", "timezone": "Asia/Ho_Chi_Minh"}
        assert "column ngay_tiep_nhan: dates written %d/%m/%Y (day first: no value says which comes first)" in \
            draft.notes
        assert (draft.cursor_field, draft.source["cursor_param"]) == ("ngay_cap_nhat", "TuNgay")  # confirmed by asking
        write_draft(draft, target)
        catalog = load_catalog(target)
        first = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        kept = [r for r in peer.rows if not r["DaXoa"]]
        assert (first["rows_pulled"], first["rows_quarantined"]) == (230, 0)
        wh = runner.open_warehouse(catalog, lgsp_env)
        assert _held(wh, "ho_so", "ma_ho_so", "ngay_cap_nhat") == {r["MaHoSo"]: peer.when(r) for r in kept}
        assert _held(wh, "ho_so", "ma_ho_so", "ngay_tiep_nhan") == {
            r["MaHoSo"]: datetime.strptime(r["NgayTiepNhan"], "%d/%m/%Y").date() for r in kept}
        again = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        newest = max(peer.when(r) for r in peer.rows)
        assert again["rows_pulled"] == sum(1 for r in peer.rows if peer.when(r) >= newest - timedelta(hours=1))

        # the same catalog without the zone: the comparison says the times would be read as UTC
        datasets = (target / "datasets.yaml").read_text(encoding="utf-8")
        (target / "datasets.yaml").write_text(datasets.replace(", timezone: Asia/Ho_Chi_Minh", ""), encoding="utf-8")
        findings = compare(load_catalog(target), "mot_cua_huyen_ho_sos").findings
        found = {f.subject: (f.severity, f.said) for f in findings}
        assert found["ngay_cap_nhat"] == ("warning", "times written without a zone are read as UTC: if they are the "
                                                     "system's local time, say `timezone: Asia/Ho_Chi_Minh`")


class LocalFilterPeer(HoSoPeer):
    """An older system still: it writes its change time `dd/mm/yyyy HH:MM:SS` in Vietnam's time, and takes its
    `TuNgay`/`DenNgay` filter only in the form `filter_form` (local time too); anything else is answered 400."""

    def __init__(self, n: int, filter_form: str) -> None:
        super().__init__(n)
        self.filter_form = filter_form
        for row in self.rows:
            row["NgayTiepNhan"] = date.fromisoformat(row["NgayTiepNhan"]).strftime("%d/%m/%Y")
            row["NgayCapNhat"] = datetime.fromisoformat(row["NgayCapNhat"]).strftime("%d/%m/%Y %H:%M:%S")

    def when(self, row: dict[str, Any]) -> datetime:
        return datetime.strptime(row["NgayCapNhat"], "%d/%m/%Y %H:%M:%S").replace(tzinfo=VN)

    def asked(self, text: str) -> datetime:
        return datetime.strptime(text, self.filter_form).replace(tzinfo=VN)


@pytest.mark.parametrize("form", ["%d/%m/%Y %H:%M:%S", "%d/%m/%Y"])
def test_a_peer_filtered_in_its_own_form_is_asked_in_it(form: str, tmp_path: Path, lgsp_env: Any) -> None:
    """The peer refuses an ISO 8601 `TuNgay`: `lgsp discover` tries the forms its records are written in and drafts
    the one it takes (`cursor_format`, `cursor_timezone`). Syncs ask in it; a filter by the day asks from the day's
    start, and the records of that day before the cursor are not taken for a source ignoring its cursor."""
    from lgsp import runner
    from lgsp.discover import discover, write_draft
    from loopback import serving

    peer = LocalFilterPeer(230, form)
    with serving(peer) as base:
        target = _district_system(tmp_path / "catalog", base)
        draft = discover(load_catalog(target), "mot_cua_huyen", "/api/hoso", dataset="ho_so")
        assert {k: draft.source.get(k) for k in ("cursor_param", "until_param", "cursor_format", "cursor_timezone")} \
            == {"cursor_param": "TuNgay", "until_param": "DenNgay", "cursor_format": form,
                "cursor_timezone": "Asia/Ho_Chi_Minh"}
        assert draft.columns["ngay_cap_nhat"].spec() == {"type": "timestamp", "format": "%d/%m/%Y %H:%M:%S",
                                                         "timezone": "Asia/Ho_Chi_Minh"}
        assert draft.cursor_field == "ngay_cap_nhat"
        write_draft(draft, target)
        catalog = load_catalog(target)
        first = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        assert (first["rows_pulled"], first["rows_quarantined"]) == (230, 0)
        wh = runner.open_warehouse(catalog, lgsp_env)
        kept = [r for r in peer.rows if not r["DaXoa"]]
        assert _held(wh, "ho_so", "ma_ho_so", "ngay_cap_nhat") == {r["MaHoSo"]: peer.when(r) for r in kept}

        again = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env)
        since = max(peer.when(r) for r in peer.rows) - timedelta(hours=1)  # the lookback
        asked_from = since if "%H" in form else since.astimezone(VN).replace(hour=0, minute=0, second=0)
        assert again["mode"] == "incremental" and again["rows_changed"] == 0
        assert again["rows_pulled"] == sum(1 for r in peer.rows if peer.when(r) >= asked_from) < 230
        with wh.engine.connect() as conn:
            said = conn.execute(sa.text("SELECT message FROM lgsp_batch WHERE batch_id = :b"),
                                {"b": again["batch_id"]}).scalar_one()
        assert said is None, said  # the day's earlier records were asked for: the cursor is not ignored

        window = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=catalog, settings=lgsp_env,
                                     since=datetime(2025, 8, 3, tzinfo=VN), until=datetime(2025, 8, 5, tzinfo=VN))
        assert window["rows_pulled"] == sum(1 for r in peer.rows if datetime(2025, 8, 3, tzinfo=VN) <= peer.when(r)
                                            < datetime(2025, 8, 5, tzinfo=VN))


def test_a_cursor_format_is_a_pattern_or_a_known_style() -> None:
    from catalog.models import SourceSpec
    from connectors.source import cursor_as_read, format_cursor

    with pytest.raises(ValueError, match="cursor_format 'dd/MM/yyyy': one of iso, iso_z, dvcqg or a strptime"):
        SourceSpec(system="x", operation="/x", cursor_format="dd/MM/yyyy")
    with pytest.raises(ValueError, match="cursor_timezone is for a cursor_format pattern"):
        SourceSpec(system="x", operation="/x", cursor_timezone="Asia/Ho_Chi_Minh")
    by_day = SourceSpec(system="x", operation="/x", cursor_format="%d/%m/%Y", cursor_timezone="Asia/Ho_Chi_Minh")
    moment = datetime(2025, 8, 1, 20, 30, tzinfo=UTC)  # 03:30 on 2 August in Hanoi
    assert format_cursor(moment, by_day.cursor_format, by_day.cursor_timezone) == "02/08/2025"
    assert cursor_as_read(moment, by_day) == datetime(2025, 8, 2, tzinfo=VN)
    assert cursor_as_read(moment.replace(microsecond=5), SourceSpec(system="x", operation="/x", cursor_format="iso_z")
                          ) == moment


@pytest.mark.parametrize("mode", ["merge", "history"])
def test_times_without_a_zone_read_as_utc_are_said_and_a_full_refresh_mends_rows_and_cursor(
        mode: str, tmp_path: Path, lgsp_env: Any) -> None:
    """The catalog forgot the peer's `timezone`: its zone-less local times land seven hours late, and the cursor with
    them (its next syncs would ask from the future). The batch says so, naming the column and what to do; once the
    column says `timezone`, a full refresh reads the rows right and moves the cursor back to the source's newest.
    A history dataset's current versions move back to the right start (no version is added)."""
    from lgsp import runner
    from lgsp.discover import discover, write_draft
    from lgsp.status import status_report
    from loopback import serving

    peer = LegacyPeer(230)
    with serving(peer) as base:
        target = _district_system(tmp_path / "catalog", base)
        write_draft(discover(load_catalog(target), "mot_cua_huyen", "/api/hoso", dataset="ho_so"), target)
        datasets = (target / "datasets.yaml").read_text(encoding="utf-8")
        assert datasets.count("\n  ho_so:\n") == 1
        datasets = datasets.replace("\n  ho_so:\n", f"\n  ho_so:\n    write_mode: {mode}\n")
        (target / "datasets.yaml").write_text(datasets.replace(", timezone: Asia/Ho_Chi_Minh", ""), encoding="utf-8")
        careless = load_catalog(target)
        assert careless.datasets["ho_so"].write_mode == mode
        first = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=careless, settings=lgsp_env)
        wh = runner.open_warehouse(careless, lgsp_env)
        kept = [r for r in peer.rows if not r["DaXoa"]]
        assert _held(wh, "ho_so", "ma_ho_so", "ngay_cap_nhat") == {r["MaHoSo"]: peer.when(r) + timedelta(hours=7)
                                                                  for r in kept}  # seven hours late
        with wh.engine.connect() as conn:
            said = conn.execute(sa.text("SELECT message FROM lgsp_batch WHERE batch_id = :b"),
                                {"b": first["batch_id"]}).scalar_one()
        assert said == ("times written without a zone in ['ngay_cap_nhat'], read as UTC: if the source writes its own "
                        "local time, say `timezone: Asia/Ho_Chi_Minh` on the column(s) in catalog/datasets.yaml "
                        "(ho_so), then `lgsp run mot_cua_huyen_ho_sos --full-refresh` reads the rows, and the cursor, "
                        "again")
        problems = [p["problem"] for p in status_report(wh, careless)["problems"]
                    if p.get("pipeline") == "mot_cua_huyen_ho_sos"]
        assert len(problems) == 1 and "times written without a zone" in problems[0]
        newest = max(peer.when(r) for r in peer.rows)
        assert wh.get_cursor("mot_cua_huyen_ho_sos") == newest + timedelta(hours=7)

        (target / "datasets.yaml").write_text(datasets, encoding="utf-8")  # the zone said
        mended = load_catalog(target)
        refreshed = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=mended, settings=lgsp_env, full_refresh=True)
        assert refreshed["rows_changed"] == len(kept)
        wh = runner.open_warehouse(mended, lgsp_env)
        assert _held(wh, "ho_so", "ma_ho_so", "ngay_cap_nhat") == {r["MaHoSo"]: peer.when(r) for r in kept}
        assert wh.get_cursor("mot_cua_huyen_ho_sos") == newest  # back, though earlier than it was
        if mode == "history":  # each record's one version, moved back: nothing else written
            assert wh.count("core_ho_so") == len(kept)
            assert _held(wh, "ho_so", "ma_ho_so", "valid_from") == {r["MaHoSo"]: peer.when(r) for r in kept}
        with wh.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT message FROM lgsp_batch WHERE batch_id = :b"),
                                {"b": refreshed["batch_id"]}).scalar_one() is None
        again = runner.run_pipeline("mot_cua_huyen_ho_sos", catalog=mended, settings=lgsp_env)
        assert again["rows_pulled"] == sum(1 for r in peer.rows if peer.when(r) >= newest - timedelta(hours=1))
