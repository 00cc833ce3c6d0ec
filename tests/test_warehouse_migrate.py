"""`lgsp warehouse plan|migrate`: a core table brought to its dataset's changed definition, SQLite and PostgreSQL.

The first test runs the real `business_enterprises` pipeline against the sandbox with a
definition that does not declare `email` (so the source's emails land in `_extras`), then
declares it, migrates, and checks that a full refresh of the same source changes nothing:
the migrated rows are what a load makes. The others write the `firm` dataset of
tests/test_write_modes.py straight through the warehouse and change its write mode, a
column's type, what is required.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from catalog import load_catalog
from catalog.models import Catalog, DatasetSpec, SharedDatasetSpec
from lgsp import runner
from lgsp.cli import app as lgsp_app
from test_write_modes import T0, batch, firm_spec, firms, write
from schemas.arrow import arrow_schema
from warehouse import Warehouse
from warehouse.conform import conform_lake
from warehouse.lake import Lake
from warehouse.migrate import MigrationError, migrate_dataset, plan
from warehouse.shared import create_shared_views
from warehouse.store import SchemaMigrationNeeded, utc


def with_dataset(catalog: Catalog, dataset: DatasetSpec) -> Catalog:
    return catalog.model_copy(update={"datasets": {**catalog.datasets, dataset.name: dataset}})


def firm_warehouse(url: str, dataset: DatasetSpec) -> tuple[Warehouse, Catalog]:
    catalog = with_dataset(load_catalog(), dataset)
    wh = Warehouse(url, catalog)
    wh.create_all(check_shapes=False)
    return wh, catalog


def rows_of(wh: Warehouse, table: str, order: str = "code") -> list[dict[str, Any]]:
    with wh.engine.connect() as conn:
        reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)  # typed: SQLite's timestamps parsed
        return [dict(r._mapping) for r in conn.execute(sa.select(reflected).order_by(reflected.c[order]))]


def said(result: Any) -> str:
    """A command's output as one line (rich wraps long lines)."""
    return " ".join(result.output.split())


def tables_of(wh: Warehouse) -> set[str]:
    return set(sa.inspect(wh.engine).get_table_names())


def test_a_renamed_field_loaded_before_it_was_mapped_moves_into_its_column_in_its_own_form(lgsp_env: Any) -> None:
    """Before `procedure` declared it, every load kept the DVCQG's `NgayCapNhat` in `_extras` under the portal's own
    name. The catalog now maps it (`fields: {NgayCapNhat: updated_at}`) to a required column written yyyyMMddHHmmss in
    Vietnam's time: the plan names it, migrate moves it typed by the column's format and zone, and a full refresh of
    the same source then changes nothing (the migrated rows are what a load makes)."""
    from sandbox.dvcqg_rest import parse_portal_time

    real = load_catalog()
    procedure, pipeline, shared = (real.datasets["procedure"], real.pipelines["dvcqg_procedures"],
                                   real.sharing["procedure"])
    before = real.model_copy(update={
        "datasets": {**real.datasets, "procedure": procedure.model_copy(update={
            "cursor_field": None, "columns": {k: v for k, v in procedure.columns.items() if k != "updated_at"}})},
        "pipelines": {**real.pipelines, "dvcqg_procedures": pipeline.model_copy(update={
            "source": pipeline.source.model_copy(update={
                "cursor_param": None, "until_param": None,
                "fields": {k: v for k, v in pipeline.source.fields.items() if v != "updated_at"}})})},
        "sharing": {**real.sharing, "procedure": shared.model_copy(update={
            "columns": [c for c in shared.columns if c != "updated_at"],
            "filterable": [c for c in shared.filterable if c != "updated_at"]})}})
    first = runner.run_pipeline("dvcqg_procedures", catalog=before)
    assert first["extra_columns"] == ["NgayCapNhat"]
    wh = Warehouse(lgsp_env.database_url, real)  # type: ignore[attr-defined]
    sent = {r["procedure_code"]: json.loads(r["_extras"])["NgayCapNhat"]
            for r in rows_of(wh, "core_procedure", "procedure_code")}
    assert len(sent) == 120

    [found] = plan(wh, real, ["procedure"])
    assert "column updated_at: 120 row(s) hold its value in _extras (as NgayCapNhat) (loaded before it was " \
           "declared): moved into the column" in [s.text for s in found.steps]
    done = migrate_dataset(wh, real, "procedure")
    assert done is not None and done.rows_changed == 120
    after = rows_of(wh, "core_procedure", "procedure_code")
    assert {r["procedure_code"]: utc(r["updated_at"]) for r in after} == {
        code: parse_portal_time(text) for code, text in sent.items()}  # 09:30 in Hanoi is 02:30 UTC
    assert all(r["_extras"] is None for r in after)
    again = runner.run_pipeline("dvcqg_procedures", catalog=real, full_refresh=True)
    assert (again["rows_pulled"], again["rows_changed"]) == (120, 0)


