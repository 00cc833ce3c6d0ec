"""Dataset-level Great Expectations, generated from the dataset definition.

The suite runs once per batch as a GX Checkpoint: one validation definition (the
whole batch, with a `_row_ok` column from the row rules) and one action that
updates the Data Docs site. Results and docs are kept on disk, so the site
accumulates every batch of every dataset:

    $LGSP_HOME/gx/validations/lgsp/<dataset>/<batch>/<run time>/*.json   results (GX file store)
    $LGSP_HOME/gx/expectations/lgsp/<dataset>.json                       the suites, as last run
    $LGSP_HOME/gx/data_docs/index.html         the Data Docs site (moved by $LGSP_DATA_DOCS_DIR)

Only the pages of the batch's run and suite are rendered, then the index; concurrent
validations (Airflow tasks) take turns on a file lock in `$LGSP_HOME/gx`.

Any failed expectation fails the run with a `QualityError` naming the dataset,
the batch and what failed, raised after the docs were written so the failing
run's page can be opened.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from catalog.models import DatasetSpec

log = logging.getLogger("lgsp.quality")

DATA_DOCS_ENV = "LGSP_DATA_DOCS_DIR"
DOCS_SITE = "lgsp"
# The index lists the most recent runs only: GX reads every listed result again on every
# batch (about 1 ms a run). Older runs keep their page; a failed run's is named in the error.
DOCS_INDEX_RUNS = 500

# The Data Docs views, subclasses of GX's that share compiled page templates (see
# `_install_docs_views`). GX loads them by module and class name, so they live here.
LgspPageView: type[Any]
LgspIndexPageView: type[Any]


class QualityError(RuntimeError):
    """A dataset-level expectation failed: the batch must not land."""


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: Any


@dataclass(frozen=True)
class GxPaths:
    """Where GX keeps its state: `root` (stores, lock) and the Data Docs site."""

    root: Path
    data_docs: Path

    @classmethod
    def from_env(cls) -> GxPaths:
        """`$LGSP_HOME/gx`, with the docs site in `gx/data_docs` unless `LGSP_DATA_DOCS_DIR` is set."""
        from lgsp.settings import load_settings

        root = load_settings().home / "gx"
        return cls(root=root, data_docs=Path(os.environ.get(DATA_DOCS_ENV) or root / "data_docs").resolve())


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


def _file_store(class_name: str, folder: Path) -> dict[str, Any]:
    return {"class_name": class_name,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)}}


def _install_docs_views() -> None:
    """Define `LgspPageView` and `LgspIndexPageView`, once per process.

    GX gives every docs page its own Jinja environment, which compiles the same
    templates again for every page of every batch (most of the docs time). These
    views share one in-memory bytecode cache instead.
    """
    global LgspPageView, LgspIndexPageView
    if "LgspPageView" in globals():
        return
    import jinja2
    from great_expectations.render.view.view import DefaultJinjaIndexPageView, DefaultJinjaPageView

    class TemplateCache(jinja2.BytecodeCache):
        def __init__(self) -> None:
            self.compiled: dict[str, bytes] = {}

        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            if bucket.key in self.compiled:
                bucket.bytecode_from_string(self.compiled[bucket.key])

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            self.compiled[bucket.key] = bucket.bytecode_to_string()

    cache = TemplateCache()

    def share_templates(base: type[Any]) -> type[Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            base.__init__(self, *args, **kwargs)
            self.env.bytecode_cache = cache
        return type(f"Lgsp{base.__name__.removeprefix('DefaultJinja')}", (base,),
                    {"__init__": __init__, "__module__": __name__})

    LgspPageView, LgspIndexPageView = share_templates(DefaultJinjaPageView), share_templates(DefaultJinjaIndexPageView)


def _gx_context(paths: GxPaths) -> Any:
    """An ephemeral context whose suites, validation results and docs site live on disk.

    Datasources, validation definitions and checkpoints stay in memory: they are
    rebuilt from the dataset definition on every batch, so nothing shared is
    rewritten but the suite file and the docs index.
    """
    import great_expectations as gx  # heavy: imported only when a batch is checked
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    _install_docs_views()
    defaults = InMemoryStoreBackendDefaults()
    stores = {**defaults.stores,
              defaults.expectations_store_name: _file_store("ExpectationsStore", paths.root / "expectations"),
              defaults.validation_results_store_name: _file_store("ValidationResultsStore",
                                                                  paths.root / "validations")}
    page_view = {"module_name": __name__, "class_name": "LgspPageView"}
    site = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(paths.data_docs)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "validation_results_limit": DOCS_INDEX_RUNS,
                                   "view": {"module_name": __name__, "class_name": "LgspIndexPageView"}},
            # no profiling section; every run listed (GX hides run names containing "profiling")
            "site_section_builders": {"profiling": "None", "expectations": {"view": page_view},
                                      "validations": {"view": page_view, "run_name_filter": {"matches_regex": ".*"}}}}
    config = DataContextConfig(store_backend_defaults=defaults, stores=stores, data_docs_sites={DOCS_SITE: site},
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


@contextmanager
def _docs_lock(paths: GxPaths) -> Iterator[None]:
    """One batch at a time per GX folder: another process may be validating (Airflow tasks).

    GX rewrites shared files in place (the suite, the index) and its index builder
    deletes the pages of results it did not list, so two concurrent runs could read a
    half-written suite or remove each other's page. Each result has its own files.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / ".docs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _checkpoint(context: Any, dataset: DatasetSpec) -> Any:
    """The dataset's checkpoint: validate the whole batch, then update the docs pages it touches."""
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction

    batch_def = (context.data_sources.add_pandas(f"lgsp_{dataset.name}")
                 .add_dataframe_asset(dataset.name).add_batch_definition_whole_dataframe("batch"))
    suite = gx.ExpectationSuite(name=f"lgsp.{dataset.name}")
    for kind, kwargs in suite_definition(dataset):
        suite.add_expectation(getattr(gx.expectations, kind)(**kwargs))
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"lgsp.{dataset.name}.batch", data=batch_def, suite=suite))
    return context.checkpoints.add(gx.Checkpoint(
        name=f"lgsp.{dataset.name}", validation_definitions=[validation], result_format="SUMMARY",
        actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])]))


