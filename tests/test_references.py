"""References between datasets (lgsp.references), on SQLite and PostgreSQL, with the real sandbox.

The DVCQG sandbox serves a procedure catalogue without two procedures the TTHC sandbox's dossiers
name; the real pipelines land both. `lgsp references` (CLI), `lgsp status`, the lgsp_freshness
DAG's task (alerting a loopback webhook) and the gateway and portal read what landed. An orphan's
age is moved by ageing its row's `_loaded_at`, the one value the grace is judged on.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from airflow_helpers import WebhookSink
from catalog import CatalogError, load_catalog
from catalog.models import ColumnSpec
from lgsp import runner
from lgsp.cli import app as lgsp_app
from lgsp.freshness import check_and_alert
from warehouse import Warehouse


def _cli(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(lgsp_app, [*args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def _by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["reference"]: r for r in results}


@pytest.fixture
def landed(lgsp_env: Any, sandbox_env: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Admin units and dossiers from the sandbox, procedures from a catalogue missing two the dossiers name."""
    from sandbox import start_sandbox

    data = sandbox_env.data
    named = list(dict.fromkeys(d["procedure_code"] for d in data.dossiers))
    removed = named[:2]
    fewer = [p for p in data.procedures if p["MaTTHC"] not in removed]
    assert len(fewer) == len(data.procedures) - 2
    with start_sandbox(data=dataclasses.replace(data, procedures=fewer), api_key="test-key-not-secret") as short:
        for name, value in short.env().items():
            monkeypatch.setenv(name, value)
        runner.run_pipeline("dvcqg_procedures")
    for name, value in sandbox_env.env().items():
        monkeypatch.setenv(name, value)
    runner.run_pipeline("admin_units")
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    table = wh.core["dossier"]
    with wh.engine.connect() as conn:  # the orphans, counted without the anti-join under test
        expected = {code: int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                            .where(table.c.procedure_code == code)).scalar_one()) for code in removed}
        rows = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    assert all(expected.values()), expected
    yield {"wh": wh, "removed": removed, "expected": expected, "rows": rows, "sandbox": sandbox_env}


def _age_orphans(landed: dict[str, Any], days: float) -> None:
    wh, table = landed["wh"], landed["wh"].core["dossier"]
    with wh.transaction() as conn:
        conn.execute(table.update().where(table.c.procedure_code.in_(landed["removed"])).values(
            _loaded_at=datetime.now(timezone.utc) - timedelta(days=days)))


