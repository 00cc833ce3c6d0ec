"""`lgsp reconcile`: every record the source counts is in lgsp's copy or its quarantine, on SQLite and PostgreSQL.

The real sandbox services count their records (`total`); the real pipelines load them. Then a
record is "lost" by deleting it from the copy behind lgsp's back, and one the source does not
count is added, and the counts say so.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from catalog import load_catalog
from lgsp import runner
from lgsp.cli import app as lgsp_app
from lgsp.reconcile import ReconcileError, reconcile
from warehouse import Warehouse


def _wh(lgsp_env: Any) -> Warehouse:
    return Warehouse(lgsp_env.database_url, load_catalog())


def test_a_synced_pipeline_is_complete_counting_its_quarantine(lgsp_env: Any, sandbox_handle: Any) -> None:
    runner.run_pipeline("population_citizens")
    wh = _wh(lgsp_env)
    result = reconcile(load_catalog(), wh, "population_citizens")
    truth = len(sandbox_handle.data.citizens)
    assert (result.source_total, result.status) == (truth, "complete")
    assert result.source_changed_since_cursor == 0  # the newest records, counted again at the cursor, are held
    assert result.in_copy == wh.count("core_citizen") and result.in_quarantine_only > 0  # the 1% defects
    assert result.held == truth


def test_a_record_in_neither_the_copy_nor_the_quarantine_is_lost_and_an_uncounted_one_extra(
        lgsp_env: Any, sandbox_handle: Any) -> None:
    runner.run_pipeline("tthc_dossiers")
    wh = _wh(lgsp_env)
    with wh.transaction() as conn:  # behind lgsp's back: rows gone from the copy
        conn.execute(sa.text("DELETE FROM core_dossier WHERE dossier_id IN "
                             "(SELECT dossier_id FROM core_dossier ORDER BY updated_at LIMIT 5)"))
    cli = CliRunner()
    lost = cli.invoke(lgsp_app, ["reconcile", "tthc_dossiers", "--json"])
    assert lost.exit_code == 1, lost.output
    figures = json.loads(lost.stdout.strip().splitlines()[-1])[0]
    assert (figures["status"], figures["source_total"] - figures["held"]) == ("lost", 5)

    assert runner.run_pipeline("tthc_dossiers", full_refresh=True)["rows_pulled"] > 0  # the fix the docs give
    assert reconcile(load_catalog(), wh, "tthc_dossiers").status == "complete"

    columns = [c.name for c in wh.table("core_dossier").columns]
    copied = ", ".join("'NOT-AT-SOURCE-1'" if c == "dossier_id" else f'"{c}"' for c in columns)
    with wh.transaction() as conn:  # a row the source does not count
        conn.execute(sa.text(f"INSERT INTO core_dossier ({', '.join(chr(34) + c + chr(34) for c in columns)}) "
                             f"SELECT {copied} FROM core_dossier LIMIT 1"))
    extra = reconcile(load_catalog(), wh, "tthc_dossiers")
    assert (extra.status, extra.held - extra.source_total) == ("extra", 1)
    table = cli.invoke(lgsp_app, ["reconcile", "tthc_dossiers"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "extra" in table.stdout
    assert "`lgsp drift dossier` finds which, `lgsp run tthc_dossiers --full-refresh --delete-missing` removes them" \
        in " ".join(table.stdout.split())
    assert runner.run_pipeline("tthc_dossiers", full_refresh=True, delete_missing=0.1)["rows_deleted"] == 1
    assert reconcile(load_catalog(), wh, "tthc_dossiers").status == "complete"  # the fix it gives


def test_a_history_dataset_counts_current_versions_and_a_source_without_a_total_is_refused(
        lgsp_env: Any, sandbox_handle: Any) -> None:
    catalog = load_catalog()
    with pytest.raises(ReconcileError, match="civil_servants: its source declares no total_field"):
        reconcile(catalog, _wh(lgsp_env), "civil_servants")
    runner.run_pipeline("business_enterprises")
    wh = _wh(lgsp_env)
    assert reconcile(catalog, wh, "business_enterprises").status == "complete"
    with wh.transaction() as conn:  # as if deleted at the source: the last version closed, none current
        conn.execute(sa.text("UPDATE core_enterprise SET is_current = false WHERE tax_code = "
                             "(SELECT min(tax_code) FROM core_enterprise)"))
    closed = reconcile(catalog, wh, "business_enterprises")
    assert (closed.status, closed.source_total - closed.held) == ("lost", 1)  # only current versions count
    runner.run_pipeline("land_parcels")
    result = reconcile(catalog, _wh(lgsp_env), "land_parcels")  # partitioned on Airflow; one count here
    assert (result.status, result.source_total) == ("complete", len(sandbox_handle.data.land_parcels))
