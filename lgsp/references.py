"""References between datasets: does every dossier name a procedure lgsp has, every row a commune that exists?

A column declares `references: procedure.procedure_code` (catalog.models.ReferenceSpec): its value is
the key of a record of another dataset. Datasets come from different systems on different schedules,
so this is checked in the warehouse, across what has landed, not row by row at load time (a row is
never quarantined for it: the row is valid, the record it names is missing or late). Each reference
is in one of these states:

    ok       every row's value is the key of a record of the referenced dataset
    pending  some are not (orphans), but each of those rows landed less than `grace` ago: the record
             it names may still be on its way (its system is synced on another schedule)
    broken   an orphan is older than `grace`: `lgsp status` reports it (at the reference's
             `severity`), `lgsp references` exits 1, the lgsp_freshness DAG alerts once

Only current rows of a history dataset are checked; a null is not an orphan (`required` says whether
a value must be there). An orphan's age is its row's `_loaded_at`: the last time lgsp wrote it.

`lgsp references [--dataset D] [--json]` shows every reference: rows, orphans, the missing values
most named (with how many rows name each) and what to do; the gateway shows each shared dataset's
references to agencies (`references` in /api/v1/datasets/{name}); `lgsp docs` links them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, ReferenceSpec
from warehouse.store import utc

STATES = ("ok", "pending", "broken")
EXAMPLES = 5


@dataclass(frozen=True)
class Reference:
    """`dataset.column` names a record of `spec.to`."""

    dataset: str
    column: str
    spec: ReferenceSpec

    @property
    def name(self) -> str:
        return f"{self.dataset}.{self.column}"


def references(catalog: Catalog, dataset: str | None = None) -> list[Reference]:
    """Every reference the catalog declares (of `dataset` only, if given), in catalog order."""
    return [Reference(d.name, column, spec.references) for d in catalog.datasets.values()
            if dataset is None or d.name == dataset
            for column, spec in d.columns.items() if spec.references is not None]


def pipelines_of(catalog: Catalog, dataset: str) -> list[str]:
    """The pipelines that fill `dataset`."""
    return [p.name for p in catalog.pipelines.values() if p.dataset == dataset]


def check(conn: sa.Connection, tables: Any, catalog: Catalog, reference: Reference, now: datetime,
          examples: int = EXAMPLES) -> dict[str, Any]:
    """One reference's state now: rows that name a record, orphans, orphans past grace, the missing
    values most named, and how many records the referenced dataset has."""
    source = tables[catalog.datasets[reference.dataset].table_name]
    target = tables[catalog.datasets[reference.spec.dataset].table_name].alias("referenced")
    value = source.c[reference.column]
    named = [value.isnot(None)]
    if catalog.datasets[reference.dataset].write_mode == "history":
        named.append(source.c.is_current)
    orphan = [*named, ~sa.exists(sa.select(sa.literal(1)).where(target.c[reference.spec.column] == value))]
    cutoff = now - timedelta(seconds=reference.spec.grace)
    rows = int(conn.execute(sa.select(sa.func.count()).select_from(source).where(*named)).scalar_one())
    counts = conn.execute(sa.select(
        sa.func.count(), sa.func.sum(sa.case((source.c._loaded_at < cutoff, 1), else_=0)),
        sa.func.min(source.c._loaded_at), sa.func.count(sa.distinct(value))).where(*orphan)).one()
    orphans, overdue = int(counts[0]), int(counts[1] or 0)
    missing = [] if not orphans or not examples else [
        {"value": v, "rows": int(n), "since": utc(since)} for v, n, since in conn.execute(
            sa.select(value, sa.func.count().label("n"), sa.func.min(source.c._loaded_at)).where(*orphan)
            .group_by(value).order_by(sa.desc("n"), value).limit(examples))]
    target_rows = int(conn.execute(sa.select(sa.func.count()).select_from(target)).scalar_one())
    state = "broken" if overdue else "pending" if orphans else "ok"
    return {"reference": reference.name, "dataset": reference.dataset, "column": reference.column,
            "references": reference.spec.to, "severity": reference.spec.severity, "grace_s": reference.spec.grace,
            "state": state, "rows": rows, "orphans": orphans, "orphans_past_grace": overdue,
            "missing_values": int(counts[3]), "oldest_orphan_at": utc(counts[2]), "missing": missing,
            "referenced_rows": target_rows}


def orphan_rows(conn: sa.Connection, tables: Any, catalog: Catalog, reference: Reference,
                limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows of `reference.dataset` whose value names no record of the referenced dataset: their key, the
    value, when lgsp wrote them; in key order (what a data steward sends to the source's owner)."""
    dataset = catalog.datasets[reference.dataset]
    source = tables[dataset.table_name]
    target = tables[catalog.datasets[reference.spec.dataset].table_name].alias("referenced")
    value = source.c[reference.column]
    where = [value.isnot(None), ~sa.exists(sa.select(sa.literal(1)).where(target.c[reference.spec.column] == value))]
    if dataset.write_mode == "history":
        where.append(source.c.is_current)
    query = (sa.select(*(source.c[k] for k in dataset.key), value.label("value"), source.c._loaded_at)
             .where(*where).order_by(*(source.c[k] for k in dataset.key)).limit(limit))
    for row in conn.execute(query.execution_options(yield_per=10_000)).mappings():
        yield {"reference": reference.name, **{k: row[k] for k in dataset.key}, "value": row["value"],
               "loaded_at": utc(row["_loaded_at"])}


