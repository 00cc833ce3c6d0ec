"""Extensions from an installed package (lgsp.plugins), and `lgsp catalog` naming every rule, paginator and auth
method that is unknown or given wrong parameters (lgsp.catalog_check).

The package is a real distribution on the path (its `*.dist-info` with `entry_points.txt`), found by
importlib.metadata as pip installs them: a rule, a paginator and an auth method, used by a real sync of
the sandbox's health-insurance cards on both stores.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_helpers import lgsp_env as subprocess_env, run
from catalog import load_catalog
from catalog.loader import CATALOG_DIR

EXTENSION = '''"""A province's own extensions to lgsp: a rule, a paginator and an auth method."""
from connectors.auth import AuthMethod, register as register_auth
from connectors.paging import OffsetPaginator, register as register_paginator
from quality.rules import rule


@rule("card_group", lambda row, column, groups: f"{column} {row[column]!r} is not of a group {groups}")
def card_group(df, column, groups):
    col = df[column]
    return (col.isna() | col.str.slice(0, 2).isin(groups)).fillna(False).astype(bool)


@register_paginator("skip_take")
class SkipTake(OffsetPaginator):
    """Offset paging under the names a province's document system uses."""

    kind = "skip_take"


@register_auth("province_key")
class ProvinceKey(AuthMethod):
    """The province's key header."""

    def configure(self, session):
        session.headers[self.spec.header] = self.secret.reveal()