def test_a_field_declared_after_it_was_loaded_moves_from_extras_and_a_full_refresh_then_changes_nothing(
        lgsp_env: Any) -> None:
    real = load_catalog()
    enterprise = real.datasets["enterprise"]
    undeclared = enterprise.model_copy(update={
        "columns": {k: v for k, v in enterprise.columns.items() if k != "email"},
        "checks": [c for c in enterprise.checks if "email" not in c.model_dump().values()]})
    before = with_dataset(real, undeclared)
    first = runner.run_pipeline("business_enterprises", catalog=before)
    assert "email" in first["extra_columns"]
    wh = Warehouse(lgsp_env.database_url, real)  # type: ignore[attr-defined]
    wh.create_all()  # an optional column is added, not blocking
    create_shared_views(wh, real)
    emails = {r["tax_code"]: json.loads(r["_extras"])["email"] for r in rows_of(wh, "core_enterprise", "tax_code")
              if r["_extras"] and "email" in json.loads(r["_extras"])}
    assert len(emails) > 100 and all(r["email"] is None for r in rows_of(wh, "core_enterprise", "tax_code"))

    [found] = plan(wh, real, ["enterprise"])
    assert found.needed and not found.blocking
    assert f"column email: {len(emails)} row(s) hold its value in _extras" in " ".join(s.text for s in found.steps)

    # the row rules run again: the source's one malformed email, never checked while undeclared, is caught
    with pytest.raises(MigrationError, match=r"rule email:email: 1 row\(s\)\); nothing was changed.*"
                                             r"--quarantine-failing"):
        migrate_dataset(wh, real, "enterprise")
    assert all(r["email"] is None for r in rows_of(wh, "core_enterprise", "tax_code"))
    sent = dict(emails)  # every email the source sent, the malformed one too
    done = migrate_dataset(wh, real, "enterprise", quarantine_failing=True)
    assert done is not None and done.quarantined == 1 and done.rows_after == done.rows_before - 1
    with wh.engine.connect() as conn:
        [bad] = conn.execute(sa.text("SELECT record_key, rule, reason, payload, pipeline, batch_id "
                                     "FROM lgsp_quarantine WHERE batch_id = :b"), {"b": done.migration_id}).all()
        gone = conn.execute(sa.text("SELECT record_key FROM lgsp_tombstone WHERE batch_id = :b"),
                            {"b": done.migration_id}).scalars().all()
    assert (bad.rule, bad.pipeline) == ("email:email", "business_enterprises")
    bad_code = json.loads(bad.payload)["tax_code"]
    assert json.loads(bad.payload)["email"] == emails.pop(bad_code) and bad_code in bad.record_key
    assert len(gone) == 1 and json.loads(gone[0]) == {"tax_code": bad_code}  # a deletion for the change feed
    assert done.rows_changed == len(emails)  # the rows whose email moved (the quarantined one left the table)
    after = rows_of(wh, "core_enterprise", "tax_code")
    assert bad_code not in {r["tax_code"] for r in after}
    assert {r["tax_code"]: r["email"] for r in after if r["email"] is not None} == emails
    assert all(r["_extras"] is None or "email" not in json.loads(r["_extras"]) for r in after)
    assert {r["_batch_id"] for r in after if r["email"] is not None} == {done.migration_id}
    kept = rows_of(wh, done.previous_table, "tax_code")  # the table as it was
    assert len(kept) == len(after) + 1 and all(r.get("email") is None for r in kept)  # the quarantined one too
    with wh.engine.connect() as conn:
        change = conn.exec_driver_sql("SELECT dataset, rows_changed FROM lgsp_change WHERE batch_id = :b",
                                      {"b": done.migration_id}).one() if wh.dialect == "sqlite" else \
            conn.execute(sa.text("SELECT dataset, rows_changed FROM lgsp_change WHERE batch_id = :b"),
                         {"b": done.migration_id}).one()
        shared = conn.execute(sa.text("SELECT count(*) FROM shared_enterprise")).scalar_one()
    assert tuple(change) == ("enterprise", len(emails) + 1)  # the moved emails and the deletion
    assert shared == sum(1 for r in after if r["is_current"])  # the shared view is on the new table

    lake = Lake(lgsp_env.lake_root)  # type: ignore[attr-defined]
    in_lake = {r["tax_code"]: json.loads(r["_extras"])["email"] for r in lake.read_dataset("enterprise").to_pylist()
               if r["_extras"] and "email" in json.loads(r["_extras"])}
    assert in_lake == sent and "email" not in lake.read_dataset("enterprise").column_names  # every row landed
    conformed = conform_lake(lake, real.datasets["enterprise"])  # the lake too (`lgsp warehouse migrate` runs it)
    assert conformed.files >= 1 and conformed.rows == lake.read_dataset("enterprise").num_rows
    rows = lake.read_dataset("enterprise").to_pylist()
    assert {r["tax_code"]: r["email"] for r in rows if r["email"] is not None} == sent  # rules are the table's
    assert all(r["_extras"] is None or "email" not in json.loads(r["_extras"]) for r in rows)
    assert conform_lake(lake, real.datasets["enterprise"]).files == 0  # nothing left to rewrite

    again = runner.run_pipeline("business_enterprises", full_refresh=True, catalog=real)
    assert again["rows_changed"] == 0, "a full refresh after the migration must find every row as a load makes it"
    assert migrate_dataset(wh, real, "enterprise") is None  # nothing left to do
    assert plan(wh, real, ["enterprise"])[0].steps == []

    from lgsp.quarantine import replay  # the email rule relaxed: the quarantined row lands again

    relaxed = with_dataset(real, real.datasets["enterprise"].model_copy(update={
        "checks": [c for c in real.datasets["enterprise"].checks if c.rule != "email"]}))
    replayed = replay(runner.context("business_enterprises", catalog=relaxed))
    with wh.engine.connect() as conn:
        reasons = conn.execute(sa.text("SELECT rule, reason FROM lgsp_quarantine WHERE dataset = 'enterprise' "
                                       "AND status = 'open'")).all()
    assert replayed["landed"] == 2, (replayed, reasons)  # the migration's row and the full refresh's, one record
    assert reasons and not any(rule.startswith("email") for rule, _ in reasons)  # the source's other defects stay
    assert {r["tax_code"]: r["email"] for r in rows_of(wh, "core_enterprise", "tax_code")
            if r["is_current"]}[bad_code] == sent[bad_code]


