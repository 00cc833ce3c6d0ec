"""Who received a person's data through the gateway: the disclosure report (`lgsp audit subject ID`).

A person may ask the province to whom their data was provided, when and for what purpose (the personal
data protection law, Law 91/2025/QH15, in force since 2026-01-01, as Decree 13/2023 before it). Every read
of the gateway is a row of the hash-chained audit (gateway.audit): who, which dataset, the query (a value
asked of a personal column kept as its keyed pseudonym), the rows returned. From it and the shared views,
for a 12-digit personal ID:

- **records**: where the person is in the shared datasets now: each dataset with a shared column holding
  a personal ID (a column the `cccd` rule checks, or named `*personal_id`: `citizen.personal_id`,
  `land_parcel.holder_personal_id`);
- **named**: the reads that named the person (a live lookup, a filter on the ID, a CKAN filter), refused
  ones too: the audit holds the ID's pseudonym, so these are exact;
- **may have included**: per agency, dataset, kind of read and query, the reads of those datasets that
  returned rows (pages, exports, CKAN, the change feed) whose filters and row scope the person's records
  satisfy as they are now. "May": the audit keeps no row keys (a page is one of many; an export may stop
  early), and a record may have had other values when read. A search (`q`) over a dataset with personal
  columns is not kept in the audit, so such a read counts as may;
- **why**: each of those agencies' grant on the dataset and the purpose and legal basis of the access
  request it was approved on, when it was.

Making the report is itself audited (`subject_report`, one row per dataset looked in, the ID as its
pseudonym): the next report on the same person names it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog
from gateway import tables
from gateway.policy import pseudonym
from gateway.records import QueryError, coerce
from warehouse.shared import shared_views
from warehouse.store import utc

PERSONAL_ID = re.compile(r"^[0-9]{12}$")
BULK = ("records", "changes", "ckan_datastore_search")  # and export_<format>_done: the rows an export sent


class DisclosureError(ValueError):
    """The report cannot be made as asked (a malformed ID); the message says why."""


def subject_columns(catalog: Catalog) -> dict[str, list[str]]:
    """The shared columns holding a person's ID, by dataset."""
    found: dict[str, list[str]] = {}
    for name, shared in catalog.sharing.items():
        checked = {c.column for c in catalog.datasets[name].checks if getattr(c, "rule", None) == "cccd"}
        columns = [c for c in shared.columns if c in checked or c == "personal_id" or c.endswith("_personal_id")]
        if columns:
            found[name] = columns
    return found


def _admits(query: dict[str, Any], record: dict[str, Any], spec: Any, personal: set[str], key: bytes) -> bool:
    """Whether `record` (its current shared values) satisfies an audited query's filters, search and scope; True
    when the audit cannot tell (a range on a pseudonymised column, a search over personal columns)."""
    for column, values in (query.get("scope") or {}).items():
        if record.get(column) not in values:
            return False
    for column, op, shown in query.get("filters") or []:
        if column not in record:
            continue
        value = record[column]
        if column in personal:
            if op not in ("eq", "in"):
                continue  # the audit holds pseudonyms: no order to compare
            value = pseudonym(value, key)
            wanted = shown if isinstance(shown, list) else [shown]
        else:
            kind = spec.columns[column].type
            try:
                wanted = [coerce(kind, v, "audit") for v in (shown if isinstance(shown, list) else [shown])]
            except QueryError:
                continue
        if value is None:
            return False
        if op in ("eq", "in") and value not in wanted:
            return False
        compare = {"gte": value.__ge__, "gt": value.__gt__, "lte": value.__le__, "lt": value.__lt__}.get(op)
        if compare is not None and compare(wanted[0]) is not True:
            return False
    q = query.get("q")
    if q and not str(q).startswith("<"):  # a plain search, over the dataset's string columns
        return any(isinstance(v, str) and str(q).lower() in v.lower() for v in record.values())
    return True


