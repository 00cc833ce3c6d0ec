"""Completeness: does lgsp hold every record its source holds?

Every record a pipeline received is either in the copy (the core table) or in the quarantine;
none is dropped. `lgsp reconcile` checks that claim against the source itself: it asks the
source how many records it holds (the `total_field` of the pipeline's source, from a one-record
page of the whole window), and how many it changed since the pipeline's cursor (the records the
next sync will bring), and counts the distinct keys lgsp holds in the copy, in the open
quarantine, and received with a deletion marker (`lgsp_source_deleted`: a source serves its deleted
records, marked, so it counts them). When other pipelines load the dataset too, only the copy's rows
this pipeline answers for are counted (`warehouse.store.rows_of`: its system's; its own batches' when
another is of its system).

    complete   lgsp holds as many keys as the source counts
    pending    the source counts more, no more than it changed since the cursor: the next sync brings them
    lost       the source counts more than that: records are in neither the copy nor the quarantine;
               run `lgsp run <pipeline> --full-refresh` (nothing is dropped by it: merges are idempotent)
    extra      lgsp holds more keys than the source counts: records deleted at the source without a
               marker (`lgsp drift` finds which, `lgsp run <pipeline> --full-refresh --delete-missing`
               removes them), or a source that does not count what it serves
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, PipelineSpec
from warehouse.store import rows_of


class ReconcileError(RuntimeError):
    """The pipeline cannot be reconciled (its source declares no total); the message says what to do."""


@dataclass(frozen=True)
class Reconciliation:
    pipeline: str
    dataset: str
    system: str
    source_total: int
    source_changed_since_cursor: int | None  # what the next sync may bring (None: no cursor yet)
    cursor: datetime | None
    in_copy: int  # distinct keys in the core table
    in_quarantine_only: int  # distinct keys in the open quarantine and not in the copy
    status: str
    deleted_at_source: int = 0  # received with their deletion marker (lgsp_source_deleted), in neither of those

    @property
    def held(self) -> int:
        return self.in_copy + self.in_quarantine_only + self.deleted_at_source

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "held": self.held, "cursor": self.cursor.isoformat() if self.cursor else None}


def reconcile(catalog: Catalog, warehouse: Any, pipeline: str) -> Reconciliation:
    """Count the pipeline's records at the source and in lgsp, and say what the difference means."""
    spec = catalog.pipeline(pipeline)
    if not spec.source.total_field:
        raise ReconcileError(f"pipeline {pipeline}: its source declares no total_field (catalog/pipelines.yaml), "
                             "so the source cannot be asked how many records it holds")
    cursor = warehouse.get_cursor(pipeline)
    total = _source_total(catalog, spec, None)
    changed = None
    if cursor is not None:  # the source's `since` is inclusive: what lgsp holds from the cursor on is not pending
        changed = max(0, _source_total(catalog, spec, cursor) - _held_since(warehouse, catalog, spec, cursor))
    in_copy, quarantine_only, deleted = _held(warehouse, catalog, spec)
    held = in_copy + quarantine_only + deleted
    if held == total:
        status = "complete"
    elif held > total:
        status = "extra"
    elif changed is not None and total - held <= changed:
        status = "pending"
    else:
        status = "lost"
    return Reconciliation(pipeline, spec.dataset, spec.source.system, total, changed, cursor, in_copy,
                          quarantine_only, status, deleted)


def _source_total(catalog: Catalog, spec: PipelineSpec, since: datetime | None) -> int:
    """The source's count of the records changed since `since` (None: all), from a one-record page."""
    from connectors import open_transport
    from connectors.paging import dig
    from connectors.retry import call_with_retry
    from connectors.source import first_request

    system = catalog.systems[spec.source.system]
    params = first_request(spec.source, since)
    paging = spec.source.paginator.params
    for size in ("size_param", "limit_param"):  # one record is enough: only the count is read
        if paging.get(size) and paging[size] in params:
            params[paging[size]] = 1
    transport = open_transport(system, spec.source)
    try:
        answer = call_with_retry(lambda: transport.call(dict(params)), system.retry, system.name,
                                 spec.source.operation)
    finally:
        transport.close()
    value = dig(answer, str(spec.source.total_field))
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ReconcileError(f"pipeline {spec.name}: {system.name} {spec.source.operation} answered "
                             f"{spec.source.total_field}={value!r}, not a count; check total_field")
    return int(value)


def _own(warehouse: Any, catalog: Catalog, spec: PipelineSpec, table: sa.Table) -> list[Any]:
    """The rows the pipeline answers for (`warehouse.store.rows_of`): all, unless other pipelines load the dataset."""
    return warehouse.written_by(table, *rows_of(catalog, spec))  # type: ignore[no-any-return]


def _held_since(warehouse: Any, catalog: Catalog, spec: PipelineSpec, cursor: datetime) -> int:
    """Records of the copy whose cursor field is at or after `cursor` (0 without a cursor field)."""
    dataset = catalog.datasets[spec.dataset]
    if not dataset.cursor_field:
        return 0
    table = warehouse.table(dataset.table_name)
    query = sa.select(sa.func.count()).select_from(table).where(table.c[dataset.cursor_field] >= cursor,
                                                                 *_own(warehouse, catalog, spec, table))
    if dataset.write_mode == "history":
        query = query.where(table.c.is_current.is_(sa.true()))
    with warehouse.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _held(warehouse: Any, catalog: Catalog, spec: PipelineSpec) -> tuple[int, int, int]:
    """Distinct keys in the copy; in the open quarantine but not in the copy; received with their deletion marker
    (the source serves and counts them) and in neither."""
    dataset = catalog.datasets[spec.dataset]
    table = warehouse.table(dataset.table_name)
    key = sa.cast(table.c[dataset.key[0]], sa.Text)
    for column in dataset.key[1:]:  # the quarantine's record_key: the key's values joined by "|"
        key = key.op("||")(sa.literal("|")).op("||")(sa.cast(table.c[column], sa.Text))
    quarantine = warehouse.system["lgsp_quarantine"]
    copy_keys = sa.select(key.label("k")).distinct().where(*_own(warehouse, catalog, spec, table))
    if dataset.write_mode == "history":  # a closed version, or a deleted record's last one, is not held now
        copy_keys = copy_keys.where(table.c.is_current.is_(sa.true()))
    open_keys = (sa.select(quarantine.c.record_key.label("k")).distinct()
                 .where(quarantine.c.dataset == dataset.name, quarantine.c.pipeline == spec.name,
                        quarantine.c.status == "open"))
    flagged = warehouse.system["lgsp_source_deleted"]
    system, own = rows_of(catalog, spec)
    marked_keys = sa.select(flagged.c.record_key.label("k")).where(flagged.c.dataset == dataset.name, *(
        [] if system is None else [flagged.c.batch_id.in_(warehouse.batch_ids(system, own))]))
    with warehouse.engine.connect() as conn:
        in_copy = int(conn.execute(sa.select(sa.func.count()).select_from(copy_keys.subquery())).scalar_one())
        union = sa.union(copy_keys, open_keys).subquery()
        both = int(conn.execute(sa.select(sa.func.count()).select_from(union)).scalar_one())
        every = int(conn.execute(sa.select(sa.func.count()).select_from(
            sa.union(copy_keys, open_keys, marked_keys).subquery())).scalar_one()) if dataset.delete_field else both
    return in_copy, both - in_copy, every - both