def test_merge_to_history_and_back_keeps_every_row_and_versions_go_on(database_url: str) -> None:
    wh, catalog = firm_warehouse(database_url, firm_spec("merge"))
    ds = catalog.datasets["firm"]
    write(wh, ds, batch(firms(), "b1"))
    history = with_dataset(catalog, firm_spec("history"))
    with pytest.raises(SchemaMigrationNeeded, match=r"write mode merge -> history.*lgsp warehouse migrate"):
        Warehouse(database_url, history).create_all()

    wh = Warehouse(database_url, history)
    wh.create_all(check_shapes=False)
    done = migrate_dataset(wh, history, "firm")
    assert done is not None and (done.rows_before, done.rows_after, done.rows_changed) == (300, 300, 0)
    rows = rows_of(wh, "core_firm")
    assert all(r["is_current"] and r["valid_to"] is None and utc(r["valid_from"]) == T0 for r in rows)
    assert {r["_batch_id"] for r in rows} == {"b1"}  # nothing changed in the values: the batch stays
    wh.create_all()  # loads may go on
    later = T0 + timedelta(days=2)
    assert write(wh, history.datasets["firm"], batch(firms(10, status="dissolved", at=later), "b2")) == 10
    assert len(rows_of(wh, "core_firm")) == 310

    merged = with_dataset(catalog, firm_spec("merge"))
    wh = Warehouse(database_url, merged)
    wh.create_all(check_shapes=False)
    back = migrate_dataset(wh, merged, "firm", drop_previous=True)
    assert back is not None and (back.rows_before, back.rows_after, back.previous_table) == (310, 300, None)
    rows = rows_of(wh, "core_firm")
    assert [r["status"] for r in rows].count("dissolved") == 10 and "valid_from" not in rows[0]
    assert not any(name.startswith("core_firm__before") and name.endswith(back.migration_id[-6:])
                   for name in tables_of(wh))
    assert len([n for n in tables_of(wh) if n.startswith("core_firm__before_")]) == 1  # the first one's only
    with wh.engine.connect() as conn:
        recorded = conn.execute(sa.text("SELECT dataset, rows_before, rows_after FROM lgsp_migration "
                                        "ORDER BY applied_at")).all()
    assert [tuple(r) for r in recorded] == [("firm", 300, 300), ("firm", 310, 300)]


