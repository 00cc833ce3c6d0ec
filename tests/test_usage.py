"""How much each agency read (gateway.usage), on SQLite and on a real PostgreSQL: the figures of `lgsp audit usage`
and `GET /api/v1/usage` are those of the audit rows that the real gateway wrote for real reads over loopback
(pages, an export, a live lookup at the sandbox's population service, the change feed, refusals), and the
province's own acts are not counted."""
from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from airflow_helpers import WebhookSink
from catalog import load_catalog
from gateway import tables
from gateway.access_requests import AccessRequests
from gateway.agencies import AgencyRegistry
from gateway.tables import create_gateway_tables
from gateway.usage import moment, said, unusual, usage
from lgsp.cli import app as lgsp_app
from lgsp.freshness import check_and_alert
from lgsp.status import status_report
from warehouse import Warehouse
from test_agency_events import Env, _cli, env  # noqa: F401 - the module's gateway (its fixture), agencies added here


@pytest.fixture(scope="module")
def reads(env: Env) -> dict[str, int]:
    """so_y_te reads citizen every way it can (one read refused); so_tai_chinh is refused twice. The rows sent."""
    env.agency("so_y_te")
    env.agency("so_tai_chinh")
    env.registry.grant("so_y_te", "citizen", ["personal_id"])
    sent = 0
    for _ in range(3):
        page = env.call("GET", "/api/v1/datasets/citizen/records", params={"limit": 5})
        assert page.status_code == 200
        sent += len(page.json()["records"])
    bad = env.call("GET", "/api/v1/datasets/citizen/records", params={"limit": 5, "sort": "nope"})
    assert bad.status_code == 400
    export = env.call("GET", "/api/v1/datasets/citizen/export", params={"format": "csv"})
    assert export.status_code == 200
    exported = len(list(csv.DictReader(io.StringIO(export.text))))
    someone = page.json()["records"][0]["personal_id"]
    lookup = env.call("GET", "/api/v1/datasets/citizen/lookup", params={"personal_id": someone})
    assert lookup.status_code == 200, lookup.text
    feed = env.call("GET", "/api/v1/datasets/citizen/changes", params={"limit": 7})
    assert feed.status_code == 200, feed.text
    changed = len(feed.json()["changes"])
    for _ in range(2):
        assert env.call("GET", "/api/v1/datasets/citizen/records", "so_tai_chinh").status_code == 403
    said = CliRunner().invoke(lgsp_app, ["audit", "subject", someone, "--json"])  # the province's act: not a read
    assert said.exit_code == 0, said.output
    return {"rows": sent + exported + 1 + changed, "exported": exported}


