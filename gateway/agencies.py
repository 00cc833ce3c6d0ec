"""The agency registry: agencies, their API keys and OAuth2 clients (hashed), tokens and grants.

An API key is shown once, when issued: `lgsp_<credential id>_<secret>`; only the
SHA-256 of the whole key is stored. An OAuth2 client (client credentials grant) is a
client id and a secret, exchanged at `POST /oauth/token` for a bearer token that
expires (`LGSP_GATEWAY_TOKEN_TTL_S`); tokens are stored hashed too.

Example:
    >>> registry = AgencyRegistry(engine, catalog)                      # doctest: +SKIP
    >>> registry.add_agency("so_y_te", "Sở Y tế (Department of Health)")
    >>> key = registry.issue_api_key("so_y_te")                         # shown once
    >>> registry.grant("so_y_te", "citizen", personal=["personal_id"])
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog
from gateway import events, tables
from warehouse.store import utc

AGENCY_ID = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
SCOPE_TYPES = ("string", "integer", "boolean")  # a scope names values exactly: no ranges, no instants
MAX_SCOPE_VALUES = 1000
Scope = tuple[tuple[str, tuple[Any, ...]], ...]  # ((column, (value, ...)), ...), by column name


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says what and what to do."""


@dataclass(frozen=True)
class Grant:
    """What an agency may read of one dataset: the personal columns it sees in clear, and which rows.

    `scope` limits the rows: a row is read only if each scope column holds one of the column's values (a
    commune's People's Committee reads its own commune's residents: `(("commune_code", ("14455",)),)`).
    Empty: every row.
    """

    personal: frozenset[str] = frozenset()
    scope: Scope = ()

    def admits(self, record: Mapping[str, Any]) -> bool:
        """Whether a record (its scope columns' plain values) is within the scope."""
        return all(record.get(column) in values for column, values in self.scope)

    def scope_dict(self) -> dict[str, list[Any]] | None:
        """The scope as JSON would hold it (None: every row)."""
        return {column: list(values) for column, values in self.scope} or None

    def covers(self, scope: Scope) -> bool:
        """Whether every row `scope` names is among this grant's rows (an empty scope names every row)."""
        inner = dict(scope)
        return all(column in inner and set(inner[column]) <= set(values) for column, values in self.scope)

    def describe_scope(self) -> str:
        """The scope in words, for messages: `commune_code in [14455, 14458]`."""
        return " and ".join(f"{c} in [{', '.join(map(str, v))}]" for c, v in self.scope) or "every row"


@dataclass(frozen=True)
class Principal:
    """Who is asking: an agency (with its grants) or an anonymous reader of open data."""

    agency_id: str | None
    rate_per_s: float | None = None
    grants: dict[str, Grant] = field(default_factory=dict)  # dataset -> what the agency may read of it

    @property
    def label(self) -> str:
        return self.agency_id or "anonymous"


ANONYMOUS = Principal(agency_id=None)