def test_append_becomes_merge_with_the_newest_row_or_history_with_its_versions(database_url: str) -> None:
    wh, catalog = firm_warehouse(database_url, firm_spec("append"))
    ds = catalog.datasets["firm"]
    write(wh, ds, batch(firms(), "b1"))
    write(wh, ds, batch(firms(20, status="suspended", at=T0 + timedelta(days=1)), "b2"))
    write(wh, ds, batch(firms(5, status="gone", at=T0 + timedelta(days=2), deleted=True), "b3"))
    assert len(rows_of(wh, "core_firm")) == 325

    history = with_dataset(catalog, firm_spec("history"))
    wh = Warehouse(database_url, history)
    wh.create_all(check_shapes=False)
    done = migrate_dataset(wh, history, "firm")
    assert done is not None and done.rows_after == 300 + 20
    by_code: dict[str, list[dict[str, Any]]] = {}
    for row in rows_of(wh, "core_firm"):
        by_code.setdefault(row["code"], []).append(row)
    deleted, suspended = by_code["F00000"], by_code["F00010"]
    assert [(r["status"], r["is_current"]) for r in sorted(deleted, key=lambda r: utc(r["valid_from"]))] == [
        ("active", False), ("suspended", False)]  # the deletion closed its last version, as the writer does
    assert [(r["status"], r["is_current"]) for r in sorted(suspended, key=lambda r: utc(r["valid_from"]))] == [
        ("active", False), ("suspended", True)]
    assert len(by_code["F00100"]) == 1 and by_code["F00100"][0]["is_current"]

    wh, catalog = firm_warehouse(database_url, firm_spec("append"))  # the append table, again from scratch
    wh.create_all(check_shapes=False)
    previous = next(n for n in tables_of(wh) if n.startswith("core_firm__before_"))
    with wh.engine.begin() as conn:  # put the append table back
        conn.exec_driver_sql('DROP TABLE "core_firm"')
        conn.exec_driver_sql(f'ALTER TABLE "{previous}" RENAME TO "core_firm"')
        if wh.dialect == "postgresql":
            conn.exec_driver_sql(f'ALTER TABLE "core_firm" RENAME CONSTRAINT "{previous}_pkey" TO "core_firm_pkey"')
    merged = with_dataset(catalog, firm_spec("merge"))
    wh = Warehouse(database_url, merged)
    wh.create_all(check_shapes=False)
    done = migrate_dataset(wh, merged, "firm")
    rows = {r["code"]: r for r in rows_of(wh, "core_firm")}
    assert done is not None and len(rows) == 295  # the five deleted records are gone, as a merge deletes them
    assert rows["F00010"]["status"] == "suspended" and rows["F00100"]["status"] == "active"


def typed_firm(kind: str, required: bool = False) -> DatasetSpec:
    spec = firm_spec("merge")
    return spec.model_copy(update={"columns": {**spec.columns,
                                               "employees": spec.columns["status"].model_copy(
                                                   update={"type": kind, "required": required})}})