def test_usage_counts_each_agencys_reads_by_kind_refusals_and_rows_as_the_audit_has_them(
        env: Env, reads: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.api

    monkeypatch.setattr(gateway.api, "USAGE_EVERY_S", 0.0)  # each question answered afresh (throttle: below)
    monkeypatch.setattr(gateway.api, "USAGE_KEPT_S", 0.0)
    expected = reads
    rows = {(r["agency_id"], r["dataset"]): r for r in usage(env.registry.engine)}
    assert set(rows) == {("so_y_te", "citizen"), ("so_tai_chinh", "citizen")}, "no province:... row"
    mine = rows[("so_y_te", "citizen")]
    assert (mine["requests"], mine["refused"], mine["rows"]) == (7, 1, expected["rows"])
    assert mine["by_kind"] == {"records": 4, "export": 1, "lookup": 1, "changes": 1}
    assert mine["first"] <= mine["last"] <= datetime.now(timezone.utc)
    theirs = rows[("so_tai_chinh", "citizen")]
    assert (theirs["requests"], theirs["refused"], theirs["rows"], theirs["by_kind"]) == (2, 2, 0, {"records": 2})
    assert [r["agency_id"] for r in usage(env.registry.engine, agency_id="so_tai_chinh")] == ["so_tai_chinh"]
    assert usage(env.registry.engine, since=datetime.now(timezone.utc) + timedelta(seconds=1)) == []
    assert usage(env.registry.engine, until=datetime(2020, 1, 1, tzinfo=timezone.utc)) == []

    own = env.call("GET", "/api/v1/usage")  # the agency's own, over the API
    assert own.status_code == 200, own.text
    body = own.json()
    assert [(u["dataset"], u["requests"], u["rows"], u["by_kind"]) for u in body["usage"]] == \
        [("citizen", 7, expected["rows"], mine["by_kind"])] and "agency_id" not in body["usage"][0]
    assert datetime.fromisoformat(body["since"]) < datetime.now(timezone.utc) - timedelta(days=29)
    later = env.call("GET", "/api/v1/usage", params={"since": (date.today() + timedelta(days=2)).isoformat()})
    assert later.status_code == 200 and later.json()["usage"] == []
    assert env.call("GET", "/api/v1/usage", "so_tai_chinh").json()["usage"][0]["refused"] == 2
    assert env.call("GET", "/api/v1/usage", None).status_code == 401
    assert env.call("GET", "/api/v1/usage", params={"since": "last week"}).status_code == 400
    assert "/api/v1/usage" in env.call("GET", "/openapi.json", None).json()["paths"]


def test_the_cli_shows_the_figures_and_says_what_a_bad_window_is(env: Env, reads: dict[str, int],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import console

    monkeypatch.setattr(console, "_width", 400)  # the table unwrapped, as on a wide terminal
    figures: list[dict[str, Any]] = json.loads(CliRunner().invoke(lgsp_app, ["audit", "usage", "--json"]).stdout)[
        "usage"]
    said = CliRunner().invoke(lgsp_app, ["audit", "usage", "--since", "2026-01-01"])
    assert said.exit_code == 0, said.output
    line = next(row for row in said.stdout.splitlines() if "so_y_te" in row)
    mine = next(f for f in figures if f["agency_id"] == "so_y_te")
    assert all(part in line for part in ("citizen", "records 4", "export 1", "lookup 1", "changes 1",
                                         f"{mine['rows']:,}"))
    total = sum(f["requests"] for f in figures)
    assert f"{total:,} requests by 2 agencies on 1 datasets" in " ".join(said.stdout.split())
    assert "2025-12-31 17:00:00 UTC to now" in said.stdout, "a date: the start of that day in Vietnam"
    assert moment("2026-01-01") == datetime(2025, 12, 31, 17, tzinfo=timezone.utc)
    none = CliRunner().invoke(lgsp_app, ["audit", "usage", "--until", "2020-01-01"])
    assert none.exit_code == 0 and "no read through the gateway" in none.stdout
    bad = CliRunner().invoke(lgsp_app, ["audit", "usage", "--since", "yesterday"])
    assert bad.exit_code == 1 and "is neither a date" in " ".join(bad.output.split())
    one = json.loads(CliRunner().invoke(lgsp_app, ["audit", "usage", "--agency", "so_tai_chinh", "--json"]).stdout)
    assert [u["agency_id"] for u in one["usage"]] == ["so_tai_chinh"]


def test_agencies_show_tells_one_agency_whole(env: Env, reads: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import console
    from gateway.events import ACCESS

    monkeypatch.setattr(console, "_width", 400)
    webhook_id, _ = env.hooks.add("so_y_te", "*", "https://hooks.so-y-te.example/lgsp", events=ACCESS)
    said = CliRunner().invoke(lgsp_app, ["agencies", "show", "so_y_te"])
    assert said.exit_code == 0, said.output
    lines = said.stdout.splitlines()
    assert lines[0].startswith("so_y_te so_y_te: enabled; rate default/s; registered ")
    assert "grant citizen: in clear personal_id; every row" in lines
    assert f"webhook {webhook_id} (its access events) at https://hooks.so-y-te.example/lgsp: ok, 0 pending" in lines
    assert any(line.startswith(f"read citizen (30 days): 7 requests, 1 refused, {reads['rows']:,} rows, last ")
               for line in lines), lines
    assert any(line.endswith("grant.changed citizen (granted)") for line in lines), lines
    whole = json.loads(CliRunner().invoke(lgsp_app, ["agencies", "show", "so_tai_chinh", "--json"]).stdout)
    assert (whole["grants"], whole["webhooks"], [u["refused"] for u in whole["usage"]]) == ([], [], [2])
    assert whole["agency"]["agency_id"] == "so_tai_chinh" and whole["agency"]["disabled_at"] is None
    nobody = CliRunner().invoke(lgsp_app, ["agencies", "show", "nobody"])
    assert nobody.exit_code == 1 and "no agency 'nobody'" in " ".join(nobody.output.split())
    env.hooks.remove(webhook_id)


def _audited(engine: sa.Engine, reads: list[tuple[str, str, str, int | None, int, datetime]]) -> None:
    """Audit rows as the gateway writes them (agency, dataset, action, rows, status, when); hashes not chained."""
    with engine.begin() as conn:
        conn.execute(tables.audit.insert(), [
            {"chain": 0, "seq": n + 1, "recorded_at": when, "agency_id": agency, "dataset": dataset, "action": action,
             "query": "{}", "rows_returned": rows, "status": status, "prev_hash": "0" * 64, "row_hash": "0" * 64}
            for n, (agency, dataset, action, rows, status, when) in enumerate(reads)])


def test_an_agency_reading_far_more_than_usual_is_alerted_once_and_status_warns(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = load_catalog()
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    create_gateway_tables(wh.engine)
    now = datetime.now(timezone.utc)
    reads = []
    for day in range(1, 8):  # the week before: each agency's usual day
        before = now - timedelta(days=day, hours=1)
        reads += [("so_y_te", "citizen", "records", 1_000, 200, before),
                  ("so_tai_chinh", "citizen", "records", 15_000, 200, before),
                  ("so_tu_phap", "citizen", "export_csv", None, 200, before),
                  ("so_tu_phap", "citizen", "export_csv_done", 2_000, 200, before)]
    hour = now - timedelta(hours=1)
    reads += [("so_y_te", "citizen", "records", 20_000, 200, hour) for _ in range(3)]  # 60x its median
    reads += [("so_tai_chinh", "citizen", "records", 20_000, 200, hour),  # 1.3x: busy, not unusual
              ("so_tu_phap", "citizen", "export_csv", None, 200, hour),
              ("so_tu_phap", "citizen", "export_csv_done", 30_000, 200, hour),  # 15x, by the rows its export sent
              ("ubnd_moi", "land_parcel", "records", 12_000, 200, hour),  # a new reader, over the floor
              ("ubnd_nho", "citizen", "records", 5_000, 200, hour),  # a new reader, under it
              ("so_y_te", "land_parcel", "records", None, 403, hour),  # refused: nothing sent
              ("province:ttdl", "citizen", "subject_report", 50_000, 200, hour)]  # not a read
    _audited(wh.engine, reads)

    found = unusual(wh.engine, now)
    assert [(f["agency_id"], f["dataset"], f["rows"], f["median"]) for f in found] == [
        ("so_y_te", "citizen", 60_000, 1_000), ("so_tu_phap", "citizen", 30_000, 2_000),
        ("ubnd_moi", "land_parcel", 12_000, 0)]
    assert found[0]["by_day"] == [1_000] * 7 and found[0]["requests"] == 3
    assert said(found[2]).startswith("ubnd_moi read 12,000 rows of land_parcel in the last 24 hours (1 requests), "
                                     "on most of the 7 days before it read none")
    assert "60x its daily median over the 7 days before (1,000): see `lgsp audit usage --agency so_y_te --since 8d`" \
        in said(found[0])

    monkeypatch.setenv("LGSP_UNUSUAL_READS_MIN_ROWS", "40000")  # a province's own floor: only so_y_te is over it
    assert [f["agency_id"] for f in unusual(wh.engine, now)] == ["so_y_te"]
    monkeypatch.setenv("LGSP_UNUSUAL_READS_FACTOR", "100")  # 60x is not over a hundredfold
    assert unusual(wh.engine, now) == []
    monkeypatch.setenv("LGSP_UNUSUAL_READS_FACTOR", "ten")
    with pytest.raises(ValueError, match="LGSP_UNUSUAL_READS_FACTOR='ten': give a number of 0 or more"):
        unusual(wh.engine, now)
    assert "unusual reads not checked: LGSP_UNUSUAL_READS_FACTOR='ten'" in " ".join(
        p["problem"] for p in status_report(wh, catalog, now)["problems"])  # the rest of the report stands
    monkeypatch.delenv("LGSP_UNUSUAL_READS_FACTOR")
    monkeypatch.delenv("LGSP_UNUSUAL_READS_MIN_ROWS")
    sink = WebhookSink()
    monkeypatch.setenv("LGSP_ALERT_WEBHOOK_URL", sink.url)
    try:
        first = [a for a in check_and_alert(wh, catalog, now)["alerts"] if a["kind"] == "unusual_reads"]
        assert sorted(a["subject"] for a in first) == ["reads:so_tu_phap:citizen", "reads:so_y_te:citizen",
                                                       "reads:ubnd_moi:land_parcel"]
        told = [a for a in sink.received if a["kind"] == "unusual_reads"]
        assert len(told) == 3 and "lgsp agencies disable so_y_te --note WHY" in " ".join(str(a["summary"])
                                                                                       for a in told)
        assert {a["owner"] for a in told} == {catalog.sharing["citizen"].owner, catalog.sharing["land_parcel"].owner}
        again = check_and_alert(wh, catalog, now + timedelta(minutes=15))
        assert not [a for a in again["alerts"] if a["kind"] == "unusual_reads"], "once, not every check"
        assert again["states"]["reads:so_y_te:citizen"] == "unusual"
        report = status_report(wh, catalog, now)
        warned = [p for p in report["problems"] if p.get("agency")]
        assert [(p["severity"], p["agency"]) for p in warned] == [("warning", "so_y_te"), ("warning", "so_tu_phap"),
                                                                   ("warning", "ubnd_moi")]
        quiet = check_and_alert(wh, catalog, now + timedelta(days=2))  # a day later nothing was read at all
        assert quiet["states"]["reads:so_y_te:citizen"] == "usual"
        assert not [a for a in quiet["alerts"] if a["kind"] == "unusual_reads"] and len(told) == 3
    finally:
        sink.stop()
        wh.engine.dispose()


def test_an_agency_asking_its_usage_again_and_again_costs_one_pass_over_the_audit(env: Env,
                                                                               reads: dict[str, int]) -> None:
    env.agency("so_cong_thuong")  # agencies of this test alone: the gateway remembers who asked when
    env.agency("so_nong_nghiep")
    first = env.call("GET", "/api/v1/usage", "so_cong_thuong", params={"since": "2026-01-01"})
    assert first.status_code == 200
    assert env.call("GET", "/api/v1/datasets/citizen/records", "so_cong_thuong").status_code == 403  # one more
    again = env.call("GET", "/api/v1/usage", "so_cong_thuong", params={"since": "2026-01-01"})
    assert again.status_code == 200 and again.json() == first.json(), "the same question: the answer kept"
    other = env.call("GET", "/api/v1/usage", "so_cong_thuong", params={"since": "2026-02-01"})
    assert other.status_code == 429 and 1 <= int(other.headers["Retry-After"]) <= 10, "another: not before 10 s"
    assert env.call("GET", "/api/v1/usage", "so_nong_nghiep").status_code == 200, "per agency"


def test_a_grant_that_says_how_much_its_purpose_needs_is_judged_by_that(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lgsp.cli

    monkeypatch.setattr(lgsp.cli.console, "_width", 400)
    catalog = load_catalog()
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    create_gateway_tables(wh.engine)
    monkeypatch.setenv("LGSP_DATABASE_URL", database_url)
    registry = AgencyRegistry(wh.engine, catalog)
    for agency in ("so_y_te", "so_lao_dong", "so_gd"):
        registry.add_agency(agency, agency)
    now = datetime.now(timezone.utc)
    reads = []
    for day in range(1, 8):  # each reads the same every day: never unusual by its own week
        before = now - timedelta(days=day, hours=1)
        reads += [("so_y_te", "citizen", "records", 30_000, 200, before),
                  ("so_lao_dong", "citizen", "records", 3_000, 200, before),
                  ("so_gd", "citizen", "records", 30_000, 200, before)]
    hour = now - timedelta(hours=1)
    reads += [("so_y_te", "citizen", "records", 30_000, 200, hour),  # always more than its purpose needs
              ("so_lao_dong", "citizen", "records", 3_000, 200, hour),  # within it
              ("so_gd", "citizen", "records", 30_000, 200, hour)]  # no volume declared: its week judges
    _audited(wh.engine, reads)
    assert unusual(wh.engine, now) == [], "a steady reader is usual by its own week"
    code, out = _cli("agencies", "grant", "so_y_te", "citizen", "--daily-rows", "500")
    assert code == 0 and "so_y_te may read citizen, about 500 rows a day" in out, out
    asked = AccessRequests(wh.engine, catalog)
    request = asked.submit("so_lao_dong", "citizen", "Xác minh hồ sơ bảo hiểm thất nghiệp hằng ngày (kiểm thử)",
                           daily_rows=5000)  # the agency says how much its purpose needs
    code, out = _cli("agencies", "requests", "--agency", "so_lao_dong")
    assert code == 0 and "rows: all; about 5,000 rows a day" in out, out
    code, out = _cli("agencies", "approve", request["request_id"])
    assert code == 0 and out.endswith("until revoked, about 5,000 rows a day"), out
    asked.close()
    assert _cli("agencies", "grant", "so_gd", "citizen", "--daily-rows", "0")[0] == 1

    [found] = unusual(wh.engine, now)
    assert (found["agency_id"], found["rows"], found["daily_rows"]) == ("so_y_te", 30_000, 500)
    assert said(found).startswith("so_y_te read 30,000 rows of citizen in the last 24 hours (1 requests), "
                                        "more than the 500 rows a day its grant's purpose needs: see `lgsp audit")
    assert [g["daily_rows"] for g in registry.grants_of("so_y_te")] == [500]
    code, shown = _cli("agencies", "show", "so_lao_dong")
    assert "grant citizen: in clear no personal column; every row; about 5,000 rows a day; request req_" in shown
    events = [json.loads(d) for (d,) in wh.engine.connect().execute(sa.text(
        "SELECT data FROM gateway_agency_event WHERE agency_id = 'so_y_te' AND type = 'grant.changed'"))]
    assert [e.get("daily_rows") for e in events] == [500], "the agency is told what its grant expects"
    wh.engine.dispose()


def test_a_window_of_the_audit_is_read_by_its_time_index(database_url: str) -> None:
    """The unusual-reads check (every 15 minutes, each metrics scan) and `usage --since` read their window of the
    audit through `gateway_audit_recorded_at` (BRIN on PostgreSQL, a B-tree on SQLite), not months of audit; an
    audit made before the index gets it when the gateway's tables are prepared."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    create_gateway_tables(engine)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    _audited(engine, [(f"agency_{i % 20:02d}", "citizen", "records", 100, 200, start + timedelta(seconds=i * 60))
                      for i in range(60 * 24 * 41)])  # 41 days, one read a minute
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX gateway_audit_recorded_at")  # an audit from before the index
    create_gateway_tables(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE gateway_audit")  # as autovacuum leaves it (BRIN summarised)
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    statements: list[tuple[str, Any]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM gateway_audit" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, parameters))

    end = start + timedelta(days=40, seconds=30)  # no read on a window's edge
    found = usage(engine, end - timedelta(days=1), end)
    assert sum(u["requests"] for u in found) == 60 * 24 and len(found) == 20
    flagged = unusual(engine, end, min_rows=0, factor=0.5)
    # 72 reads a day of 100 rows each, every day of the week before
    assert len(flagged) == 20 and all(f["by_day"] == [7200] * 7 for f in flagged), flagged[0]["by_day"]
    assert len(statements) == 3  # the usage pass, then the check's two passes
    explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    for statement, parameters in statements:
        with engine.connect() as conn:
            plan = " ".join(str(r) for r in conn.exec_driver_sql(explain + statement, parameters).all())
        assert "gateway_audit_recorded_at" in plan, plan
    engine.dispose()
