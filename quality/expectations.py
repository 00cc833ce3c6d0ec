"""Dataset-level Great Expectations, generated from the dataset definition.

The suite runs on every chunk of a batch (the typed rows, with a `_row_ok` column
from the row rules), and the chunks' results are folded into one result per batch
(`BatchCheck`): counts add up, the quarantine rate and the row count are judged on
the batch's totals. That result is stored and its Data Docs page rendered once per
batch. Results and docs are kept on disk, so the site accumulates every batch of
every dataset:

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
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from catalog.models import DatasetSpec

log = logging.getLogger("lgsp.quality")

DATA_DOCS_ENV = "LGSP_DATA_DOCS_DIR"
_BYTECODE: Any = None  # the docs views' shared Jinja bytecode cache (`_install_docs_views`)
DOCS_SITE = "lgsp"
# The index lists the most recent runs only: GX renders it again, row by row, on every batch
# (about 0.6 ms a listed run: 0.1 s a batch at 100 runs, 0.34 s at 500, benchmarks/data_docs.py).
# Older runs keep their page; a failed run's is named in the error.
DOCS_INDEX_RUNS = 100

# The Data Docs views, subclasses of GX's that share compiled page templates, and the index
# builder that keeps a summary of each listed run (see `_install_docs_views`). GX loads them by
# module and class name, so they live here.
LgspPageView: type[Any]
LgspIndexPageView: type[Any]
LgspSiteIndexBuilder: type[Any]
LgspSiteSectionBuilder: type[Any]
LgspSiteBuilder: type[Any]
_PUBLISHING: list[Any] = []  # the results a publish is rendering, for the index builder (under the docs lock)
INDEX_SUMMARIES = ".lgsp-index-summaries.json"  # in the site's folder: what its index shows of each run
SUITE_STAMPS = ".lgsp-suite-pages.json"  # in the site's folder: what each suite page was rendered from
DOCS_VERSION = 1  # raise when lgsp's pages change: suite pages are rendered again


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

        return cls.of_home(load_settings().home)

    @classmethod
    def of_home(cls, home: Path) -> GxPaths:
        """`home/gx`, with the docs site in `gx/data_docs` unless `LGSP_DATA_DOCS_DIR` is set."""
        root = home / "gx"
        return cls(root=root, data_docs=Path(os.environ.get(DATA_DOCS_ENV) or root / "data_docs").resolve())


QUARANTINED_KEYS_NOTE = ("Counts only the rows that passed the row rules: a quarantined row's key is left blank "
                         "(missing) in the validated frame.")


def suite_definition(dataset: DatasetSpec) -> list[tuple[str, dict[str, Any]]]:
    """The (expectation type, kwargs) pairs of the dataset's suite."""
    key = dataset.key
    exps: list[tuple[str, dict[str, Any]]] = [
        ("ExpectTableRowCountToBeBetween", {"min_value": dataset.expectations.min_rows}),
        ("ExpectTableColumnsToMatchSet", {"column_set": [*dataset.columns, "_row_ok"], "exact_match": True}),
        ("ExpectColumnValuesToBeInSet", {"column": "_row_ok", "value_set": [True],
                                         "mostly": round(1 - dataset.expectations.max_quarantine_rate, 6)}),
    ]
    if len(key) == 1:  # among the rows that passed the row rules: `BatchCheck.add` blanks the others' key
        exps.append(("ExpectColumnValuesToBeUnique", {"column": key[0], "notes": QUARANTINED_KEYS_NOTE}))
    else:
        exps.append(("ExpectCompoundColumnsToBeUnique", {"column_list": key}))
    return exps


def _file_store(class_name: str, folder: Path) -> dict[str, Any]:
    return {"class_name": class_name,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)}}


