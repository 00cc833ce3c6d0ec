"""The catalog is validated on load; errors name the file and the offending field."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from catalog import CatalogError, load_catalog
from catalog.loader import CATALOG_DIR, expand_env


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    for path in CATALOG_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_shipped_catalog_loads_and_cross_references() -> None:
    catalog = load_catalog()
    assert {"population_citizens", "tthc_dossiers"} <= set(catalog.pipelines)
    for pipeline in catalog.pipelines.values():
        assert pipeline.source.system in catalog.systems
        assert pipeline.dataset in catalog.datasets
        assert pipeline.retries >= 2
    assert catalog.datasets["citizen"].key == ["personal_id"]
    assert catalog.datasets["dossier"].cursor_field == "updated_at"


def test_wrong_type_names_file_and_field(catalog_copy: Path) -> None:
    path = catalog_copy / "pipelines.yaml"
    path.write_text(path.read_text().replace("retries: 3", "retries: many", 1))
    with pytest.raises(CatalogError) as err:
        load_catalog(catalog_copy)
    assert "pipelines.yaml" in str(err.value)
    assert "pipelines.population_citizens.retries" in str(err.value)


def test_unknown_field_is_rejected(catalog_copy: Path) -> None:
    path = catalog_copy / "datasets.yaml"
    path.write_text(path.read_text().replace("cursor_field: updated_at", "cursor_feild: updated_at", 1))
    with pytest.raises(CatalogError, match=r"datasets\.yaml.*datasets\.citizen\.cursor_feild"):
        load_catalog(catalog_copy)


def test_vietnamese_title_and_description_are_optional_strings(catalog_copy: Path) -> None:
    catalog = load_catalog()
    assert all(shared.title_vi and shared.description_vi for shared in catalog.sharing.values())
    path = catalog_copy / "sharing.yaml"
    shipped = path.read_text(encoding="utf-8")
    path.write_text(shipped.replace('title_vi: "Hồ sơ thủ tục hành chính"', "title_vi: [Hồ sơ]"), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"sharing\.yaml.*sharing\.dossier\.title_vi"):
        load_catalog(catalog_copy)
    path.write_text(shipped.replace("description_vi:", "descripton_vi:", 1), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"sharing\.citizen\.descripton_vi"):
        load_catalog(catalog_copy)
    without = re.sub(r'\n    (title|description)_vi: "[^"]*"', "", shipped)  # absent: the portal shows English
    assert "_vi:" not in without.replace("#   title_vi", "")
    path.write_text(without, encoding="utf-8")
    assert {(s.title_vi, s.description_vi) for s in load_catalog(catalog_copy).sharing.values()} == {("", "")}


def test_column_descriptions_in_vietnamese_are_optional_strings(catalog_copy: Path) -> None:
    path = catalog_copy / "datasets.yaml"
    shipped = path.read_text(encoding="utf-8")
    assert load_catalog().datasets["dossier"].columns["dossier_id"].description_vi == "Mã hồ sơ (MaHoSo)"
    path.write_text(shipped.replace('description_vi: "Mã hồ sơ (MaHoSo)"', "description_vi: [Mã hồ sơ]"),
                    encoding="utf-8")
    with pytest.raises(CatalogError, match=r"datasets\.yaml.*datasets\.dossier\.columns\.dossier_id\.description_vi"):
        load_catalog(catalog_copy)
    without = re.sub(r'\n +description_vi: "[^"]*"', "", shipped)  # absent: the portal shows the English one
    assert "description_vi" not in without
    path.write_text(without, encoding="utf-8")
    datasets = load_catalog(catalog_copy).datasets
    assert {c.description_vi for d in datasets.values() for c in d.columns.values()} == {""}
    assert datasets["dossier"].columns["dossier_id"].description == "Dossier code (MaHoSo)"


def test_every_shared_column_is_described_in_english_and_vietnamese() -> None:
    catalog = load_catalog()
    undescribed = [f"{name}.{column}" for name, shared in catalog.sharing.items() for column in shared.columns
                   if not (catalog.datasets[name].columns[column].description.strip()
                           and catalog.datasets[name].columns[column].description_vi.strip())]
    assert undescribed == [], "describe these columns in catalog/datasets.yaml (description and description_vi)"


def test_unknown_system_reference(catalog_copy: Path) -> None:
    path = catalog_copy / "pipelines.yaml"
    path.write_text(path.read_text().replace("system: tthc", "system: tthc_typo", 1))
    with pytest.raises(CatalogError, match=r"pipelines\.tthc_dossiers\.source\.system: unknown system 'tthc_typo'"):
        load_catalog(catalog_copy)


def test_secret_must_be_a_reference_not_a_value(catalog_copy: Path) -> None:
    path = catalog_copy / "systems.yaml"
    path.write_text(path.read_text().replace("secret: env:LGSP_TTHC_API_KEY", "secret: hunter2-literal"))
    with pytest.raises(CatalogError, match=r"systems\.tthc\.auth\.secret"):
        load_catalog(catalog_copy)


def test_key_must_be_a_declared_column(catalog_copy: Path) -> None:
    path = catalog_copy / "datasets.yaml"
    path.write_text(path.read_text().replace("key: [dossier_id]", "key: [ma_ho_so]"))
    with pytest.raises(CatalogError, match=r"datasets\.dossier.*'ma_ho_so'"):
        load_catalog(catalog_copy)


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGSP_X", "http://h:1")
    assert expand_env("${LGSP_X:-d}/p") == "http://h:1/p"
    monkeypatch.delenv("LGSP_X")
    assert expand_env("${LGSP_X:-d}/p") == "d/p"
    with pytest.raises(CatalogError, match="LGSP_X"):
        expand_env("${LGSP_X}")


def test_indicator_mart_is_generated_from_its_dataset_definition(tmp_path: Any) -> None:
    from warehouse import Warehouse

    catalog = load_catalog()
    spec = catalog.datasets["indicator_value"]
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}", catalog)
    mart = wh.system["mart_indicator_value"]
    assert spec.layer == "mart" and spec.table_name == "mart_indicator_value"
    # no source lineage in the mart: only the computation that last changed a row (the change feed's)
    assert [c.name for c in mart.columns] == [*spec.columns, "_batch_id"]
    assert [c.name for c in mart.primary_key] == spec.key
    assert "indicator_value" not in wh.core


def test_a_pipeline_cannot_target_a_mart_dataset(tmp_path: Any) -> None:
    import shutil

    target = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = target / "pipelines.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("dataset: procedure", "dataset: indicator_value"),
                    encoding="utf-8")
    with pytest.raises(CatalogError, match="is a mart dataset"):
        load_catalog(target)


def test_a_replace_dataset_has_one_unpartitioned_loader(catalog_copy: Path) -> None:
    """Each batch of a 'replace' dataset swaps in a table of its own rows: a slice, or another pipeline's
    batch, would drop the rest. Both are refused naming the pipeline and what to write instead."""
    datasets = catalog_copy / "datasets.yaml"
    shipped = datasets.read_text()
    datasets.write_text(shipped.replace("key: [parcel_id]", "key: [parcel_id]\n    write_mode: replace"))
    with pytest.raises(CatalogError, match=r"pipelines\.land_parcels\.partition: dataset 'land_parcel' is written "
                                           r"by 'replace', and each slice's load would swap in a table holding "
                                           r"that slice alone\. Write it by 'merge'"):
        load_catalog(catalog_copy)

    datasets.write_text(shipped.replace("key: [servant_id]", "key: [servant_id]\n    write_mode: replace"))
    load_catalog(catalog_copy)  # one unpartitioned pipeline: fine
    pipelines = catalog_copy / "pipelines.yaml"
    pipelines.write_text(pipelines.read_text().replace("dataset: document\n", "dataset: civil_servant\n"))
    with pytest.raises(CatalogError, match=r"dataset 'civil_servant' is written by 'replace' and pipeline "
                                           r"'\w+' loads it too: each run would swap in a table of its own rows"):
        load_catalog(catalog_copy)
