"""Who received a person's data through the gateway: the disclosure report (`lgsp audit subject ID`).

A person may ask the province to whom their data was provided, when and for what purpose (the personal
data protection law, Law 91/2025/QH15, in force since 2026-01-01, as Decree 13/2023 before it). Every read
of the gateway is a row of the hash-chained audit (gateway.audit): who, which dataset, the query (a value
asked of a personal column kept as its keyed pseudonym), the rows returned. From it, the shared views,
the core tables and the quarantine, for a 12-digit personal ID:

- **records**: where the person is in the shared datasets now: each dataset with a shared column holding
  a personal ID (a column the `cccd` rule checks, or named `*personal_id`: `citizen.personal_id`,
  `land_parcel.holder_personal_id`);
- **earlier**: where they were: the versions of their records the tables held and no longer hold, with
  when (`warehouse.versions`: replayed from the lake's files and the change log; a commune they moved
  from, a parcel they sold);
- **named**: the reads that named the person (a live lookup, a filter on the ID, a CKAN filter), refused
  ones too: the audit holds the ID's pseudonym, so these are exact;
- **may have included**: per agency, dataset, kind of read and query, the reads of those datasets that
  returned rows (pages, exports, CKAN, the change feed) whose filters and row scope the version of the
  person's records held when the read was made satisfies. "May": the audit keeps no row keys (a page is
  one of many; an export may stop early). A search (`q`) over a dataset with personal columns is not
  kept in the audit, so such a read counts as may;
- **why**: each of those agencies' grant on the dataset and the purpose and legal basis of the access
  request it was approved on, when it was;
- **held**: what lgsp holds of the person that no agency may read: the records of a dataset that is not
  shared (a marriage names both spouses in `civil_status_event`; `civil_servant`), or whose column naming
  them is left out of its shared view (`held_columns`), each with its key and the columns naming them;
- **quarantined**: rows naming them that lgsp's checks rejected (`lgsp_quarantine`, open or closed: kept
  until the source corrects them, never shared), with the rule and reason. A replayed row is the record it
  became.

Making the report is itself audited (`subject_report`, one row per dataset looked in, the ID as its
pseudonym): the next report on the same person names it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog, DatasetSpec
from gateway import tables
from gateway.policy import pseudonym
from gateway.records import QueryError, coerce
from warehouse.lake import Lake
from schemas.sql import core_table
from warehouse.shared import shared_views
from warehouse.store import utc
from warehouse.tables import system_tables
from warehouse.versions import Held, Versions, held_versions

PERSONAL_ID = re.compile(r"^[0-9]{12}$")
BULK = ("records", "changes", "ckan_datastore_search")  # and export_<format>_done: the rows an export sent
RECORD_READS = ("record_history", "record_history_received")
"""`lgsp record` by a province officer (`record_engineer_read`): named in the report whatever the dataset, shared
or not (a civil-status event shows both spouses' IDs, a civil servant's record theirs)."""


class DisclosureError(ValueError):
    """The report cannot be made as asked (a malformed ID); the message says why."""


def subject_columns(catalog: Catalog) -> dict[str, list[str]]:
    """The shared columns holding a person's ID, by dataset."""
    found: dict[str, list[str]] = {}
    for name, shared in catalog.sharing.items():
        columns = personal_id_columns(catalog.datasets[name], shared.columns)
        if columns:
            found[name] = columns
    return found


def held_columns(catalog: Catalog) -> dict[str, list[str]]:
    """The columns holding a person's ID that no agency may read, by dataset: every such column of a dataset that
    is not shared, and those its shared view leaves out."""
    found: dict[str, list[str]] = {}
    for name, spec in catalog.datasets.items():
        shared = catalog.sharing.get(name)
        columns = [c for c in personal_id_columns(spec, spec.columns) if shared is None or c not in shared.columns]
        if columns:
            found[name] = columns
    return found


def looked_in(catalog: Catalog) -> dict[str, list[str]]:
    """Every dataset the report looks in, with the columns it looks at: shared or not."""
    found = {name: list(columns) for name, columns in subject_columns(catalog).items()}
    for name, columns in held_columns(catalog).items():
        found.setdefault(name, []).extend(columns)
    return found


