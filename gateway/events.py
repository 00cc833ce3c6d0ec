"""What an agency is told of its own access: a request decided, a grant made, changed, revoked, ending or ended.

An agency that asked for a dataset (gateway.access_requests) used to learn the decision by asking
again and again; a mirror learnt that its grant was gone from a 403. Each of these is now an event of
the agency, written in the transaction that makes it (so none is lost, and none is told of what did
not happen) and kept in `gateway_agency_event`:

- `access_request.decided`: the province approved or denied one of the agency's requests (the grant as
  approved: personal columns in clear, rows, until when; or the note saying why not);
- `grant.changed`: a grant made (`change: granted`), changed (its columns, rows or end) or revoked;
- `grant.ending`: a grant ends within 14 days (told once per end), so the agency can ask again in time;
- `grant.ended`: a grant ended (its `expires_at` passed; told once, within a day of it), so a copy kept by
  the change feed knows why it is refused;
- `agency.disabled`, `agency.enabled`: the province stopped honouring the agency's credentials (with its
  note saying why), and honoured them again. The agency cannot read or be told while disabled: both come
  once it is enabled, in order, so it learns why its reads were refused;
- `credential.issued`, `credential.revoked`: an API key or OAuth2 client made or revoked in the agency's name
  (its id and kind, never a secret): a key the agency did not ask for is a key it should ask about;
- `dataset.schema_changed`: the columns of a dataset the agency is granted changed as agencies read them (a
  column added, removed, or its type, requirement, key, personal policy, filter or reference changed), so its
  reader can be changed before it breaks (`note_schema_changes`: when `lgsp serve` starts and in each
  `lgsp_notify` run).

The agency reads them with its own credential, `GET /api/v1/events?after=N` (the number of the last
event it has seen), or is told by an **access webhook** (`lgsp webhooks access AGENCY URL`, or
`POST /api/v1/webhooks {"events": "access", ...}`): one signed message per event, in order, at least
once (`webhook-id` `{webhook}_e{event}`, the same on a retry). An event names datasets, columns and
request numbers, never a record.

    {"type":"access_request.decided","timestamp":"2026-12-05T09:00:00+00:00","data":{"event":7,
     "dataset":"citizen","request_id":"req_1a2b3c4d5e6f","status":"approved","personal":["personal_id"],
     "scope":null,"until":"2027-03-31T17:00:00+00:00","note":null,
     "request":"https://lgsp.example/api/v1/access-requests/req_1a2b3c4d5e6f"}}
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from gateway import tables
from warehouse.store import utc

DECIDED = "access_request.decided"
GRANT_CHANGED = "grant.changed"
GRANT_ENDING = "grant.ending"
GRANT_ENDED = "grant.ended"
AGENCY_DISABLED = "agency.disabled"
AGENCY_ENABLED = "agency.enabled"
CREDENTIAL_ISSUED = "credential.issued"
CREDENTIAL_REVOKED = "credential.revoked"
SCHEMA_CHANGED = "dataset.schema_changed"
EVERY_DATASET = "*"  # the `dataset` of an event about the agency or a credential, not one dataset
ACCESS = "access"  # a webhook told of its agency's events (gateway.webhooks); the other kind: "dataset.changed"
ENDING_NOTICE_S = 14 * 86400  # a grant ending within this is told of (and named by `lgsp status`)
PAGE = 100  # events a read returns at most


def when(value: datetime | None) -> str | None:
    stamp = utc(value)
    return stamp.isoformat(timespec="seconds") if stamp else None


def record(conn: sa.Connection, agency_id: str, dataset: str, kind: str, data: dict[str, Any],
           once: str | None = None) -> bool:
    """Add an event of `agency_id` in `conn`'s transaction; `once`: a key it is recorded under at most once
    (False when it already was)."""
    row = {"agency_id": agency_id, "dataset": dataset, "type": kind, "created_at": datetime.now(timezone.utc),
           "data": json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str), "once": once}
    if once is None:
        conn.execute(tables.agency_event.insert().values(**row))
        return True
    e = tables.agency_event.c
    if conn.execute(sa.select(e.event_seq).where(e.once == once)).first() is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(tables.agency_event.insert().values(**row))
    except sa.exc.IntegrityError:  # recorded at the same moment by another process
        return False
    return True


def said(event: dict[str, Any]) -> str:
    """What an event (as `shown`) is about, in a few words: `citizen (approved)`, `6959fdc571cb (api_key)`."""
    data, kind = event["data"], event["type"]
    if kind.startswith("credential."):
        return f"{data['credential']} ({data['kind']})"
    if kind == AGENCY_DISABLED:
        return f"({data['note']})"
    if kind == AGENCY_ENABLED:
        return f"(disabled since {data['disabled_since']})"
    if kind == SCHEMA_CHANGED:
        parts = [f"{sign}{', '.join(c if isinstance(c, str) else c['name'] for c in data[part])}"
                 for sign, part in (("+", "added"), ("-", "removed"), ("~", "changed")) if data[part]]
        return f"{data['dataset']} (columns {'; '.join(parts)})"
    return f"{data['dataset']} ({data.get('status') or data.get('change') or 'ends ' + str(data.get('expires_at'))})"


def grant_data(dataset: str, personal: list[str], scope: dict[str, list[Any]] | None,
               expires_at: datetime | None, request_id: str | None, daily_rows: int | None = None) -> dict[str, Any]:
    """A grant as an event tells of it (`daily_rows` only when the grant sets it)."""
    return {"dataset": dataset, "personal": sorted(personal), "scope": scope, "expires_at": when(expires_at),
            "request_id": request_id, **({"daily_rows": daily_rows} if daily_rows is not None else {})}


def newest(conn: sa.Connection, agency_id: str) -> int:
    """The number of the agency's latest event (0: none yet)."""
    e = tables.agency_event.c
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(e.event_seq), 0))
                            .where(e.agency_id == agency_id)).scalar() or 0)


