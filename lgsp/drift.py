"""Sync drift: a sample of lgsp's copy asked of its source now, record by record, and compared.

An incremental sync only sees what the source marks as changed (its cursor field,
`updated_at`). A source that changes a record without touching that field, or deletes one
without a marker, leaves lgsp's copy wrong with nothing in any batch to say so. `lgsp drift
citizen --sample 200` asks the source for a random sample of the copy's records through the
dataset's live lookup (`lookup:` in catalog/sharing.yaml, the same connectors, limits and
breaker as the gateway's) and sorts each into:

    same            the copy equals the source on every shared column
    behind          the source changed it later than the copy's cursor field: the next sync brings it
    silent          it differs, and the source's cursor field is not newer: no incremental sync will
                    ever bring it (run `lgsp run <pipeline> --full-refresh`, and tell the source's owner)
    gone_at_source  the source has no such record any more (deleted without a marker)
    not_in_copy     (an asked `--key`) the source has it, lgsp's copy has not
    unavailable, refused, unusable, bad_key    the source could not be asked usably (see `detail`)

Column values are never reported, only the columns that differ.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog

STATUSES = ("same", "behind", "silent", "gone_at_source", "not_in_copy", "unavailable", "refused", "unusable",
            "bad_key")


@dataclass(frozen=True)
class Finding:
    key: dict[str, Any]
    status: str
    columns: list[str] = field(default_factory=list)  # the shared columns that differ
    detail: str = ""


@dataclass
class DriftReport:
    dataset: str
    system: str
    checked_at: datetime
    findings: list[Finding]

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for f in self.findings if f.status == status) for status in STATUSES}

    def columns(self, status: str = "silent") -> dict[str, int]:
        """How often each column differs among the findings of `status`."""
        counted: dict[str, int] = {}
        for finding in self.findings:
            if finding.status == status:
                for column in finding.columns:
                    counted[column] = counted.get(column, 0) + 1
        return dict(sorted(counted.items(), key=lambda kv: -kv[1]))

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "system": self.system, "checked_at": self.checked_at.isoformat(),
                "counts": self.counts(), "silent_columns": self.columns("silent"),
                "findings": [asdict(f) for f in self.findings if f.status != "same"]}


class DriftError(RuntimeError):
    """The drift check cannot run (no lookup declared, no shared view); the message says what to do."""


def check_drift(catalog: Catalog, database_url: str, name: str, sample: int = 100,
                keys: list[dict[str, Any]] | None = None) -> DriftReport:
    """Ask the source for `keys` (default: `sample` random records of the copy) and compare each with the copy."""
    from gateway.lookup import LiveLookups, SourceFailure, lookup_key
    from gateway.records import QueryError, Reader, read_engine
    from gateway.settings import GatewaySettings

    shared = catalog.sharing.get(name)
    if shared is None or shared.lookup is None:
        with_lookup = sorted(n for n, s in catalog.sharing.items() if s.lookup is not None)
        raise DriftError(f"dataset '{name}' has no live lookup in catalog/sharing.yaml, so its source cannot be "
                         f"asked record by record (datasets with one: {', '.join(with_lookup) or 'none'})")
    settings = GatewaySettings(database_url=database_url, pseudonym_key=secrets.token_bytes(32))
    warehouse = _warehouse_with_view(database_url, catalog, shared.view_name)
    engine = read_engine(database_url, 120.0)
    reader = Reader(engine, catalog, settings)
    lookups = LiveLookups(settings, catalog, reader, lambda _name: None, background=True)  # slowed in peak hours
    dataset = catalog.datasets[name]
    checked_at = datetime.now(timezone.utc)
    findings = []
    try:
        for key in keys if keys is not None else _sample(engine, shared.view_name, dataset.key, sample):
            try:
                key = lookup_key(catalog, name, key) if keys is not None else key  # asked keys come as text
                copy = reader.row_by_key(name, key)
                live = lookups.fetch(name, key, "lgsp drift")
            except QueryError as exc:
                findings.append(Finding(key, "bad_key", detail=str(exc)))
                continue
            except SourceFailure as failure:
                status = "gone_at_source" if failure.kind == "not_found" else failure.kind
                if status == "gone_at_source" and copy is None:
                    status, detail = "bad_key", f"neither the source nor lgsp's copy has it ({failure.problem})"
                else:
                    detail = failure.problem
                findings.append(Finding(key, status, detail=detail))
                continue
            if copy is None:
                findings.append(Finding(key, "not_in_copy", detail="the source has it, lgsp's copy has not"))
                continue
            findings.append(_compare(key, live, copy, dataset.cursor_field, list(shared.columns)))
        report = DriftReport(name, shared.lookup.system, checked_at, findings)
        _record(warehouse, report)
    finally:
        lookups.close()
        engine.dispose()
        warehouse.engine.dispose()
    return report


def _warehouse_with_view(database_url: str, catalog: Catalog, view: str) -> Any:
    """The warehouse, its tables up to date, and the shared views created if it has none yet (the gateway's
    `lgsp serve` makes them too)."""
    from warehouse import Warehouse
    from warehouse.shared import create_shared_views

    warehouse = Warehouse(database_url, catalog)
    try:
        if not sa.inspect(warehouse.engine).has_table(catalog.datasets[view.removeprefix("shared_")].table_name):
            raise DriftError(f"the warehouse has no {view.removeprefix('shared_')} table yet: run its pipeline "
                             "first (`lgsp run <pipeline>`)")
        warehouse.create_all()  # lgsp_drift_check, in a warehouse older than it
        if view not in sa.inspect(warehouse.engine).get_view_names():
            create_shared_views(warehouse, catalog)
    except BaseException:
        warehouse.engine.dispose()
        raise
    return warehouse


def _record(warehouse: Any, report: DriftReport) -> None:
    """Keep the check's figures (never a key or a value) in lgsp_drift_check."""
    import json
    import uuid

    row = {"check_id": f"{report.dataset}-{report.checked_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}",
           "dataset": report.dataset, "system": report.system, "checked_at": report.checked_at,
           "sampled": len(report.findings), "counts": json.dumps(report.counts()),
           "silent_columns": json.dumps(report.columns("silent"), ensure_ascii=False)}
    with warehouse.transaction() as conn:
        conn.execute(warehouse.system["lgsp_drift_check"].insert().values(**row))