def disclosures(engine: sa.Engine, catalog: Catalog, key: bytes, personal_id: str,
                since: datetime | None = None) -> dict[str, Any]:
    """The disclosure report of one person (see the module's docstring) as a dict: `records`, `named`,
    `may_have`, `grants`.

    Raises:
        DisclosureError: `personal_id` is not 12 digits.
    """
    if not PERSONAL_ID.match(personal_id or ""):
        raise DisclosureError("a personal ID (CCCD) is 12 digits, e.g. 037203001234")
    columns = subject_columns(catalog)
    views = shared_views(catalog)
    ps = pseudonym(personal_id, key)
    records: dict[str, list[dict[str, Any]]] = {}
    a = tables.audit.c
    with engine.connect() as conn:
        for name, held in columns.items():
            view = views[name]
            found = conn.execute(sa.select(*(view.c[c] for c in catalog.sharing[name].columns))
                                 .where(sa.or_(*(view.c[c] == personal_id for c in held)))).mappings().all()
            if found:
                records[name] = [dict(r) for r in found]
        within = [a.dataset.in_(list(columns))] + ([a.recorded_at >= since] if since is not None else [])
        named = conn.execute(sa.select(a.recorded_at, a.agency_id, a.dataset, a.action, a.rows_returned, a.status)
                             .where(*within, a.query.contains(ps, autoescape=True))
                             .order_by(a.recorded_at, a.chain, a.seq)).mappings().all()
        groups = conn.execute(sa.select(a.agency_id, a.dataset, a.action, a.query, sa.func.count().label("reads"),
                                        sa.func.min(a.recorded_at).label("first"),
                                        sa.func.max(a.recorded_at).label("last"),
                                        sa.func.sum(a.rows_returned).label("rows"))
                              .where(a.dataset.in_(list(records)), *within[1:], a.status == 200,
                                     a.rows_returned > 0, sa.or_(a.action.in_(BULK), a.action.like("export_%_done")),
                                     sa.not_(a.query.contains(ps, autoescape=True)))
                              .group_by(a.agency_id, a.dataset, a.action, a.query)).mappings().all()
    may_have = []
    for group in groups:
        query = json.loads(group["query"])
        spec, personal = catalog.datasets[group["dataset"]], set(catalog.sharing[group["dataset"]].personal)
        if any(_admits(query, record, spec, personal, key) for record in records[group["dataset"]]):
            may_have.append({"agency_id": group["agency_id"], "dataset": group["dataset"], "action": group["action"],
                             "query": query, "reads": int(group["reads"]), "rows": int(group["rows"] or 0),
                             "first": utc(group["first"]), "last": utc(group["last"])})
    may_have.sort(key=lambda m: (m["agency_id"], m["dataset"], m["first"]))
    agencies = sorted({r["agency_id"] for r in named} | {m["agency_id"] for m in may_have})
    return {"personal_id": personal_id, "since": since, "records": records,
            "named": [{**dict(r), "recorded_at": utc(r["recorded_at"])} for r in named],
            "may_have": may_have, "grants": _grants(engine, agencies, list(columns))}


def _grants(engine: sa.Engine, agencies: Iterable[str], datasets: list[str]) -> list[dict[str, Any]]:
    """Each agency's grant on the datasets (now), with the access request it was approved on."""
    g, r = tables.grant.c, tables.access_request.c
    with engine.connect() as conn:
        grants = conn.execute(sa.select(g.agency_id, g.dataset, g.personal_columns, g.row_scope, g.granted_at,
                                        g.expires_at, r.purpose, r.legal_basis, r.request_id)
                              .select_from(tables.grant.outerjoin(tables.access_request, g.request_id == r.request_id))
                              .where(g.agency_id.in_(list(agencies)), g.dataset.in_(datasets))
                              .order_by(g.agency_id, g.dataset)).mappings().all()
    return [{"agency_id": x["agency_id"], "dataset": x["dataset"], "personal": json.loads(x["personal_columns"]),
             "scope": json.loads(x["row_scope"]) if x["row_scope"] else None, "granted_at": utc(x["granted_at"]),
             "expires_at": utc(x["expires_at"]), "request_id": x["request_id"], "purpose": x["purpose"],
             "legal_basis": x["legal_basis"]} for x in grants]


def record_report(engine: sa.Engine, catalog: Catalog, key: bytes, personal_id: str, by: str,
                  found: int) -> None:
    """The report in the audit: one `subject_report` row per dataset looked in, by `province:<by>`."""
    from gateway.audit import AuditEntry, AuditLog

    log = AuditLog(engine)
    try:
        for name, held in subject_columns(catalog).items():
            log.record(AuditEntry(agency_id=f"province:{by}", dataset=name, action="subject_report",
                                  query={"filters": [[c, "eq", pseudonym(personal_id, key)] for c in held]},
                                  rows_returned=found, status=200))
    finally:
        log.close()