def test_a_type_change_converts_every_value_or_changes_nothing(database_url: str) -> None:
    wh, catalog = firm_warehouse(database_url, typed_firm("string"))
    ds = catalog.datasets["firm"]
    records = [{**r, "employees": str(i % 50)} for i, r in enumerate(firms())]
    records[7]["employees"] = "many"
    write(wh, ds, batch(records, "b1"))
    integer = with_dataset(catalog, typed_firm("integer"))
    with pytest.raises(SchemaMigrationNeeded, match="column employees: string -> integer"):
        Warehouse(database_url, integer).create_all()
    wh = Warehouse(database_url, integer)
    wh.create_all(check_shapes=False)
    before = rows_of(wh, "core_firm")
    with pytest.raises(MigrationError, match=r"employees: not a valid integer: 1 row\(s\)\); nothing was changed"):
        migrate_dataset(wh, integer, "firm")
    assert rows_of(wh, "core_firm") == before and not any("__" in n for n in tables_of(wh) if n.startswith("core"))
    with wh.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lgsp_migration")).scalar_one() == 0

    with wh.engine.begin() as conn:  # the value corrected (as a reload of the corrected record would)
        conn.execute(sa.text("UPDATE core_firm SET employees = '70' WHERE code = 'F00007'"))
    shared = SharedDatasetSpec(name="firm", description="Firms", owner="test", licence="test", access="open",
                               columns=["code", "employees", "updated_at"])
    integer = integer.model_copy(update={"sharing": {**integer.sharing, "firm": shared}})
    create_shared_views(wh, integer)  # the view shows the text column, as a running gateway knows it
    done = migrate_dataset(wh, integer, "firm")
    assert done is not None and done.rows_changed == 300  # every value is now a number: every row changed
    assert done.retyped_shared == ["employees"], "a running gateway must be told to restart"
    with wh.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT employees FROM shared_firm WHERE code = 'F00007'")).scalar_one() == 70
    rows = rows_of(wh, "core_firm")
    assert [r["employees"] for r in rows[:8]] == [0, 1, 2, 3, 4, 5, 6, 70]
    wh.create_all()  # and loads go on
    assert write(wh, integer.datasets["firm"], batch([{**firms(1)[0], "employees": 12}], "b2")) == 1