def last_checks(engine: sa.Engine, tables: Any, datasets: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The newest drift check of each dataset (of `datasets`): when, against which system, its counts."""
    import json

    table = tables["lgsp_drift_check"]
    if not sa.inspect(engine).has_table(table.name):  # a warehouse no drift check (nor newer lgsp) has touched
        return {}
    newest = (sa.select(table.c.dataset, sa.func.max(table.c.checked_at).label("checked_at"))
              .group_by(table.c.dataset))
    if datasets is not None:
        newest = newest.where(table.c.dataset.in_(datasets))
    newest = newest.subquery()
    query = sa.select(table).join(newest, sa.and_(table.c.dataset == newest.c.dataset,
                                                  table.c.checked_at == newest.c.checked_at))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return {r["dataset"]: {"checked_at": _instant(r["checked_at"]), "system": r["system"], "sampled": r["sampled"],
                           **json.loads(r["counts"]), "silent_columns": json.loads(r["silent_columns"])}
            for r in rows}


def _sample(engine: sa.Engine, view: str, key: list[str], size: int) -> list[dict[str, Any]]:
    columns = ", ".join(f'"{c}"' for c in key)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f'SELECT {columns} FROM "{view}" ORDER BY random() LIMIT :size'), {"size": size})
        return [dict(r) for r in rows.mappings()]


def _compare(key: dict[str, Any], live: dict[str, Any], copy: dict[str, Any], cursor: str | None,
             columns: list[str]) -> Finding:
    differ = [c for c in columns if not _same(live.get(c), copy.get(c))]
    if not differ:
        return Finding(key, "same")
    if cursor and cursor in columns and live.get(cursor) is not None and copy.get(cursor) is not None \
            and _instant(live[cursor]) > _instant(copy[cursor]):
        return Finding(key, "behind", differ, f"the source changed it at {_instant(live[cursor]).isoformat()}, "
                                              f"after the copy's {_instant(copy[cursor]).isoformat()}")
    detail = (f"differs with {cursor} unchanged or older at the source: an incremental sync will not bring it"
              if cursor else "differs (the dataset has no cursor field to tell a pending change from drift)")
    return Finding(key, "silent", differ, detail)


def _instant(value: Any) -> Any:
    """A timestamp as an aware UTC instant (the copy's may come back naive, meaning UTC)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, datetime) and isinstance(b, datetime):
        return bool(_instant(a) == _instant(b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(a, date) and isinstance(b, str) or isinstance(b, date) and isinstance(a, str):
        return str(a) == str(b)
    return bool(a == b)


class SilentDrift(RuntimeError):
    """Records of the copy drifted silently: no incremental sync will bring them (the message says what to do)."""


def scheduled_check(name: str) -> dict[str, Any]:
    """The task of the DAG `lgsp_drift_<name>`: check `drift_sample` records; the counts, or an exception.

    Raises:
        SilentDrift: a record drifted silently (the task fails without retries and alerts).
        RuntimeError: the source could not be asked for most of the sample (the task retries later).
    """
    import logging

    from lgsp.settings import load_settings
    from catalog import load_catalog

    catalog = load_catalog()
    lookup = catalog.sharing[name].lookup
    assert lookup is not None
    report = check_drift(catalog, load_settings().database_url, name, lookup.drift_sample)
    counts = report.counts()
    logging.getLogger("lgsp.drift").info("drift of %s against %s: %s; silently drifted columns: %s", name,
                                         report.system, counts, report.columns("silent"))
    asked = len(report.findings)
    if counts["silent"]:
        raise SilentDrift(f"{counts['silent']} of {asked} sampled {name} records differ from {report.system} with "
                          f"their cursor field unchanged (columns: {report.columns('silent')}): no incremental sync "
                          f"will bring them; run the pipeline with --full-refresh, tell the source's owner, and see "
                          f"`lgsp drift {name}` for the records")
    failed = sum(counts[s] for s in ("unavailable", "refused", "unusable"))
    if asked and failed * 2 > asked:
        raise RuntimeError(f"{report.system} could not be asked for {failed} of {asked} sampled {name} records; "
                           "the check retries later")
    return {"dataset": name, "system": report.system, **counts}