def shown(row: Any, public_url: str = "") -> dict[str, Any]:
    """An event as the API and a webhook show it: {type, timestamp, data} (Standard Webhooks' payload), its
    number in `data.event`, links made absolute with the gateway's public address."""
    data = json.loads(row.data)
    for name in ("request", "grants", "ask", "schema"):
        if isinstance(data.get(name), str) and data[name].startswith("/"):
            data[name] = public_url.rstrip("/") + data[name]
    return {"type": row.type, "timestamp": when(row.created_at), "data": {"event": int(row.event_seq), **data}}


def after(engine: sa.Engine, agency_id: str, seq: int = 0, limit: int = PAGE,
          public_url: str = "") -> list[dict[str, Any]]:
    """The agency's events numbered above `seq`, oldest first, at most `limit`."""
    e = tables.agency_event.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tables.agency_event).where(e.agency_id == agency_id, e.event_seq > seq)
                            .order_by(e.event_seq).limit(limit)).all()
    return [shown(row, public_url) for row in rows]


def latest(engine: sa.Engine, agency_id: str, limit: int = 10, public_url: str = "") -> list[dict[str, Any]]:
    """The agency's `limit` latest events, newest first."""
    e = tables.agency_event.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tables.agency_event).where(e.agency_id == agency_id)
                            .order_by(e.event_seq.desc()).limit(limit)).all()
    return [shown(row, public_url) for row in rows]


def note_ending_grants(engine: sa.Engine, within_s: float = ENDING_NOTICE_S,
                       now: datetime | None = None) -> list[dict[str, Any]]:
    """Record a `grant.ending` event for each grant that ends within `within_s` and has not been told of
    (once per grant and end: a grant extended and ending again is told again), and a `grant.ended` one for each
    that ended within the last day. The `lgsp_notify` DAG runs it before each dispatch. Returns the grants told
    of now (with `type`)."""
    now = now or datetime.now(timezone.utc)
    g = tables.grant.c
    told = []
    with engine.begin() as conn:
        rows = conn.execute(sa.select(tables.grant).where(
            g.expires_at.isnot(None), g.expires_at > now - timedelta(days=1),
            g.expires_at <= now + timedelta(seconds=within_s)).order_by(g.expires_at)).mappings().all()
        for row in rows:
            ends = utc(row["expires_at"])
            kind = GRANT_ENDED if ends <= now else GRANT_ENDING  # type: ignore[operator]
            data = {**grant_data(row["dataset"], json.loads(row["personal_columns"]),
                                 json.loads(row["row_scope"]) if row["row_scope"] else None, ends, row["request_id"],
                                 row["daily_rows"]),
                    "ask": "/api/v1/access-requests"}
            if kind == GRANT_ENDING:
                data["ends_in_days"] = round((ends - now).total_seconds() / 86400, 1)  # type: ignore[operator]
            once = f"{kind}/{row['agency_id']}/{row['dataset']}/{when(ends)}"
            if record(conn, row["agency_id"], row["dataset"], kind, data, once):
                told.append({"agency_id": row["agency_id"], "type": kind, **data})
    return told