def test_the_lake_is_rewritten_in_a_changed_type_or_left_as_it_was(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lake = Lake(tmp_path / "lake")
    days = [date(2025, 8, 1), date(2025, 8, 2)]

    def typed(records: list[dict[str, Any]], batch_id: str, kind: str) -> pa.Table:
        table, declared = batch(records, batch_id), arrow_schema(typed_firm(kind))
        return table.cast(pa.schema([declared.field(n) if n in declared.names else table.schema.field(n)
                                     for n in table.column_names]))

    records = [{**r, "employees": str(i % 50)} for i, r in enumerate(firms(40))]
    records[7]["employees"] = "many"
    first = lake.write_parquet(typed(records[:20], "b1", "string"), "firm", days[0], "b1")
    lake.write_parquet(typed(records[20:], "b2", "string"), "firm", days[1], "b2")
    later = [{**r, "employees": i} for i, r in enumerate(firms(5, start=40))]  # loaded after the type changed
    lake.write_parquet(typed(later, "b3", "integer"), "firm", days[1], "b3")
    with pytest.raises(ValueError, match="`lgsp lake conform firm` rewrites the older files"):
        lake.read_dataset("firm")
    files = {p: p.read_bytes() for p in lake.dataset_path("firm").rglob("*.parquet")}

    with pytest.raises(ValueError, match=r"employees: not a valid integer: 1 value\(s\)\); .*no file was changed"):
        conform_lake(lake, typed_firm("integer"))
    assert {p: p.read_bytes() for p in lake.dataset_path("firm").rglob("*.parquet")} == files
    assert not list((lake.root / ".staging").rglob("*.parquet"))

    records[7]["employees"] = "7"  # the batch written again with the value corrected
    lake.write_parquet(typed(records[:20], "b1", "string"), "firm", days[0], "b1")
    monkeypatch.setenv("LGSP_LAKE", str(lake.root))
    monkeypatch.setenv("LGSP_CATALOG_DIR", str(_catalog_with(tmp_path, typed_firm("integer"))))
    would = CliRunner().invoke(lgsp_app, ["lake", "conform", "firm", "--dry-run"])
    assert would.exit_code == 0 and "firm: would rewrite 2 file(s) in 2 partition(s), 40 rows" in said(would)
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"  # the table too, loaded before the type changed
    wh, catalog = firm_warehouse(url, typed_firm("string"))
    write(wh, catalog.datasets["firm"], batch(records, "b1"))
    monkeypatch.setenv("LGSP_DATABASE_URL", url)
    done = CliRunner().invoke(lgsp_app, ["warehouse", "migrate", "firm"])  # the table, then the lake
    assert done.exit_code == 0 and "firm: migrated 40 -> 40 rows, 40 changed" in said(done), done.output
    assert "the lake: 2 file(s) in 2 partition(s) rewritten in the declared shape (40 rows)" in said(done)
    table = lake.read_dataset("firm")
    assert table.schema.field("employees").type == pa.int64() and table.num_rows == 45
    assert sorted(table.column("employees").to_pylist()) == sorted([i % 50 for i in range(40)] + list(range(5)))
    with duckdb.connect() as con:  # one type in every file: DuckDB reads them without union_by_name
        total = con.execute("SELECT sum(employees) FROM read_parquet(?)",
                            [f"{lake.dataset_path('firm')}/**/*.parquet"]).fetchone()
    assert total == (sum(i % 50 for i in range(40)) + 10,)
    assert lake.read_batch(first).num_rows == 20  # a batch's file keeps its name
    assert "every file has the declared shape" in said(CliRunner().invoke(lgsp_app, ["lake", "conform", "firm"]))
    assert [(c.files_before, c.files_after) for c in lake.compact("firm", min_age=timedelta(0))] == [(2, 1)]


def _catalog_with(tmp_path: Path, dataset: DatasetSpec) -> Path:
    """The real catalog on disk, with `dataset` added to datasets.yaml."""
    folder = tmp_path / "catalog"
    shutil.copytree(Path(__file__).parent.parent / "catalog", folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    datasets = yaml.safe_load((folder / "datasets.yaml").read_text())
    datasets["datasets"][dataset.name] = json.loads(dataset.model_dump_json(exclude_defaults=True))
    (folder / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    return folder


def test_rows_a_rule_rejects_refuse_the_migration_or_go_to_the_quarantine(database_url: str) -> None:
    wh, catalog = firm_warehouse(database_url, typed_firm("string"))
    records = [{**r, "employees": str(i % 50), "status": "weird" if i % 100 == 5 else "active"}
               for i, r in enumerate(firms())]
    write(wh, catalog.datasets["firm"], batch(records, "b1"))
    stricter = DatasetSpec.model_validate({**typed_firm("integer").model_dump(), "checks": [  # a type change, and a
        {"rule": "enum", "column": "status", "values": ["active", "dissolved"]}]})  # rule added meanwhile
    catalog = with_dataset(catalog, stricter)
    wh = Warehouse(database_url, catalog)
    wh.create_all(check_shapes=False)
    before = rows_of(wh, "core_firm")
    with pytest.raises(MigrationError, match=r"rule enum:status: 3 row\(s\)\); nothing was changed"):
        migrate_dataset(wh, catalog, "firm")
    assert rows_of(wh, "core_firm") == before

    done = migrate_dataset(wh, catalog, "firm", quarantine_failing=True)
    assert done is not None and (done.quarantined, done.rows_after) == (3, 297)
    assert {r["status"] for r in rows_of(wh, "core_firm")} == {"active"}
    with wh.engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT record_key, rule, reason, payload, status FROM lgsp_quarantine "
                                    "WHERE batch_id = :b ORDER BY record_key"), {"b": done.migration_id}).all()
        deleted = conn.execute(sa.text("SELECT count(*) FROM lgsp_tombstone WHERE batch_id = :b"),
                               {"b": done.migration_id}).scalar_one()
    assert [json.loads(k.payload)["code"] for k in kept] == ["F00005", "F00105", "F00205"] and deleted == 3
    assert {(k.rule, k.status) for k in kept} == {("enum:status", "open")} and "weird" in kept[0].reason
    assert json.loads(kept[0].payload)["employees"] == 5  # the row as the new definition types it
    assert len(rows_of(wh, done.previous_table)) == 300  # and in the table kept as it was


def test_a_column_made_required_needs_a_value_in_every_row(database_url: str) -> None:
    wh, catalog = firm_warehouse(database_url, typed_firm("string"))
    records = [{**r, "employees": None if i < 3 else "5"} for i, r in enumerate(firms())]
    write(wh, catalog.datasets["firm"], batch(records, "b1"))
    required = with_dataset(catalog, typed_firm("string", required=True))
    wh = Warehouse(database_url, required)
    wh.create_all()  # not blocking: loads check required values themselves
    [found] = plan(wh, required, ["firm"])
    assert "column employees is required but 3 row(s) have no value" in " ".join(s.text for s in found.steps)
    with pytest.raises(MigrationError, match=r"employees: required, no value: 3 row\(s\)\)"):
        migrate_dataset(wh, required, "firm")
    with wh.engine.begin() as conn:
        conn.execute(sa.text("UPDATE core_firm SET employees = '1' WHERE employees IS NULL"))
    assert migrate_dataset(wh, required, "firm") is not None
    column = next(c for c in sa.inspect(wh.engine).get_columns("core_firm") if c["name"] == "employees")
    assert column["nullable"] is False


def test_a_column_no_longer_declared_moves_to_extras(database_url: str) -> None:
    wh, catalog = firm_warehouse(database_url, typed_firm("string"))
    write(wh, catalog.datasets["firm"], batch([{**r, "employees": "9"} for r in firms()], "b1"))
    plain = with_dataset(catalog, firm_spec("merge"))
    wh = Warehouse(database_url, plain)
    wh.create_all()
    [found] = plan(wh, plain, ["firm"])
    assert [s.text for s in found.steps] == [
        "column employees is no longer declared: its values move to _extras (300 row(s) with a value)"]
    migrate_dataset(wh, plain, "firm")
    rows = rows_of(wh, "core_firm")
    assert "employees" not in rows[0] and all(json.loads(r["_extras"]) == {"employees": "9"} for r in rows)


def test_the_cli_plans_migrates_and_lists(lgsp_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh, catalog = firm_warehouse(lgsp_env.database_url, firm_spec("merge"))  # type: ignore[attr-defined]
    write(wh, catalog.datasets["firm"], batch(firms(), "b1"))
    folder = _catalog_with(tmp_path, firm_spec("history"))  # the catalog on disk, firm a history dataset now
    monkeypatch.setenv("LGSP_CATALOG_DIR", str(folder))
    cli = CliRunner()
    planned = cli.invoke(lgsp_app, ["warehouse", "plan", "firm"])
    assert planned.exit_code == 1, planned.output
    assert "must migrate before the next load" in planned.output and "write mode merge -> history" in planned.output
    migrated = cli.invoke(lgsp_app, ["warehouse", "migrate", "firm"])
    assert migrated.exit_code == 0, migrated.output
    assert "firm: migrated 300 -> 300 rows, 0 changed" in migrated.output and "core_firm__before_" in migrated.output
    assert cli.invoke(lgsp_app, ["warehouse", "plan", "firm"]).exit_code == 0
    listed = cli.invoke(lgsp_app, ["warehouse", "migrations"])
    assert listed.exit_code == 0 and "write mode merge -> history" in listed.output
    unknown = cli.invoke(lgsp_app, ["warehouse", "migrate", "nope"])
    assert unknown.exit_code == 1 and "not a core dataset" in unknown.output

    kept = [n for n in tables_of(wh) if n.startswith("core_firm__before_")]
    assert len(kept) == 1
    kept_for_now = cli.invoke(lgsp_app, ["lake", "prune", "--older-than-days", "1"])  # retention keeps it a while
    assert kept_for_now.exit_code == 0 and "0 table(s) kept as they were" in said(kept_for_now)
    would = cli.invoke(lgsp_app, ["lake", "prune", "--older-than-days", "0", "--dry-run"])
    assert would.exit_code == 0 and "1 table(s) kept as they were" in said(would) and kept[0] in tables_of(wh)
    pruned = cli.invoke(lgsp_app, ["lake", "prune", "--older-than-days", "0"])
    assert pruned.exit_code == 0 and "1 table(s) kept as they were" in said(pruned), pruned.output
    assert kept[0] not in tables_of(wh)
    assert "by retention" in said(cli.invoke(lgsp_app, ["warehouse", "migrations"]))
    assert "0 table(s) kept" in said(cli.invoke(lgsp_app, ["lake", "prune", "--older-than-days", "0"]))


def waiting_on(conn: sa.Connection, relation: str | None = None, advisory: bool = False) -> bool:
    """Whether some backend waits for a lock on `relation` (or for an advisory lock)."""
    where = "l.locktype = 'advisory'" if advisory else f"c.relname = '{relation}'"
    found = conn.execute(sa.text("SELECT count(*) FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation "
                                 f"WHERE {where} AND NOT l.granted")).scalar_one()
    conn.rollback()
    return bool(found)


def wait_until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@pytest.mark.postgres
def test_a_migration_killed_at_its_last_step_leaves_the_table_as_it_was_and_a_rerun_finishes(
        pg_url: str, tmp_path: Path) -> None:
    """Killed after the swap, before the commit (held there by a lock on lgsp_migration): nothing of it remains."""
    wh, catalog = firm_warehouse(pg_url, typed_firm("string"))
    write(wh, catalog.datasets["firm"], batch([{**r, "employees": "3"} for r in firms(5000)], "b1"))
    before = rows_of(wh, "core_firm")
    script = tmp_path / "migrate.py"
    script.write_text(
        "import sys\n"
        "from test_warehouse_migrate import firm_warehouse, typed_firm\n"
        "from warehouse.migrate import migrate_dataset\n"
        "wh, catalog = firm_warehouse(sys.argv[1], typed_firm('integer'))\n"
        "migrate_dataset(wh, catalog, 'firm', chunk_rows=2000)\n")
    with wh.engine.connect() as blocker, wh.engine.connect() as watch:
        blocker.exec_driver_sql("LOCK TABLE lgsp_migration IN ACCESS EXCLUSIVE MODE")  # its last write waits here
        child = subprocess.Popen([sys.executable, str(script), pg_url], cwd=Path(__file__).parent.parent,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                     [str(Path(__file__).parent.parent), str(Path(__file__).parent)])})
        wait_until(lambda: waiting_on(watch, "lgsp_migration") or child.poll() is not None, "the migration waits")
        assert child.poll() is None, "the migration ended before its last step"
        child.send_signal(signal.SIGKILL)
        child.wait()
        blocker.rollback()
    assert rows_of(wh, "core_firm") == before  # waits for the server to roll the dead client's work back
    assert not any(n.startswith("core_firm__") for n in tables_of(wh))
    integer = with_dataset(catalog, typed_firm("integer"))
    wh = Warehouse(pg_url, integer)
    wh.create_all(check_shapes=False)
    done = migrate_dataset(wh, integer, "firm")
    assert done is not None and done.rows_after == 5000
    assert {r["employees"] for r in rows_of(wh, "core_firm")} == {3}


