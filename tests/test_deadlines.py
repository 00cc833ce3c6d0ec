"""Report deadlines: each month's indicator report must be acknowledged by the government reporting system
(the real SOAP sandbox) 5 days after the month ends; `lgsp status` and the freshness check say when one is not.

On SQLite and PostgreSQL: real dossiers and documents pulled, the indicators computed, the feed pushed.
"""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from typer.testing import CliRunner

from airflow_helpers import WebhookSink
from lgsp import outbox
from lgsp.cli import app as lgsp_app
from lgsp.deadlines import feed_deadlines, period_end
from lgsp.freshness import check_and_alert
from tests.indicator_data import pull_and_compute

FEED = "government_report"


def _report() -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(lgsp_app, ["status", "--json"])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def _overdue_problems(report: dict[str, Any]) -> list[str]:
    return [p["problem"] for p in report["problems"] if p.get("feed") == FEED]


def test_a_period_is_due_after_it_ends_in_local_time() -> None:
    assert period_end("2025-08").isoformat() == "2025-09-01T00:00:00+07:00"
    assert period_end("2025-Q4").isoformat() == "2026-01-01T00:00:00+07:00"
    assert period_end("2025").isoformat() == "2026-01-01T00:00:00+07:00"
    assert period_end("2025-07-01..2025-07-23").isoformat() == "2025-07-24T00:00:00+07:00"


def test_unsent_reports_are_overdue_until_acknowledged_and_a_late_correction_makes_its_month_overdue_again(
        lgsp_env: Any, monkeypatch: Any) -> None:
    catalog, wh = pull_and_compute(lgsp_env.database_url)
    feed = catalog.feeds[FEED]
    hook = WebhookSink()
    monkeypatch.setenv("LGSP_ALERT_WEBHOOK_URL", hook.url)
    try:
        deadlines = feed_deadlines(wh, feed)
        months = [p["period"] for p in deadlines["overdue"]]
        assert months and deadlines["last_delivered"] is None and len(months) == deadlines["periods_due"]
        # a catalogue's state (as_of: period_end) has values from its first sync on, this month: not due yet
        rates = sum(1 for s in catalog.indicators.values() if s.measure == "rate" and s.as_of is None)
        assert max(p["rows"] for p in deadlines["overdue"]) == rates and {p["acknowledged"] for p in
                                                                          deadlines["overdue"]} == {0}
        last = deadlines["overdue"][-1]
        assert last["due_at"] == period_end(last["period"]) + timedelta(days=5)
        # a month is not due before its day: judged the moment before, the last month is not counted
        before = feed_deadlines(wh, feed, now=last["due_at"] - timedelta(seconds=1))
        assert [p["period"] for p in before["overdue"]] == months[:-1]

        code, report = _report()
        assert code == 1 and report["ok"] is False
        problems = _overdue_problems(report)
        assert len(problems) == len(months)
        assert problems[-1].startswith(f"{FEED}: the report for {last['period']}, due "
                                       f"{last['due_at']:%Y-%m-%d} 00:00 +07, has 0 of its {last['rows']} rows")
        assert f"`lgsp push {FEED}` sends it" in problems[-1]
        alerted = check_and_alert(wh, catalog)["alerts"]
        assert [a for a in alerted if a["subject"] == f"feed:{FEED}"] == [
            {"subject": f"feed:{FEED}", "kind": "overdue", "sent_to": ["webhook"]}]
        overdue_alert = next(a for a in hook.received if a["kind"] == "overdue")
        assert overdue_alert["dag_id"] == f"lgsp_push_{FEED}" and last["period"] in str(overdue_alert["summary"])

        assert outbox.push(wh, catalog, FEED)["dead"] == 0  # the real reporting system acknowledges each
        deadlines = feed_deadlines(wh, feed)
        assert deadlines["overdue"] == [] and deadlines["last_delivered"]["period"] == last["period"]
        assert _overdue_problems(_report()[1]) == []
        assert [a["kind"] for a in check_and_alert(wh, catalog)["alerts"] if a["subject"] == f"feed:{FEED}"] == [
            "delivered"]

        mart = wh.system["mart_indicator_value"]  # a late dossier changed a past month's rate
        with wh.transaction() as conn:
            row = conn.execute(sa.select(mart).where(
                mart.c.unit_level == "province", mart.c.measure == "rate", mart.c.period_type == "month",
                mart.c.period == months[0]).limit(1)).mappings().one()
            conn.execute(mart.update().where(*[mart.c[k] == row[k] for k in feed.key])
                         .values(numerator=row["numerator"] - 1, value=(row["numerator"] - 1) / row["denominator"]))
        corrected = feed_deadlines(wh, feed)["overdue"]
        assert [(p["period"], p["rows"] - p["acknowledged"]) for p in corrected] == [(months[0], 1)]
        assert outbox.push(wh, catalog, FEED)["acked"] == 1  # the correction, alone
        assert feed_deadlines(wh, feed)["overdue"] == []
    finally:
        hook.stop()
