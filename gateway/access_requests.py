"""Access requests: an agency asks for a restricted dataset, the province approves or denies it.

A data-sharing request names the dataset, the personal columns the agency needs in clear (the rest
stays masked or pseudonymised, as for any grant), the rows when it needs only some (a commune's
People's Committee: `scope: {"commune_code": ["14455"]}`, `gateway.agencies.Grant`), its purpose,
the legal basis when it has one, and until when it needs the data. The agency files it through the gateway
(`POST /api/v1/access-requests`, with its own credential) and follows it there (`GET`,
`DELETE` to withdraw a pending one); the province decides with `lgsp agencies requests`,
`lgsp agencies approve REQUEST [--personal C] [--until DATE] [--scope COLUMN=V,...]` (it may grant
fewer personal columns, fewer rows or a shorter time than asked, never more) and
`lgsp agencies deny REQUEST --note WHY`. An approval
makes the grant in the same transaction as the decision (`gateway_grant.request_id` names it; it
ends at `until`); every request and decision is in `gateway_audit` (action `access_request`,
`access_approved`, `access_denied`, `access_withdrawn`). The lgsp_freshness DAG tells the province of
each new request once (`notify_new`, the alert channels); `lgsp status` counts the pending ones. The agency is told
of the decision by an `access_request.decided` event, written in the decision's transaction (gateway.events).

Example:
    >>> requests = AccessRequests(engine, catalog)                                  # doctest: +SKIP
    >>> asked = requests.submit("so_y_te", "citizen", "Đối chiếu thẻ BHYT với dữ liệu dân cư",
    ...                         personal=["personal_id"], until=datetime(2027, 6, 30, tzinfo=timezone.utc))
    >>> requests.approve(asked["request_id"], by="ttdl", until=datetime(2027, 3, 31, tzinfo=timezone.utc))
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog
from gateway import events, tables
from gateway.agencies import AgencyRegistry, Grant, RegistryError, Scope, check_scope, grant_of, live_grant
from indicators.periods import VN_TZ
from warehouse.store import utc

STATUSES = ("pending", "approved", "denied", "withdrawn")
REQUEST_ID = r"^req_[0-9a-f]{12}$"
MIN_PURPOSE = 20  # characters: a purpose is a sentence, not "test"
EXPIRY_NOTICE_S = events.ENDING_NOTICE_S  # `lgsp status` names the grants that end within this


class RequestError(ValueError):
    """The request cannot be filed or decided as asked; the message says why and what to do."""

    status = 400


class UnknownRequest(LookupError):
    """No such access request (of this agency)."""

    status = 404


def _now() -> datetime:
    return datetime.now(timezone.utc)


def end_of(value: date | datetime | str | None) -> datetime | None:
    """When an access asked or granted `until` a day ends: a date is the end of that day in Vietnam (2027-06-30 ->
    2027-07-01 00:00 +07); a time without a zone is UTC. A string is read as either (ValueError if neither)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value.strip())
        except ValueError:
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is neither a date (2027-06-30) nor a time (2027-06-30T17:00+07:00)") \
                    from None
    if not isinstance(value, datetime):
        return datetime.combine(value + timedelta(days=1), time(0), VN_TZ).astimezone(timezone.utc)
    return utc(value)



def _scope_json(scope: Scope) -> str | None:
    rows = Grant(scope=scope).scope_dict()
    return None if rows is None else json.dumps(rows, ensure_ascii=False)


def _shown(row: Any) -> dict[str, Any]:
    """A request as the API and the CLI show it."""
    r = row._mapping
    return {"request_id": r["request_id"], "agency_id": r["agency_id"], "dataset": r["dataset"],
            "personal": json.loads(r["personal_columns"]), "purpose": r["purpose"], "legal_basis": r["legal_basis"],
            "until": utc(r["until"]), "status": r["status"], "requested_at": utc(r["requested_at"]),
            "decided_at": utc(r["decided_at"]), "decided_by": r["decided_by"], "note": r["note"],
            "granted_personal": None if r["granted_columns"] is None else json.loads(r["granted_columns"]),
            "granted_until": utc(r["granted_until"]),
            "scope": json.loads(r["row_scope"]) if r["row_scope"] else None,
            "granted_scope": json.loads(r["granted_scope"]) if r["granted_scope"] else None,
            "daily_rows": r["daily_rows"]}


