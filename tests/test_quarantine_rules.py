"""A batch seeded with bad rows of every kind ends with each bad row in quarantine under the right rule.

The real sandbox serves every dataset with 20% deliberately bad rows (kinds
round-robin, so every kind occurs); every pull pipeline of the shipped catalog
runs in-process against it (SQLite). `DEFECT_RULE` says, for each defect kind
the sandbox can inject, which rule must catch it (`quality.checks._rule_label`
form), or `None` for the one kind lgsp repairs on load instead of rejecting.
"""
from __future__ import annotations

import importlib
import pkgutil
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from catalog import load_catalog
from quality.checks import _rule_label, row_checks

REPAIRED = None
"""A defect lgsp repairs on load (text is NFC-normalised) rather than quarantines."""

DEFECT_RULE: dict[tuple[str, str], str | None] = {
    ("citizen", "cccd_length"): "cccd:personal_id",
    ("citizen", "cccd_century_sex"): "cccd:personal_id",
    ("citizen", "commune_unknown"): "commune_code:commune_code",
    ("citizen", "phone_format"): "phone_vn:phone",
    ("dossier", "due_before_received"): "ordered:received_at,due_at",
    ("dossier", "channel_unknown"): "enum:channel",
    ("dossier", "commune_unknown"): "commune_code:commune_code",
    ("dossier", "finished_before_received"): "ordered:received_at,finished_at,returned_at",
    ("civil_status_event", "event_type_unknown"): "enum:event_type",
    ("civil_status_event", "cccd_invalid"): "cccd:personal_id",
    ("civil_status_event", "commune_unknown"): "commune_code:commune_code",
    ("civil_status_event", "registered_before_event"): "ordered:birth_date,event_date,registered_on",
    ("household_member", "relation_unknown"): "enum:relation",
    ("household_member", "cccd_invalid"): "cccd:personal_id",
    ("household_member", "commune_unknown"): "commune_code:commune_code",
    ("household_member", "left_before_joined"): "ordered:birth_date,joined_on,left_on",
    ("land_parcel", "area_not_positive"): "range:area_m2",
    ("land_parcel", "land_use_unknown"): "enum:land_use",
    ("land_parcel", "commune_unknown"): "commune_code:commune_code",
    ("land_parcel", "holder_cccd_invalid"): "cccd:holder_personal_id",
    ("enterprise", "tax_code_invalid"): "tax_code:tax_code",
    ("enterprise", "email_invalid"): "email:email",
    ("enterprise", "status_unknown"): "enum:status",
    ("enterprise", "commune_unknown"): "commune_code:commune_code",
    ("civil_servant", "cccd_invalid"): "cccd:personal_id",
    ("civil_servant", "category_unknown"): "enum:category",
    ("civil_servant", "email_invalid"): "email:email",
    ("document", "direction_unknown"): "enum:direction",
    ("document", "summary_missing"): "not_null:summary",
    ("document", "received_before_issued"): "ordered:issued_on,received_at",
    ("document", "summary_not_nfc"): REPAIRED,
    # Not in the shipped catalog yet (docs/adding-a-system.md declares it); checked once a pipeline reads it.
    ("health_insurance_card", "validity_reversed"): "ordered:valid_from,valid_to",
    ("health_insurance_card", "cccd_invalid"): "cccd:personal_id",
    ("health_insurance_card", "commune_unknown"): "commune_code:commune_code",
}

SIZE = 100
CATALOG = load_catalog()
PULLS = sorted(CATALOG.pipelines)
SOURCE_KEY = {"procedure": "MaTTHC"}  # source fields the pipeline renames