def contract(catalog: Any, name: str) -> dict[str, dict[str, Any]]:
    """A shared dataset's columns as agencies read them, what a reader relies on (descriptions left out): column ->
    {type, required, key, personal policy, filterable, references}."""
    dataset, shared = catalog.datasets[name], catalog.sharing[name]
    return {c: {"type": dataset.columns[c].type, "required": bool(dataset.columns[c].required),
                "key": c in dataset.key, "personal": shared.personal.get(c), "filterable": c in shared.filterable,
                "references": dataset.columns[c].references.to if dataset.columns[c].references else None}
            for c in shared.columns}


def version(columns: dict[str, Any]) -> str:
    """A contract's version: the first 16 hex digits of its SHA-256 (the same columns, the same version)."""
    return hashlib.sha256(json.dumps(columns, sort_keys=True).encode()).hexdigest()[:16]


def compared(before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What changed between two contracts: columns added (as they are now), removed (names), changed (what each
    property was and is)."""
    changed = []
    for column in (c for c in now if c in before and before[c] != now[c]):
        keys = [k for k in now[column] if before[column].get(k) != now[column][k]]
        changed.append({"name": column, "from": {k: before[column].get(k) for k in keys},
                        "to": {k: now[column][k] for k in keys}})
    return {"added": [{"name": c, **now[c]} for c in now if c not in before],
            "removed": [c for c in before if c not in now], "changed": changed}


def note_schema_changes(engine: sa.Engine, catalog: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """Compare each shared dataset's contract with the one last recorded (`gateway_dataset_schema`); for each that
    changed, record a `dataset.schema_changed` event for every agency with a live grant on it, then the new
    contract. A dataset seen for the first time is recorded and nobody told. Once per agency and change however
    many processes notice it at once (`lgsp serve` starting, the `lgsp_notify` DAG). Returns the events recorded
    (with `agency_id`)."""
    from gateway.agencies import live_grant

    now = now or datetime.now(timezone.utc)
    s, g = tables.dataset_schema, tables.grant.c
    told = []
    with engine.begin() as conn:
        known = {r.dataset: r for r in conn.execute(sa.select(tables.dataset_schema))}
        for name in sorted(catalog.sharing):
            current = contract(catalog, name)
            digest, row = version(current), known.get(name)
            if row is not None and row.digest == digest:
                continue
            values = {"digest": digest, "columns": json.dumps(current, sort_keys=True), "recorded_at": now}
            if row is None:  # first sight: what agencies read from now on
                try:
                    with conn.begin_nested():
                        conn.execute(s.insert().values(dataset=name, **values))
                except sa.exc.IntegrityError:  # recorded at the same moment by another process
                    pass
                continue
            data = {"dataset": name, **compared(json.loads(row.columns), current), "since": when(row.recorded_at),
                    "schema": f"/api/v1/datasets/{name}"}
            agencies = conn.execute(sa.select(g.agency_id).where(g.dataset == name, live_grant(now))
                                    .distinct().order_by(g.agency_id)).scalars().all()
            for agency_id in agencies:
                if record(conn, agency_id, name, SCHEMA_CHANGED, data, f"{SCHEMA_CHANGED}/{agency_id}/{name}/"
                                                                       f"{row.digest}-{digest}"):
                    told.append({"agency_id": agency_id, "type": SCHEMA_CHANGED, **data})
            conn.execute(s.update().where(s.c.dataset == name).values(**values))
    return told