def check_all(conn: sa.Connection, tables: Any, catalog: Catalog, now: datetime | None = None,
              dataset: str | None = None, examples: int = EXAMPLES) -> list[dict[str, Any]]:
    """Every reference's state (of `dataset`'s columns only, if given); each broken one says what to do."""
    now = now or datetime.now(timezone.utc)
    from lgsp.freshness import pipeline_freshness

    freshness = {f.pipeline: f for f in pipeline_freshness(conn, tables, catalog, now)}
    checked = []
    for reference in references(catalog, dataset):
        result = check(conn, tables, catalog, reference, now, examples)
        result["todo"] = advice(catalog, result, freshness) if result["state"] == "broken" else None
        checked.append(result)
    return checked


def _examples(result: dict[str, Any]) -> str:
    shown = ", ".join(f"{m['value']} ({m['rows']:,} row{'s' if m['rows'] != 1 else ''})" for m in result["missing"])
    more = result["missing_values"] - len(result["missing"])
    return shown + (f" and {more:,} more" if more > 0 else "")


def summary(result: dict[str, Any]) -> str:
    """"dossier.procedure_code -> procedure.procedure_code: 3 of 1,204 rows name a record lgsp does not have
    (2 past the 2d grace): 1.009999 (2 rows), 2.000001 (1 row)"."""
    from lgsp.freshness import human_age

    text = f"{result['reference']} -> {result['references']}: "
    if not result["orphans"]:
        return text + f"all {result['rows']:,} rows name a record lgsp has"
    return (text + f"{result['orphans']:,} of {result['rows']:,} rows name a record lgsp does not have "
            f"({result['orphans_past_grace']:,} past the {human_age(result['grace_s'])} grace): {_examples(result)}")


def advice(catalog: Catalog, result: dict[str, Any], freshness: dict[str, Any]) -> str:
    """What to do about a broken reference: sync the referenced dataset, or ask the source's owner."""
    from lgsp.freshness import human_age

    target = result["references"].split(".")[0]
    fillers = pipelines_of(catalog, target)
    runs = " or ".join(f"`lgsp run {p}`" for p in fillers) or f"load '{target}'"
    if not result["referenced_rows"]:
        return f"'{target}' has no records yet: {runs}, then `lgsp references` again"
    behind = [freshness[p] for p in fillers if p in freshness and freshness[p].state in ("warn", "stale", "never")]
    if behind:
        when = ", ".join(f"{f.pipeline} {f.state}" + (f" (synced {human_age(f.age_s)} ago)" if f.age_s else "")
                         for f in behind)
        return f"'{target}' may be behind ({when}): {runs} may bring the missing records"
    systems = sorted({catalog.pipelines[p].source.system for p in pipelines_of(catalog, result["dataset"])})
    owners = sorted({catalog.systems[s].owner for s in systems if catalog.systems[s].owner})
    return (f"'{target}' is up to date, so {', '.join(systems) or 'the source'} sends values its records do not "
            f"have: ask {', '.join(owners) or 'its owner'} to correct them; `lgsp references --dataset "
            f"{result['dataset']}` lists them")


def alert_dag(catalog: Catalog, dataset: str) -> str:
    """The DAG an alert about `dataset` links to: its first pipeline's (lgsp_freshness when none fills it)."""
    fillers = pipelines_of(catalog, dataset)
    return f"lgsp_{fillers[0]}" if fillers else "lgsp_freshness"


def alert_for(catalog: Catalog, result: dict[str, Any], previous: str | None) -> Any:
    """The alert for a reference that broke, or that holds again (None when its state changed otherwise)."""
    from lgsp.alerts import Alert, dag_url, with_system

    dag_id = alert_dag(catalog, result["dataset"])
    if result["state"] == "broken" and previous != "broken":
        return with_system(Alert(kind="broken_reference", dag_id=dag_id, dag_url=dag_url(dag_id), summary=(
            f"{summary(result)}; {result['todo']}")[:1000]), dag_id)
    if result["state"] != "broken" and previous == "broken":
        return with_system(Alert(kind="reference_ok", dag_id=dag_id, dag_url=dag_url(dag_id), summary=(
            f"{result['reference']} -> {result['references']} holds again: "
            + (f"{result['orphans']:,} orphan(s) left, all within grace" if result["orphans"] else "no orphan"))),
            dag_id)
    return None
