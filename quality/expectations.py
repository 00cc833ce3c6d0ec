"""Dataset-level Great Expectations, generated from the dataset definition.

The suite runs once per batch (a GX checkpoint-style validation over the whole
batch, with a `_row_ok` column from the row rules). Any failed expectation
fails the run with a `QualityError` naming the dataset, the batch and what failed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pandas as pd

from catalog.models import DatasetSpec

log = logging.getLogger("lgsp.quality")


class QualityError(RuntimeError):
    """A dataset-level expectation failed: the batch must not land."""


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: Any


def suite_definition(dataset: DatasetSpec) -> list[tuple[str, dict[str, Any]]]:
    """The (expectation type, kwargs) pairs of the dataset's suite."""
    key = dataset.key
    exps: list[tuple[str, dict[str, Any]]] = [
        ("ExpectTableRowCountToBeBetween", {"min_value": dataset.expectations.min_rows}),
        ("ExpectTableColumnsToMatchSet", {"column_set": [*dataset.columns, "_row_ok"], "exact_match": True}),
        ("ExpectColumnValuesToBeInSet", {"column": "_row_ok", "value_set": [True],
                                         "mostly": round(1 - dataset.expectations.max_quarantine_rate, 6)}),
    ]
    if len(key) == 1:
        exps.append(("ExpectColumnValuesToBeUnique", {"column": key[0], "row_condition": "_row_ok==True",
                                                      "condition_parser": "pandas"}))
    else:
        exps.append(("ExpectCompoundColumnsToBeUnique", {"column_list": key}))
    return exps


def _run_gx(frame: pd.DataFrame, dataset: DatasetSpec) -> list[ExpectationOutcome]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # heavy: imported only when a batch is checked

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch_def = (context.data_sources.add_pandas(f"lgsp_{dataset.name}")
                 .add_dataframe_asset(dataset.name).add_batch_definition_whole_dataframe("batch"))
    suite = context.suites.add(gx.ExpectationSuite(name=f"lgsp.{dataset.name}"))
    for kind, kwargs in suite_definition(dataset):
        suite.add_expectation(getattr(gx.expectations, kind)(**kwargs))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"lgsp.{dataset.name}.batch", data=batch_def, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame})
    outcomes = []
    for r in result.results:
        cfg = r.expectation_config
        outcomes.append(ExpectationOutcome(
            expectation=cfg.type, column=cfg.kwargs.get("column"), success=bool(r.success),
            unexpected_count=r.result.get("unexpected_count"), observed=r.result.get("observed_value")))
    return outcomes


def validate_dataset(frame: pd.DataFrame, row_ok: Any, dataset: DatasetSpec,
                     batch_id: str) -> list[ExpectationOutcome]:
    """Run the dataset's suite; raise QualityError if any expectation fails."""
    checked = frame.assign(_row_ok=pd.Series(row_ok, index=frame.index, dtype=bool))
    outcomes = _run_gx(checked, dataset)
    failed = [o for o in outcomes if not o.success]
    if failed:
        detail = "; ".join(f"{o.expectation}({o.column or ''}) unexpected={o.unexpected_count} "
                           f"observed={o.observed}" for o in failed)
        raise QualityError(f"dataset {dataset.name}, batch {batch_id}: {len(failed)} expectation(s) failed: "
                           f"{detail}. The batch was not loaded; its rows stay in the landing zone "
                           "and quarantine. Fix the source or the rule, then rerun.")
    return outcomes
