"""The `lgsp` command as a user runs it: the demo end to end on real Airflow, and its errors."""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_helpers import lgsp_env, run
from catalog.models import LOCAL_TZ


def _counts(home: Path) -> dict[str, int]:
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        return {t: int(conn.execute(sa.text(f"select count(*) from {t}")).scalar() or 0)
                for t in ("core_citizen", "core_dossier", "lgsp_quarantine", "mart_indicator_value")}


@pytest.mark.airflow
def test_demo_runs_on_airflow_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = lgsp_env(home, LGSP_GATEWAY_PSEUDONYM_KEY="demo-test-pseudonym-key")  # stable: the agency copy follows
    first = run(["lgsp", "demo", "--citizens", "400", "--dossiers", "900"], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for dag_id in ("lgsp_population_citizens", "lgsp_tthc_dossiers", "lgsp_indicators", "lgsp_drift_citizen",
                   "lgsp_notify", "lgsp_backup"):
        assert f"Airflow: {dag_id}" in first.stdout
    assert "Online submission rate" in first.stdout and "province by month" in first.stdout
    counts = _counts(home)
    assert counts["core_citizen"] == 396 and counts["core_dossier"] == 891  # 1% defects quarantined
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    with engine.connect() as conn:
        by_dataset = dict(conn.execute(sa.text("select dataset, count(*) from lgsp_quarantine group by dataset")).all())
        outbox = dict(conn.execute(sa.text("select status, count(*) from lgsp_outbox group by status")).all())
    assert by_dataset["citizen"] == 4 and by_dataset["dossier"] == 9  # 1% defects quarantined
    assert counts["mart_indicator_value"] > 129
    assert set(outbox) == {"acked"} and outbox["acked"] > 0  # pushed to DVCQG and the reporting system
    assert "Push outbox" in first.stdout and "Last drift check" in first.stdout
    said = " ".join(first.stdout.split())  # the summary's lines, whatever the console's width
    assert "references: 8, 0 broken, 0 orphan rows" in said, "every dossier names a procedure, every row a commune"
    # the lowest: the households breaking a rule across rows (about 3%: the spouse recorded as head too)
    assert re.search(r"Quality: 10 datasets scored, overall 9\d\.\d% to 100\.0%; lowest household_member "
                     r"\(consistency\)", said), said[said.find("Quality:"):][:200]
    assert re.search(r"group checks: 2, 0 broken, \d+ groups breaking one", said)
    assert re.search(r"Online submission rate of dossiers \(v1\): .*?; \d{4} \d+\.\d% \([\d,]+/[\d,]+\); by "
                     r"procedure level Tỉnh \d+\.\d%, Xã \d+\.\d%", said), said[said.find("Indicators"):][:600]
    completeness = first.stdout[first.stdout.index("Completeness"):]
    assert completeness.count(" complete ") == 7 and "lost" not in completeness  # every pipeline with a total
    assert list((home / "lake" / "raw" / "citizen").glob("ingest_date=*/*.parquet"))
    copy = home / "agency" / "so_xay_dung.db"  # the demo agency's copy of enterprise, by the change feed
    assert f"Agency copy: enterprise -> {copy} (snapshot:" in first.stdout
    told = re.search(r"Agency told: so_xay_dung's webhook got 1 signed notification\(s\): enterprise changed "
                     r"\(1 write\(s\), (\d+) rows\)\n", first.stdout)  # by lgsp_notify, before the copy
    assert told is not None, first.stdout[-3000:]
    agency = sa.create_engine(f"sqlite:///{copy}")
    with agency.connect() as conn, engine.connect() as warehouse:
        mirrored = int(conn.execute(sa.text("select count(*) from enterprise")).scalar_one())
        shared = int(warehouse.execute(sa.text("select count(*) from shared_enterprise")).scalar_one())
    assert mirrored == shared > 0
    scoped = re.search(r"Commune scope: ubnd_xa_demo reads (\d+) of the province's 396 citizens, those of commune "
                       r"(\d+) \(lgsp agencies grant", said)  # through the gateway, by a grant scoped to it
    assert scoped is not None, first.stdout[-3000:]
    with engine.connect() as conn:
        residents = conn.execute(sa.text("select count(*) from shared_citizen where commune_code = :c"),
                                 {"c": scoped.group(2)}).scalar_one()
    assert int(scoped.group(1)) == residents > 0
    disclosed = re.search(r"Disclosure report: resident \*{9}\d{3} of commune (\d+): 0 read\(s\) named them; reads "
                          r"that may have included their record: ([\w, ]+) \(lgsp audit subject ID\); the notice to "
                          r"hand them: (\S+\.html)", said)
    assert disclosed is not None and disclosed.group(1) == scoped.group(2), said[-2000:]
    notice = Path(disclosed.group(3)).read_text(encoding="utf-8")
    assert "Thông báo về việc cung cấp dữ liệu cá nhân" in notice and "ubnd_xa_demo" not in notice, \
        "in Vietnamese, the agency by its registered name"
    assert "ubnd_xa_demo" in disclosed.group(2).split(", "), "the commune's reads of its residents"
    asked = re.search(r"Access request: so_xay_dung asked for land_parcel \((req_[0-9a-f]{12})\), the province "
                      r"approved it; its access webhook was told: access_request\.decided \(approved\), "
                      r"grant\.changed \(granted\) \(GET /api/v1/events", said)  # by lgsp_notify, signed
    assert asked is not None, said[-2000:]
    with engine.connect() as conn:
        assert conn.execute(sa.text("select request_id from gateway_grant where agency_id = 'so_xay_dung' "
                                    "and dataset = 'land_parcel'")).scalar_one() == asked.group(1)
    backed = re.search(r"Backup: (\S+): sqlite store, \d+ tables, [\d,]+ rows; ([\d,]+) lake files", said)
    assert backed is not None and backed.group(1).startswith(str(home / "backups" / "lgsp-")), said[-2000:]
    manifest = json.loads((Path(backed.group(1)) / "manifest.json").read_text())  # by the lgsp_backup DAG run
    assert manifest["store"]["tables"]["core_citizen"] == 396 and int(backed.group(2).replace(",", "")) > 9
    monitored = re.search(r"Monitoring: (\d+) Prometheus samples: (\d+) of (\d+) pipelines fresh, (\d+) error\(s\)", said)
    assert monitored is not None and int(monitored.group(1)) > 100, said[-2000:]
    assert monitored.group(2) == monitored.group(3) == "10" and monitored.group(4) == "0"  # every pipeline just synced
    printed = first.stdout + first.stderr
    assert "demo-test-pseudonym-key" not in printed and not re.search(r"lgsp_[0-9a-f]{12}_", printed)  # no key
    assert "Peak hours:" not in said  # LGSP_POPULATION_PEAK_HOURS=none: no peak
    hour = (datetime.now(LOCAL_TZ).hour + 12) % 24  # a minute of peak twelve hours away: this run is off peak
    peak = f"{hour:02d}:00-{hour:02d}:01"
    again = run(["lgsp", "demo", "--citizens", "400", "--dossiers", "900"], {**env, "LGSP_POPULATION_PEAK_HOURS": peak})
    assert again.returncode == 0, again.stdout[-3000:]
    assert (f"Peak hours: population's peak hours: mon-fri {peak} local (Asia/Ho_Chi_Minh): background calls at "
            "10/s, full refreshes and backfills wait for their end, lookups at the full rate; now off peak "
            "(limits.peak; lgsp status)") in " ".join(again.stdout.split())
    assert _counts(home) == counts
    assert f"Agency copy: enterprise -> {copy} (changes: 0 upserted, 0 deleted; {shared} rows" in again.stdout
    assert "Agency told: nothing, as nothing it follows changed" in again.stdout
    rerun = " ".join(again.stdout.split())
    asked_again = re.search(r"Access request: so_xay_dung asked for land_parcel \((req_[0-9a-f]{12})\), the province "
                            r"approved it; its access webhook was told: access_request\.decided \(approved\), "
                            r"grant\.changed \(granted\) \(", rerun)  # the earlier grant taken back first
    assert asked_again is not None and asked_again.group(1) != asked.group(1), rerun[-2000:]
    assert int(told.group(1)) >= shared, "every enterprise version the first load wrote"
    assert len(list((home / "backups").glob("lgsp-*"))) == 2, "one backup a run, both kept"


def test_pipelines_lists_the_catalog(tmp_path: Path) -> None:
    proc = run(["lgsp", "pipelines"], lgsp_env(tmp_path / "home"))
    assert proc.returncode == 0
    assert "population_citizens" in proc.stdout and "lgsp_tthc_dossiers" in proc.stdout


def test_unknown_pipeline_fails_with_the_known_ones(tmp_path: Path) -> None:
    proc = run(["lgsp", "run", "nope", "--inline"], lgsp_env(tmp_path / "home"))
    assert proc.returncode == 1
    assert "no pipeline named 'nope'" in proc.stdout and "tthc_dossiers" in proc.stdout


def test_a_full_refresh_of_a_window_is_refused_before_anything_runs(tmp_path: Path) -> None:
    for window in (["--since", "2025-08-01"], ["--until", "2025-09-01"]):
        proc = run(["lgsp", "run", "tthc_dossiers", "--inline", "--full-refresh", *window], lgsp_env(tmp_path / "home"))
        assert proc.returncode == 1, proc.stdout
        assert "--full-refresh reads the whole source and --since/--until a window of it (a backfill): give one or " \
               "the other" in " ".join(proc.stdout.split())
    proc = run(["lgsp", "run", "tthc_dossiers", "--inline", "--delete-missing"], lgsp_env(tmp_path / "home"))
    assert proc.returncode == 1, proc.stdout
    assert "--delete-missing needs --full-refresh: only a full refresh reads every record the source has" in \
        " ".join(proc.stdout.split())
    assert not (tmp_path / "home" / "warehouse.db").exists()  # nothing was run


def test_peer_down_fails_naming_system_and_operation(tmp_path: Path) -> None:
    env = lgsp_env(tmp_path / "home", LGSP_TTHC_URL="http://127.0.0.1:9", LGSP_TTHC_API_KEY="k")
    proc = run(["lgsp", "run", "tthc_dossiers", "--inline"], env)
    assert proc.returncode == 1
    assert "tthc /api/v1/dossiers" in proc.stdout and "nothing is lost" in proc.stdout


def test_broken_catalog_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    import shutil

    from catalog.loader import CATALOG_DIR

    broken = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, broken, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = broken / "systems.yaml"
    path.write_text(path.read_text().replace("protocol: soap", "protocol: corba"))
    proc = run(["lgsp", "catalog"], lgsp_env(tmp_path / "home", LGSP_CATALOG_DIR=str(broken)))
    assert proc.returncode == 2
    assert "systems.yaml" in proc.stdout and "systems.population.protocol" in proc.stdout


def test_health_probes_every_system_and_keeps_the_history(tmp_path: Path, sandbox_handle: object) -> None:
    from catalog import load_catalog

    env = lgsp_env(tmp_path / "home", **sandbox_handle.env())  # type: ignore[attr-defined]
    for _ in range(2):
        proc = run(["lgsp", "health"], env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    systems = set(load_catalog().systems)
    assert all(name in proc.stdout for name in systems) and "down" not in proc.stdout
    history = run(["lgsp", "health", "--history"], env)
    assert history.returncode == 0 and "100%" in history.stdout
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'home' / 'warehouse.db'}")
    with engine.connect() as conn:
        probes = dict(conn.execute(sa.text("select system, count(*) from lgsp_health_check group by system")).all())
    assert probes == {name: 2 for name in systems}
    down = run(["lgsp", "health", "--system", "tthc"], {**env, "LGSP_TTHC_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1 and "down" in down.stdout


def test_outbox_list_and_retry_on_an_empty_outbox(tmp_path: Path) -> None:
    env = lgsp_env(tmp_path / "home")
    listed = run(["lgsp", "outbox", "list"], env)
    assert listed.returncode == 0 and "Outbox by feed and status" in listed.stdout
    retried = run(["lgsp", "outbox", "retry"], env)
    assert retried.returncode == 0 and "requeued 0 dead message(s)" in retried.stdout
