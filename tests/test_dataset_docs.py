"""Docs stay true to the code: the data dictionary is what the definitions generate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import load_catalog
from schemas.docs import dictionary_page, json_schema, write_dataset_docs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "datasets"


def test_committed_dictionary_matches_the_definitions(tmp_path: Path) -> None:
    datasets = list(load_catalog().datasets.values())
    for path in write_dataset_docs(datasets, tmp_path):
        committed = DOCS / path.name
        assert committed.exists(), f"{committed} missing: run `lgsp docs`"
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), \
            f"{committed} is stale: run `lgsp docs`"


def test_json_schema_describes_records() -> None:
    dataset = load_catalog().datasets["dossier"]
    schema = json_schema(dataset)
    assert set(schema["properties"]) == set(dataset.columns)
    assert "dossier_id" in schema["required"] and "finished_at" not in schema["required"]
    assert schema["properties"]["received_at"]["format"] == "date-time"
    assert schema["properties"]["finished_at"]["type"] == ["string", "null"]
    json.dumps(schema)
    page = dictionary_page(dataset)
    assert "`ordered`" in page and "ExpectColumnValuesToBeUnique" in page


def test_columns_are_described_in_english_and_vietnamese() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    dataset = load_catalog().datasets["dossier"]
    schema = json_schema(dataset)
    jsonschema.Draft202012Validator.check_schema(schema)  # x-description-vi: an annotation, still a valid schema
    assert schema["properties"]["dossier_id"] == {"type": "string", "description": "Dossier code (MaHoSo)",
                                                  "x-description-vi": "Mã hồ sơ (MaHoSo)"}
    page = dictionary_page(dataset)
    assert "| column | type | required | description | mô tả |" in page
    assert "| `dossier_id` | string | key | Dossier code (MaHoSo) | Mã hồ sơ (MaHoSo) |" in page