def _declared_kinds() -> dict[str, tuple[str, ...]]:
    """Every `*_DEFECT_KINDS` tuple of every sandbox module, by `module.NAME`."""
    import sandbox

    found: dict[str, tuple[str, ...]] = {}
    for info in pkgutil.iter_modules(sandbox.__path__):
        if info.name.startswith("_"):  # __main__ would start the servers
            continue
        module = importlib.import_module(f"sandbox.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("DEFECT_KINDS") and isinstance(value, tuple):
                found.setdefault(name, value)
    return found


def _sandbox_datasets() -> list[str]:
    from sandbox.data import DATASET_KEYS

    return sorted({CATALOG.pipelines[p].dataset for p in PULLS} & set(DATASET_KEYS))


def test_defect_table_covers_every_kind_the_sandbox_declares() -> None:
    """A new defect kind (or a new dataset with defects) fails here until it is given its rule."""
    from sandbox import DATASET_KEYS, SandboxData

    mapped_kinds = {kind for _, kind in DEFECT_RULE}
    for name, kinds in _declared_kinds().items():
        missing = set(kinds) - mapped_kinds
        assert not missing, f"sandbox {name} declares {sorted(missing)}: add them to DEFECT_RULE"
    # at 20% defects every kind occurs, so the generated data names (dataset, kind) pairs exactly
    data = SandboxData.generate(seed=5, citizens=SIZE, dossiers=SIZE, defect_rate=0.2,
                                sizes={name: SIZE for name in DATASET_KEYS})
    generated = {(ds, kind) for ds in DATASET_KEYS for kind in data.defects(ds).values()}
    assert generated == set(DEFECT_RULE), (f"unmapped: {sorted(generated - set(DEFECT_RULE))}, "
                                           f"stale: {sorted(set(DEFECT_RULE) - generated)}")
    for (dataset, _kind), label in DEFECT_RULE.items():
        if label is not REPAIRED and dataset in CATALOG.datasets:
            labels = {_rule_label(c) for c in row_checks(CATALOG.datasets[dataset])}
            assert label in labels, f"{dataset}: no check labelled {label!r} (has {sorted(labels)})"


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """(sandbox handle, warehouse, results by pipeline) after every pull pipeline ran once at 20% defects."""
    from connectors.limits import reset_limits
    from lgsp import runner
    from lgsp.settings import load_settings
    from sandbox import start_sandbox
    from sandbox.data import DATASET_KEYS

    home: Path = tmp_path_factory.mktemp("quarantine_rules")
    sizes = {name: SIZE for name in DATASET_KEYS}
    handle = start_sandbox(seed=23, citizens=2 * SIZE, dossiers=2 * SIZE, defect_rate=0.2, sizes=sizes,
                           api_key="test-key-not-secret")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in handle.env().items():
                mp.setenv(name, value)
            mp.setenv("LGSP_HOME", str(home / "home"))
            mp.setenv("LGSP_DATABASE_URL", f"sqlite:///{home / 'warehouse.db'}")
            handle.faults.clear()
            reset_limits()
            settings = load_settings()
            results = {name: runner.run_pipeline(name, catalog=CATALOG, settings=settings) for name in PULLS}
            yield handle, runner.open_warehouse(CATALOG, settings), results
    finally:
        handle.stop()


def _quarantined(wh: Any, dataset: str) -> list[tuple[str, str]]:
    q = wh.system["lgsp_quarantine"]
    with wh.engine.connect() as conn:
        return [(r.record_key, r.rule) for r in conn.execute(sa.select(q.c.record_key, q.c.rule)
                                                             .where(q.c.dataset == dataset))]


def _landed(wh: Any, dataset: str) -> dict[str, dict[str, Any]]:
    spec = CATALOG.datasets[dataset]
    table = wh.core[dataset]
    with wh.engine.connect() as conn:
        return {"|".join(str(r[k]) for k in spec.key): dict(r) for r in conn.execute(sa.select(table)).mappings()}


@pytest.mark.parametrize("dataset", _sandbox_datasets())
def test_each_bad_row_is_quarantined_once_under_its_rule(seeded_run: Any, dataset: str) -> None:
    handle, wh, _ = seeded_run
    defects = handle.data.defects(dataset)
    expected = {key: DEFECT_RULE[(dataset, kind)] for key, kind in defects.items()}
    rejected = {key: label for key, label in expected.items() if label is not REPAIRED}
    quarantined = _quarantined(wh, dataset)
    counts = Counter(key for key, _ in quarantined)
    assert not [k for k, n in counts.items() if n > 1], f"{dataset}: rows quarantined more than once"
    assert set(counts) == set(rejected), (f"{dataset}: missing {sorted(set(rejected) - set(counts))[:5]}, "
                                          f"good rows quarantined {sorted(set(counts) - set(rejected))[:5]}")
    wrong = {key: (defects[key], rejected[key], rule) for key, rule in quarantined if rule != rejected[key]}
    assert not wrong, f"{dataset}: (kind, expected rule, got rule) {wrong}"


@pytest.mark.parametrize("dataset", _sandbox_datasets())
def test_every_good_row_lands(seeded_run: Any, dataset: str) -> None:
    from sandbox.data import record_key

    handle, wh, _ = seeded_run
    everything = {str(r[SOURCE_KEY[dataset]]) if dataset in SOURCE_KEY else record_key(dataset, r)
                  for r in handle.data.records(dataset)}
    rejected = {k for k, kind in handle.data.defects(dataset).items() if DEFECT_RULE[(dataset, kind)] is not REPAIRED}
    assert set(_landed(wh, dataset)) == everything - rejected


def test_repaired_defect_lands_nfc_normalised(seeded_run: Any) -> None:
    handle, wh, _ = seeded_run
    source = {r["document_id"]: r["summary"] for r in handle.data.records("document")}
    repaired = [k for k, kind in handle.data.defects("document").items() if kind == "summary_not_nfc"]
    assert repaired, "the sandbox served no summary_not_nfc row"
    landed = _landed(wh, "document")
    for key in repaired:
        assert not unicodedata.is_normalized("NFC", source[key]), f"{key}: the source summary was already NFC"
        assert landed[key]["summary"] == unicodedata.normalize("NFC", source[key]), key


def test_every_batch_balances_and_no_pipeline_lost_a_row(seeded_run: Any) -> None:
    _, wh, results = seeded_run
    table = wh.system["lgsp_batch"]
    with wh.engine.connect() as conn:
        batches = conn.execute(sa.select(table)).all()
    assert {b.pipeline for b in batches} == set(PULLS)
    for b in batches:
        assert b.status == "loaded", f"{b.batch_id}: {b.status} {b.message}"
        assert b.rows_pulled == b.rows_landed + b.rows_quarantined + b.rows_superseded, b.batch_id
    for name, result in results.items():
        assert result["rows_pulled"] > 0, f"{name} pulled nothing"
