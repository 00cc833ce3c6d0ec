"""`lgsp drift`: lgsp's copy against its source, record by record, on SQLite and on a real PostgreSQL.

The warehouse is loaded from the real population service by the real pipeline; the source then
"changes" behind lgsp's back through a relay of that service (zeep and its real WSDL all the
way): one citizen's address changed with its `updated_at` untouched (silent drift), one
moved to another commune with a newer `updated_at` (a change the next sync brings), one gone.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from lgsp import runner
from lgsp.cli import app as lgsp_app
from lgsp.drift import DriftError, check_drift
from loopback import serve, soap_relay
from warehouse import Warehouse

GONE = "037099999999"  # what the relay asks instead of the deleted citizen: the real service has no such citizen


@pytest.fixture
def loaded(lgsp_env: Any, sandbox_handle: Any) -> dict[str, Any]:
    runner.run_pipeline("population_citizens")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    with wh.engine.connect() as conn:
        landed = {r[0] for r in conn.execute(sa.text("SELECT personal_id FROM core_citizen"))}
    wh.engine.dispose()
    citizens = sorted((c for c in sandbox_handle.data.citizens if c["personal_id"] in landed),
                      key=lambda c: c["personal_id"])
    return {"url": lgsp_env.database_url, "citizens": citizens}


@pytest.fixture
def drifted_source(loaded: dict[str, Any], sandbox_handle: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    silent, behind, gone = (loaded["citizens"][i]["personal_id"].encode() for i in (0, 1, 2))

    def answer(content: bytes) -> bytes:
        if b">" + silent + b"<" in content:
            return re.sub(rb"<tns:address>[^<]*<", "<tns:address>Số 1 Đường Mới<".encode(), content)
        if b">" + behind + b"<" in content:
            content = re.sub(rb"<tns:commune_code>[^<]*<", b"<tns:commune_code>14329<", content)
            return re.sub(rb"<tns:updated_at>[^<]*<", b"<tns:updated_at>2026-12-01T00:00:00Z<", content)
        return content

    relay = serve(soap_relay(sandbox_handle.population_wsdl, answer,
                             lambda body: body.replace(b">" + gone + b"<", b">" + GONE.encode() + b"<")))
    monkeypatch.setenv("LGSP_POPULATION_WSDL", next(relay) + "/?wsdl")
    try:
        yield {"silent": silent.decode(), "behind": behind.decode(), "gone": gone.decode()}
    finally:
        relay.close()


def test_each_record_is_sorted_into_same_behind_silent_or_gone(loaded: dict[str, Any],
                                                              drifted_source: dict[str, str]) -> None:
    same = loaded["citizens"][3]["personal_id"]
    asked = [{"personal_id": drifted_source[k]} for k in ("silent", "behind", "gone")] + [{"personal_id": same}]
    report = check_drift(load_catalog(), loaded["url"], "citizen", keys=asked)
    found = {f.key["personal_id"]: f for f in report.findings}
    assert (found[drifted_source["silent"]].status, found[drifted_source["silent"]].columns) == ("silent", ["address"])
    assert found[drifted_source["silent"]].detail.startswith("differs with updated_at unchanged or older")
    assert found[drifted_source["behind"]].status == "behind"
    assert set(found[drifted_source["behind"]].columns) == {"commune_code", "updated_at"}
    assert "the source changed it at 2026-12-01T00:00:00+00:00" in found[drifted_source["behind"]].detail
    assert found[drifted_source["gone"]].status == "gone_at_source"
    assert (found[same].status, found[same].columns) == ("same", [])
    assert report.counts()["silent"] == 1 and report.columns("silent") == {"address": 1}
    assert "Đường Mới" not in str(report.as_dict())  # column names, never values


def test_the_cli_samples_the_copy_and_exits_1_on_silent_drift(loaded: dict[str, Any], sandbox_handle: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cli = CliRunner()
    clean = cli.invoke(lgsp_app, ["drift", "citizen", "--sample", "25", "--json"])
    assert clean.exit_code == 0, clean.output
    report = json.loads(clean.stdout.strip().splitlines()[-1])
    assert report["counts"]["same"] == 25 and report["findings"] == []  # the sync left nothing behind

    silent = loaded["citizens"][5]["personal_id"]
    relay = serve(soap_relay(sandbox_handle.population_wsdl, lambda content: re.sub(
        rb"<tns:full_name>[^<]*<", "<tns:full_name>Trần Thị Đổi<".encode(), content)
        if silent.encode() in content else content))
    monkeypatch.setenv("LGSP_POPULATION_WSDL", next(relay) + "/?wsdl")
    try:
        drifted = cli.invoke(lgsp_app, ["drift", "citizen", "--key", f"personal_id={silent}"])
    finally:
        relay.close()
    assert drifted.exit_code == 1, drifted.output
    text = " ".join(drifted.stdout.split())
    assert "silent" in text and "full_name" in text and "Trần Thị Đổi" not in text
    wrong = cli.invoke(lgsp_app, ["drift", "citizen", "--key", "full_name=x"])
    assert wrong.exit_code == 1 and "--key takes COLUMN=VALUE for each key column" in " ".join(wrong.stdout.split())


def test_a_dataset_without_a_lookup_cannot_be_checked(loaded: dict[str, Any]) -> None:
    with pytest.raises(DriftError, match="dataset 'dossier' has no live lookup .* with one: citizen, enterprise"):
        check_drift(load_catalog(), loaded["url"], "dossier")


def test_a_faithful_copy_of_a_history_dataset_over_rest_is_all_same(lgsp_env: Any) -> None:
    """enterprise: SCD type 2 in the warehouse (its shared view: the current versions), the business registry
    over REST with HTTP Basic: every sampled record is the same as the source's current one."""
    runner.run_pipeline("business_enterprises")
    report = check_drift(load_catalog(), lgsp_env.database_url, "enterprise", sample=60)
    assert report.system == "business" and report.counts()["same"] == len(report.findings) == 60, report.as_dict()


def test_each_check_is_kept_and_shown_by_the_cli_and_the_gateway(loaded: dict[str, Any],
                                                                  drifted_source: dict[str, str]) -> None:
    from lgsp.drift import last_checks

    wh = Warehouse(loaded["url"], load_catalog())
    assert last_checks(wh.engine, wh.system) == {}
    check_drift(load_catalog(), loaded["url"], "citizen", keys=[{"personal_id": drifted_source["silent"]}])
    report = check_drift(load_catalog(), loaded["url"], "citizen", sample=10)
    last = last_checks(wh.engine, wh.system)["citizen"]
    assert (last["system"], last["sampled"]) == ("population", 10) and last["checked_at"] == report.checked_at
    assert sum(last[s] for s in ("same", "silent", "behind", "gone_at_source")) == 10
    history = CliRunner().invoke(lgsp_app, ["drift", "citizen", "--history"])
    assert history.exit_code == 0, history.output
    text = " ".join(history.stdout.split())
    assert "silent 1" in text and '{"address": 1}' in text  # the first check: one record, silently drifted
    with wh.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT counts, silent_columns FROM lgsp_drift_check")).all()
    assert len(stored) == 2 and drifted_source["silent"] not in str(stored)  # figures, never a key or value
    wh.engine.dispose()
