"""Run a dataset's row rules over a typed batch and split it into good rows and rejections."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from catalog.models import CheckSpec, DatasetSpec
from quality.rules import RULES


@dataclass(frozen=True)
class Rejection:
    """Why one row of the batch was rejected (position in the batch, rule, reason)."""

    position: int
    rule: str
    reason: str


@dataclass
class RowCheckResult:
    """`passed[i]` is True when row i passed every rule; `rejections` lists the others."""

    passed: np.ndarray
    rejections: list[Rejection]


def row_checks(dataset: DatasetSpec) -> list[CheckSpec]:
    """The dataset's declared checks, preceded by `not_null` on every required column."""
    implied = [CheckSpec(rule="not_null", column=name)
               for name, col in dataset.columns.items() if col.required or name in dataset.key]
    return [*implied, *dataset.checks]


def _rule_label(check: CheckSpec) -> str:
    params = check.params
    target = params.get("column") or ",".join(params.get("columns", []))
    return f"{check.rule}:{target}" if target else check.rule


def run_row_checks(frame: pd.DataFrame, dataset: DatasetSpec,
                   type_errors: dict[int, str] | None = None) -> RowCheckResult:
    """Apply every row rule; a row is rejected under the first rule it fails.

    Type errors (values that could not be coerced) come first, as rule `type`.
    """
    rejected: dict[int, Rejection] = {}
    for position, reason in (type_errors or {}).items():
        rejected[position] = Rejection(position, "type", reason)
    for check in row_checks(dataset):
        if check.rule not in RULES:  # perhaps an installed package's (lgsp.plugins)
            from lgsp.plugins import load_plugins

            load_plugins()
        try:
            spec = RULES[check.rule]
        except KeyError:
            raise ValueError(f"dataset {dataset.name}: unknown rule '{check.rule}' "
                             f"(known: {', '.join(sorted(RULES))})") from None
        mask = np.asarray(spec.check(frame, **check.params), dtype=bool)
        for position in np.flatnonzero(~mask):
            position = int(position)
            if position not in rejected:
                reason = spec.explain(frame.iloc[position], **check.params)
                rejected[position] = Rejection(position, _rule_label(check), reason)
    passed = np.ones(len(frame), dtype=bool)
    if rejected:
        passed[list(rejected)] = False
    return RowCheckResult(passed=passed, rejections=sorted(rejected.values(), key=lambda r: r.position))