def _install_docs_views(paths: GxPaths) -> None:
    """Define `LgspPageView` and `LgspIndexPageView`, and the builders (`_docs_builders`), once per process.

    GX gives every docs page its own Jinja environment, which compiles the same
    templates again for every page of every batch (most of the docs time). These
    views share one bytecode cache instead, kept on disk (`gx/.jinja`) so that a
    new process (an Airflow task, an incremental run) does not compile them again.
    """
    global LgspPageView, LgspIndexPageView, LgspSiteIndexBuilder, LgspSiteSectionBuilder, LgspSiteBuilder, _BYTECODE
    folder = paths.root / ".jinja"
    if "LgspPageView" in globals():
        _BYTECODE.directory = str(folder)  # this publish's folder: a process may publish to another home's site
        return
    import jinja2
    from great_expectations.render.view.view import DefaultJinjaIndexPageView, DefaultJinjaPageView

    class SparedCache(jinja2.FileSystemBytecodeCache):
        """The bytecode cache, which never fails a page: a folder removed meanwhile (`gx/` restored from a backup)
        is made again, and a write that cannot be made is skipped (the template is compiled again next time)."""

        def dump_bytecode(self, bucket: Any) -> None:
            try:
                os.makedirs(self.directory, exist_ok=True)
                super().dump_bytecode(bucket)
            except OSError as exc:
                log.debug("Data Docs: template cache not written in %s: %s", self.directory, exc)

    folder.mkdir(parents=True, exist_ok=True)
    cache = _BYTECODE = SparedCache(str(folder))

    def share_templates(base: type[Any]) -> type[Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            base.__init__(self, *args, **kwargs)
            self.env.bytecode_cache = cache
        return type(f"Lgsp{base.__name__.removeprefix('DefaultJinja')}", (base,),
                    {"__init__": __init__, "__module__": __name__})

    LgspPageView, LgspIndexPageView = share_templates(DefaultJinjaPageView), share_templates(DefaultJinjaIndexPageView)
    LgspSiteIndexBuilder, LgspSiteSectionBuilder, LgspSiteBuilder = _docs_builders()


def _docs_builders() -> tuple[type[Any], type[Any], type[Any]]:
    """(index builder, section builder, site builder): GX's, made to cost the same whatever the site's history.

    GX's index builder lists every result of the validation store and every page of the site
    (a directory walk and a date parse per run) and reads back the full stored result of
    every listed run, on every batch; its section builder lists the whole store to find the
    few pages it was asked to render. In a site of 500 runs a batch's publish took 0.53 s
    (`benchmarks/data_docs.py`), and it grew by the run.

    lgsp's index builder keeps what the index shows of each listed run (its key, success,
    asset name, batch kwargs and spec) in a summary file in the site's folder (a new or moved
    site starts without one), written under the docs lock: a batch's index is the summarised runs plus the runs being published, newest
    `DOCS_INDEX_RUNS` first, and only the new runs' results are read. Without a readable
    summary file (the first batch, or a damaged file) it lists the site as GX does and writes
    one. A result never changes once stored (each run has its own key), so a summary cannot
    go stale. The section builder renders the pages it was asked for without listing the store.
    The site builder copies GX's static assets (styles, fonts, images: 20 files, ~20 ms) only
    when one is missing or differs in size, not on every batch.
    """
    from great_expectations.core import ExpectationSuite
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        SiteSectionIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.render.renderer.site_builder import (
        DefaultSiteIndexBuilder,
        DefaultSiteSectionBuilder,
        SiteBuilder,
    )
    from great_expectations.render.util import resource_key_passes_run_name_filter
    from great_expectations.util import convert_to_json_serializable

    def name_of(key: Any) -> str:
        return "/".join(map(str, key.to_tuple()))

    def key_of(summary: dict[str, Any]) -> Any:
        return ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=summary["suite"]),
            run_id=RunIdentifier(run_name=summary["run_name"],
                                 run_time=datetime.fromisoformat(summary["run_time"])),
            batch_identifier=summary["batch"])

    class SummarisingIndexBuilder(DefaultSiteIndexBuilder):  # type: ignore[misc]
        # GX hands a builder only the settings its signature names: those of GX's own builder
        def __init__(self, name: str, site_name: str, data_context: Any, target_store: Any,  # noqa: PLR0913
                     site_section_builders_config: Any, summaries: str, custom_styles_directory: Any = None,
                     custom_views_directory: Any = None, show_how_to_buttons: bool = True,
                     validation_results_limit: int | None = None, renderer: Any = None, view: Any = None,
                     data_context_id: Any = None, source_stores: Any = None, **kwargs: Any) -> None:
            super().__init__(name, site_name, data_context, target_store, site_section_builders_config,
                             custom_styles_directory=custom_styles_directory,
                             custom_views_directory=custom_views_directory, show_how_to_buttons=show_how_to_buttons,
                             validation_results_limit=validation_results_limit, renderer=renderer, view=view,
                             data_context_id=data_context_id, source_stores=source_stores, **kwargs)
            self.summaries = Path(summaries)
            self.known: dict[str, Any] = {}

        def _read_summaries(self) -> dict[str, Any] | None:
            try:
                known = json.loads(self.summaries.read_text(encoding="utf-8"))
                for summary in known.values():
                    key_of(summary)
                return known if isinstance(known, dict) else None
            except (OSError, ValueError, TypeError, KeyError, AttributeError):  # none yet, or damaged
                return None

        def _build_validation_and_profiling_result_site_keys(self, skip_and_clean_missing: bool) -> list[Any]:
            known = self._read_summaries()
            if known is None:  # list the site as GX does; the summaries are written below
                self.known = {}
                return super()._build_validation_and_profiling_result_site_keys(  # type: ignore[no-any-return]
                    skip_and_clean_missing)
            self.known = known
            return [*(key_of(summary) for summary in known.values()),
                    *(key for key in _PUBLISHING if name_of(key) not in known)]

        def _summary(self, key: Any) -> dict[str, Any] | None:
            validation = self.data_context.get_validation_result(
                batch_identifier=key.batch_identifier, expectation_suite_name=key.expectation_suite_identifier.name,
                run_id=key.run_id, validation_results_store_name=self.source_stores.get("validations"))
            if not isinstance(validation, ExpectationSuiteValidationResult):  # {} when no result has the key
                return None
            batch_kwargs, batch_spec = validation.meta.get("batch_kwargs", {}), validation.meta.get("batch_spec", {})
            asset = (batch_kwargs.get("data_asset_name") or batch_spec.get("data_asset_name")
                     or validation.asset_name)
            return convert_to_json_serializable({
                "suite": key.expectation_suite_identifier.name, "run_name": key.run_id.run_name,
                "run_time": key.run_id.run_time.isoformat(), "batch": key.batch_identifier,
                "success": validation.success, "asset_name": asset, "batch_kwargs": batch_kwargs,
                "batch_spec": batch_spec})

        def _add_validations_to_index_links(self, index_links_dict: Any, site_keys: list[Any]) -> None:
            section = self.site_section_builders_config.get("validations")
            if not isinstance(section, dict):
                return
            keys = sorted((k for k in site_keys if resource_key_passes_run_name_filter(k, section["run_name_filter"])),
                          key=lambda k: k.run_id.run_time, reverse=True)[:self.validation_results_limit or None]
            kept = {}
            for key in keys:
                name = name_of(key)
                summary = self.known.get(name) or self._summary(key)
                if summary is None:
                    log.warning("validation result not found: %s - left out of the Data Docs index", name)
                    continue
                kept[name] = summary
                self.add_resource_info_to_index_links_dict(
                    index_links_dict=index_links_dict, expectation_suite_name=key.expectation_suite_identifier.name,
                    section_name="validations", batch_identifier=key.batch_identifier, run_id=key.run_id,
                    validation_success=summary["success"], run_time=key.run_id.run_time,
                    run_name=key.run_id.run_name, asset_name=summary["asset_name"],
                    batch_kwargs=summary["batch_kwargs"], batch_spec=summary["batch_spec"])
            if kept != self.known:  # the runs listed now, so the file stays as small as the index
                _write_json(self.summaries, kept)

    class DirectSectionBuilder(DefaultSiteSectionBuilder):  # type: ignore[misc]
        def build(self, resource_identifiers: Any = None) -> None:
            if not resource_identifiers:  # the whole section: GX's way
                return super().build(resource_identifiers)  # type: ignore[no-any-return]
            for key in resource_identifiers:
                if not isinstance(key, self.source_store.key_class):
                    continue
                if (self.run_name_filter and isinstance(key, ValidationResultIdentifier)
                        and not resource_key_passes_run_name_filter(key, self.run_name_filter)):
                    continue
                try:  # as GX's builder: a page that cannot be rendered is logged, the batch goes on
                    resource = self.source_store.get(key)
                    if isinstance(key, ExpectationSuiteIdentifier):
                        resource = ExpectationSuite(**resource)
                    page = self.view_class.render(self.renderer_class.render(resource),
                                                  data_context_id=self.data_context_id,
                                                  show_how_to_buttons=self.show_how_to_buttons)
                    self.target_store.set(SiteSectionIdentifier(site_section_name=self.name, resource_identifier=key),
                                          page)
                except Exception:  # noqa: BLE001
                    log.exception("the Data Docs page of %s could not be rendered", name_of(key))
            return None

    class AssetsOnceSiteBuilder(SiteBuilder):  # type: ignore[misc]
        def build(self, resource_identifiers: Any = None, build_index: bool = True) -> Any:
            for builder in self.site_section_builders.values():  # GX's build, the assets copied if needed
                builder.build(resource_identifiers=resource_identifiers)
            if not _static_assets_present(Path(self.store_backend["base_directory"])):
                self.target_store.copy_static_assets()
            _, index_links = self.site_index_builder.build(build_index=build_index)
            return self.get_resource_url(only_if_exists=False), index_links

    return (type("LgspSiteIndexBuilder", (SummarisingIndexBuilder,), {"__module__": __name__}),
            type("LgspSiteSectionBuilder", (DirectSectionBuilder,), {"__module__": __name__}),
            type("LgspSiteBuilder", (AssetsOnceSiteBuilder,), {"__module__": __name__}))