_CHECKPOINTS: dict[tuple[str, ...], tuple[Any, Any]] = {}


def _cached_checkpoint(paths: GxPaths, dataset: DatasetSpec) -> tuple[Any, Any]:
    """The context and checkpoint for a dataset, built once per process and GX folder.

    Building them costs about a second (GX deep-copies its configuration); a batch
    validated in chunks, or many batches in one process, reuse them.
    """
    key = (str(paths.root), str(paths.data_docs), dataset.name, repr(suite_definition(dataset)))
    if key not in _CHECKPOINTS:
        context = _gx_context(paths)
        _CHECKPOINTS[key] = (context, _checkpoint(context, dataset))
    return _CHECKPOINTS[key]


def _run_gx(frame: pd.DataFrame, dataset: DatasetSpec, batch_id: str,
            paths: GxPaths) -> tuple[list[ExpectationOutcome], str | None]:
    """Run the dataset's checkpoint on one batch; the outcomes and, if it failed, its docs page."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.exceptions.resource_freshness import ResourceFreshnessAggregateError

    with _docs_lock(paths):
        run_id = RunIdentifier(run_name=re.sub(r"[^\w.-]", "_", batch_id), run_time=datetime.now(timezone.utc))
        context, checkpoint = _cached_checkpoint(paths, dataset)
        try:
            result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        except ResourceFreshnessAggregateError:  # another process saved the suite file since: rebuild
            _CHECKPOINTS.clear()
            context, checkpoint = _cached_checkpoint(paths, dataset)
            result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        [(result_key, validation)] = result.run_results.items()
        urls = [] if validation.success else context.get_docs_sites_urls(resource_identifier=result_key,
                                                                         site_name=DOCS_SITE)
    outcomes = []
    for r in validation.results:
        cfg = r.expectation_config
        outcomes.append(ExpectationOutcome(
            expectation=cfg.type, column=cfg.kwargs.get("column"), success=bool(r.success),
            unexpected_count=r.result.get("unexpected_count"), observed=r.result.get("observed_value")))
    return outcomes, (urls[0]["site_url"] if urls else None)


def validate_dataset(frame: pd.DataFrame, row_ok: Any, dataset: DatasetSpec, batch_id: str,
                     raise_on_failure: bool = True) -> list[ExpectationOutcome]:
    """Run the dataset's checkpoint (results and Data Docs on disk); raise QualityError if any expectation fails.

    With `raise_on_failure=False` (a chunk of a bigger batch) the outcomes are returned for
    `check_outcomes` to judge over the whole batch.
    """
    checked = frame.assign(_row_ok=pd.Series(row_ok, index=frame.index, dtype=bool))
    outcomes, page = _run_gx(checked, dataset, batch_id, GxPaths.from_env())
    if raise_on_failure:
        check_outcomes(dataset, batch_id, outcomes, page)
    return outcomes


def check_outcomes(dataset: DatasetSpec, batch_id: str, outcomes: list[ExpectationOutcome],
                   page: str | None = None) -> None:
    """Raise QualityError naming every failed expectation of a batch."""
    failed = [o for o in outcomes if not o.success]
    if failed:
        detail = "; ".join(f"{o.expectation}({o.column or ''}) unexpected={o.unexpected_count} "
                           f"observed={o.observed}" for o in failed)
        raise QualityError(f"dataset {dataset.name}, batch {batch_id}: {len(failed)} expectation(s) failed: "
                           f"{detail}. The batch was not loaded; its rows stay in the landing zone "
                           "and quarantine. Fix the source or the rule, then rerun."
                           + (f" Validation report: {page}" if page else "")
                           + ("" if page else f" Validation reports: the Data Docs pages of run {batch_id}*"))