def personal_id_columns(spec: DatasetSpec, columns: Iterable[str]) -> list[str]:
    """Those of `columns` holding a person's ID: checked by the `cccd` rule, or named `personal_id` or
    `*_personal_id`."""
    checked = {c.column for c in spec.checks if getattr(c, "rule", None) == "cccd"}
    return [c for c in columns if c in checked or c == "personal_id" or c.endswith("_personal_id")]


def record_engineer_read(engine: sa.Engine, spec: DatasetSpec, key: bytes, shown: dict[str, Any], by: str,
                         action: str, rows: int) -> bool:
    """A province officer's read of one record with its history (`lgsp record`) in the audit, as
    `province:<by>`: its key (pseudonymised where it is a person's ID) and the pseudonym of every person's ID
    the read showed (a parcel's holders, then and now), so each of them finds it among the reads that named
    them. False (nothing written) when `shown` holds no person's ID."""
    from gateway.audit import AuditEntry, AuditLog

    personal = personal_id_columns(spec, spec.columns)
    ids = sorted({pseudonym(str(v), key) for c in personal for v in shown.get(c, ()) if v is not None})
    if not ids:
        return False
    from gateway.tables import create_gateway_tables

    filters = [[c, "eq", pseudonym(str(v), key) if c in personal else v] for c, v in shown["_key"].items()]
    create_gateway_tables(engine)
    log = AuditLog(engine)
    try:
        log.record(AuditEntry(agency_id=f"province:{by}", dataset=spec.name, action=action,
                              query={"filters": filters, "shown": ids}, rows_returned=rows, status=200))
    finally:
        log.close()
    return True


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
                since: datetime | None = None, lake: Lake | None = None) -> dict[str, Any]:
    """The disclosure report of one person (see the module's docstring) as a dict: `records` (now), `earlier`
    (versions no longer held, with when), `known_since` (per dataset, when the lake's files begin, if its
    older ones were pruned), `named`, `may_have`, `grants`, `held` (records no agency may read) and
    `quarantined` (rows rejected by the checks). Without `lake`, records are judged as they are now.

    Raises:
        DisclosureError: `personal_id` is not 12 digits.
    """
    if not PERSONAL_ID.match(personal_id or ""):
        raise DisclosureError("a personal ID (CCCD) is 12 digits, e.g. 037203001234")
    columns = subject_columns(catalog)
    views = shared_views(catalog)
    ps = pseudonym(personal_id, key)
    records: dict[str, list[dict[str, Any]]] = {}
    versions: dict[str, list[Held]] = {}
    known: dict[str, date] = {}
    a = tables.audit.c
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        existing = set(inspector.get_table_names()) | set(inspector.get_view_names())
        for name, held in columns.items():
            view, shared = views[name], catalog.sharing[name].columns
            if view.name not in existing:  # never published: its dataset was never loaded here
                versions[name] = []
                continue
            lineage = [view.c._batch_id] if "_batch_id" in view.c else []
            found = [dict(r) for r in conn.execute(sa.select(*(view.c[c] for c in shared), *lineage).where(
                sa.or_(*(view.c[c] == personal_id for c in held)))).mappings()]
            spec = catalog.datasets[name]
            timeline = (held_versions(engine, spec, lake, held, personal_id, found)
                        if lake is not None and all(k in shared for k in spec.key) else Versions())
            ours = [dataclasses.replace(h, values={c: h.values.get(c) for c in shared}) for h in timeline.held
                    if any(h.values.get(c) == personal_id for c in held)]
            versions[name] = ours or [Held((), {c: r[c] for c in shared}, None, None, "") for r in found]
            if found:
                records[name] = [{c: r[c] for c in shared} for r in found]
            if timeline.known_since is not None:
                known[name] = timeline.known_since
        held_only = _held(conn, catalog, personal_id, existing)
        quarantined = _quarantined(conn, personal_id, existing)
        within = [sa.or_(a.dataset.in_(list(looked_in(catalog))), a.action.in_(RECORD_READS))] + (
            [a.recorded_at >= since] if since is not None else [])
        named = _one_per_report(conn.execute(
            sa.select(a.recorded_at, a.agency_id, a.dataset, a.action, a.rows_returned, a.status, a.chain, a.seq)
            .where(*within, a.query.contains(ps, autoescape=True)).order_by(a.recorded_at, a.chain, a.seq)).mappings())
        bulk = [a.status == 200, a.rows_returned > 0, sa.or_(a.action.in_(BULK), a.action.like("export_%_done")),
                sa.not_(a.query.contains(ps, autoescape=True))]
        may_have = []
        for name, held in versions.items():
            if held:
                may_have += _reads_of(conn, catalog, key, name, held, [*within[1:], *bulk])
    may_have.sort(key=lambda m: (m["agency_id"], m["dataset"], m["first"]))
    agencies = sorted({r["agency_id"] for r in named} | {m["agency_id"] for m in may_have})
    earlier = {name: [{"values": h.values, "since": h.since, "until": h.until} for h in held if h.until is not None]
               for name, held in versions.items()}
    return {"personal_id": personal_id, "since": since, "records": records,
            "earlier": {name: held for name, held in earlier.items() if held}, "known_since": known,
            "named": named,
            "may_have": may_have, "grants": _grants(engine, agencies, list(columns)), "held": held_only,
            "quarantined": quarantined}


