"""Quarantine: every rejected row is kept with rule, reason and payload; replay after a fix lands it."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from catalog import load_catalog
from catalog.loader import CATALOG_DIR
from lgsp import quarantine, runner
from warehouse import Warehouse


def test_replay_after_a_rule_fix_lands_exactly_the_fixed_rows(lgsp_env: Any, sandbox_handle: Any,
                                                               tmp_path: Path) -> None:
    runner.run_pipeline("population_citizens")
    truth = sandbox_handle.data
    phone_bad = {k for k, kind in truth.citizen_defects.items() if kind == "phone_format"}
    assert phone_bad
    # nothing changes when replaying before any fix
    before = quarantine.replay(runner.context("population_citizens"))
    assert before["landed"] == 0 and before["still_rejected"] == len(truth.citizen_defects)
    # the fix: the province decides landline/legacy phone numbers are acceptable (rule removed)
    fixed = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, fixed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = fixed / "datasets.yaml"
    path.write_text(path.read_text().replace("      - {rule: phone_vn, column: phone}\n", ""))
    result = quarantine.replay(runner.context("population_citizens", catalog=load_catalog(fixed)))
    assert result == {"replayed": len(truth.citizen_defects), "landed": len(phone_bad),
                      "still_rejected": len(truth.citizen_defects) - len(phone_bad), "changed": len(phone_bad)}
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    with wh.engine.connect() as conn:
        landed = set(conn.execute(sa.select(wh.table("core_citizen").c.personal_id)).scalars())
        statuses = dict(conn.execute(sa.select(wh.table("lgsp_quarantine").c.record_key,
                                               wh.table("lgsp_quarantine").c.status)).all())
    assert phone_bad <= landed
    assert len(landed) == len(truth.citizens) - len(truth.citizen_defects) + len(phone_bad)
    assert {k for k, s in statuses.items() if s == "replayed"} == phone_bad
    assert wh.count("lgsp_quarantine") == len(truth.citizen_defects)  # kept, marked replayed
    # replaying again is a no-op: the replayed rows are no longer open
    again = quarantine.replay(runner.context("population_citizens", catalog=load_catalog(fixed)))
    assert again["landed"] == 0


def test_list_and_show(lgsp_env: Any, sandbox_handle: Any) -> None:
    runner.run_pipeline("tthc_dossiers")
    wh = Warehouse(lgsp_env.database_url, load_catalog())
    rows = quarantine.list_quarantine(wh, "dossier")
    assert {r["record_key"] for r in rows} == set(sandbox_handle.data.dossier_defects)
    shown = quarantine.show(wh, rows[0]["quarantine_id"][:12])
    assert shown is not None and shown["payload"]["dossier_id"] == rows[0]["record_key"]
    assert sum(r["rows"] for r in quarantine.summary(wh)) == len(sandbox_handle.data.dossier_defects)
    assert quarantine.show(wh, "zzzz") is None