'''

CATALOG = {
    "systems.yaml": """
  health_insurance:
    title: Health-insurance cards
    protocol: rest
    endpoint: ${LGSP_HEALTH_INSURANCE_URL:-http://127.0.0.1:8810}
    auth: {type: province_key, header: X-API-Key, secret: env:LGSP_HEALTH_INSURANCE_API_KEY}
""",
    "datasets.yaml": """
  health_insurance_card:
    title: Health-insurance card
    key: [card_no]
    cursor_field: updated_at
    columns:
      card_no: {type: string, required: true}
      personal_id: {type: string, required: true}
      full_name: {type: string, required: true}
      sex: {type: string, required: true}
      birth_date: {type: date, required: true}
      commune_code: {type: string, required: true}
      valid_from: {type: date, required: true}
      valid_to: {type: date, required: true}
      updated_at: {type: timestamp, required: true}
    checks:
      - {rule: cccd, column: personal_id, sex: sex, birth_date: birth_date}
      - {rule: commune_code, column: commune_code}
      - {rule: ordered, columns: [valid_from, valid_to]}
      - {rule: card_group, column: card_no, groups: [GD, DN, HN]}
    expectations: {max_quarantine_rate: 0.9}
""",
    "pipelines.yaml": """
  health_insurance_cards:
    title: Health-insurance cards
    source:
      system: health_insurance
      operation: /api/cards
      cursor_param: updated_since
      records_field: data
      paginator: {type: skip_take, offset_param: offset, limit_param: limit, limit: 70, total_field: total}
    dataset: health_insurance_card
""",
}


def _catalog(target: Path, edit: dict[str, tuple[str, str]] | None = None) -> Path:
    """The shipped catalog plus the blocks above (in each `edit` file, the blocks' `old` replaced by `new`)."""
    target.mkdir()
    for source in CATALOG_DIR.glob("*.yaml"):
        block = CATALOG.get(source.name, "")
        old, new = (edit or {}).get(source.name, ("", ""))
        assert old in block
        (target / source.name).write_text(source.read_text(encoding="utf-8") + block.replace(old, new, 1),
                                          encoding="utf-8")
    return target


def _package(site: Path, name: str, module: str | None, points: dict[str, str]) -> Path:
    """A distribution as pip leaves it: its module and its `.dist-info` (METADATA, entry_points.txt)."""
    site.mkdir(parents=True, exist_ok=True)
    if module is not None:
        (site / f"{name}.py").write_text(module, encoding="utf-8")
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(f"[{group}]\n{point}\n\n" for group, point in points.items()))
    return site


POINTS = {"lgsp.rules": "card_group = lgsp_province_ext", "lgsp.paginators": "skip_take = lgsp_province_ext",
          "lgsp.auth": "province_key = lgsp_province_ext"}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The extension package on this process's path; what it registered undone afterwards."""
    from connectors.auth import AUTH_METHODS
    from connectors.paging import PAGINATORS
    from lgsp import plugins
    from quality.rules import RULES

    site = _package(tmp_path / "site", "lgsp_province_ext", EXTENSION, POINTS)
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    yield site
    plugins.reset()
    RULES.pop("card_group", None)
    PAGINATORS.pop("skip_take", None)
    AUTH_METHODS.pop("province_key", None)
    sys.modules.pop("lgsp_province_ext", None)


def test_an_installed_packages_rule_paginator_and_auth_sync_the_cards(installed: Path, tmp_path: Path,
                                                                       lgsp_env: Any, sandbox_handle: Any) -> None:
    from lgsp import runner
    from lgsp.plugins import load_plugins
    from quality.rules import RULES

    assert "card_group" not in RULES, "not imported before it is needed"
    catalog = load_catalog(_catalog(tmp_path / "catalog"))
    outcome = runner.run_pipeline("health_insurance_cards", catalog=catalog, settings=lgsp_env)
    assert [(p.group, p.name, p.package, p.error) for p in load_plugins()] == [
        ("lgsp.rules", "card_group", "lgsp-province-ext", None),
        ("lgsp.paginators", "skip_take", "lgsp-province-ext", None),
        ("lgsp.auth", "province_key", "lgsp-province-ext", None)]
    cards = sandbox_handle.data.records("health_insurance_card")
    rejected = set(sandbox_handle.data.defects("health_insurance_card")) | {
        c["card_no"] for c in cards if c["card_no"][:2] not in ("GD", "DN", "HN")}
    assert outcome["rows_pulled"] == len(cards) and outcome["pages"] == -(-len(cards) // 70)
    assert outcome["rows_quarantined"] == len(rejected) > len(sandbox_handle.data.defects("health_insurance_card"))
    wh = runner.open_warehouse(catalog, lgsp_env)
    with wh.engine.connect() as conn:
        import sqlalchemy as sa

        rules = {r for (r,) in conn.execute(sa.text(
            "SELECT DISTINCT rule FROM lgsp_quarantine WHERE dataset = 'health_insurance_card'"))}
    assert "card_group:card_no" in rules, "the extension's rule quarantined, with its name"


@pytest.mark.parametrize(("file", "old", "new", "said"), [
    ("datasets.yaml", "{rule: commune_code, column: commune_code}", "{rule: comune_code, column: commune_code}",
     "datasets.health_insurance_card.checks[1] (rule comune_code): unknown rule (known: "),
    ("datasets.yaml", "{rule: card_group, column: card_no, groups: [GD, DN, HN]}",
     "{rule: card_group, column: card_no, group: [GD]}",
     "datasets.health_insurance_card.checks[3] (rule card_group): unknown parameter(s) ['group'], missing "
     "['groups'] (it takes: column, groups)"),
    ("datasets.yaml", "{rule: cccd, column: personal_id, sex: sex, birth_date: birth_date}",
     "{rule: cccd, column: personal_id, sex: gender, birth_date: birth_date}",
     "checks[0] (rule cccd): 'gender' is not a column of health_insurance_card"),
    ("datasets.yaml", "{rule: ordered, columns: [valid_from, valid_to]}",
     "{rule: ordered, columns: [valid_from, valid_until]}",
     "checks[2] (rule ordered): 'valid_until' is not a column of health_insurance_card"),
    ("pipelines.yaml", "limit: 70, total_field: total}", "limt: 70, total_field: total}",
     "pipelines.health_insurance_cards.source.paginator: skip_take paginator: unknown parameter(s) ['limt']"),
    ("systems.yaml", "type: province_key", "type: province_kee",
     "systems.health_insurance.auth.type: unknown auth type 'province_kee' (known: "),
])
def test_lgsp_catalog_names_a_misnamed_rule_paginator_or_auth_method(installed: Path, tmp_path: Path, file: str,
                                                                    old: str, new: str, said: str) -> None:
    target = _catalog(tmp_path / "catalog", {file: (old, new)})
    env = subprocess_env(tmp_path / "home", LGSP_CATALOG_DIR=str(target),
                         PYTHONPATH=f"{installed}:{subprocess_env(tmp_path / 'home')['PYTHONPATH']}", COLUMNS="400")
    proc = run(["lgsp", "catalog"], env)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1 and f"error: {target / file}: " in out and said in out, proc.stdout + proc.stderr
    assert "extension lgsp.rules card_group = lgsp_province_ext (lgsp-province-ext)" in out


def test_lgsp_catalog_lists_extensions_and_reports_one_that_fails_to_load(installed: Path, tmp_path: Path) -> None:
    target = _catalog(tmp_path / "catalog")
    home = tmp_path / "home"
    paths = f"{installed}:{subprocess_env(home)['PYTHONPATH']}"
    proc = run(["lgsp", "catalog"], subprocess_env(home, LGSP_CATALOG_DIR=str(target), PYTHONPATH=paths))
    assert proc.returncode == 0 and "catalog ok" in proc.stdout, proc.stdout + proc.stderr
    assert "extension lgsp.paginators skip_take = lgsp_province_ext (lgsp-province-ext)" in proc.stdout
    broken = _package(tmp_path / "broken", "lgsp_broken", None, {"lgsp.rules": "vn_plate = lgsp_broken_rules"})
    proc = run(["lgsp", "catalog"], subprocess_env(home, LGSP_CATALOG_DIR=str(target), COLUMNS="400",
                                                   PYTHONPATH=f"{broken}:{paths}"))
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1 and "extension lgsp.rules vn_plate = lgsp_broken_rules (lgsp-broken): failed to " \
        "load: ModuleNotFoundError: No module named 'lgsp_broken_rules'" in out, proc.stdout + proc.stderr
    doctor = run(["lgsp", "doctor", "--json"], subprocess_env(home, LGSP_CATALOG_DIR=str(target),
                                                             PYTHONPATH=f"{broken}:{paths}"))
    assert "lgsp_broken_rules" in doctor.stdout and '"catalog"' in doctor.stdout


def test_the_shipped_catalog_names_only_known_rules_paginators_and_auth_methods() -> None:
    from lgsp.catalog_check import problems

    assert problems(load_catalog(), CATALOG_DIR) == []