class AccessRequests:
    """Files, lists and decides access requests on the gateway's database."""

    def __init__(self, engine: sa.Engine, catalog: Catalog, audit: Any = None) -> None:
        self.engine = engine
        self.catalog = catalog
        self.registry = AgencyRegistry(engine, catalog)
        self.audit = audit  # the gateway's gateway.audit.AuditLog; None: this object's own, made on first use
        self._own_audit = audit is None

    def close(self) -> None:
        """Write what is queued for the audit and stop its writer (when this object made it)."""
        if self._own_audit and self.audit is not None:
            self.audit.close()
            self.audit = None

    def _audit(self, agency_id: str, dataset: str, action: str, query: dict[str, Any], status: int = 200) -> None:
        from gateway.audit import AuditEntry, AuditLog

        if self.audit is None:
            self.audit = AuditLog(self.engine)
        self.audit.record(AuditEntry(agency_id=agency_id, dataset=dataset, action=action, query=query,
                                     rows_returned=None, status=status))

    def _check(self, dataset: str, personal: list[str]) -> None:
        shared = self.catalog.sharing.get(dataset)
        if shared is None:
            raise RequestError(f"'{dataset}' is not a shared dataset (GET /api/v1/datasets lists them)")
        unknown = sorted(set(personal) - set(shared.personal))
        if unknown:
            raise RequestError(f"{unknown} are not personal columns of '{dataset}' (its personal columns: "
                               f"{sorted(shared.personal)}); the other columns come with any grant")

    def submit(self, agency_id: str, dataset: str, purpose: str, personal: list[str] | None = None,
               until: date | datetime | None = None, legal_basis: str | None = None,
               scope: Mapping[str, Any] | None = None, daily_rows: int | None = None) -> dict[str, Any]:
        """File a request (status `pending`); RequestError when it cannot be (unknown dataset or column, a purpose
        too short, an end in the past, a scope that is not one (`check_scope`), already granted as asked, or the
        same dataset already pending). `scope`: only some rows are asked for (column -> values); `daily_rows`: how
        many rows a day the purpose needs (approved as the grant's, unless the province sets another)."""
        if daily_rows is not None and daily_rows < 1:
            raise RequestError(f"daily_rows {daily_rows}: say how many rows a day the purpose needs (1 or more)")
        personal = sorted(set(personal or []))
        self._check(dataset, personal)
        rows = self._scope(dataset, scope)
        if self.catalog.sharing[dataset].access == "open" and not personal:
            raise RequestError(f"'{dataset}' is open: anyone reads it without a grant (ask for a grant only to see "
                               "its personal columns in clear)")
        for name, text in (("purpose", purpose), ("legal_basis", legal_basis or "")):
            if any(ord(c) < 32 and c not in "\t\n\r" or ord(c) == 127 for c in text):
                raise RequestError(f"{name} holds control characters: send plain text")
        purpose = " ".join(purpose.split())
        if len(purpose) < MIN_PURPOSE:
            raise RequestError(f"say what the data is for (at least {MIN_PURPOSE} characters): the owner "
                               f"({self.catalog.sharing[dataset].owner}) decides on it")
        until = end_of(until)
        if until is not None and until <= _now():
            raise RequestError(f"until {until.isoformat(timespec='seconds')} is in the past")
        r, g = tables.access_request.c, tables.grant.c
        with self.engine.begin() as conn:
            pending = conn.execute(sa.select(r.request_id).where(r.agency_id == agency_id, r.dataset == dataset,
                                                                 r.status == "pending")).scalar()
            if pending:
                raise RequestError(f"request {pending} for '{dataset}' is still pending: wait for its decision or "
                                   f"withdraw it (DELETE /api/v1/access-requests/{pending})")
            held = conn.execute(sa.select(g.personal_columns, g.expires_at, g.row_scope).where(
                g.agency_id == agency_id, g.dataset == dataset, live_grant())).first()
            if held is not None and set(personal) <= set(json.loads(held.personal_columns)) and (
                    held.expires_at is None or (until is not None and utc(held.expires_at) >= until)) and \
                    grant_of(held.personal_columns, held.row_scope).covers(rows):
                raise RequestError(f"agency '{agency_id}' already holds '{dataset}' as asked"
                                   + (f" (until {utc(held.expires_at):%Y-%m-%d})" if held.expires_at else ""))
            request_id = f"req_{secrets.token_hex(6)}"
            try:
                with conn.begin_nested():
                    conn.execute(tables.access_request.insert().values(
                        request_id=request_id, agency_id=agency_id, dataset=dataset,
                        personal_columns=json.dumps(personal), purpose=purpose[:2000],
                        legal_basis=(legal_basis or "").strip()[:500] or None, until=until, status="pending",
                        requested_at=_now(), row_scope=_scope_json(rows), daily_rows=daily_rows))
            except sa.exc.IntegrityError:  # filed at the same moment as another: gateway_access_request_one_pending
                raise RequestError(f"a request for '{dataset}' by '{agency_id}' is already pending: GET "
                                   "/api/v1/access-requests shows it") from None
        self._audit(agency_id, dataset, "access_request", {"request_id": request_id, "personal": personal,
                                                           "until": until.isoformat() if until else None,
                                                           "scope": Grant(scope=rows).scope_dict()})
        return self.get(request_id)

    def get(self, request_id: str, agency_id: str | None = None) -> dict[str, Any]:
        """One request (of `agency_id` only, when given); UnknownRequest otherwise."""
        r = tables.access_request.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tables.access_request).where(r.request_id == request_id)).first()
        if row is None or (agency_id is not None and row.agency_id != agency_id):
            raise UnknownRequest(f"no access request '{request_id}'"
                                 + (" of this agency (GET /api/v1/access-requests lists them)" if agency_id else ""))
        return _shown(row)

    def listing(self, agency_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Requests, newest first: of one agency, in one status, or all."""
        r = tables.access_request.c
        query = sa.select(tables.access_request).order_by(r.requested_at.desc(), r.request_id)
        if agency_id is not None:
            query = query.where(r.agency_id == agency_id)
        if status is not None:
            query = query.where(r.status == status)
        with self.engine.connect() as conn:
            return [_shown(row) for row in conn.execute(query)]

    def _decide(self, conn: sa.Connection, request_id: str, status: str, by: str, note: str | None,
                **values: Any) -> dict[str, Any]:
        r = tables.access_request.c
        row = conn.execute(sa.select(tables.access_request).where(r.request_id == request_id)
                           .with_for_update()).first()
        if row is None:
            raise UnknownRequest(f"no access request '{request_id}' (lgsp agencies requests lists them)")
        if row.status != "pending":
            raise RequestError(f"request {request_id} is {row.status} already"
                               + (f" ({utc(row.decided_at):%Y-%m-%d %H:%M} UTC, by {row.decided_by})"
                                  if row.decided_at else ""))
        done = conn.execute(tables.access_request.update().where(r.request_id == request_id, r.status == "pending")
                            .values(status=status, decided_at=_now(), decided_by=by, note=note, **values))
        if done.rowcount != 1:  # decided meanwhile by another process (SQLite has no FOR UPDATE)
            raise RequestError(f"request {request_id} was decided meanwhile: lgsp agencies requests shows how")
        if status in ("approved", "denied"):  # the agency is told (gateway.events); a withdrawal is its own doing
            approved = status == "approved"
            events.record(conn, row.agency_id, row.dataset, events.DECIDED, {
                "dataset": row.dataset, "request_id": request_id, "status": status, "note": note,
                "personal": json.loads(values["granted_columns"]) if approved else None,
                "scope": json.loads(values["granted_scope"]) if approved and values["granted_scope"] else None,
                "until": values["granted_until"].isoformat(timespec="seconds")
                if approved and values["granted_until"] else None,
                "request": f"/api/v1/access-requests/{request_id}"})
        return _shown(row)

    def _scope(self, dataset: str, scope: Mapping[str, Any] | None) -> Scope:
        try:
            return check_scope(self.catalog, dataset, scope)
        except RegistryError as exc:
            raise RequestError(str(exc)) from None

    def approve(self, request_id: str, by: str, personal: list[str] | None = None,
                until: date | datetime | None = None, note: str | None = None,
                scope: Mapping[str, Any] | None = None, daily_rows: int | None = None) -> dict[str, Any]:
        """Approve a pending request and make its grant, in one transaction. `personal`, `until` and `scope` may
        narrow what was asked (fewer personal columns, an earlier end, fewer rows), never widen it; by default,
        as asked. `daily_rows`: the rows a day the purpose needs (`AgencyRegistry.grant`; default: as the agency
        said)."""
        asked = self.get(request_id)
        asked_rows = self._scope(asked["dataset"], asked["scope"])
        rows = asked_rows if scope is None else self._scope(asked["dataset"], scope)
        if not Grant(scope=asked_rows).covers(rows):
            raise RequestError(f"rows {Grant(scope=rows).describe_scope()} are more than asked "
                               f"({Grant(scope=asked_rows).describe_scope()}): an approval grants what was asked "
                               "or less")
        granted = asked["personal"] if personal is None else sorted(set(personal))
        wider = sorted(set(granted) - set(asked["personal"]))
        if wider:
            raise RequestError(f"{wider} were not asked for: an approval grants what was asked or less "
                               "(the agency can file another request)")
        ends = asked["until"] if until is None else end_of(until)
        if asked["until"] is not None and ends is not None and ends > asked["until"]:
            raise RequestError(f"until {ends:%Y-%m-%d} is later than asked ({asked['until']:%Y-%m-%d})")
        if ends is not None and ends <= _now():
            raise RequestError(f"until {ends.isoformat(timespec='seconds')} is in the past")
        try:
            with self.engine.begin() as conn:
                self._decide(conn, request_id, "approved", by, note, granted_columns=json.dumps(granted),
                             granted_until=ends, granted_scope=_scope_json(rows))
                self.registry.grant(asked["agency_id"], asked["dataset"], granted, ends, request_id, conn=conn,
                                    scope=Grant(scope=rows).scope_dict(),
                                    daily_rows=asked["daily_rows"] if daily_rows is None else daily_rows)
        except RegistryError as exc:
            raise RequestError(str(exc)) from None
        if rows:
            self.registry.index_scopes(asked["dataset"])
        self._audit(asked["agency_id"], asked["dataset"], "access_approved",
                    {"request_id": request_id, "by": by, "personal": granted,
                     "until": ends.isoformat() if ends else None, "scope": Grant(scope=rows).scope_dict()})
        return self.get(request_id)

    def deny(self, request_id: str, by: str, note: str) -> dict[str, Any]:
        """Deny a pending request; `note` says why (the agency reads it)."""
        if len(" ".join(note.split())) < 5:
            raise RequestError("say why the request is denied (--note): the agency reads it")
        with self.engine.begin() as conn:
            asked = self._decide(conn, request_id, "denied", by, note)
        self._audit(asked["agency_id"], asked["dataset"], "access_denied", {"request_id": request_id, "by": by})
        return self.get(request_id)

    def withdraw(self, request_id: str, agency_id: str) -> dict[str, Any]:
        """The agency withdraws its pending request."""
        self.get(request_id, agency_id)
        with self.engine.begin() as conn:
            asked = self._decide(conn, request_id, "withdrawn", agency_id, None)
        self._audit(agency_id, asked["dataset"], "access_withdrawn", {"request_id": request_id})
        return self.get(request_id)

    def ending_grants(self, within_s: float = EXPIRY_NOTICE_S, now: datetime | None = None) -> list[dict[str, Any]]:
        """Grants that end within `within_s` (not yet ended), soonest first: the agency may need to ask again."""
        now = now or _now()
        g = tables.grant.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(g.agency_id, g.dataset, g.expires_at, g.request_id).where(
                g.expires_at.isnot(None), g.expires_at > now, g.expires_at <= now + timedelta(seconds=within_s))
                .order_by(g.expires_at)).all()
        return [{"agency_id": r.agency_id, "dataset": r.dataset, "expires_at": utc(r.expires_at),
                 "request_id": r.request_id, "ends_in_s": (utc(r.expires_at) - now).total_seconds()}  # type: ignore
                for r in rows]

    def notify_new(self, send: Any) -> list[str]:
        """Tell the province of each pending request not told of yet (`send(Alert)`, lgsp.alerts), then mark it
        told: at least once, as the lgsp_freshness DAG runs it every 15 minutes (when every configured channel
        failed, the next run tries again). Returns the requests told of."""
        from lgsp.alerts import Alert, configured_channels

        r = tables.access_request.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.access_request).where(r.status == "pending", r.notified_at.is_(None))
                                .order_by(r.requested_at)).all()
        told = []
        for row in rows:
            asked = _shown(row)
            until = f"until {asked['until']:%Y-%m-%d %H:%M} UTC" if asked["until"] else "with no end"
            owner = self.catalog.sharing[asked["dataset"]].owner if asked["dataset"] in self.catalog.sharing else None
            clear = ", ".join(asked["personal"]) or "no personal column"
            delivered = send(Alert(kind="access_request", dag_id="lgsp_freshness", owner=owner, summary=(
                f"{asked['agency_id']} asks for {asked['dataset']} ({clear} in clear, {until}): {asked['purpose']}"
                + (f" [{asked['legal_basis']}]" if asked["legal_basis"] else "")
                + f"; decide: `lgsp agencies approve {asked['request_id']}` or `lgsp agencies deny "
                  f"{asked['request_id']} --note WHY`")[:1000]))
            if not delivered and configured_channels():
                continue
            with self.engine.begin() as conn:
                conn.execute(tables.access_request.update().where(r.request_id == asked["request_id"])
                             .values(notified_at=_now()))
            told.append(asked["request_id"])
        return told

    def pending_summary(self, now: datetime | None = None) -> dict[str, Any]:
        """How many requests wait for a decision, and since when the oldest has (`lgsp status`)."""
        r = tables.access_request.c
        with self.engine.connect() as conn:
            count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(r.requested_at))
                                         .where(r.status == "pending")).one()
        oldest = utc(oldest)
        return {"pending": int(count), "oldest_at": oldest,
                "oldest_age_s": None if oldest is None else ((now or _now()) - oldest).total_seconds()}
