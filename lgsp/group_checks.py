"""Rules across the rows of a dataset: does every household have exactly one current head?

A row rule (quality.rules) judges one row, and a bad row is quarantined. Some rules no single row can break:
a household whose current members name two heads, or none (its head's row quarantined, or the registry's old
paper book recording the spouse as head too). A dataset declares them under `group_checks`
(catalog.models.GroupCheckSpec): among the rows matching `where`, grouped by `group_by`, each group has
between `min` and `max` rows matching `count`. They are checked in the warehouse, across what has landed (a
batch holds only the rows that changed), and each is in one of these states:

    ok       no group breaks it
    pending  some groups do, but each of them has a row written less than `grace` ago: the rest of the
             change may come with the next sync (a new head's row after the old head's)
    broken   a group breaking it has had no row written for `grace`: `lgsp status` reports it (at its
             `severity`), `lgsp checks` exits 1, the lgsp_freshness DAG alerts once

Only current rows of a history dataset are checked. Rows are never quarantined nor changed for it: each row
is valid, the group is not; the source's owner corrects it, and the next sync brings the correction.

`lgsp checks [--dataset D] [--json]` shows every group check: groups, those breaking it, examples (each
group's key and count) and what to do; `lgsp checks --dataset D --groups` writes every breaking group's rows
as CSV.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, GroupCheckSpec
from indicators.query import condition
from warehouse.store import aggregate_time, utc

EXAMPLES = 5


@dataclass(frozen=True)
class GroupCheck:
    """`spec`, declared on `dataset` as `check`."""

    dataset: str
    check: str
    spec: GroupCheckSpec

    @property
    def name(self) -> str:
        return f"{self.dataset}.{self.check}"

    def rule(self) -> str:
        """"rows with relation = head per household_id, among rows with left_on null: exactly 1"."""
        spec = self.spec
        bounds = (f"exactly {spec.min}" if spec.min == spec.max else
                  f"at least {spec.min}" if spec.max is None else
                  f"at most {spec.max}" if spec.min is None else f"{spec.min} to {spec.max}")
        counted = f"rows with {_filters(spec.count)}" if spec.count else "rows"
        if spec.distinct:
            counted = f"distinct {spec.distinct}" + (f" of rows with {_filters(spec.count)}" if spec.count else "")
        among = f", among rows with {_filters(spec.where)}" if spec.where else ""
        return f"{counted} per {', '.join(spec.group_by)}{among}: {bounds}"


def _filters(filters: dict[str, Any]) -> str:
    """"relation = head and left_on null", "certificate_no not null", "status not in ['dissolved']"."""
    def one(column: str, wanted: Any) -> str:
        if isinstance(wanted, dict):
            wanted = wanted["not"]
            return f"{column} not null" if wanted is None else (
                f"{column} not in {wanted}" if isinstance(wanted, list) else f"{column} != {wanted}")
        return f"{column} null" if wanted is None else (
            f"{column} in {wanted}" if isinstance(wanted, list) else f"{column} = {wanted}")

    return " and ".join(one(c, v) for c, v in filters.items())


def group_checks(catalog: Catalog, dataset: str | None = None) -> list[GroupCheck]:
    """Every group check the catalog declares (of `dataset` only, if given), in catalog order."""
    return [GroupCheck(d.name, name, spec) for d in catalog.datasets.values()
            if dataset is None or d.name == dataset for name, spec in d.group_checks.items()]


def _groups(tables: Any, catalog: Catalog, check: GroupCheck) -> tuple[sa.Select[Any], sa.ColumnElement[bool]]:
    """Each group of `check`'s rows: its key, how many rows it counts, its newest write; and the condition (on the
    aggregate) of a group breaking the rule."""
    dataset = catalog.datasets[check.dataset]
    table = tables[dataset.table_name]
    spec = check.spec
    where = [condition(table, spec.where)]
    if dataset.write_mode == "history":
        where.append(table.c.is_current)
    if spec.distinct:
        value = table.c[spec.distinct]
        counted = sa.func.count(sa.distinct(sa.case((condition(table, spec.count), value)) if spec.count else value))
    elif spec.count:
        counted = sa.func.coalesce(sa.func.sum(sa.case((condition(table, spec.count), 1), else_=0)), 0)
    else:
        counted = sa.func.count()
    keys = [table.c[c] for c in spec.group_by]
    breaks = []
    if spec.min is not None:
        breaks.append(counted < spec.min)
    if spec.max is not None:
        breaks.append(counted > spec.max)
    grouped = (sa.select(*keys, counted.label("counted"), sa.func.max(table.c._loaded_at).label("newest"))
               .where(*where).group_by(*keys))
    return grouped, sa.or_(*breaks)


def check(conn: sa.Connection, tables: Any, catalog: Catalog, group_check: GroupCheck, now: datetime,
          examples: int = EXAMPLES) -> dict[str, Any]:
    """One group check's state now: groups, those breaking it, those of them past grace, examples. One pass over
    the rows it reads (a GROUP BY), and a second for the examples when some group breaks it."""
    spec = group_check.spec
    grouped, breaks = _groups(tables, catalog, group_check)
    flagged = grouped.add_columns(sa.case((breaks, 1), else_=0).label("breaks")).subquery("grouped")
    cutoff = now - timedelta(seconds=spec.grace)
    broken = flagged.c.breaks == 1
    counts = conn.execute(sa.select(
        sa.func.count(), sa.func.sum(flagged.c.breaks),
        sa.func.sum(sa.case((sa.and_(broken, flagged.c.newest < cutoff), 1), else_=0)),
        sa.func.min(sa.case((broken, flagged.c.newest))))).one()
    groups, found, overdue = int(counts[0]), int(counts[1] or 0), int(counts[2] or 0)
    breaking = grouped.having(breaks).subquery("breaking")
    shown = [] if not found or not examples else [
        {"group": {c: r[c] for c in spec.group_by}, "counted": int(r["counted"]), "written_at": utc(r["newest"])}
        for r in conn.execute(sa.select(breaking).order_by(*(breaking.c[c] for c in spec.group_by))
                              .limit(examples)).mappings()]
    state = "broken" if overdue else "pending" if found else "ok"
    return {"check": group_check.name, "dataset": group_check.dataset, "rule": group_check.rule(),
            "description": spec.description, "description_vi": spec.description_vi or None,
            "severity": spec.severity, "grace_s": spec.grace, "state": state, "groups": groups, "breaking": found,
            "breaking_past_grace": overdue, "oldest_breaking_at": aggregate_time(counts[3]), "examples": shown}


def breaking_rows(conn: sa.Connection, tables: Any, catalog: Catalog, group_check: GroupCheck,
                  limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows (among those the check reads) of each group breaking it, in group then key order: what a
    data steward sends to the source's owner."""
    dataset = catalog.datasets[group_check.dataset]
    table = tables[dataset.table_name]
    spec = group_check.spec
    grouped, breaks = _groups(tables, catalog, group_check)
    breaking = grouped.having(breaks).subquery("breaking")
    where = [condition(table, spec.where),  # a null key is a group too (GROUP BY makes one of its rows)
             *(table.c[c].is_not_distinct_from(breaking.c[c]) for c in spec.group_by)]
    if dataset.write_mode == "history":
        where.append(table.c.is_current)
    columns = list(dict.fromkeys([*spec.group_by, *dataset.key, *spec.count, *spec.where,
                                  *([spec.distinct] if spec.distinct else [])]))
    query = (sa.select(*(table.c[c] for c in columns), table.c._loaded_at).where(*where)
             .order_by(*(table.c[c] for c in [*spec.group_by, *dataset.key])).limit(limit))
    for row in conn.execute(query).mappings():
        yield {"check": group_check.name, **{c: row[c] for c in columns}, "loaded_at": utc(row["_loaded_at"])}


