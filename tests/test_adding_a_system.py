"""docs/adding-a-system.md, followed literally: its YAML blocks, appended to the catalog, make a working pipeline."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from catalog import load_catalog
from catalog.loader import CATALOG_DIR

DOC = Path(__file__).parent.parent / "docs" / "adding-a-system.md"


def yaml_blocks() -> list[tuple[str, str]]:
    """(catalog file, text) of every ```yaml block whose first line names a catalog file."""
    blocks = re.findall(r"```yaml\n# catalog/(\w+\.yaml)\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert {name for name, _ in blocks} == {"systems.yaml", "datasets.yaml", "pipelines.yaml"}
    return blocks


def test_the_page_adds_a_system_with_yaml_only(tmp_path: Path, lgsp_env: Any, sandbox_handle: Any) -> None:
    from lgsp import runner
    from tests.test_sync_truth import assert_identical_to_truth

    target = tmp_path / "catalog"
    target.mkdir()
    for source in CATALOG_DIR.glob("*.yaml"):
        (target / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    for name, text in yaml_blocks():
        with (target / name).open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    catalog = load_catalog(target)
    assert "health_insurance" not in load_catalog().systems, "the shipped catalog does not know it"
    assert catalog.pipelines["health_insurance_cards"].dataset == "health_insurance_card"
    result = runner.run_pipeline("health_insurance_cards", catalog=catalog, settings=lgsp_env)
    assert result["rows_pulled"] == len(sandbox_handle.data.records("health_insurance_card"))
    assert result["rows_quarantined"] == len(sandbox_handle.data.defects("health_insurance_card")) > 0
    assert_identical_to_truth(runner.open_warehouse(catalog, lgsp_env), catalog, sandbox_handle,
                              "health_insurance_cards")


def test_the_page_names_only_registered_strategies() -> None:
    from connectors.auth import AUTH_METHODS
    from connectors.paging import PAGINATORS

    text = DOC.read_text(encoding="utf-8")
    for name in [*AUTH_METHODS, *PAGINATORS]:
        assert f"`{name}`" in text, f"docs/adding-a-system.md does not list `{name}`"
