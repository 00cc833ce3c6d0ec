"""Load and validate the YAML catalog.

Example:
    >>> from catalog import load_catalog
    >>> load_catalog().pipeline("tthc_dossiers").dataset
    'dossier'
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from catalog.models import (Catalog, DatasetSpec, FeedSpec, IndicatorSpec, PipelineSpec, RankingSpec,
                            SharedDatasetSpec, SystemSpec, UnitVia)

CATALOG_DIR = Path(__file__).resolve().parent
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_SECTIONS: dict[str, tuple[str, type[BaseModel]]] = {
    "systems.yaml": ("systems", SystemSpec),
    "datasets.yaml": ("datasets", DatasetSpec),
    "pipelines.yaml": ("pipelines", PipelineSpec),
    "indicators.yaml": ("indicators", IndicatorSpec),
    "rankings.yaml": ("rankings", RankingSpec),
    "feeds.yaml": ("feeds", FeedSpec),
    "sharing.yaml": ("sharing", SharedDatasetSpec),
}
_OPTIONAL = {"indicators", "rankings", "feeds", "sharing"}


class CatalogError(ValueError):
    """The catalog is invalid; the message names the file and the field."""


def expand_env(text: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}` from the environment."""

    def _sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise CatalogError(f"environment variable {name} is not set and has no default")
            return default
        return value

    return _ENV_REF.sub(_sub, text)


def _location(err: dict[str, Any]) -> str:
    return ".".join(str(part) for part in err["loc"])


# libyaml's parser when PyYAML was built with it (the wheels are): the same safe subset, 10x faster
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_section(path: Path, section: str, model: type[BaseModel]) -> dict[str, Any]:
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    entries = document.get(section)
    if not isinstance(entries, dict):
        raise CatalogError(f"{path}: expected a mapping under '{section}:'")
    loaded: dict[str, Any] = {}
    for name, body in entries.items():
        if not isinstance(body, dict):
            raise CatalogError(f"{path}: {section}.{name}: expected a mapping")
        try:
            loaded[name] = model.model_validate({"name": name, **body})
        except ValidationError as exc:
            problems = "; ".join(
                f"{section}.{name}.{_location(e)}: {e['msg']}" for e in exc.errors()
            )
            raise CatalogError(f"{path}: {problems}") from None
    return loaded


def _cross_check(catalog: Catalog, directory: Path) -> None:
    for pipeline in catalog.pipelines.values():
        where = f"{directory / 'pipelines.yaml'}: pipelines.{pipeline.name}"
        if pipeline.source.system not in catalog.systems:
            raise CatalogError(f"{where}.source.system: unknown system '{pipeline.source.system}'")
        if pipeline.dataset not in catalog.datasets:
            raise CatalogError(f"{where}.dataset: unknown dataset '{pipeline.dataset}'")
        if catalog.datasets[pipeline.dataset].layer != "core":
            raise CatalogError(f"{where}.dataset: '{pipeline.dataset}' is a mart dataset (computed, not pulled)")
    _check_replaced(catalog, directory)
    for feed in catalog.feeds.values():
        where = f"{directory / 'feeds.yaml'}: feeds.{feed.name}"
        if feed.system not in catalog.systems:
            raise CatalogError(f"{where}.system: unknown system '{feed.system}'")
        for other in feed.after:
            if other not in catalog.feeds:
                raise CatalogError(f"{where}.after: unknown feed '{other}'")
        tables = {d.table_name: d for d in catalog.datasets.values()}
        if feed.due is not None and feed.table in tables and feed.due.period_column not in tables[feed.table].columns:
            raise CatalogError(f"{where}.due.period_column: '{feed.due.period_column}' is not a column of "
                               f"{feed.table}")
    _check_references(catalog, directory)
    _check_indicators(catalog, directory)  # after: a unit read through a reference relies on it being right