def test_orphans_are_pending_within_grace_then_broken_with_what_to_do_and_alerted_once(
        landed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    wh, removed, expected = landed["wh"], landed["removed"], landed["expected"]
    orphans = sum(expected.values())
    code, report = _cli("references")
    refs = _by_name(report["references"])
    procedure = refs["dossier.procedure_code"]
    assert code == 0 and procedure["state"] == "pending"
    assert (procedure["rows"], procedure["orphans"], procedure["orphans_past_grace"]) == (landed["rows"], orphans, 0)
    assert {m["value"]: m["rows"] for m in procedure["missing"]} == expected and procedure["missing_values"] == 2
    assert procedure["referenced_rows"] == len(landed["sandbox"].data.procedures) - 2
    assert refs["dossier.commune_code"]["state"] == "ok" and refs["dossier.commune_code"]["rows"] == landed["rows"]
    assert refs["admin_unit.province_code"]["state"] == "ok" and refs["admin_unit.province_code"]["rows"] == 3355
    assert refs["citizen.commune_code"] == {**refs["citizen.commune_code"], "state": "ok", "rows": 0}

    listed = CliRunner().invoke(lgsp_app, ["references", "--dataset", "dossier", "--orphans"])
    lines = listed.stdout.strip().splitlines()
    assert listed.exit_code == 0 and lines[0] == "reference,dossier_id,value,loaded_at"
    wh_table = landed["wh"].core["dossier"]
    with landed["wh"].engine.connect() as conn:  # the orphans' keys, found without the anti-join under test
        keys = sorted(conn.execute(sa.select(wh_table.c.dossier_id).where(
            wh_table.c.procedure_code.in_(removed))).scalars())
    assert [line.split(",")[1] for line in lines[1:]] == keys
    assert {line.split(",")[2] for line in lines[1:]} == set(removed)
    assert all(line.startswith("dossier.procedure_code,") for line in lines[1:])

    _age_orphans(landed, 3)  # grace: 2 days
    code, report = _cli("references", "--dataset", "dossier")
    procedure = _by_name(report["references"])["dossier.procedure_code"]
    assert code == 1 and set(_by_name(report["references"])) == {"dossier.procedure_code", "dossier.commune_code"}
    assert procedure["state"] == "broken" and procedure["orphans_past_grace"] == orphans
    assert "'procedure' is up to date, so tthc sends values its records do not have" in procedure["todo"]
    assert "Trung tâm Phục vụ hành chính công" in procedure["todo"]  # the owner of the TTHC system

    _, status = _cli("status")
    problems = [p for p in status["problems"] if p.get("reference") == "dossier.procedure_code"]
    assert len(problems) == 1 and problems[0]["severity"] == "warning"
    assert (f"dossier.procedure_code -> procedure.procedure_code: {orphans} of {landed['rows']:,} rows name a record "
            f"lgsp does not have ({orphans} past the 2d grace)") in problems[0]["problem"]

    hook = WebhookSink()
    monkeypatch.setenv("LGSP_ALERT_WEBHOOK_URL", hook.url)
    try:
        catalog = load_catalog()
        first = check_and_alert(wh, catalog)
        assert first["states"]["ref:dossier.procedure_code"] == "broken"
        sent = [a for a in first["alerts"] if a["subject"] == "ref:dossier.procedure_code"]
        assert sent == [{"subject": "ref:dossier.procedure_code", "kind": "broken_reference", "sent_to": ["webhook"]}]
        alert = next(a for a in hook.received if a["kind"] == "broken_reference")
        assert alert["dag_id"] == "lgsp_tthc_dossiers" and alert["system"] == "tthc"
        assert all(code in str(alert["summary"]) for code in removed)
        again = check_and_alert(wh, catalog)
        assert not [a for a in again["alerts"] if a["subject"].startswith("ref:")], "alerted once, not every check"

        cursor = wh.system["lgsp_cursor"]
        with wh.transaction() as conn:  # the procedure catalogue not synced for 80 hours: maybe it is behind
            conn.execute(cursor.update().where(cursor.c.pipeline == "dvcqg_procedures").values(
                synced_at=datetime.now(timezone.utc) - timedelta(hours=80)))
        _, report = _cli("references", "--dataset", "dossier")
        todo = _by_name(report["references"])["dossier.procedure_code"]["todo"]
        assert "'procedure' may be behind (dvcqg_procedures stale" in todo and "`lgsp run dvcqg_procedures`" in todo

        runner.run_pipeline("dvcqg_procedures", full_refresh=True)  # the whole catalogue (the two are not newer)
        code, report = _cli("references", "--dataset", "dossier")
        procedure = _by_name(report["references"])["dossier.procedure_code"]
        assert code == 0 and procedure["state"] == "ok" and procedure["orphans"] == 0 and procedure["missing"] == []
        recovered = check_and_alert(wh, catalog)
        assert [a["kind"] for a in recovered["alerts"] if a["subject"] == "ref:dossier.procedure_code"] == \
            ["reference_ok"]
        assert "holds again: no orphan" in str(hook.received[-1]["summary"])
    finally:
        hook.stop()


def test_the_gateway_and_the_portal_say_what_a_column_refers_to_and_how_many_rows_match(
        landed: dict[str, Any], lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.api import create_app
    from gateway.service import prepare_database
    from gateway.serving import in_thread
    from gateway.settings import load_gateway_settings

    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "a-test-key-of-32-characters-long")
    catalog = load_catalog()
    prepare_database(lgsp_env.database_url, catalog)
    orphans, rows = sum(landed["expected"].values()), landed["rows"]
    with in_thread(create_app(load_gateway_settings(lgsp_env.database_url), catalog)) as base:
        info = requests.get(f"{base}/api/v1/datasets/dossier", timeout=30).json()
        fields = {f["name"]: f for f in info["schema"]}
        assert fields["procedure_code"]["references"] == {"dataset": "procedure", "field": "procedure_code",
                                                          "path": "/api/v1/datasets/procedure"}
        assert fields["dossier_id"]["references"] is None
        counts = {r["field"]: r for r in info["references"]}
        assert counts["procedure_code"] == {"field": "procedure_code", "references": "procedure.procedure_code",
                                            "state": "pending", "rows": rows, "orphans": orphans,
                                            "orphans_past_grace": 0}
        assert counts["commune_code"]["state"] == "ok" and counts["commune_code"]["orphans"] == 0
        assert "missing" not in counts["procedure_code"], "the gateway gives counts, not the values"
        spec = requests.get(f"{base}/openapi.json", timeout=30).json()
        assert "ReferenceStatus" in spec["components"]["schemas"]

        page = requests.get(f"{base}/portal/datasets/dossier?lang=en", timeout=30).text
        assert ('<th scope="col">Refers to</th>' in page and '<td><a href="/portal/datasets/procedure?lang=en">'
                "<code>procedure.procedure_code</code></a></td>") in page
        assert (f"<code>procedure_code</code> → <code>procedure.procedure_code</code>: {rows - orphans:,} of {rows:,} "
                f"records match; {orphans} name a record the platform does not have (yet)") in page
        vi = requests.get(f"{base}/portal/datasets/dossier", timeout=30).text
        assert (f"<code>commune_code</code> → <code>admin_unit.code</code>: cả {rows:,} bản ghi đều khớp"
                .replace(",", ".")) in vi


def test_a_reference_must_name_a_whole_key_of_the_same_type_and_the_catalog_says_where(tmp_path: Path) -> None:
    short = ColumnSpec(type="string", references="procedure.procedure_code")  # type: ignore[arg-type]
    assert short.references is not None and short.references.dataset == "procedure"
    assert (short.references.grace, short.references.severity) == (86400.0, "warning")
    long = ColumnSpec(type="string",  # type: ignore[arg-type]
                      references={"to": "admin_unit.code", "grace": "8d", "severity": "error"})
    assert long.references is not None and long.references.grace == 8 * 86400
    with pytest.raises(ValueError, match="String should match pattern"):
        ColumnSpec(type="string", references="procedure")  # type: ignore[arg-type]

    folder = tmp_path / "catalog"
    shutil.copytree(Path(__file__).resolve().parent.parent / "catalog", folder)
    datasets = folder / "datasets.yaml"
    original = datasets.read_text()
    line = "references: {to: procedure.procedure_code, grace: 2d}"
    assert line in original
    for wrong, message in (
            ("references: procedure.procedure_name", "'procedure.procedure_name' is not the key of 'procedure'"),
            ("references: licence.code", "unknown dataset 'licence'"),
            ("references: procedure.level_x", "'procedure.level_x' is not the key of 'procedure'")):
        datasets.write_text(original.replace(line, wrong))
        with pytest.raises(CatalogError, match=r"datasets.dossier.columns.procedure_code.references") as e:
            load_catalog(folder)
        assert message in str(e.value)
    paid = "      paid_online:\n        type: boolean\n"
    assert paid in original
    datasets.write_text(original.replace(paid, paid + "        references: procedure.procedure_code\n"))
    with pytest.raises(CatalogError, match="dossier.paid_online is boolean, procedure.procedure_code is string"):
        load_catalog(folder)
    unit = "      unit_code:\n        type: string\n"
    assert unit in original
    datasets.write_text(original.replace(unit, unit + "        references: admin_unit.code\n"))
    with pytest.raises(CatalogError, match="indicator_value.columns.unit_code.references: only a core dataset"):
        load_catalog(folder)


def test_only_current_versions_of_a_history_dataset_are_checked(lgsp_env: Any) -> None:
    runner.run_pipeline("admin_units")
    runner.run_pipeline("business_enterprises")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    table = wh.core["enterprise"]

    def enterprise() -> dict[str, Any]:
        code, report = _cli("references", "--dataset", "enterprise")
        assert code == 0
        return _by_name(report["references"])["enterprise.commune_code"]

    before = enterprise()
    assert before["state"] == "ok" and before["rows"] > 2
    with wh.engine.connect() as conn:
        first = dict(conn.execute(sa.select(table).where(table.c.is_current).order_by(table.c.tax_code)
                                  .limit(1)).one()._mapping)
    old = {**first, "commune_code": "99999", "valid_from": first["valid_from"] - timedelta(days=400),
           "valid_to": first["valid_from"], "is_current": False}
    with wh.transaction() as conn:  # an earlier version in a commune that no longer exists
        conn.execute(table.insert().values(old))
    after = enterprise()
    assert (after["state"], after["rows"], after["orphans"]) == ("ok", before["rows"], 0)
    with wh.transaction() as conn:
        conn.execute(table.update().where(table.c.tax_code == first["tax_code"], table.c.is_current)
                     .values(commune_code="99999"))
    now = enterprise()
    assert (now["state"], now["orphans"], now["missing"][0]["value"]) == ("pending", 1, "99999")


def test_the_quality_scorecard_takes_each_dimension_from_what_lgsp_records(
        landed: dict[str, Any], lgsp_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    data = landed["sandbox"].data
    pulled, defects = len(data.records("dossier")), len(data.defects("dossier"))
    orphans, rows = sum(landed["expected"].values()), landed["rows"]
    assert defects and rows == pulled - defects
    code, report = _cli("quality", "dossier")
    card = report["scorecards"][0]
    assert code == 0 and card["dataset"] == "dossier"
    assert (card["validity"]["pulled"], card["validity"]["quarantined"]) == (pulled, defects)
    assert card["validity"]["score"] == round(1 - defects / pulled, 4)
    assert (card["timeliness"]["score"], card["timeliness"]["state"]) == (1.0, "fresh")
    assert card["consistency"]["score"] == round(1 - orphans / (2 * rows), 4)  # two references, one with orphans
    assert card["accuracy"]["score"] is None, "no drift check of dossiers"
    assert card["overall"] == min(card["validity"]["score"], card["consistency"]["score"])
    procedure = _cli("quality", "procedure")[1]["scorecards"][0]  # no defect, fresh, nothing to check against
    assert (procedure["overall"], procedure["weakest"]) == (1.0, None)
    wh = landed["wh"]
    with wh.engine.connect() as conn:
        finished = conn.execute(sa.text("SELECT count(finished_at) FROM core_dossier")).scalar_one()
    assert card["profile"]["filled"]["finished_at"] == round(finished / rows, 4) < 1
    assert card["profile"]["filled"]["dossier_id"] == 1.0

    cursor = wh.system["lgsp_cursor"]
    with wh.transaction() as conn:  # 2 hours since the last complete sync: warn after 1h
        conn.execute(cursor.update().where(cursor.c.pipeline == "tthc_dossiers").values(
            synced_at=datetime.now(timezone.utc) - timedelta(hours=2)))
    _, report = _cli("quality", "dossier")
    card = report["scorecards"][0]
    assert (card["timeliness"]["state"], card["overall"], card["weakest"]) == ("warn", 0.5, "timeliness")

    from gateway.api import create_app
    from gateway.service import prepare_database
    from gateway.serving import in_thread
    from gateway.settings import load_gateway_settings

    monkeypatch.setenv("LGSP_GATEWAY_PSEUDONYM_KEY", "a-test-key-of-32-characters-long")
    prepare_database(lgsp_env.database_url, load_catalog())
    with in_thread(create_app(load_gateway_settings(lgsp_env.database_url), load_catalog())) as base:
        score = requests.get(f"{base}/api/v1/datasets/dossier", timeout=30).json()["quality_score"]
        assert score == {"overall": 0.5, "weakest": "timeliness", "validity": card["validity"]["score"],
                         "timeliness": 0.5, "consistency": card["consistency"]["score"], "accuracy": None}
        assert requests.get(f"{base}/api/v1/datasets/indicator_value", timeout=30).json()["quality_score"] is None
        page = requests.get(f"{base}/portal/datasets/dossier?lang=en", timeout=30).text
        assert (f'<dd class="quality">50.0% (the lowest of: valid {card["validity"]["score"]:.1%}, timely 50.0%, '
                f'consistent {card["consistency"]["score"]:.1%}, accurate –)</dd>') in page
        package = requests.get(f"{base}/api/3/action/package_show", params={"id": "dossier"}, timeout=30).json()
        extras = {e["key"]: e["value"] for e in package["result"]["extras"]}  # what ckanapi users read
        assert json.loads(extras["quality_score"]) == score and extras["freshness_state"] == "warn"
        listing = requests.get(f"{base}/portal?lang=en", timeout=30).text
        assert '<dt>Data quality</dt><dd class="quality">50.0% (lowest: timely)</dd>' in listing
        assert '<dd class="quality">100.0%</dd>' in listing, "the procedure catalogue: nothing lowest"
        assert '<dd class="quality">50,0% (thấp nhất: kịp thời)</dd>' in requests.get(f"{base}/portal", timeout=30).text


def test_the_freshness_check_keeps_one_scorecard_a_day_and_the_history_sums_them_up(lgsp_env: Any) -> None:
    from lgsp.scorecard import history, record

    runner.run_pipeline("admin_units")
    wh, catalog = Warehouse(lgsp_env.database_url, load_catalog()), load_catalog()
    check_and_alert(wh, catalog)
    table = wh.system["lgsp_quality_score"]
    with wh.engine.connect() as conn:
        kept = {r.dataset: r for r in conn.execute(sa.select(table))}
    assert set(kept) == {d.name for d in catalog.datasets.values() if d.layer == "core"}
    assert (kept["admin_unit"].overall, kept["admin_unit"].checks) == (1.0, 1)
    assert kept["citizen"].overall == 0.0 and kept["citizen"].weakest == "timeliness", "never synced"

    def card(name: str, overall: float | None, weakest: str | None = "validity") -> dict[str, Any]:
        scores = {d: {"score": overall} for d in ("validity", "timeliness", "consistency", "accuracy")}
        return {"dataset": name, "overall": overall, "weakest": weakest, **scores}

    day = datetime(2026, 11, 1, 3, 0, tzinfo=timezone.utc)  # 10:00 in Vietnam
    record(wh, [card("dossier", 0.99)], day)
    record(wh, [card("dossier", 0.80, "timeliness")], day + timedelta(hours=2))  # the same day: the lowest kept
    record(wh, [card("dossier", 0.97)], day + timedelta(hours=4))
    record(wh, [card("dossier", 0.95)], day + timedelta(hours=18))  # 03:00 next day in Vietnam: another day
    [dossier] = [r for r in history(wh, days=30, now=day + timedelta(days=2)) if r["dataset"] == "dossier"]
    assert dossier == {"dataset": "dossier", "days": 2, "mean": 0.96, "lowest": 0.8, "lowest_day": "2026-11-01",
                       "most_often_weakest": "validity", "latest": 0.95, "latest_day": "2026-11-02"}
    result = CliRunner().invoke(lgsp_app, ["quality", "--history", "--days", "3650", "--json"])
    assert result.exit_code == 0 and any(r["dataset"] == "dossier" and r["days"] == 3  # and today's
                                         for r in json.loads(result.stdout)["datasets"])


def test_a_failing_quality_record_does_not_cost_the_freshness_alerts(lgsp_env: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import lgsp.scorecard

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setattr(lgsp.scorecard, "record", broken)
    wh, catalog = Warehouse(lgsp_env.database_url, load_catalog()), load_catalog()
    wh.create_all()  # as the DAG's task opens it
    result = check_and_alert(wh, catalog)
    assert result["errors"] == ["quality scores not recorded: RuntimeError: disk full"]
    assert {result["states"][p] for p in catalog.pipelines} == {"never"}, "every pipeline judged all the same"
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(wh.system["lgsp_freshness"])).scalar_one() > 0
