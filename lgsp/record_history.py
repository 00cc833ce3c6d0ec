"""What lgsp knows of one record: `lgsp record DATASET KEY...`.

A data engineer asked "why does this citizen show the old commune?" or "when did this enterprise become
suspended, and from which sync?" has the answer spread over the table, the lake, the batch records, the
change log, the tombstones and the quarantine. This puts it together for one record:

- **now**: the table's row (for a history dataset, its current version), with the write that put it
  there (batch, pipeline, run mode, source system, when);
- **versions**: each version the table held, oldest first, with when (from the commit of the write that
  put it there to the commit of the next), that write, and what it changed from the version before
  (`warehouse.versions`: the lake's files and the change log replayed as the merge applied them; a
  backfill's late row that never replaced the newer one is not a version);
- **deleted**: the writes that deleted it (a source's deletion marker, `--delete-missing`, a replace
  without it), which end a version;
- **quarantined**: every time a row of it was rejected by the row rules (rule, reason, batch, and
  whether it was replayed, closed or is still open): the versions that never reached the table;
- **received** (asked for): each version as its source sent it, from the batch's landed page (the
  values before typing, under the dataset's column names: a time with the zone it came in), while
  retention keeps the pages.

Example:
    >>> record(wh, catalog, lake, "citizen", ["037203001234"])["versions"][0]["changed"]   # doctest: +SKIP
    {'commune_code': ['14236', '13285'], 'updated_at': [...]}
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog
from warehouse.lake import Lake
from warehouse.store import Warehouse, tombstone_key, utc
from warehouse.versions import record_versions, same_value


class RecordError(ValueError):
    """The record cannot be looked up as asked (an unknown dataset, a key of the wrong length or type)."""


def typed_key(catalog: Catalog, dataset: str, values: Sequence[str]) -> dict[str, Any]:
    """`values` (as typed on the command line, in the key's order) as the dataset's key columns' values."""
    from gateway.records import QueryError, exact_values
    from lgsp.backup_dataset import WHERE_TYPES

    spec = catalog.datasets.get(dataset)
    if spec is None:
        raise RecordError(f"no dataset {dataset!r}; the datasets: {', '.join(sorted(catalog.datasets))}")
    if spec.layer == "mart":
        raise RecordError(f"{dataset} is computed by lgsp from the core tables (the mart), not loaded from a source: "
                          f"`lgsp indicators list NAME` shows its values; they keep no lake file and no versions")
    if spec.write_mode == "append":
        raise RecordError(f"{dataset} is an append log: it keeps every row it was sent, not versions of a record "
                          f"(query its table, {spec.table_name}, by {', '.join(spec.key)})")
    if len(values) != len(spec.key):
        raise RecordError(f"{dataset}'s key is {', '.join(spec.key)}: give {len(spec.key)} value(s) in that order, "
                          f"got {len(values)}")
    try:
        return {c: exact_values(spec.columns[c].type, [v], c, "the key", WHERE_TYPES)[0]
                for c, v in zip(spec.key, values)}
    except QueryError as exc:
        raise RecordError(str(exc)) from None


def record(wh: Warehouse, catalog: Catalog, lake: Lake, dataset: str, values: Sequence[str],
           received: bool = False) -> dict[str, Any]:
    """What lgsp knows of one record (see the module's docstring), as a dict: `dataset`, `key`, `now`,
    `versions`, `deleted`, `quarantined`, `known_since`; with `received`, each version's `received`: the
    record as its batch's landed page has it (`page`, `record`), or None when the pages are gone.

    Raises:
        RecordError: an unknown dataset, or a key that does not fit it.
    """
    key = typed_key(catalog, dataset, values)
    spec = catalog.datasets[dataset]
    table, batch, tomb, quarantine = (wh.core[dataset], wh.table("lgsp_batch"), wh.table("lgsp_tombstone"),
                                      wh.table("lgsp_quarantine"))
    record_key = "|".join(str(v) for v in values)
    with wh.engine.connect() as conn:
        current = [table.c.is_current.is_(sa.true())] if spec.write_mode == "history" else []
        now = conn.execute(sa.select(table).where(*(table.c[c] == v for c, v in key.items()), *current)
                           ).mappings().first()
        deletions = conn.execute(sa.select(tomb.c.batch_id, tomb.c.deleted_at).where(
            tomb.c.dataset == dataset, tomb.c.record_key == tombstone_key(spec.key, list(key.values())))
            .order_by(tomb.c.deleted_at)).mappings().all()
        rejected = conn.execute(sa.select(quarantine.c.quarantined_at, quarantine.c.batch_id, quarantine.c.rule,
                                          quarantine.c.reason, quarantine.c.status, quarantine.c.quarantine_id)
                                .where(quarantine.c.dataset == dataset, quarantine.c.record_key == record_key)
                                .order_by(quarantine.c.quarantined_at)).mappings().all()
    columns = list(spec.columns)
    shown = [{**{c: now[c] for c in columns}, "_batch_id": now["_batch_id"]}] if now is not None else []
    versions = record_versions(wh.engine, spec, lake, tuple(key.values()), shown)
    ids = {h.batch_id for h in versions.held} | {d["batch_id"] for d in deletions} | {r["batch_id"] for r in rejected}
    if now is not None:
        ids.add(now["_batch_id"])
    with wh.engine.connect() as conn:
        batches = {r["batch_id"]: dict(r) for r in conn.execute(
            sa.select(batch.c.batch_id, batch.c.pipeline, batch.c.mode, batch.c.source_system, batch.c.started_at)
            .where(batch.c.batch_id.in_(sorted(ids)))).mappings()}
    held, before = [], None
    for version in versions.held:
        values_now = {c: version.values.get(c) for c in columns}
        changed = ({c: [before[c], v] for c, v in values_now.items() if not same_value(before.get(c), v)}
                   if before is not None else None)
        write = _write(version.batch_id, batches)
        held.append({"since": version.since, "until": version.until, **write, "changed": changed,
                     "values": values_now})
        if received:
            held[-1]["received"] = as_received(lake, write["pipeline"], version.batch_id, key)
        before = values_now
    return {
        "dataset": dataset, "key": key, "known_since": versions.known_since,
        "now": None if now is None else {**{c: now[c] for c in columns}, **_write(now["_batch_id"], batches),
                                         "source_system": now["_source_system"], "loaded_at": utc(now["_loaded_at"])},
        "versions": held,
        "deleted": [{"at": utc(d["deleted_at"]), **_write(d["batch_id"], batches)} for d in deletions],
        "quarantined": [{"at": utc(r["quarantined_at"]), "rule": r["rule"], "reason": r["reason"],
                         "status": r["status"], "quarantine_id": r["quarantine_id"], **_write(r["batch_id"], batches)}
                        for r in rejected],
    }


def shown_values(found: dict[str, Any]) -> dict[str, Any]:
    """Every value `found` (a `record` result) shows, by column (the row now, each version, each as received),
    and its key under `_key`: what the audit of the read needs."""
    rows = [found["now"] or {}] + [v["values"] for v in found["versions"]]
    rows += [v["received"]["record"] for v in found["versions"] if v.get("received")]
    shown: dict[str, Any] = {"_key": found["key"]}
    for row in rows:
        for column, value in row.items():
            shown.setdefault(column, []).append(value)
    return shown


def as_received(lake: Lake, pipeline: str | None, batch_id: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record `key` as the batch's landed pages have it (the last, if paged twice): `page` (its path) and
    `record`; None when the batch has no landed page of it (pruned by retention, or a write that lands none: a
    replay, a migration, a restore). Pages are searched for the key's text before any is parsed."""
    if not pipeline:
        return None
    needles = [str(v).encode() for v in key.values()]
    found = None
    for path in lake.page_paths(pipeline, batch_id):
        _, line = Lake.read_page(path)
        if not all(n in line for n in needles):
            continue
        for candidate in Lake.page_records(line):
            if isinstance(candidate, dict) and all(str(candidate.get(c)) == str(v) for c, v in key.items()):
                found = {"page": str(path), "record": candidate}
    return found


def _write(batch_id: str, batches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A write by its batch: its pipeline and run mode (a migration, a restore or a replay has no batch of a
    pipeline's run: its id says what it was)."""
    found = batches.get(batch_id) or {}
    return {"batch_id": batch_id, "pipeline": found.get("pipeline"), "mode": found.get("mode")}

