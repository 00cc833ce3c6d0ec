"""The warehouse's shared layer: `shared_<dataset>` views from catalog/sharing.yaml, on SQLite and PostgreSQL.

Data comes from the real pipelines against the sandbox; a second enterprise version is
written through the real store (`Warehouse.write_batch`, history mode).
"""
from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml

from catalog import CatalogError, load_catalog
from catalog.loader import CATALOG_DIR
from lgsp import runner
from lgsp.runner import _with_lineage
from warehouse import Warehouse
from warehouse.shared import create_shared_views, shared_views
from warehouse.store import utc


def _rows(wh: Warehouse, sql: str) -> list[dict[str, Any]]:
    with wh.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(sql)).mappings()]


def test_views_expose_shared_columns_and_current_versions_only(lgsp_env: Any) -> None:
    catalog = load_catalog()
    for pipeline in ("population_citizens", "business_enterprises"):
        runner.run_pipeline(pipeline, catalog=catalog)
    wh = Warehouse(lgsp_env.database_url, catalog)
    assert create_shared_views(wh, catalog) == sorted(s.view_name for s in catalog.sharing.values())

    citizens = _rows(wh, "SELECT * FROM shared_citizen")
    core = {r["personal_id"]: r for r in _rows(wh, "SELECT * FROM core_citizen")}
    # no phone; of the lineage only the batch that last changed the row (the change feed's, never shown)
    assert list(citizens[0]) == [*catalog.sharing["citizen"].columns, "_batch_id"]
    assert {r["personal_id"] for r in citizens} == set(core) and len(core) > 200
    for row in citizens:
        assert row["full_name"] == core[row["personal_id"]]["full_name"]

    enterprise = catalog.datasets["enterprise"]
    table = wh.core["enterprise"]
    with wh.engine.connect() as conn:
        changed = [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.tax_code).limit(5)).mappings()]
    for row in changed:  # the business registry suspends five enterprises a day later
        row.update(status="suspended", updated_at=utc(row["updated_at"]) + timedelta(days=1))
    columns = list(enterprise.columns)
    records = pa.Table.from_pylist([{c: r[c] for c in columns} for r in changed])
    lineage = _with_lineage(records, SimpleNamespace(system=SimpleNamespace(name="business")), "b2")  # type: ignore[arg-type]
    with wh.transaction() as conn:
        assert wh.write_batch(conn, enterprise, lineage) == 5
    versions = _rows(wh, "SELECT tax_code, status, is_current FROM core_enterprise")
    shared = {r["tax_code"]: r for r in _rows(wh, "SELECT * FROM shared_enterprise")}
    assert len(versions) == len(shared) + 5  # the closed versions stay in core, not in the shared view
    assert all(shared[r["tax_code"]]["status"] == "suspended" for r in changed)
    assert set(shared) == {v["tax_code"] for v in versions}

    assert create_shared_views(wh, catalog)  # recreating is idempotent
    assert len(_rows(wh, "SELECT * FROM shared_enterprise")) == len(shared)


def test_view_descriptions_query_the_views_with_bound_parameters(lgsp_env: Any) -> None:
    catalog = load_catalog()
    runner.run_pipeline("tthc_dossiers", catalog=catalog)
    wh = Warehouse(lgsp_env.database_url, catalog)
    create_shared_views(wh, catalog)
    view = shared_views(catalog)["dossier"]
    with wh.engine.connect() as conn:
        online = conn.execute(sa.select(sa.func.count()).select_from(view).where(view.c.channel == "online")).scalar()
        truth = conn.execute(sa.text("SELECT count(*) FROM core_dossier WHERE channel = 'online'")).scalar()
    assert online == truth > 0


def test_a_dataset_no_longer_shared_loses_its_view(database_url: str) -> None:
    catalog = load_catalog()
    wh = Warehouse(database_url, catalog)
    wh.create_all()
    create_shared_views(wh, catalog)
    fewer = catalog.model_copy(update={"sharing": {k: v for k, v in catalog.sharing.items() if k != "procedure"}})
    create_shared_views(wh, fewer)
    views = set(sa.inspect(wh.engine).get_view_names())
    assert "shared_procedure" not in views and "shared_citizen" in views


def _catalog_with(tmp_path: Path, dataset: str, **changes: Any) -> Path:
    folder = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    document = yaml.safe_load((folder / "sharing.yaml").read_text(encoding="utf-8"))
    document["sharing"].setdefault(dataset, {}).update(changes)
    (folder / "sharing.yaml").write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return folder


@pytest.mark.parametrize(("dataset", "changes", "fragments"), [
    ("citizen", {"columns": ["personal_id", "blood_type"], "filterable": [], "personal": {}},
     ["sharing.citizen.columns", "['blood_type'] are not columns of dataset 'citizen'"]),
    ("citizen", {"columns": ["full_name", "sex"], "personal": {}, "filterable": []},
     ["sharing.citizen.columns", "must include the key ['personal_id']"]),
    ("citizen", {"access": "open"}, ["sharing.citizen", "an open dataset cannot expose personal columns"]),
    ("citizen", {"filterable": ["phone"]}, ["sharing.citizen", "filterable names ['phone']"]),
    ("citizen", {"personal": {"personal_id": "shred"}}, ["sharing.citizen.personal.personal_id"]),
    ("citizen", {"personal": {"personal_id": "mask"}},
     ["sharing.citizen.personal", "{'personal_id': 'mask'} may only be pseudonymised"]),
    ("passport", {"owner": "x", "licence": "y", "columns": ["number"]}, ["unknown dataset 'passport'"]),
])
def test_a_wrong_sharing_declaration_names_file_and_field(tmp_path: Path, dataset: str, changes: dict[str, Any],
                                                          fragments: list[str]) -> None:
    folder = _catalog_with(tmp_path, dataset, **changes)
    with pytest.raises(CatalogError) as caught:
        load_catalog(folder)
    assert str(folder / "sharing.yaml") in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
