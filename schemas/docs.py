"""Dataset definition -> JSON Schema (for the sharing API) and a data-dictionary page.

`lgsp docs` writes `docs/datasets/<dataset>.md` and `docs/datasets/<dataset>.schema.json`;
a test checks the committed files equal what the definitions generate. A column's English description
is the page's `description` and the schema's `description`; its Vietnamese one (`description_vi`) is
the page's `mô tả` and the schema's `x-description-vi` (an annotation validators ignore).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from catalog.models import DatasetSpec

JSON_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "float": {"type": "number"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "timestamp": {"type": "string", "format": "date-time"},
}


def json_schema(dataset: DatasetSpec) -> dict[str, Any]:
    """A JSON Schema (2020-12) of one record of the dataset."""
    properties = {}
    for name, col in dataset.columns.items():
        kind = dict(JSON_TYPES[col.type])
        if not col.required and name not in dataset.key:
            kind["type"] = [kind["type"], "null"]
        if col.description:
            kind["description"] = col.description
        if col.description_vi:
            kind["x-description-vi"] = col.description_vi
        if col.references is not None:
            kind["x-references"] = col.references.to
        properties[name] = kind
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"lgsp://datasets/{dataset.name}.schema.json",
        "title": dataset.title,
        "type": "object",
        "properties": properties,
        "required": [n for n, c in dataset.columns.items() if c.required or n in dataset.key],
        "additionalProperties": False,
    }


WRITE_MODE_TEXT = {
    "merge": "upsert on the key, only rows whose content changed",
    "append": "every row of every batch kept; primary key = key + `_batch_id`",
    "replace": "each batch replaces the whole table, swapped in atomically",
    "history": "SCD type 2: a change closes the current version; `valid_from`, `valid_to` (null = current), "
               "`is_current`; primary key = key + `valid_from`",
}


def _cell(text: str) -> str:
    """Text for a Markdown table cell: `<x>` shown, not taken for an HTML tag; `|` not a cell border."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _check_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def dictionary_page(dataset: DatasetSpec) -> str:
    """The data-dictionary page of one dataset, in Markdown."""
    from quality.checks import row_checks
    from quality.expectations import suite_definition

    lines = [f"# {dataset.name}", "", f"{dataset.title}.", "",
             "Generated from `catalog/datasets.yaml` by `lgsp docs`; do not edit by hand.", "",
             f"- warehouse table: `{dataset.table_name}`" + (
                 " (plus lineage columns `_batch_id`, `_source_system`, `_loaded_at`, `_row_hash`, and `_extras` "
                 "for source fields not declared here)" if dataset.layer == "core" else
                 " (the mart: computed from the core tables by `lgsp_indicators`)"),
             f"- key: {', '.join(f'`{k}`' for k in dataset.key)}",
             f"- write mode: `{dataset.write_mode}` ({WRITE_MODE_TEXT[dataset.write_mode]})"
             + (f"; deletion marker: `{dataset.delete_field}`" if dataset.delete_field else "")
             + f"; PostgreSQL fillfactor {dataset.table_fillfactor}",
             f"- incremental cursor: `{dataset.cursor_field}`" if dataset.cursor_field else "- no cursor (full pulls)",
             f"- JSON Schema: [`{dataset.name}.schema.json`]({dataset.name}.schema.json)", "",
             "## Columns", "", "| column | type | required | description | mô tả |",
             "| --- | --- | --- | --- | --- |"]
    for name, col in dataset.columns.items():
        required = "key" if name in dataset.key else ("yes" if col.required else "")
        kind = col.type + "".join(f", {label} `{value}`" for label, value in (("written", col.format),
                                                                               ("in", col.timezone)) if value)
        lines.append(f"| `{name}` | {kind} | {required} | {_cell(col.description)} | {_cell(col.description_vi)} |")
    pointing = {name: col.references for name, col in dataset.columns.items() if col.references is not None}
    if pointing:
        from lgsp.freshness import human_age

        lines += ["", "## References to other datasets (`lgsp references`; an orphan is counted, not quarantined)", "",
                  "| column | names a record of | grace | severity when broken |", "| --- | --- | --- | --- |"]
        for name, ref in pointing.items():
            lines.append(f"| `{name}` | [`{ref.dataset}`]({ref.dataset}.md)`.{ref.column}` | "
                         f"{human_age(ref.grace)} | {ref.severity} |")
    lines += ["", "## Row rules (a failing row goes to quarantine)", "", "| rule | parameters |", "| --- | --- |"]
    for check in row_checks(dataset):
        lines.append(f"| `{check.rule}` | {_check_text(check.params)} |")
    if dataset.group_checks:
        from lgsp.freshness import human_age
        from lgsp.group_checks import GroupCheck

        lines += ["", "## Rules across rows (`lgsp checks`; a group breaking one is reported, no row quarantined)", "",
                  "| check | rule | grace | severity when broken |", "| --- | --- | --- | --- |"]
        for name, spec in dataset.group_checks.items():
            rule = GroupCheck(dataset.name, name, spec).rule()
            said = f"{_cell(spec.description)}: {rule}" if spec.description else rule
            lines.append(f"| `{name}` | {said} | {human_age(spec.grace)} | {spec.severity} |")
    lines += ["", "## Dataset expectations (Great Expectations; a failure fails the run)", "",
              "| expectation | arguments |", "| --- | --- |"]
    for kind, kwargs in suite_definition(dataset):
        lines.append(f"| `{kind}` | {_check_text(kwargs)} |")
    return "\n".join(lines) + "\n"


def write_dataset_docs(datasets: list[DatasetSpec], folder: Path) -> list[Path]:
    """Write every dataset's page and JSON Schema under `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in datasets:
        page = folder / f"{dataset.name}.md"
        page.write_text(dictionary_page(dataset), encoding="utf-8")
        schema = folder / f"{dataset.name}.schema.json"
        schema.write_text(json.dumps(json_schema(dataset), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written += [page, schema]
    index = folder / "README.md"
    index.write_text("# Datasets\n\nGenerated by `lgsp docs` from `catalog/datasets.yaml`.\n\n" + "".join(
        f"- [{d.name}]({d.name}.md): {d.title}\n" for d in datasets), encoding="utf-8")
    return [index, *written]