def _write_json(path: Path, value: Any) -> None:
    """Replace `path` with `value` as JSON: written aside, then renamed (a reader never sees half a file)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value), encoding="utf-8")
    temporary.replace(path)


@lru_cache(maxsize=1)
def _static_assets() -> tuple[tuple[str, int], ...]:
    """(path under `static/`, size) of each static asset GX copies into a docs site."""
    import great_expectations.render.view as views

    source = Path(views.__file__).parent / "static"
    return tuple((str(f.relative_to(source)), f.stat().st_size)
                 for f in sorted(source.rglob("*")) if f.is_file() and f.name != ".DS_Store")


def _static_assets_present(site: Path) -> bool:
    """Whether the site already holds every static asset of this GX version."""
    for name, size in _static_assets():
        try:
            if (site / "static" / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


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

    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every frame under 1 GB by hashing all its values (a batch marker, not a
    # check): half of GX's time on a chunk. Our batches are identified by their batch id.
    pandas_execution_engine.HASH_THRESHOLD = 0
    _install_docs_views(paths)
    defaults = InMemoryStoreBackendDefaults()
    stores = {**defaults.stores,
              defaults.expectations_store_name: _file_store("ExpectationsStore", paths.root / "expectations"),
              defaults.validation_results_store_name: _file_store("ValidationResultsStore",
                                                                  paths.root / "validations")}
    page_view = {"module_name": __name__, "class_name": "LgspPageView"}
    section = {"module_name": __name__, "class_name": "LgspSiteSectionBuilder", "view": page_view}
    site = {"module_name": __name__, "class_name": "LgspSiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(paths.data_docs)},
            "site_index_builder": {"module_name": __name__, "class_name": "LgspSiteIndexBuilder",
                                   "validation_results_limit": DOCS_INDEX_RUNS,
                                   "summaries": str(paths.data_docs / INDEX_SUMMARIES),
                                   "view": {"module_name": __name__, "class_name": "LgspIndexPageView"}},
            # no profiling section; every run listed (GX hides run names containing "profiling")
            "site_section_builders": {"profiling": "None", "expectations": section,
                                      "validations": {**section, "run_name_filter": {"matches_regex": ".*"}}}}
    config = DataContextConfig(store_backend_defaults=defaults, stores=stores, data_docs_sites={DOCS_SITE: site},
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    # An ephemeral context "saves" its whole configuration as YAML into a store in memory that
    # nothing reads back, on every datasource, asset and batch definition added: ~30 ms a process.
    context._save_project_config = lambda: None
    return context


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


def _suite_and_batches(context: Any, dataset: DatasetSpec) -> tuple[Any, Any]:
    """The dataset's suite (saved to the suite store) and a whole-dataframe batch definition."""
    import great_expectations as gx

    batch_def = (context.data_sources.add_pandas(f"lgsp_{dataset.name}")
                 .add_dataframe_asset(dataset.name).add_batch_definition_whole_dataframe("batch"))
    suite = gx.ExpectationSuite(name=f"lgsp.{dataset.name}")
    for kind, kwargs in suite_definition(dataset):
        suite.add_expectation(getattr(gx.expectations, kind)(**kwargs))
    return context.suites.add_or_update(suite), batch_def