@pytest.mark.postgres
def test_a_load_during_a_migration_waits_and_lands_in_the_new_table(pg_url: str) -> None:
    """PostgreSQL: a load of the dataset during a migration waits (before it touches the table), then writes
    into the new table; the migration is held at its last step until the load waits."""
    import threading

    plain, declared = firm_spec("merge"), typed_firm("string")
    wh, catalog = firm_warehouse(pg_url, plain)
    write(wh, plain, batch([{**r, "_extras": '{"employees": "3"}'} for r in firms(5000)], "b1"))
    declaring = with_dataset(catalog, declared)
    wh = Warehouse(pg_url, declaring)
    wh.create_all()  # the column is added; loads may go on beside the migration
    done: list[Any] = []
    written: list[int] = []
    later = [{**r, "employees": "5"} for r in firms(300, status="late", at=T0 + timedelta(days=1), start=4900)]
    with wh.engine.connect() as blocker, wh.engine.connect() as watch:
        blocker.exec_driver_sql("LOCK TABLE lgsp_migration IN ACCESS EXCLUSIVE MODE")
        migration = threading.Thread(target=lambda: done.append(migrate_dataset(wh, declaring, "firm")))
        migration.start()
        wait_until(lambda: waiting_on(watch, "lgsp_migration"), "the migration is at its last step")
        load = threading.Thread(target=lambda: written.append(write(wh, declared, batch(later, "b2"))))
        load.start()  # 100 updated, 200 new
        wait_until(lambda: waiting_on(watch, advisory=True), "the load waits for the migration")
        blocker.rollback()
    migration.join(60)
    load.join(60)
    assert done and done[0] is not None and done[0].rows_changed == 5000
    assert written == [300]
    rows = {r["code"]: r for r in rows_of(wh, "core_firm")}
    assert len(rows) == 5200
    assert rows["F00000"]["employees"] == "3" and rows["F04950"]["employees"] == "5"
    assert rows["F04950"]["status"] == "late" and rows["F05100"]["status"] == "late"
    assert len(rows_of(wh, done[0].previous_table)) == 5000  # the old table got none of the load
