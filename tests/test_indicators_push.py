"""Each period's indicator report reaches the government reporting system (SOAP sandbox) exactly once:
through faults and lost acknowledgements, when pushed twice, and when the outbox itself is lost."""
from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from indicators import compute_indicator
from lgsp import outbox
from tests.indicator_data import pull_and_compute
from warehouse import Warehouse

FEED = "government_report"


def _expected_reports(wh: Warehouse) -> set[tuple[str, str, str]]:
    """(indicator, unit, period) of every province monthly rate in the mart: what the feed must deliver."""
    mart = wh.system["mart_indicator_value"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(mart.c.indicator, mart.c.unit_code, mart.c.period).where(
            mart.c.unit_level == "province", mart.c.measure == "rate", mart.c.period_type == "month")).all()
    return {tuple(r) for r in rows}


def _push_until_drained(wh: Warehouse, catalog: Any, rounds: int = 6) -> int:
    """Push; messages still failing after their retries are sent again on the next push (as the DAG reruns)."""
    acked = outbox.push(wh, catalog, FEED)["acked"]
    for _ in range(rounds):
        left = outbox.counts_by_status(wh)
        if not left.get((FEED, "pending")) and not left.get((FEED, "failed")):
            break
        acked += outbox.dispatch(wh, catalog, catalog.feeds[FEED])["acked"]
    return acked


@pytest.fixture
def computed(lgsp_env: Any) -> tuple[Any, Warehouse]:
    return pull_and_compute(lgsp_env.database_url)


def test_reports_are_delivered_exactly_once_through_faults_and_lost_acks(
        computed: tuple[Any, Warehouse], sandbox_handle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, wh = computed
    inbox = sandbox_handle.reporting_inbox
    before = set(inbox.reports)
    expected = _expected_reports(wh)
    assert {i for i, _, _ in expected} == {n for n, s in catalog.indicators.items() if s.measure == "rate"}
    monkeypatch.setenv("LGSP_TIMEOUT_S", "1.5")  # a hang times out; a slow answer on a busy machine does not
    plan = sandbox_handle.faults["reporting"]
    plan.reset(seed=9)
    plan.transient(0.25)  # 503s, resets, hangs; a POST reset/hang after processing is a lost acknowledgement
    plan.hang_s = 3.0
    try:
        acked = _push_until_drained(wh, catalog)
    finally:
        plan.clear()
    new = {k: inbox.reports[k] for k in set(inbox.reports) - before}
    received = {(r["indicator_code"], r["unit_code"], r["period"]) for r in new.values()}
    assert plan.injected > 0
    assert acked == len(expected) and received == expected
    assert all(inbox.apply_counts[k] == 1 for k in new), "no report applied twice"
    for report in new.values():
        assert report["numerator"] <= report["denominator"] and 0 <= report["value"] <= 1


def test_pushing_the_same_period_twice_delivers_it_once(computed: tuple[Any, Warehouse],
                                                        sandbox_handle: Any) -> None:
    catalog, wh = computed
    inbox = sandbox_handle.reporting_inbox
    first = outbox.push(wh, catalog, FEED)
    applied = dict(inbox.apply_counts)
    for spec in catalog.indicators.values():  # the period recomputed: same figures
        assert compute_indicator(wh, spec) == 0
    assert outbox.push(wh, catalog, FEED) == {"queued": 0, "acked": 0, "failed": 0, "dead": 0}

    # the outbox itself lost (restored from an old backup): every report is queued and sent again,
    # with the same idempotency keys, and the reporting system applies none of them twice
    replays = inbox.replays
    with wh.transaction() as conn:
        for table in ("lgsp_outbox_item", "lgsp_outbox"):
            conn.execute(wh.system[table].delete().where(wh.system[table].c.feed == FEED))
    again = outbox.push(wh, catalog, FEED)
    assert again["queued"] == again["acked"] == first["queued"] > 0
    assert inbox.replays - replays == first["queued"]
    assert dict(inbox.apply_counts) == applied