_CONTEXTS: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}


def _cached_context(paths: GxPaths, dataset: DatasetSpec) -> tuple[Any, Any, Any]:
    """(context, suite, batch definition) for a dataset, built once per process and GX folder.

    Building them costs about a second (GX deep-copies its configuration); a batch
    validated in chunks, or many batches in one process, reuse them.
    """
    key = (str(paths.root), str(paths.data_docs), dataset.name, repr(suite_definition(dataset)))
    if key not in _CONTEXTS:
        with _docs_lock(paths):  # the suite file is shared with other processes
            context = _gx_context(paths)
            _CONTEXTS[key] = (context, *_suite_and_batches(context, dataset))
    return _CONTEXTS[key]


def _sum_counts(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add a chunk's counts to a column-map result and recompute its percentages (GX's definitions)."""
    for name in ("element_count", "unexpected_count", "missing_count"):
        if name in into and name in more:
            into[name] += more[name]
    elements, missing = into.get("element_count") or 0, into.get("missing_count") or 0
    unexpected = into.get("unexpected_count")
    if unexpected is None:
        return
    nonmissing = elements - missing
    if "missing_percent" in into:
        into["missing_percent"] = missing / elements * 100 if elements else None
    if "unexpected_percent_total" in into:
        into["unexpected_percent_total"] = unexpected / elements * 100 if elements else None
    percent = unexpected / nonmissing * 100 if nonmissing else None
    for name in ("unexpected_percent", "unexpected_percent_nonmissing"):
        if name in into:
            into[name] = percent
    listed = (into.get("partial_unexpected_list") or []) + (more.get("partial_unexpected_list") or [])
    if "partial_unexpected_list" in into:
        into["partial_unexpected_list"] = listed[:20]
    into.pop("partial_unexpected_counts", None)  # per chunk only: not summable from a sample
    into.pop("partial_unexpected_index_list", None)


def _merge_result(into: Any, more: Any) -> None:
    """Fold one chunk's result of an expectation into the batch's.

    Counts add up; a `mostly` expectation and the row count are judged again on the
    totals (the quarantine rate is the batch's, not a chunk's); anything else fails
    if any chunk failed.
    """
    kwargs = into.expectation_config.kwargs
    if into.expectation_config.type == "expect_table_row_count_to_be_between":
        count = (into.result.get("observed_value") or 0) + (more.result.get("observed_value") or 0)
        into.result["observed_value"] = count
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        into.success = (low is None or count >= low) and (high is None or count <= high)
        return
    _sum_counts(into.result, more.result)
    percent = into.result.get("unexpected_percent")
    if kwargs.get("mostly") is not None and percent is not None:
        into.success = (100 - percent) / 100 >= kwargs["mostly"]
    else:
        into.success = bool(into.success and more.success)


def _observed(result: dict[str, Any]) -> Any:
    """What an expectation saw: its observed value, or for a column-map one its unexpected share."""
    if result.get("observed_value") is not None or result.get("unexpected_percent") is None:
        return result.get("observed_value")
    return round(result["unexpected_percent"] / 100, 6)


def _site_builder(context: Any) -> Any:
    """The docs site's builder (`LgspSiteBuilder`), made once per context: what `build_data_docs` makes per call.

    Its page views keep their compiled templates in memory from batch to batch. It holds no
    state of the site between builds: the index builder reads the summary file each time.
    """
    builder = getattr(context, "_lgsp_site_builder", None)
    if builder is None:
        from great_expectations.data_context.util import instantiate_class_from_config

        builder = instantiate_class_from_config(
            config=context.variables.data_docs_sites[DOCS_SITE],
            runtime_environment={"data_context": context, "root_directory": context.root_directory,
                                 "site_name": DOCS_SITE},
            config_defaults={"module_name": __name__, "class_name": "LgspSiteBuilder"})
        context._lgsp_site_builder = builder
    return builder


class _SuitePage:
    """A suite's Data Docs page, rendered again only when the suite (or GX, or lgsp's docs) changed.

    The page shows the suite's expectations, which change with the dataset's definition,
    not with each batch: a batch rendered it again for ~10 ms. What it was rendered from
    (`suite_definition`, GX's version, `DOCS_VERSION`) is kept per suite in the site's
    `SUITE_STAMPS` file, written under the docs lock.
    """

    def __init__(self, paths: GxPaths, suite_name: str, dataset: DatasetSpec) -> None:
        import great_expectations as gx

        self.stamps, self.name = paths.data_docs / SUITE_STAMPS, suite_name
        self.page = paths.data_docs.joinpath("expectations", *suite_name.split(".")).with_suffix(".html")
        self.stamp = hashlib.sha256(repr((suite_definition(dataset), gx.__version__, DOCS_VERSION))
                                    .encode()).hexdigest()
        try:
            known = json.loads(self.stamps.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or damaged: every page is rendered again
            known = {}
        self.known: dict[str, str] = known if isinstance(known, dict) else {}

    def current(self) -> bool:
        return self.page.is_file() and self.known.get(self.name) == self.stamp

    def rendered(self) -> None:
        """Record that the page now shows this suite (if it exists: a failed rendering is tried again)."""
        if self.page.is_file() and self.known.get(self.name) != self.stamp:
            _write_json(self.stamps, {**self.known, self.name: self.stamp})


class BatchCheck:
    """A dataset's suite run over a batch that arrives in chunks: one result, one Data Docs page.

    `add` validates a chunk (GX computes the metrics on that frame only) and folds its
    results into the batch's; `finish` stores the batch's result in the validation
    store and renders its page and the index once, under the docs lock.
    """

    def __init__(self, dataset: DatasetSpec, batch_id: str, paths: GxPaths | None = None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self.dataset, self.batch_id = dataset, batch_id
        self.paths = paths or GxPaths.from_env()
        self.context, self.suite, self.batch_definition = _cached_context(self.paths, dataset)
        self.result: Any = None

    def add(self, frame: pd.DataFrame, row_ok: Any) -> None:
        from great_expectations.validator.v1_validator import Validator

        ok = pd.Series(row_ok, index=frame.index, dtype=bool)
        checked = frame.assign(_row_ok=ok)
        key = self.dataset.key
        if len(key) == 1 and not ok.all():
            # the key's uniqueness is judged among the rows that passed: a GX `row_condition` did the same,
            # at a third of the suite's time (a `DataFrame.query` per metric of the expectation)
            checked[key[0]] = checked[key[0]].where(ok)
        result = Validator(batch_definition=self.batch_definition, batch_parameters={"dataframe": checked},
                           result_format="SUMMARY").validate_expectation_suite(self.suite)
        if self.result is None:
            self.result = result
            return
        for mine, theirs in zip(self.result.results, result.results, strict=True):
            _merge_result(mine, theirs)

    def outcomes(self) -> list[ExpectationOutcome]:
        """The batch's outcomes, judged on its totals (no I/O: `publish` stores and renders them)."""
        from great_expectations.validator.v1_validator import calc_validation_statistics

        if self.result is None:  # no chunk at all: the suite runs on an empty frame
            self.add(pd.DataFrame({c: pd.Series(dtype=object) for c in self.dataset.columns}), [])
        result = self.result
        stats = calc_validation_statistics(result.results)
        result.success = stats.success
        result.statistics.update(evaluated_expectations=stats.evaluated_expectations,
                                 successful_expectations=stats.successful_expectations,
                                 unsuccessful_expectations=stats.unsuccessful_expectations,
                                 success_percent=stats.success_percent)
        outcomes = []
        for r in result.results:
            cfg = r.expectation_config
            outcomes.append(ExpectationOutcome(
                expectation=cfg.type, column=cfg.kwargs.get("column"), success=bool(r.success),
                unexpected_count=r.result.get("unexpected_count"), observed=_observed(r.result)))
        return outcomes

    def publish(self) -> str | None:
        """Store the batch's result and render its Data Docs page and the index; the page's URL if it failed."""
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        self.outcomes()
        result = self.result
        run_id = RunIdentifier(run_name=re.sub(r"[^\w.-]", "_", self.batch_id), run_time=datetime.now(timezone.utc))
        result.meta.update(run_id=run_id, validation_time=run_id.run_time,
                           batch_parameters={"dataframe": "<batch of chunks>"})
        suite_id = ExpectationSuiteIdentifier(name=self.suite.name)
        key = ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=run_id,
                                         batch_identifier=result.batch_id)
        with _docs_lock(self.paths):
            self.context.validation_results_store.set(key, result)
            suite_page = _SuitePage(self.paths, self.suite.name, self.dataset)
            _PUBLISHING[:] = [key]
            try:
                _site_builder(self.context).build([key] if suite_page.current() else [key, suite_id],
                                                  build_index=True)
            finally:
                _PUBLISHING.clear()
            suite_page.rendered()
            urls = [] if result.success else self.context.get_docs_sites_urls(resource_identifier=key,
                                                                              site_name=DOCS_SITE)
        return urls[0]["site_url"] if urls else None

    def finish(self) -> tuple[list[ExpectationOutcome], str | None]:
        """Judge, store and render: the batch's outcomes and, if it failed, its docs page."""
        outcomes = self.outcomes()
        return outcomes, self.publish()


