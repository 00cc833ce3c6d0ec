"""What loading the catalog cannot see: the names of rules, paginators and auth methods, and their parameters.

`catalog.loader.load_catalog` validates the files' shapes and cross-references, and stays light enough for
a DAG file to call it. A row rule's name and parameters, a paginator's parameters and an auth method's name
are only known to the code that runs them (and to installed extensions, lgsp.plugins): a typo there
(`rule: comune_code`, `{rule: enum, value: [...]}`, `page_sise: 500`) used to surface at the first sync,
after its pages were pulled. `problems` finds them up front, each named by file and field, for
`lgsp catalog` and `lgsp doctor`.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from catalog.models import Catalog, DatasetSpec

COLUMN_PARAMS = ("column", "sex", "birth_date")  # rule parameters that name one column of the dataset


def problems(catalog: Catalog, directory: Path) -> list[str]:
    """Every rule, paginator and auth method the catalog names that is unknown or given wrong parameters."""
    from connectors.auth import AUTH_METHODS
    from connectors.paging import make_paginator
    from lgsp.plugins import load_plugins
    from quality.rules import RULES

    load_plugins()
    found = []
    for dataset in catalog.datasets.values():
        for n, check in enumerate(dataset.checks):
            where = f"{directory / 'datasets.yaml'}: datasets.{dataset.name}.checks[{n}] (rule {check.rule})"
            rule = RULES.get(check.rule)
            if rule is None:
                found.append(f"{where}: unknown rule (known: {', '.join(sorted(RULES))}; an installed package adds "
                             "one by the entry point group lgsp.rules)")
                continue
            found += [f"{where}: {said}" for said in _rule_params(rule.check, check.params, dataset)]
    for pipeline in catalog.pipelines.values():
        paginator = pipeline.source.paginator
        try:
            make_paginator(paginator.type, paginator.params)
        except (ValueError, TypeError) as exc:
            found.append(f"{directory / 'pipelines.yaml'}: pipelines.{pipeline.name}.source.paginator: {exc}")
    for system in catalog.systems.values():
        if system.auth.type not in AUTH_METHODS:
            found.append(f"{directory / 'systems.yaml'}: systems.{system.name}.auth.type: unknown auth type "
                         f"'{system.auth.type}' (known: {', '.join(sorted(AUTH_METHODS))}; an installed package "
                         "adds one by the entry point group lgsp.auth)")
    return found


def _rule_params(check: Any, params: dict[str, Any], dataset: DatasetSpec) -> list[str]:
    """What is wrong with a rule's parameters: missing, unknown, or naming a column the dataset lacks."""
    parameters = list(inspect.signature(check).parameters.values())[1:]  # the first is the batch
    takes = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [] if any(p.kind is p.VAR_KEYWORD for p in parameters) else sorted(set(params) - set(takes))
    missing = [p.name for p in parameters if p.name in takes and p.default is p.empty and p.name not in params]
    if unknown or missing:
        said = [f"unknown parameter(s) {unknown}"] * bool(unknown) + [f"missing {missing}"] * bool(missing)
        return [f"{', '.join(said)} (it takes: {', '.join(takes)})"]
    named = [params[p] for p in COLUMN_PARAMS if isinstance(params.get(p), str)]
    named += [c for c in params.get("columns", []) if isinstance(c, str)] if isinstance(params.get("columns"),
                                                                                         list) else []
    return [f"'{column}' is not a column of {dataset.name}" for column in named if column not in dataset.columns]
