"""The gateway's catalog: what each shared dataset is, and how fresh and how good its data is.

For each dataset of catalog/sharing.yaml: title, description (and in Vietnamese, when the catalog
has them), owner, licence, open or
restricted, the schema (type, description and its Vietnamese, filterable, sortable, personal policy), the
row count of its shared view, its freshness (when its last batch was loaded; for a mart
dataset, its newest computed_at) and, when the pipelines that fill it declare a freshness objective,
its state against it (`lgsp.freshness`: fresh, warn, stale, never), its last quality result (the Great Expectations
results of its last validated batch), for each shared column that names a record of another dataset (`references`),
how many rows name one lgsp has (`lgsp.references`), its quality scorecard (`lgsp.scorecard`: validity,
timeliness, consistency, accuracy, the overall figure) and, for a dataset with a live lookup, its last drift
check (`lgsp drift`: a sample of the copy against its source). Figures are cached for
`CACHE_S` seconds, the references' and the scorecard's for `REFERENCES_CACHE_S`.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, ReferenceSpec
from gateway.changes import feed_problem
from lgsp import group_checks
from lgsp.freshness import dataset_freshness
from lgsp.references import check_all
from lgsp.scorecard import DIMENSIONS, scorecards
from warehouse.store import Warehouse, utc

CACHE_S = 30.0
REFERENCES_CACHE_S = 300.0


class DatasetCatalog:
    """Describes the shared datasets from the catalog and the warehouse's bookkeeping."""

    def __init__(self, engine: sa.Engine, catalog: Catalog, sortable: dict[str, list[str]]) -> None:
        self.engine = engine
        self.catalog = catalog
        self.sortable = sortable
        self.tables = Warehouse(engine.url.render_as_string(hide_password=False), catalog).metadata.tables
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._references_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.catalog.sharing)

    def schema(self, name: str) -> list[dict[str, Any]]:
        """The shared columns: name, type, description (and in Vietnamese, or None), required, filterable,
        sortable, personal policy."""
        dataset, shared = self.catalog.datasets[name], self.catalog.sharing[name]
        return [{"name": c, "type": dataset.columns[c].type, "description": dataset.columns[c].description,
                 "description_vi": dataset.columns[c].description_vi or None,
                 "required": dataset.columns[c].required, "key": c in dataset.key,
                 "filterable": c in shared.filterable, "sortable": c in self.sortable[name],
                 "personal": shared.personal.get(c), "references": self._points_to(dataset.columns[c].references)}
                for c in shared.columns]

    def _points_to(self, reference: ReferenceSpec | None) -> dict[str, Any] | None:
        """The dataset and field a column names a record of; `path` when that dataset is shared too."""
        if reference is None:
            return None
        shared = reference.dataset in self.catalog.sharing
        return {"dataset": reference.dataset, "field": reference.column,
                "path": f"/api/v1/datasets/{reference.dataset}" if shared else None}

    def _slow_figures(self, name: str) -> dict[str, Any]:
        """The dataset's references (per shared column that names a record of another dataset: how many rows name
        one lgsp has; counts only, no values), its rules across rows (lgsp.group_checks, those reading shared columns
        only: how many groups hold each) and its quality scorecard (lgsp.scorecard: scores only). An anti-join
        over the whole table (0.24 s for 1M citizens on PostgreSQL: benchmarks/references.py), so kept
        `REFERENCES_CACHE_S`."""
        now_s = time.monotonic()
        cached = self._references_cache.get(name)
        if cached is not None and cached[0] > now_s:
            return cached[1]
        now = datetime.now(timezone.utc)
        with self.engine.connect() as conn:
            results = check_all(conn, self.tables, self.catalog, now, dataset=name, examples=0)
            groups = group_checks.check_all(conn, self.tables, self.catalog, now, dataset=name, examples=0)
        card = scorecards(self.engine, self.tables, self.catalog, name, now=now, profile=False, references=results,
                          groups=groups)[0] if self.catalog.datasets[name].layer == "core" else None
        shared = set(self.catalog.sharing[name].columns)
        declared = self.catalog.datasets[name].group_checks
        figures = {"references": [
            {"field": r["column"], "references": r["references"], "state": r["state"], "rows": r["rows"],
             "orphans": r["orphans"], "orphans_past_grace": r["orphans_past_grace"]}
            for r in results if r["column"] in shared],
            "group_checks": [
                {"check": g["check"].split(".", 1)[1], **{k: g[k] for k in (
                    "description", "description_vi", "rule", "state", "groups", "breaking", "breaking_past_grace")}}
                for g in groups if set(declared[g["check"].split(".", 1)[1]].columns_used) <= shared],
            "quality_score": None if card is None else {
                "overall": card["overall"], "weakest": card["weakest"],
                **{d: card[d]["score"] for d in DIMENSIONS}}}
        self._references_cache[name] = (now_s + REFERENCES_CACHE_S, figures)
        return figures

    def describe(self, name: str) -> dict[str, Any]:
        """Everything the catalog says about `name`, with the live figures (cached)."""
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        dataset, shared = self.catalog.datasets[name], self.catalog.sharing[name]
        with self.engine.connect() as conn:
            figures = {"row_count": self._row_count(conn, shared.view_name),
                       "freshness": self._freshness(conn, name),
                       "freshness_status": dataset_freshness(conn, self.tables, self.catalog, name),
                       "last_quality": self._last_quality(conn, name), **self._schema_version(conn, name)}
        figures.update(self._slow_figures(name))
        figures["last_drift_check"] = None
        if shared.lookup is not None:
            from lgsp.drift import last_checks

            drift = last_checks(self.engine, self.tables, [name]).get(name)
            figures["last_drift_check"] = None if drift is None else {
                k: drift[k] for k in ("checked_at", "sampled", "same", "behind", "silent", "gone_at_source")}
        info = {"name": name, "title": dataset.title, "description": shared.description,
                "title_vi": shared.title_vi or None, "description_vi": shared.description_vi or None,
                "owner": shared.owner, "licence": shared.licence, "access": shared.access, "key": list(dataset.key),
                "history": dataset.write_mode == "history", "schema": self.schema(name), **figures,
                "lookup": None if shared.lookup is None else {
                    "system": shared.lookup.system, "key": list(dataset.key),
                    "path": f"/api/v1/datasets/{name}/lookup"},
                "changes": None if feed_problem(self.catalog, name) else f"/api/v1/datasets/{name}/changes"}
        with self._lock:
            self._cache[name] = (now + CACHE_S, info)
        return info

    def freshness(self, name: str) -> datetime | None:
        """When `name` was last loaded (a mart dataset: last computed), read now."""
        with self.engine.connect() as conn:
            return self._freshness(conn, name)

    @staticmethod
    def _row_count(conn: sa.Connection, view: str) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(view))).scalar_one())

    def _schema_version(self, conn: sa.Connection, name: str) -> dict[str, Any]:
        """The shared columns' version (gateway.events.contract) and since when it is served (when recorded)."""
        from gateway import events, tables

        served = events.version(events.contract(self.catalog, name))
        s = tables.dataset_schema.c
        since = conn.execute(sa.select(s.recorded_at).where(s.dataset == name, s.digest == served)).scalar()
        return {"schema_version": served, "schema_since": utc(since)}

    def _freshness(self, conn: sa.Connection, name: str) -> datetime | None:
        dataset = self.catalog.datasets[name]
        if dataset.layer == "mart" and "computed_at" in dataset.columns:
            table = self.tables[dataset.table_name]
            return utc(conn.execute(sa.select(sa.func.max(table.c.computed_at))).scalar())
        batch = self.tables["lgsp_batch"]
        return utc(conn.execute(sa.select(sa.func.max(batch.c.finished_at)).where(
            batch.c.dataset == name, batch.c.status == "loaded")).scalar())

    def _last_quality(self, conn: sa.Connection, name: str) -> dict[str, Any] | None:
        results = self.tables["lgsp_expectation_result"]
        last = conn.execute(sa.select(results.c.batch_id, sa.func.max(results.c.checked_at).label("checked_at"))
                            .where(results.c.dataset == name).group_by(results.c.batch_id)
                            .order_by(sa.desc("checked_at")).limit(1)).first()
        if last is None:
            return None
        outcomes = conn.execute(sa.select(results.c.expectation, results.c.column_name, results.c.success)
                                .where(results.c.batch_id == last.batch_id)).all()
        failed = [f"{o.expectation}({o.column_name})" if o.column_name else o.expectation
                  for o in outcomes if not o.success]
        return {"batch_id": last.batch_id, "checked_at": utc(last.checked_at), "success": not failed,
                "expectations": len(outcomes), "failed": failed}