def _check_replaced(catalog: Catalog, directory: Path) -> None:
    """A 'replace' dataset is swapped for each batch's rows: it must have one loader, loading it in one batch."""
    loaders: dict[str, str] = {}
    for pipeline in catalog.pipelines.values():
        dataset = catalog.datasets[pipeline.dataset]
        if dataset.write_mode != "replace":
            continue
        where = f"{directory / 'pipelines.yaml'}: pipelines.{pipeline.name}"
        if pipeline.partition is not None:
            raise CatalogError(f"{where}.partition: dataset '{dataset.name}' is written by 'replace', and each slice's "
                               "load would swap in a table holding that slice alone. Write it by 'merge' (a full "
                               "refresh then replaces every row the source sends again), or leave out 'partition'")
        if (other := loaders.setdefault(dataset.name, pipeline.name)) != pipeline.name:
            raise CatalogError(f"{where}.dataset: dataset '{dataset.name}' is written by 'replace' and pipeline "
                               f"'{other}' loads it too: each run would swap in a table of its own rows, dropping "
                               "the other's. Write it by 'merge' or 'append', or give each pipeline its own dataset")


def _check_references(catalog: Catalog, directory: Path) -> None:
    """A column's `references` names the single-column key of a dataset, of the same type, from a core dataset."""
    for dataset in catalog.datasets.values():
        for name, column in dataset.columns.items():
            reference = column.references
            if reference is None:
                continue
            where = f"{directory / 'datasets.yaml'}: datasets.{dataset.name}.columns.{name}.references"
            target = catalog.datasets.get(reference.dataset)
            if target is None:
                raise CatalogError(f"{where}: unknown dataset '{reference.dataset}'")
            if target.key != [reference.column]:
                raise CatalogError(f"{where}: '{reference.to}' is not the key of '{target.name}' (its key: "
                                   f"{target.key}); a reference names a record by its whole key")
            if target.columns[reference.column].type != column.type:
                raise CatalogError(f"{where}: {dataset.name}.{name} is {column.type}, {reference.to} is "
                                   f"{target.columns[reference.column].type}")
            if dataset.layer != "core":
                raise CatalogError(f"{where}: only a core dataset's rows are checked (their _loaded_at dates an "
                                   "orphan)")


def _check_sharing(catalog: Catalog, directory: Path) -> None:
    """A shared dataset exists, shares declared columns, includes its key, and is not swapped by `replace`."""
    for shared in catalog.sharing.values():
        where = f"{directory / 'sharing.yaml'}: sharing.{shared.name}"
        dataset = catalog.datasets.get(shared.name)
        if dataset is None:
            raise CatalogError(f"{where}: unknown dataset '{shared.name}' (see datasets.yaml)")
        unknown = [c for c in shared.columns if c not in dataset.columns]
        if unknown:
            raise CatalogError(f"{where}.columns: {unknown} are not columns of dataset '{dataset.name}'")
        missing_key = [k for k in dataset.key if k not in shared.columns]
        if missing_key:
            raise CatalogError(f"{where}.columns: must include the key {missing_key} (records are paged by it)")
        hidden_key = {k: shared.personal[k] for k in dataset.key if shared.personal.get(k, "pseudonym") != "pseudonym"}
        if hidden_key:
            raise CatalogError(f"{where}.personal: key column(s) {hidden_key} may only be pseudonymised: masked or "
                               "withheld keys would make records indistinguishable (pages, the change feed, copies)")
        if dataset.write_mode == "replace":
            raise CatalogError(f"{where}: dataset '{dataset.name}' is written by 'replace' (its table is dropped "
                               "and swapped), which a view cannot sit on; share a merge or history dataset")
        lookup = shared.lookup
        if lookup is not None:
            if lookup.system not in catalog.systems:
                raise CatalogError(f"{where}.lookup.system: unknown system '{lookup.system}' (see systems.yaml)")
            stray = [c for c in lookup.key_params if c not in dataset.key]
            if stray:
                raise CatalogError(f"{where}.lookup.key_params: {stray} are not key columns of '{dataset.name}' "
                                   f"(its key: {list(dataset.key)})")
            unknown = [c for c in lookup.fields.values() if c not in dataset.columns]
            if unknown:
                raise CatalogError(f"{where}.lookup.fields: {unknown} are not columns of dataset '{dataset.name}'")


