"""The gateway's tables, on the warehouse database: agencies, credentials, tokens, grants (and the access requests
that ask for them), audit, webhooks, and the events agencies are told of (their requests decided, their grants made,
changed, revoked, ending or ended).

Credentials and tokens are stored as SHA-256 digests of the secret, never the secret:
the secrets are 256-bit random values, so a fast digest is enough (no password to
stretch). The audit table is append-only: triggers refuse UPDATE, DELETE (and, on
PostgreSQL, TRUNCATE), and its rows are chained by hash (`gateway.audit.verify`).
"""
from __future__ import annotations

import sqlalchemy as sa

TZ = sa.DateTime(timezone=True)
metadata = sa.MetaData()

agency = sa.Table(
    "gateway_agency", metadata,
    sa.Column("agency_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("rate_per_s", sa.Float),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("disabled_at", TZ),  # `lgsp agencies disable`: no credential of it is honoured, its webhooks paused
    sa.Column("disabled_note", sa.Text),  # why (the province's words)
)
credential = sa.Table(
    "gateway_credential", metadata,
    sa.Column("credential_id", sa.Text, primary_key=True),
    sa.Column("agency_id", sa.Text, sa.ForeignKey("gateway_agency.agency_id"), nullable=False, index=True),
    sa.Column("kind", sa.Text, nullable=False),  # api_key | oauth_client
    sa.Column("secret_sha256", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("revoked_at", TZ),
)
token = sa.Table(
    "gateway_token", metadata,
    sa.Column("token_sha256", sa.Text, primary_key=True),
    sa.Column("credential_id", sa.Text, sa.ForeignKey("gateway_credential.credential_id"), nullable=False),
    sa.Column("agency_id", sa.Text, nullable=False),
    sa.Column("expires_at", TZ, nullable=False, index=True),
)
grant = sa.Table(
    "gateway_grant", metadata,
    sa.Column("agency_id", sa.Text, sa.ForeignKey("gateway_agency.agency_id"), primary_key=True),
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("personal_columns", sa.Text, nullable=False, default="[]"),  # JSON list
    sa.Column("granted_at", TZ, nullable=False),
    sa.Column("expires_at", TZ),  # null: until revoked
    sa.Column("request_id", sa.Text),  # the access request it answered (gateway.access_requests); null: by hand
    sa.Column("row_scope", sa.Text),  # JSON {column: [values]}: the rows it covers (gateway.agencies.Grant); null: all
    sa.Column("daily_rows", sa.BigInteger),  # the rows a day its purpose needs: more in 24 h is unusual (gateway.usage)
)

# an agency asks for a grant: a dataset, the personal columns it needs in clear, why, until when (the province
# approves or denies it: gateway.access_requests)
access_request = sa.Table(
    "gateway_access_request", metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("agency_id", sa.Text, sa.ForeignKey("gateway_agency.agency_id"), nullable=False, index=True),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("personal_columns", sa.Text, nullable=False),  # JSON list: asked in clear
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("legal_basis", sa.Text),
    sa.Column("until", TZ),  # the end of the access asked for; null: no end
    sa.Column("status", sa.Text, nullable=False, index=True),  # pending | approved | denied | withdrawn
    sa.Column("requested_at", TZ, nullable=False),
    sa.Column("decided_at", TZ),
    sa.Column("decided_by", sa.Text),
    sa.Column("note", sa.Text),  # the decision's reason (required to deny)
    sa.Column("granted_columns", sa.Text),  # JSON list: the personal columns the approval granted
    sa.Column("granted_until", TZ),
    sa.Column("row_scope", sa.Text),  # JSON {column: [values]}: the rows asked for; null: every row
    sa.Column("granted_scope", sa.Text),  # JSON: the rows the approval granted; null: every row
    sa.Column("daily_rows", sa.BigInteger),  # the rows a day the agency says its purpose needs; null: not said
    sa.Column("notified_at", TZ),  # when the province was told of it (the lgsp_freshness DAG; null: not yet)
    # one pending request per agency and dataset, even when two are filed at the same moment
    sa.Index("gateway_access_request_one_pending", "agency_id", "dataset", unique=True,
             postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'")),
)
audit = sa.Table(
    "gateway_audit", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False, autoincrement=False),
    sa.Column("recorded_at", TZ, nullable=False),
    sa.Column("agency_id", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("rows_returned", sa.BigInteger),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("row_hash", sa.Text, nullable=False),
    # one hash chain per writing process (gateway.audit): (chain, seq) numbers a row
    sa.Column("chain", sa.Integer, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("chain", "seq", name="gateway_audit_pkey"),
)

# an agency's endpoint told when a shared dataset changed (gateway.webhooks); its secret is derived, never stored
webhook = sa.Table(
    "gateway_webhook", metadata,
    sa.Column("webhook_id", sa.Text, primary_key=True),
    sa.Column("agency_id", sa.Text, sa.ForeignKey("gateway_agency.agency_id"), nullable=False, index=True),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),  # with the gateway's key, derives the signing secret
    sa.Column("previous_nonce", sa.Text),  # the secret before a rotation, also signed with until `previous_until`
    sa.Column("previous_until", TZ),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default="province"),  # or "agency" (the API)
    # what it tells of: "dataset.changed" (its dataset's changes: delivered_seq a change number) or "access"
    # (its agency's events, gateway.events: dataset "*", delivered_seq an event number)
    sa.Column("events", sa.Text, nullable=False, server_default="dataset.changed"),
    sa.Column("delivered_seq", sa.BigInteger, nullable=False),  # the last change number the endpoint acknowledged
    sa.Column("delivered_at", TZ),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # failures since the last success
    sa.Column("next_attempt_at", TZ),
    sa.Column("claimed_until", TZ),  # a dispatcher is sending (a lease: a crashed one's claim runs out)
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("dead_at", TZ),  # out of attempts, or the endpoint answered 410 Gone: `lgsp webhooks retry`
    sa.Column("removed_at", TZ),
    # for a grant on some rows: how many rows it covered when the endpoint last acknowledged (or was found to have
    # nothing to be told), so that changes that touched none of them and moved none out are not told
    sa.Column("scope_rows", sa.BigInteger),
)
webhook_delivery = sa.Table(
    "gateway_webhook_delivery", metadata,
    sa.Column("delivery_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("webhook_id", sa.Text, sa.ForeignKey("gateway_webhook.webhook_id"), nullable=False, index=True),
    sa.Column("message_id", sa.Text, nullable=False),  # the `webhook-id` header: the same for a retry
    sa.Column("first_change", sa.BigInteger, nullable=False),
    sa.Column("last_change", sa.BigInteger, nullable=False),
    sa.Column("attempted_at", TZ, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),  # delivered | failed | dead | gone
    sa.Column("status", sa.Integer),  # the endpoint's HTTP status (none: no answer)
    sa.Column("error", sa.Text),
    sa.Column("duration_ms", sa.Integer, nullable=False),
)

# what an agency is told of its access (gateway.events): a request decided, a grant made, changed, revoked or
# ending; read by the agency (GET /api/v1/events) and sent to its "access" webhooks
agency_event = sa.Table(
    "gateway_agency_event", metadata,
    sa.Column("event_seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("agency_id", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),  # access_request.decided | grant.changed | grant.ending | .ended
    sa.Column("data", sa.Text, nullable=False),  # JSON: the event's `data`
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("once", sa.Text, unique=True),  # an event told once however often it is noticed (a grant's ending)
    sa.Index("gateway_agency_event_by_agency", "agency_id", "event_seq"),
)

# each shared dataset's contract (its columns as agencies read them) as last seen: a change is told to the agencies
# granted it (gateway.events.note_schema_changes)
dataset_schema = sa.Table(
    "gateway_dataset_schema", metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("digest", sa.Text, nullable=False),  # SHA-256 of `columns`, the first 16 hex digits
    sa.Column("columns", sa.Text, nullable=False),  # JSON: column -> {type, required, key, personal, ...}
    sa.Column("recorded_at", TZ, nullable=False),
)

_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER IF NOT EXISTS gateway_audit_no_update BEFORE UPDATE ON gateway_audit "
    "BEGIN SELECT RAISE(ABORT, 'gateway_audit is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS gateway_audit_no_delete BEFORE DELETE ON gateway_audit "
    "BEGIN SELECT RAISE(ABORT, 'gateway_audit is append-only'); END",
]
_POSTGRES_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION gateway_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'gateway_audit is append-only'; END $$",
    "CREATE OR REPLACE TRIGGER gateway_audit_no_change BEFORE UPDATE OR DELETE ON gateway_audit "
    "FOR EACH ROW EXECUTE FUNCTION gateway_audit_append_only()",
    "CREATE OR REPLACE TRIGGER gateway_audit_no_truncate BEFORE TRUNCATE ON gateway_audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only()",
]


def create_gateway_tables(engine: sa.Engine) -> None:
    """Create the gateway's tables and the audit's append-only triggers (idempotent; one process at a time)."""
    metadata.create_all(engine)
    _add_audit_chain(engine)
    _add_webhook_columns(engine)
    _add_grant_expiry(engine)
    _add_audit_time_index(engine)
    statements = _POSTGRES_APPEND_ONLY if engine.dialect.name == "postgresql" else _SQLITE_APPEND_ONLY
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def upgrade_for_events(engine: sa.Engine) -> None:
    """The webhook table's `events` column, the agency events' table and the datasets' contracts, if this database
    predates them: what the `lgsp_notify` DAG needs, made without touching the audit (whose triggers
    `create_gateway_tables` replaces)."""
    _add_webhook_columns(engine)
    agency_event.create(engine, checkfirst=True)
    dataset_schema.create(engine, checkfirst=True)


def _add_audit_time_index(engine: sa.Engine) -> None:
    """The audit indexed by when each read was recorded, so that a question about a window (the unusual-reads check
    every 15 minutes and in each metrics scrape, `lgsp audit usage --since`, an agency's `GET /api/v1/usage`) reads
    that window, not months of audit. On PostgreSQL a BRIN index: the audit is appended in time order, so a summary
    per 128 pages answers it at almost no cost to the audited reads' writes (a B-tree would add a write to each);
    on SQLite a B-tree (the embedded gateway's audit is small). Made once, on an existing audit too."""
    using = "USING brin (recorded_at) WITH (autosummarize = on)" if engine.dialect.name == "postgresql" else \
        "(recorded_at)"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS gateway_audit_recorded_at ON gateway_audit {using}")


def _add_audit_chain(engine: sa.Engine) -> None:
    """An audit table from before per-process chains: add `chain` (its rows are chain 0, their hashes unchanged)
    and, on PostgreSQL, make (chain, seq) the primary key (SQLite writes chain 0 only: its key can stay seq)."""
    if "chain" in {c["name"] for c in sa.inspect(engine).get_columns("gateway_audit")}:
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE gateway_audit ADD COLUMN chain INTEGER NOT NULL DEFAULT 0")
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE gateway_audit DROP CONSTRAINT gateway_audit_pkey, "
                                 "ADD PRIMARY KEY (chain, seq)")


def _add_webhook_columns(engine: sa.Engine) -> None:
    """A webhook table from before agencies could register their own, be told of their access, or of a scoped grant's
    rows only: add `created_by` (its rows: the province's), `events` (its rows tell of their dataset's changes) and
    `scope_rows`."""
    have = {c["name"] for c in sa.inspect(engine).get_columns("gateway_webhook")}
    with engine.begin() as conn:
        for name, default in (("created_by", "province"), ("events", "dataset.changed")):
            if name not in have:
                conn.exec_driver_sql(f"ALTER TABLE gateway_webhook ADD COLUMN {name} TEXT NOT NULL DEFAULT '{default}'")
        if "scope_rows" not in have:  # unknown for the webhooks before it: their next change is told
            conn.exec_driver_sql("ALTER TABLE gateway_webhook ADD COLUMN scope_rows BIGINT")


def _add_grant_expiry(engine: sa.Engine) -> None:
    """Grant and request tables from before grants could expire, answer a request or cover some rows: add
    `expires_at`, `request_id`, `row_scope` (and the requests' `row_scope`, `granted_scope`); the old grants
    last until revoked, were made by hand and cover every row; and `daily_rows` (none: judged against the agency's
    own week). An agency table from before agencies could be disabled by command: add `disabled_note`."""
    added = {"gateway_grant": ("expires_at", "request_id", "row_scope", "daily_rows"),
             "gateway_access_request": ("row_scope", "granted_scope", "daily_rows"),
             "gateway_agency": ("disabled_note",)}
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table, columns in added.items():
            have = {c["name"] for c in inspector.get_columns(table)}
            for name in columns:
                if name not in have:
                    kind = {"expires_at": "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql"
                            else "DATETIME", "daily_rows": "BIGINT"}.get(name, "TEXT")
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