def _one_per_report(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """The reads that named the person, each with `datasets`; an earlier report's rows (`subject_report`, one per
    dataset it looked in, written one after another) as one entry, its `dataset` "*"."""
    named: list[dict[str, Any]] = []
    last: tuple[int, int] | None = None
    for row in rows:
        entry = {k: row[k] for k in ("recorded_at", "agency_id", "dataset", "action", "rows_returned", "status")}
        entry["recorded_at"], entry["datasets"] = utc(row["recorded_at"]), [row["dataset"]]
        before = named[-1] if named else None
        if (before is not None and last == (row["chain"], row["seq"] - 1) and row["action"] == "subject_report"
                and (before["action"], before["agency_id"]) == ("subject_report", row["agency_id"])):
            before["datasets"].append(row["dataset"])
            before["dataset"] = "*"
        else:
            named.append(entry)
        last = (row["chain"], row["seq"])
    return named


def _held(conn: sa.Connection, catalog: Catalog, personal_id: str,
          existing: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, the records naming the person in a column no agency may read (`held_columns`): each one's
    key and the columns naming them, in key order; every version of a history dataset's record counts.
    `existing`: the store's tables and views."""
    metadata = sa.MetaData()
    found: dict[str, list[dict[str, Any]]] = {}
    for name, held in held_columns(catalog).items():
        spec = catalog.datasets[name]
        if spec.table_name not in existing:  # never loaded
            continue
        table = core_table(spec, metadata)
        keys = [table.c[k] for k in spec.key]
        entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in conn.execute(sa.select(*keys, *(table.c[c] for c in held)).distinct()
                                .where(sa.or_(*(table.c[c] == personal_id for c in held))).order_by(*keys)).mappings():
            entry = entries.setdefault(tuple(row[k] for k in spec.key), {"key": {k: row[k] for k in spec.key},
                                                                           "as": []})
            entry["as"] += [c for c in held if row[c] == personal_id and c not in entry["as"]]
        if entries:
            found[name] = list(entries.values())
    return found


def _named_in(value: Any, personal_id: str) -> bool:
    """Whether a quarantined payload (a record as received, maybe nested) holds the ID as a value."""
    if isinstance(value, dict):
        return any(_named_in(v, personal_id) for v in value.values())
    if isinstance(value, list):
        return any(_named_in(v, personal_id) for v in value)
    return isinstance(value, str) and value.strip() == personal_id


def _quarantined(conn: sa.Connection, personal_id: str, existing: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, the quarantined rows (open or closed) whose payload holds the ID: the rule that rejected
    each, why, its record's key, its state and when. `existing`: the store's tables and views."""
    q = system_tables(sa.MetaData())["lgsp_quarantine"]
    if q.name not in existing:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    for row in conn.execute(sa.select(q.c.dataset, q.c.quarantine_id, q.c.rule, q.c.reason, q.c.record_key,
                                      q.c.status, q.c.quarantined_at, q.c.payload)
                            .where(q.c.payload.contains(personal_id), q.c.status != "replayed")
                            .order_by(q.c.dataset, q.c.quarantined_at, q.c.quarantine_id)).mappings():
        if _named_in(json.loads(row["payload"]), personal_id):
            found.setdefault(row["dataset"], []).append({
                "quarantine_id": row["quarantine_id"], "rule": row["rule"], "reason": row["reason"],
                "record_key": row["record_key"], "status": row["status"],
                "quarantined_at": utc(row["quarantined_at"])})
    return found


def _reads_of(conn: sa.Connection, catalog: Catalog, key: bytes, name: str, held: list[Held],
              where: list[Any]) -> list[dict[str, Any]]:
    """The bulk reads of dataset `name` that may have included one of the versions `held`: per agency, kind of
    read and query, those made while a version its filters and row scope admit was held.

    One query: the reads grouped by query and by the spans between the versions' edges (each span lies wholly
    within or wholly outside each version's time).
    """
    a = tables.audit.c
    edges = sorted({t for h in held for t in (h.since, h.until) if t is not None})
    span = sa.case(*((a.recorded_at < t, i) for i, t in enumerate(edges)), else_=len(edges)) if edges else sa.literal(0)
    reads = sa.select(a.agency_id, a.action, a.query, a.recorded_at, a.rows_returned, span.label("span")).where(
        a.dataset == name, *where).subquery()
    r = reads.c
    spec, personal = catalog.datasets[name], set(catalog.sharing[name].personal)
    admitted: dict[str, list[Held]] = {}
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in conn.execute(sa.select(r.agency_id, r.action, r.query, r.span, sa.func.count().label("reads"),
                                      sa.func.min(r.recorded_at).label("first"),
                                      sa.func.max(r.recorded_at).label("last"),
                                      sa.func.sum(r.rows_returned).label("rows"))
                            .group_by(r.agency_id, r.action, r.query, r.span)).mappings():
        if row["query"] not in admitted:
            query = json.loads(row["query"])
            admitted[row["query"]] = [h for h in held if _admits(query, h.values, spec, personal, key)]
        low = edges[row["span"] - 1] if row["span"] > 0 else None
        high = edges[row["span"]] if row["span"] < len(edges) else None
        if not any((h.since is None or (low is not None and h.since <= low))
                   and (h.until is None or (high is not None and high <= h.until)) for h in admitted[row["query"]]):
            continue
        first, last = utc(row["first"]), utc(row["last"])
        entry = found.setdefault((row["agency_id"], row["action"], row["query"]), {
            "agency_id": row["agency_id"], "dataset": name, "action": row["action"], "query": json.loads(row["query"]),
            "reads": 0, "rows": 0, "first": first, "last": last})
        entry["reads"] += int(row["reads"])
        entry["rows"] += int(row["rows"] or 0)
        entry["first"], entry["last"] = min(entry["first"], first), max(entry["last"], last)
    return list(found.values())


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


def records_shown(report: dict[str, Any]) -> int:
    """How many of the person's records a report shows: in the shared datasets and held by lgsp alone."""
    return sum(len(r) for r in report["records"].values()) + sum(len(r) for r in report["held"].values())


def record_report(engine: sa.Engine, catalog: Catalog, key: bytes, personal_id: str, by: str,
                  found: int) -> None:
    """The report in the audit: one `subject_report` row per dataset looked in, by `province:<by>`."""
    from gateway.audit import AuditEntry, AuditLog

    log = AuditLog(engine)
    try:
        for name, held in looked_in(catalog).items():
            log.record(AuditEntry(agency_id=f"province:{by}", dataset=name, action="subject_report",
                                  query={"filters": [[c, "eq", pseudonym(personal_id, key)] for c in held]},
                                  rows_returned=found, status=200))
    finally:
        log.close()