def digest(secret: str) -> str:
    """SHA-256 hex digest of a presented secret (keys, client secrets, tokens are 256-bit random)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def parse_scope(texts: Iterable[str], option: str = "--scope") -> dict[str, list[str]]:
    """`["commune_code=14455,14458"]` (the CLI's `--scope`, or `option`) -> `{"commune_code": ["14455", "14458"]}`."""
    scope: dict[str, list[str]] = {}
    for text in texts:
        column, sep, values = text.partition("=")
        if not sep or not column.strip() or not values.strip():
            raise RegistryError(f"{option} {text!r}: write COLUMN=VALUE[,VALUE...], e.g. {option} commune_code=14455")
        scope.setdefault(column.strip(), []).extend(v.strip() for v in values.split(",") if v.strip())
    return scope


def check_scope(catalog: Catalog, dataset: str, scope: Mapping[str, Any] | None) -> Scope:
    """A row scope for `dataset`, checked and typed: each column a shared, non-personal column of an exact type
    (string, integer, boolean), each with 1 to 1,000 values. RegistryError says what is wrong."""
    from gateway.records import QueryError, exact_values

    if not scope:
        return ()
    if not isinstance(scope, Mapping):
        raise RegistryError("scope: give an object of column -> list of values, e.g. {\"commune_code\": [\"14455\"]}")
    shared, spec = catalog.sharing[dataset], catalog.datasets[dataset]
    if shared.access == "open":
        raise RegistryError(f"'{dataset}' is open: anyone reads all of its rows, so a grant on it cannot be limited "
                            "to some (grant it without a scope)")
    checked = []
    for column, values in sorted(scope.items()):
        if column not in shared.columns:
            raise RegistryError(f"scope: '{column}' is not a shared column of '{dataset}' "
                                f"(its columns: {', '.join(shared.columns)})")
        if column in shared.personal:
            raise RegistryError(f"scope: '{column}' is a personal column of '{dataset}': limit rows by a column "
                                "such as a commune or unit code, not by a person's data")
        listed = values if isinstance(values, list) else [values]
        if not 1 <= len(listed) <= MAX_SCOPE_VALUES:
            raise RegistryError(f"scope: '{column}' needs 1 to {MAX_SCOPE_VALUES} values ({len(listed)} given)")
        try:
            typed = exact_values(spec.columns[column].type, listed, column, "scope", SCOPE_TYPES)
        except QueryError as exc:
            raise RegistryError(str(exc)) from None
        checked.append((column, tuple(typed)))
    return tuple(checked)


def live_grant(now: datetime | None = None) -> sa.ColumnElement[bool]:
    """A grant that has not expired (`expires_at` null: until revoked)."""
    g = tables.grant.c
    return sa.or_(g.expires_at.is_(None), g.expires_at > (now or _now()))


class AgencyRegistry:
    """Agencies, credentials and grants in the gateway's tables."""

    def __init__(self, engine: sa.Engine, catalog: Catalog) -> None:
        self.engine = engine
        self.catalog = catalog

    def add_agency(self, agency_id: str, name: str, rate_per_s: float | None = None) -> None:
        """Register an agency (`agency_id`: lower-case letters, digits, underscores)."""
        if not AGENCY_ID.match(agency_id):
            raise RegistryError(f"agency id '{agency_id}' must be 2-63 lower-case letters, digits or underscores, "
                                "starting with a letter (e.g. so_y_te)")
        with self.engine.begin() as conn:
            if conn.execute(sa.select(tables.agency.c.agency_id).where(tables.agency.c.agency_id == agency_id)).first():
                raise RegistryError(f"agency '{agency_id}' is already registered")
            conn.execute(tables.agency.insert().values(agency_id=agency_id, name=name, rate_per_s=rate_per_s,
                                                       created_at=_now()))

    def disable(self, agency_id: str, note: str) -> None:
        """Stop honouring every credential of the agency (its OAuth2 tokens dropped; a running gateway within its
        principal cache, 5 s by default) and pause its webhooks; its grants, keys and audit are kept, so
        `enable` gives back exactly what it had. `note` says why (a district's office abolished in the 2025
        reform, a leaked key being replaced)."""
        note = " ".join(note.split())
        if len(note) < 5:
            raise RegistryError("say why the agency is disabled (--note): the next operator reads it")
        a = tables.agency.c
        with self.engine.begin() as conn:
            self._require_agency(conn, agency_id)
            since = conn.execute(sa.select(a.disabled_at).where(a.agency_id == agency_id)).scalar()
            if since is not None:
                raise RegistryError(f"agency '{agency_id}' is disabled already (since {utc(since):%Y-%m-%d %H:%M} "
                                    "UTC)")
            now = _now()
            conn.execute(tables.agency.update().where(a.agency_id == agency_id)
                         .values(disabled_at=now, disabled_note=note[:500]))
            conn.execute(tables.token.delete().where(tables.token.c.agency_id == agency_id))
            events.record(conn, agency_id, events.EVERY_DATASET, events.AGENCY_DISABLED,
                          {"note": note[:500], "since": events.when(now)})

    def enable(self, agency_id: str) -> None:
        """Honour the agency's credentials again (those not revoked), with the grants it had."""
        a = tables.agency.c
        with self.engine.begin() as conn:
            self._require_agency(conn, agency_id)
            since = conn.execute(sa.select(a.disabled_at).where(a.agency_id == agency_id)).scalar()
            if since is None or not conn.execute(tables.agency.update().where(
                    a.agency_id == agency_id, a.disabled_at == since).values(disabled_at=None,
                                                                            disabled_note=None)).rowcount:
                raise RegistryError(f"agency '{agency_id}' is not disabled")
            events.record(conn, agency_id, events.EVERY_DATASET, events.AGENCY_ENABLED,
                          {"disabled_since": events.when(since)})

    def _require_agency(self, conn: sa.Connection, agency_id: str) -> None:
        found = conn.execute(sa.select(tables.agency.c.agency_id).where(tables.agency.c.agency_id == agency_id))
        if found.first() is None:
            raise RegistryError(f"no agency '{agency_id}': register it first (lgsp agencies add {agency_id} NAME)")

    def _new_credential(self, agency_id: str, kind: str) -> tuple[str, str]:
        credential_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        presented = f"lgsp_{credential_id}_{secret}" if kind == "api_key" else secret
        with self.engine.begin() as conn:
            self._require_agency(conn, agency_id)
            conn.execute(tables.credential.insert().values(
                credential_id=credential_id, agency_id=agency_id, kind=kind, secret_sha256=digest(presented),
                created_at=_now()))
            events.record(conn, agency_id, events.EVERY_DATASET, events.CREDENTIAL_ISSUED,
                          {"credential": credential_id, "kind": kind})
        return credential_id, presented

    def issue_api_key(self, agency_id: str) -> str:
        """A new API key for the agency; returned once, stored hashed."""
        return self._new_credential(agency_id, "api_key")[1]

    def add_oauth_client(self, agency_id: str) -> tuple[str, str]:
        """A new OAuth2 client (client credentials grant): (client_id, client_secret), the secret shown once."""
        return self._new_credential(agency_id, "oauth_client")

    def revoke_credential(self, credential_id: str) -> None:
        """Revoke an API key or OAuth2 client (and the client's tokens)."""
        c = tables.credential.c
        with self.engine.begin() as conn:
            held = conn.execute(sa.select(c.agency_id, c.kind).where(c.credential_id == credential_id,
                                                                     c.revoked_at.is_(None))).first()
            done = held is not None and conn.execute(tables.credential.update().where(
                c.credential_id == credential_id, c.revoked_at.is_(None)).values(revoked_at=_now())).rowcount
            conn.execute(tables.token.delete().where(tables.token.c.credential_id == credential_id))
            if done:
                events.record(conn, held.agency_id, events.EVERY_DATASET, events.CREDENTIAL_REVOKED,  # type: ignore
                              {"credential": credential_id, "kind": held.kind})
        if not done:
            raise RegistryError(f"no active credential '{credential_id}' (see lgsp agencies list)")

    def issue_token(self, client_id: str, client_secret: str, ttl_s: int) -> str | None:
        """A bearer token for valid client credentials of an agency not disabled, or None."""
        c = tables.credential.c
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(c.agency_id).select_from(tables.credential.join(tables.agency)).where(
                c.credential_id == client_id, c.kind == "oauth_client", c.revoked_at.is_(None),
                c.secret_sha256 == digest(client_secret), tables.agency.c.disabled_at.is_(None))).first()
            if row is None:
                return None
            token = secrets.token_urlsafe(32)
            conn.execute(tables.token.delete().where(tables.token.c.expires_at < _now()))
            conn.execute(tables.token.insert().values(token_sha256=digest(token), credential_id=client_id,
                                                      agency_id=row.agency_id,
                                                      expires_at=_now() + timedelta(seconds=ttl_s)))
        return token

    def grant(self, agency_id: str, dataset: str, personal: list[str] | None = None,
              expires_at: datetime | None = None, request_id: str | None = None,
              conn: sa.Connection | None = None,
              scope: Mapping[str, Any] | None = None, daily_rows: int | None = None) -> dict[tuple[str, str], float]:
        """Let the agency read `dataset`; `personal` lists the personal columns it may see in clear; `expires_at`
        ends the grant (None: until revoked); `request_id` names the access request it answers; `scope` limits
        the rows (column -> values, `check_scope`; None: every row); `daily_rows` the rows a day its purpose needs
        (more in 24 hours is unusual reading: gateway.usage; None: judged against the agency's own week). In
        `conn`'s transaction when given; else the scope's columns are indexed once it commits (`index_scopes`:
        what it made is returned)."""
        if daily_rows is not None and daily_rows < 1:
            raise RegistryError(f"daily rows {daily_rows}: give the rows a day the grant's purpose needs (1 or more)")
        if expires_at is not None and expires_at <= _now():
            raise RegistryError(f"the grant would end {expires_at.isoformat(timespec='seconds')}, in the past")
        shared = self.catalog.sharing.get(dataset)
        if shared is None:
            raise RegistryError(f"'{dataset}' is not shared (catalog/sharing.yaml has: "
                                f"{', '.join(sorted(self.catalog.sharing))})")
        unknown = sorted(set(personal or []) - set(shared.personal))
        if unknown:
            raise RegistryError(f"{unknown} are not personal columns of '{dataset}' "
                                f"(its personal columns: {sorted(shared.personal)})")
        rows = Grant(scope=check_scope(self.catalog, dataset, scope)).scope_dict()
        if conn is None:
            with self.engine.begin() as own:
                self.grant(agency_id, dataset, personal, expires_at, request_id, own, rows, daily_rows)
            return self.index_scopes(dataset) if rows else {}
        self._require_agency(conn, agency_id)
        g = tables.grant
        values = {"personal_columns": json.dumps(sorted(set(personal or []))), "expires_at": expires_at,
                  "request_id": request_id, "row_scope": None if rows is None else json.dumps(rows, ensure_ascii=False),
                  "daily_rows": daily_rows}
        before = conn.execute(sa.select(g).where(g.c.agency_id == agency_id, g.c.dataset == dataset)).mappings().first()
        conn.execute(g.delete().where(g.c.agency_id == agency_id, g.c.dataset == dataset))
        conn.execute(g.insert().values(agency_id=agency_id, dataset=dataset, granted_at=_now(), **values))
        live = before is not None and (before["expires_at"] is None or utc(before["expires_at"]) > _now())
        if before is None or before["row_scope"] != values["row_scope"]:  # its webhooks' count of its rows is stale
            w = tables.webhook.c
            conn.execute(tables.webhook.update().where(w.agency_id == agency_id, w.dataset == dataset)
                         .values(scope_rows=None))
        if not live or any(_same(before[k]) != _same(v) for k, v in values.items()):  # type: ignore[index]
            events.record(conn, agency_id, dataset, events.GRANT_CHANGED, {
                **events.grant_data(dataset, sorted(set(personal or [])), rows, expires_at, request_id, daily_rows),
                "change": "changed" if live else "granted", "grants": "/api/v1/grants"})
        return {}

    def onboard_communes(self, province: int, datasets: list[str], keys: bool = False) -> list[dict[str, Any]]:
        """Register each commune-level unit of `province` as an agency, `ubnd_<codename>` ("UBND Xã Gia Viễn"),
        granted each of `datasets` scoped to its own commune code (`commune_code`); the official 2025 list
        (`vietnam-provinces`). Idempotent: an agency already registered is kept, and a grant already scoped to
        its commune is kept as it is (its personal columns and end too); `keys`: a new API key for each agency
        without an active one. Returns one entry per commune: agency_id, name, commune_code, registered,
        granted (datasets granted now), api_key (None unless issued now)."""
        from quality.reference import province_communes

        communes = province_communes(province)
        if not communes:
            raise RegistryError(f"no commune-level unit of province {province} in the official list (the 2025 codes: "
                                "34 provinces, e.g. 37 for Ninh Binh)")
        for dataset in datasets:
            shared = self.catalog.sharing.get(dataset)
            if shared is None or "commune_code" not in shared.columns:
                raise RegistryError(f"'{dataset}' is not a shared dataset with a commune_code column (those: "
                                    + ", ".join(n for n, s in sorted(self.catalog.sharing.items())
                                                if "commune_code" in s.columns) + ")")
            check_scope(self.catalog, dataset, {"commune_code": [next(iter(communes))]})  # open, personal: refused
        from vietnam_provinces import Ward

        names = {f"{int(w.code):05d}": w.codename for w in Ward.iter_all() if int(w.province_code) == province}
        known = {a["agency_id"]: a for a in self.agencies()}
        done = []
        for code, name in sorted(communes.items()):
            agency_id = f"ubnd_{names[code]}"
            entry: dict[str, Any] = {"agency_id": agency_id, "name": f"UBND {name}", "commune_code": code,
                                     "registered": agency_id not in known, "granted": [], "api_key": None}
            if entry["registered"]:
                self.add_agency(agency_id, entry["name"])
            held = known.get(agency_id, {}).get("grant_scope", {})
            for dataset in datasets:
                if held.get(dataset) != {"commune_code": [code]}:
                    self.grant(agency_id, dataset, scope={"commune_code": [code]})
                    entry["granted"].append(dataset)
            active = [c for c in known.get(agency_id, {}).get("credentials", []) if "revoked" not in c]
            if keys and not active:
                entry["api_key"] = self.issue_api_key(agency_id)
            done.append(entry)
        return done

    def scope_coverage(self, dataset: str, scope: Mapping[str, Any]) -> tuple[int | None, dict[str, list[Any]]]:
        """What a scope covers now: the rows of `dataset`'s shared view within it (None: the view is not made yet),
        and, per column that names a record of another dataset (`references:`), the values no such record has
        (a typo in a commune code reads nothing): for the operator, as a warning."""
        from warehouse.shared import shared_views

        checked = check_scope(self.catalog, dataset, scope)
        view = shared_views(self.catalog)[dataset]
        unknown: dict[str, list[Any]] = {}
        with self.engine.connect() as conn:
            inspector = sa.inspect(conn)
            if view.name not in inspector.get_view_names():
                return None, unknown
            rows = int(conn.execute(sa.select(sa.func.count()).select_from(view).where(
                *(view.c[c].in_(values) for c, values in checked))).scalar_one())
            for column, values in checked:
                named = self.catalog.datasets[dataset].columns[column].references
                if named is None:
                    continue
                target_name, target_column = named.to.split(".")
                target = self.catalog.datasets[target_name]
                if target.layer != "core" or not inspector.has_table(target.table_name):
                    continue
                table = sa.table(target.table_name, sa.column(target_column))
                known = set(conn.execute(sa.select(table.c[target_column]).where(
                    table.c[target_column].in_(values))).scalars())
                if known or conn.execute(sa.select(sa.func.count()).select_from(table)).scalar():
                    missing = [v for v in values if v not in known]
                    if missing:
                        unknown[column] = missing
        return rows, unknown

    def index_scopes(self, dataset: str | None = None) -> dict[tuple[str, str], float]:
        """Index each core table on the columns the live grants' scopes name (of `dataset`, or of all), where not
        indexed yet (`warehouse.shared.scope_index`); returns what it made: (dataset, column) -> seconds."""
        from warehouse.shared import scope_index

        g = tables.grant.c
        query = sa.select(g.dataset, g.row_scope).where(g.row_scope.is_not(None), live_grant())
        if dataset is not None:
            query = query.where(g.dataset == dataset)
        with self.engine.connect() as conn:
            wanted = sorted({(name, column) for name, scope in conn.execute(query).all()
                             if name in self.catalog.sharing for column in json.loads(scope)})
        made = {}
        inspector = sa.inspect(self.engine)
        for name, column in wanted:
            spec = self.catalog.datasets[name]  # a table not made yet is indexed when `lgsp serve` next starts
            if spec.layer == "core" and column in spec.columns and inspector.has_table(spec.table_name):
                seconds = scope_index(self.engine, spec, column)
                if seconds is not None:
                    made[(name, column)] = seconds
        return made

    def revoke(self, agency_id: str, dataset: str, by: str = "province") -> None:
        """Withdraw the agency's grant on `dataset` (`by` "agency": it gave the grant up itself)."""
        g = tables.grant
        with self.engine.begin() as conn:
            if not conn.execute(g.delete().where(g.c.agency_id == agency_id, g.c.dataset == dataset)).rowcount:
                raise RegistryError(f"agency '{agency_id}' has no grant on '{dataset}'")
            events.record(conn, agency_id, dataset, events.GRANT_CHANGED,
                          {"dataset": dataset, "change": "revoked", "by": by, "grants": "/api/v1/grants"})

    def principal(self, presented: str) -> Principal | None:
        """The agency holding this API key or bearer token (None if unknown, revoked or expired, or the agency is
        disabled)."""
        hashed, c, t, a = digest(presented), tables.credential.c, tables.token.c, tables.agency.c
        with self.engine.connect() as conn:
            agency_id = conn.execute(sa.select(c.agency_id).where(
                c.secret_sha256 == hashed, c.kind == "api_key", c.revoked_at.is_(None))).scalar()
            if agency_id is None:
                agency_id = conn.execute(sa.select(t.agency_id).where(
                    t.token_sha256 == hashed, t.expires_at > _now())).scalar()
            if agency_id is None:
                return None
            agency = conn.execute(sa.select(a.rate_per_s).where(a.agency_id == agency_id,
                                                                 a.disabled_at.is_(None))).first()
            if agency is None:
                return None
            g = tables.grant.c
            grants = conn.execute(sa.select(g.dataset, g.personal_columns, g.row_scope)
                                  .where(g.agency_id == agency_id, live_grant())).all()
        return Principal(agency_id=agency_id, rate_per_s=agency.rate_per_s,
                         grants={g.dataset: grant_of(g.personal_columns, g.row_scope) for g in grants})

    def grants_of(self, agency_id: str) -> list[dict[str, Any]]:
        """The agency's live grants, by dataset: personal columns in clear, scope, when made and until when."""
        g = tables.grant.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.grant).where(g.agency_id == agency_id, live_grant())
                                .order_by(g.dataset)).mappings().all()
        return [{"dataset": r["dataset"], "personal": json.loads(r["personal_columns"]),
                 "scope": json.loads(r["row_scope"]) if r["row_scope"] else None,
                 "granted_at": utc(r["granted_at"]), "expires_at": utc(r["expires_at"]) if r["expires_at"] else None,
                 "request_id": r["request_id"], "daily_rows": r["daily_rows"]} for r in rows]

    def agencies(self) -> list[dict[str, Any]]:
        """Every agency with its credentials (ids and kinds only), grants (and when they end) and expired grants."""
        now = _now()
        with self.engine.connect() as conn:
            agencies = [dict(r) for r in conn.execute(sa.select(tables.agency).order_by("agency_id")).mappings()]
            creds = conn.execute(sa.select(tables.credential.c.agency_id, tables.credential.c.credential_id,
                                           tables.credential.c.kind, tables.credential.c.revoked_at)).all()
            grants = conn.execute(sa.select(tables.grant)).mappings().all()
        for entry in agencies:
            entry["credentials"] = [f"{c.credential_id} ({c.kind}{', revoked' if c.revoked_at else ''})"
                                    for c in creds if c.agency_id == entry["agency_id"]]
            own = [g for g in grants if g["agency_id"] == entry["agency_id"]]
            live = [g for g in own if g["expires_at"] is None or utc(g["expires_at"]) > now]
            entry["grants"] = {g["dataset"]: json.loads(g["personal_columns"]) for g in live}
            entry["grant_scope"] = {g["dataset"]: json.loads(g["row_scope"]) for g in live if g["row_scope"]}
            entry["grant_expiry"] = {g["dataset"]: utc(g["expires_at"]) for g in live if g["expires_at"] is not None}
            entry["expired_grants"] = {g["dataset"]: utc(g["expires_at"]) for g in own if g not in live}
        return agencies


def _same(value: Any) -> Any:
    """A grant's stored value as compared: times in UTC (SQLite gives them back without a zone)."""
    return utc(value) if isinstance(value, datetime) else value


def grant_of(personal_columns: str, row_scope: str | None) -> Grant:
    """A stored grant (its JSON columns; the scope's values were typed when it was made)."""
    scope = json.loads(row_scope) if row_scope else {}
    return Grant(frozenset(json.loads(personal_columns)),
                 tuple((column, tuple(values)) for column, values in sorted(scope.items())))