def _check_unit_via(catalog: Catalog, where: str, dataset: DatasetSpec, unit: UnitVia) -> str:
    """A unit through a reference: `via` references a single-key core dataset holding `column` (returned)."""
    reference = dataset.columns[unit.via].references
    if reference is None:
        raise CatalogError(f"{where}.via: column '{unit.via}' of '{dataset.name}' names no other dataset's record "
                           f"(give it 'references: dataset.key_column' in datasets.yaml)")
    target = catalog.datasets.get(reference.dataset)
    if target is None or target.layer != "core" or list(target.key) != [reference.column]:
        raise CatalogError(f"{where}.via: '{unit.via}' references {reference.to}, which is not the key of a core "
                           "dataset")
    if unit.column not in target.columns:
        raise CatalogError(f"{where}.column: '{unit.column}' is not in dataset '{target.name}' "
                           f"(its columns: {', '.join(target.columns)})")
    return target.name


def _check_indicators(catalog: Catalog, directory: Path) -> None:
    """Indicators name core datasets and their columns; rankings name rate indicators with that unit level."""
    for indicator in catalog.indicators.values():
        where = f"{directory / 'indicators.yaml'}: indicators.{indicator.name}"
        dataset = catalog.datasets.get(indicator.dataset)
        if dataset is None or dataset.layer != "core":
            raise CatalogError(f"{where}.dataset: '{indicator.dataset}' is not a core dataset of datasets.yaml")
        for column in indicator.columns_used:
            if column not in dataset.columns:
                raise CatalogError(f"{where}: column '{column}' is not in dataset '{dataset.name}' "
                                   f"(its columns: {', '.join(dataset.columns)})")
        for level, unit in indicator.units.items():
            if isinstance(unit, UnitVia):
                read = _check_unit_via(catalog, f"{where}.units.{level}", dataset, unit)
                if read not in indicator.datasets_read:
                    raise CatalogError(f"{where}.units.{level}: it reads dataset '{read}', whose changes move its "
                                       f"units: say so, reads: [{', '.join([*indicator.datasets_read, read])}]")
        if indicator.sum_seconds and any(dataset.columns[c].type != "timestamp" for c in indicator.sum_seconds):
            raise CatalogError(f"{where}.sum_seconds: both columns must be timestamps")
        for read in indicator.datasets_read:
            if read not in catalog.datasets:
                raise CatalogError(f"{where}.reads: unknown dataset '{read}'")
    for ranking in catalog.rankings.values():
        where = f"{directory / 'rankings.yaml'}: rankings.{ranking.name}.weights"
        for name in ranking.weights:
            indicator = catalog.indicators.get(name)
            if indicator is None:
                raise CatalogError(f"{where}: unknown indicator '{name}' (see indicators.yaml)")
            if indicator.measure != "rate" or ranking.unit_level not in indicator.units:
                raise CatalogError(f"{where}: '{name}' must be a rate computed per {ranking.unit_level}")
            if ranking.period_type not in indicator.periods:
                raise CatalogError(f"{where}: '{name}' is not computed per {ranking.period_type}")


def load_catalog(directory: Path | str | None = None) -> Catalog:
    """Read every catalog file in `directory` (default: this package's folder).

    Raises:
        CatalogError: naming the file and the field that is wrong.
    """
    directory = Path(directory or os.environ.get("LGSP_CATALOG_DIR") or CATALOG_DIR)
    sections: dict[str, Any] = {}
    for filename, (section, model) in _SECTIONS.items():
        path = directory / filename
        if not path.exists():
            if section in _OPTIONAL:
                continue
            raise CatalogError(f"{path}: catalog file is missing")
        sections[section] = _load_section(path, section, model)
    catalog = Catalog(**sections)
    _cross_check(catalog, directory)
    _check_sharing(catalog, directory)
    return catalog


def resolve_endpoint(system: SystemSpec) -> str:
    """The system's endpoint with `${VAR:-default}` expanded now (not at load time)."""
    return expand_env(system.endpoint)


def resolve_timeout(system: SystemSpec) -> float:
    """The system's timeout; `LGSP_TIMEOUT_S` overrides every system's (operations, tests)."""
    override = os.environ.get("LGSP_TIMEOUT_S")
    return float(override) if override else system.timeout_s
