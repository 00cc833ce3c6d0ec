"""A failed pipeline run alerts a webhook and by mail (loopback sinks) with what failed and a link to the run."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_helpers import SmtpSink, WebhookSink, lgsp_env, run

pytestmark = pytest.mark.airflow


@pytest.fixture
def sinks() -> Iterator[tuple[WebhookSink, SmtpSink]]:
    hook, mail = WebhookSink(), SmtpSink()
    yield hook, mail
    hook.stop()
    mail.stop()


def test_failed_run_alerts_with_task_error_and_run_link(tmp_path: Path, sinks: tuple[WebhookSink, SmtpSink]) -> None:
    hook, mail = sinks
    env = lgsp_env(tmp_path / "home", LGSP_TTHC_URL="http://127.0.0.1:9", LGSP_TTHC_API_KEY="k",
                   LGSP_ALERT_WEBHOOK_URL=hook.url, AIRFLOW__API__BASE_URL="http://airflow.lgsp.local:8080",
                   **mail.env())
    proc = run(["lgsp", "run", "tthc_dossiers", "--no-retries"], env)
    assert proc.returncode == 1
    assert len(hook.received) == 1, hook.received
    alert = hook.received[0]
    assert alert["kind"] == "failed" and alert["dag_id"] == "lgsp_tthc_dossiers" and alert["task_id"] == "extract"
    assert "tthc" in str(alert["error"]) and alert["try_number"] == 1
    assert str(alert["run_url"]).startswith("http://airflow.lgsp.local:8080/dags/lgsp_tthc_dossiers/runs/manual__")
    assert len(mail.messages) == 1
    message = mail.messages[0]
    assert message["To"] == "ops@ninhbinh.gov.vn" and "lgsp_tthc_dossiers failed at extract" in message["Subject"]
    assert alert["run_url"] in message.get_payload(decode=True).decode()


def test_successful_run_sends_no_alert(tmp_path: Path, sinks: tuple[WebhookSink, SmtpSink], sandbox_handle: object
                                       ) -> None:
    hook, mail = sinks
    env = lgsp_env(tmp_path / "home", LGSP_ALERT_WEBHOOK_URL=hook.url, **mail.env(),
                   **sandbox_handle.env())  # type: ignore[attr-defined]
    proc = run(["lgsp", "run", "dvcqg_procedures", "--no-retries"], env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert hook.received == [] and mail.messages == []


def test_a_broken_channel_does_not_stop_the_others(sinks: tuple[WebhookSink, SmtpSink],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lgsp.alerts import Alert, send

    hook, _ = sinks
    monkeypatch.setenv("LGSP_ALERT_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("LGSP_ALERT_SMTP_PORT", "9")  # nothing listens there
    monkeypatch.setenv("LGSP_ALERT_EMAIL_TO", "ops@ninhbinh.gov.vn")
    monkeypatch.setenv("LGSP_ALERT_WEBHOOK_URL", hook.url)
    delivered = send(Alert(kind="late", dag_id="lgsp_x", run_id="r1", run_url="http://a/r1", summary="lgsp_x late"))
    assert delivered == ["webhook"] and hook.received[0]["summary"] == "lgsp_x late"


def test_the_freshness_dag_alerts_each_stale_pipeline_once(tmp_path: Path, sinks: tuple[WebhookSink, SmtpSink],
                                                           sandbox_handle: object) -> None:
    """`lgsp status --alert` runs the lgsp_freshness DAG on Airflow: one alert per pipeline that never synced,
    none for the one that did, none again on the next check."""
    import json

    import sqlalchemy as sa

    from catalog import load_catalog

    hook, _ = sinks
    home = tmp_path / "home"
    textfile = tmp_path / "node_exporter" / "lgsp.prom"  # the DAG writes the metrics there too
    textfile.parent.mkdir()
    env = lgsp_env(home, LGSP_ALERT_WEBHOOK_URL=hook.url, LGSP_METRICS_TEXTFILE=str(textfile),
                   **sandbox_handle.env())  # type: ignore[attr-defined]
    assert run(["lgsp", "run", "dvcqg_procedures", "--inline"], env).returncode == 0
    proc = run(["lgsp", "status", "--alert", "--json"], env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the others never synced
    assert "Airflow: lgsp_freshness" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    never = {p["pipeline"] for p in report["pipelines"] if p["state"] == "never"}
    assert never == set(load_catalog().pipelines) - {"dvcqg_procedures"}
    assert sorted(a["dag_id"] for a in hook.received) == sorted(f"lgsp_{p}" for p in never)
    assert {a["kind"] for a in hook.received} == {"stale"}
    from test_metrics import samples, value

    written = samples(textfile.read_text())
    assert value(written, "lgsp_pipeline_freshness", pipeline="dvcqg_procedures", state="fresh") == 1
    assert all(value(written, "lgsp_pipeline_freshness", pipeline=p, state="never") == 1 for p in never)
    assert all("has never synced completely" in str(a["summary"]) for a in hook.received)
    assert run(["lgsp", "status", "--alert"], env).returncode == 1
    assert len(hook.received) == len(never)  # told once
    airflow_db = sa.create_engine(f"sqlite:///{home / 'airflow' / 'airflow.db'}")
    with airflow_db.connect() as conn:
        states = conn.execute(sa.text("select state from task_instance where dag_id = 'lgsp_freshness'")).all()
    assert [s for (s,) in states] == ["success", "success"]


def test_an_alert_also_mails_the_team_that_owns_the_systems_data(tmp_path: Path,
                                                                  sinks: tuple[WebhookSink, SmtpSink]) -> None:
    """catalog/systems.yaml's `owner` and `alert_to`: a failed run of a TTHC pipeline mails the TTHC team too."""
    import shutil

    import yaml

    from airflow_helpers import REPO

    hook, mail = sinks
    folder = tmp_path / "catalog"
    shutil.copytree(REPO / "catalog", folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    systems = yaml.safe_load((folder / "systems.yaml").read_text())
    systems["systems"]["tthc"].update(owner="Trung tâm Phục vụ hành chính công",
                                      alert_to=["motcua@ninhbinh.example", "ops@ninhbinh.gov.vn"])
    (folder / "systems.yaml").write_text(yaml.safe_dump(systems, allow_unicode=True))
    env = lgsp_env(tmp_path / "home", LGSP_TTHC_URL="http://127.0.0.1:9", LGSP_TTHC_API_KEY="k",
                   LGSP_ALERT_WEBHOOK_URL=hook.url, LGSP_CATALOG_DIR=str(folder), **mail.env())
    assert run(["lgsp", "run", "tthc_dossiers", "--no-retries"], env).returncode == 1
    assert [(a["system"], a["owner"]) for a in hook.received] == [("tthc", "Trung tâm Phục vụ hành chính công")]
    assert [m["To"] for m in mail.messages] == ["ops@ninhbinh.gov.vn, motcua@ninhbinh.example"]  # once each

    bad = systems["systems"]["tthc"] | {"alert_to": ["not an address"]}
    (folder / "systems.yaml").write_text(yaml.safe_dump({"systems": {**systems["systems"], "tthc": bad}}))
    proc = run(["lgsp", "catalog"], env)
    assert proc.returncode == 2 and "systems.yaml" in proc.stdout and "not e-mail addresses" in proc.stdout