def check_all(conn: sa.Connection, tables: Any, catalog: Catalog, now: datetime | None = None,
              dataset: str | None = None, examples: int = EXAMPLES) -> list[dict[str, Any]]:
    """Every group check's state (of `dataset` only, if given); each broken one says what to do."""
    now = now or datetime.now(timezone.utc)
    checked = []
    for group_check in group_checks(catalog, dataset):
        result = check(conn, tables, catalog, group_check, now, examples)
        result["todo"] = advice(catalog, result) if result["state"] == "broken" else None
        checked.append(result)
    return checked


def summary(result: dict[str, Any]) -> str:
    """"household_member.one_head (rows with relation = head per household_id, ...: exactly 1): 2 of 93 groups
    break it (2 past the 2h grace): household_id=HK37-14464-000012 (2), ..."."""
    from lgsp.freshness import human_age

    text = f"{result['check']} ({result['rule']}): "
    if not result["breaking"]:
        return text + f"all {result['groups']:,} groups hold it"
    shown = ", ".join(",".join(f"{c}={v}" for c, v in e["group"].items()) + f" ({e['counted']})"
                      for e in result["examples"])
    more = result["breaking"] - len(result["examples"])
    return (text + f"{result['breaking']:,} of {result['groups']:,} groups break it "
            f"({result['breaking_past_grace']:,} past the {human_age(result['grace_s'])} grace)"
            + (f": {shown}" if shown else "") + (f" and {more:,} more" if shown and more > 0 else ""))


def advice(catalog: Catalog, result: dict[str, Any]) -> str:
    """What to do about a broken group check: the source's owner corrects the records; which to send them."""
    from lgsp.references import pipelines_of

    systems = sorted({catalog.pipelines[p].source.system for p in pipelines_of(catalog, result["dataset"])})
    owners = sorted({catalog.systems[s].owner for s in systems if catalog.systems[s].owner})
    return (f"{', '.join(systems) or 'the source'} holds records that break it: ask {', '.join(owners) or 'its owner'}"
            f" to correct them (`lgsp checks --dataset {result['dataset']} --groups` lists the rows); the next "
            "sync brings the correction")


def alert_for(catalog: Catalog, result: dict[str, Any], previous: str | None) -> Any:
    """The alert for a group check that broke, or that holds again (None when its state changed otherwise)."""
    from lgsp.alerts import Alert, dag_url, with_system
    from lgsp.references import alert_dag

    dag_id = alert_dag(catalog, result["dataset"])
    if result["state"] == "broken" and previous != "broken":
        return with_system(Alert(kind="broken_group_check", dag_id=dag_id, dag_url=dag_url(dag_id), summary=(
            f"{summary(result)}; {result['todo']}")[:1000]), dag_id)
    if result["state"] != "broken" and previous == "broken":
        return with_system(Alert(kind="group_check_ok", dag_id=dag_id, dag_url=dag_url(dag_id), summary=(
            f"{result['check']} holds again: " + (f"{result['breaking']:,} group(s) left, all within grace"
                                                  if result["breaking"] else "no group breaks it"))), dag_id)
    return None