@dataclass(frozen=True)
class PrunedResults:
    results: int  # stored validation results deleted (or that would be)
    pages: int  # their Data Docs pages
    bytes: int


def _run_time(result: Path) -> datetime | None:
    """When a stored result ran: its folder's name (`20261204T140002.108257Z`), or None if not such a name."""
    try:
        return datetime.strptime(result.parent.name, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _remove_empty_parents(path: Path, top: Path) -> None:
    """Remove the folders between `path` and `top` (not `top`) that are left empty."""
    for folder in path.parents:
        if folder == top or top not in folder.parents:
            return
        try:
            folder.rmdir()
        except OSError:  # not empty
            return


def prune_results(before: datetime, paths: GxPaths | None = None, dry_run: bool = False) -> PrunedResults:
    """Delete the stored validation results, and their Data Docs pages, of runs before `before`.

    The newest `DOCS_INDEX_RUNS` runs are always kept, whatever their age: they are the
    ones the site's index lists, so the index never links to a deleted page. Suite pages,
    the index and the static assets stay. Each batch's outcomes are also kept in the
    store (`lgsp_expectation_result`). Runs under the docs lock, like a publish.
    """
    paths = paths or GxPaths.from_env()
    store = paths.root / "validations"
    if not store.is_dir():
        return PrunedResults(0, 0, 0)
    results = pages = size = 0
    with _docs_lock(paths):
        runs = sorted(((when, path) for path in store.rglob("*.json") if (when := _run_time(path)) is not None),
                      key=lambda run: run[0], reverse=True)
        for when, result in runs[DOCS_INDEX_RUNS:]:
            if when >= before:
                continue
            page = (paths.data_docs / "validations" / result.relative_to(store)).with_suffix(".html")
            files = [(result, store), *([(page, paths.data_docs / "validations")] if page.is_file() else [])]
            results, pages = results + 1, pages + len(files) - 1
            for path, top in files:
                size += path.stat().st_size
                if not dry_run:
                    path.unlink()
                    _remove_empty_parents(path, top)
    return PrunedResults(results, pages, size)


def validate_dataset(frame: pd.DataFrame, row_ok: Any, dataset: DatasetSpec, batch_id: str,
                     raise_on_failure: bool = True) -> list[ExpectationOutcome]:
    """Run the dataset's suite on one frame (result and Data Docs on disk); raise QualityError if any fails.

    A batch that arrives in chunks uses `BatchCheck` directly. With `raise_on_failure=False`
    the outcomes are returned for the caller to judge.
    """
    check = BatchCheck(dataset, batch_id)
    check.add(frame, row_ok)
    outcomes, page = check.finish()
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
