"""The warehouse's own tables: batches, cursors, quarantine, expectation results, exchanges.

The indicator mart (`mart_indicator_value`) is defined like every dataset, in
catalog/datasets.yaml (`indicator_value`, layer `mart`).
"""
from __future__ import annotations

import sqlalchemy as sa

TZ = sa.DateTime(timezone=True)


def system_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """Create the bookkeeping and mart tables on `metadata`."""
    batch = sa.Table(
        "lgsp_batch", metadata,
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("pipeline", sa.Text, nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("source_system", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ),
        sa.Column("rows_pulled", sa.BigInteger, nullable=False, default=0),
        sa.Column("rows_landed", sa.BigInteger, nullable=False, default=0),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False, default=0),
        sa.Column("rows_superseded", sa.BigInteger, nullable=False, default=0),
        sa.Column("rows_changed", sa.BigInteger, nullable=False, default=0),
        sa.Column("cursor_from", TZ),
        sa.Column("cursor_to", TZ),
        sa.Column("lake_path", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("mode", sa.Text),
        sa.Column("cursor_until", TZ),
        sa.Column("pages", sa.Integer),
        sa.Column("paging_state", sa.Text),
        # a pipeline's latest batches (`lgsp status`, each scrape of the metrics), and the last day's: the table
        # keeps every batch (96 a day for a pipeline every 15 minutes), so without them each was a full scan
        sa.Index("ix_lgsp_batch_pipeline_started", "pipeline", "started_at"),
        sa.Index("ix_lgsp_batch_started", "started_at"),
    )
    cursor = sa.Table(
        "lgsp_cursor", metadata,
        sa.Column("pipeline", sa.Text, primary_key=True),
        sa.Column("cursor_value", TZ),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("synced_at", TZ),  # the last sync that read the source to the end committed (lgsp.freshness)
    )
    quarantine = sa.Table(
        "lgsp_quarantine", metadata,
        sa.Column("quarantine_id", sa.Text, primary_key=True),
        sa.Column("dataset", sa.Text, nullable=False, index=True),
        sa.Column("pipeline", sa.Text, nullable=False),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("last_batch_id", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record_key", sa.Text),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, default="open"),
        sa.Column("quarantined_at", TZ, nullable=False),
    )
    expectation = sa.Table(
        "lgsp_expectation_result", metadata,
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("expectation", sa.Text, primary_key=True),
        sa.Column("column_name", sa.Text, primary_key=True, default=""),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("unexpected_count", sa.BigInteger),
        sa.Column("checked_at", TZ, nullable=False),
    )
    schema_state = sa.Table(  # what `Warehouse.create_all` last checked, so an unchanged schema costs one query
        "lgsp_schema_state", metadata,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("checked_at", TZ, nullable=False),
    )
    drift = sa.Table(  # each `lgsp drift` check of a sample of the copy against its source (lgsp.drift)
        "lgsp_drift_check", metadata,
        sa.Column("check_id", sa.Text, primary_key=True),
        sa.Column("dataset", sa.Text, nullable=False, index=True),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("checked_at", TZ, nullable=False),
        sa.Column("sampled", sa.Integer, nullable=False),
        sa.Column("counts", sa.Text, nullable=False),  # JSON: records per status (same, behind, silent, ...)
        sa.Column("silent_columns", sa.Text, nullable=False),  # JSON: column -> silently drifted records
    )
    change = sa.Table(  # every write that changed a dataset, numbered in commit order (`Warehouse.stamp_change`):
        "lgsp_change", metadata,  # the sharing gateway's change feed reads the rows of the writes between two numbers
        sa.Column("change_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("batch_id", sa.Text, nullable=False, unique=True),  # a load's batch, or an indicator computation
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("rows_changed", sa.BigInteger, nullable=False),
        sa.Column("committed_at", TZ, nullable=False),
        sa.Column("tombstones_pruned_at", TZ),  # its deletions were pruned (lgsp.retention): older feed tokens expire
        sa.Index("ix_lgsp_change_dataset", "dataset", "change_seq"),
    )
    # a record a write deleted (a deletion marker, a replace, a history close, a vanished indicator cell): the
    # change feed's deletes
    tombstone = sa.Table(
        "lgsp_tombstone", metadata,
        sa.Column("dataset", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, primary_key=True, index=True),
        sa.Column("record_key", sa.Text, primary_key=True),  # JSON object of the key columns
        sa.Column("deleted_at", TZ, nullable=False),
    )
    # each record a source sent with its deletion marker (`delete_field`), as the source still serves and counts it:
    # `lgsp reconcile` holds it as deleted (the tombstones, pruned by retention, are the change feed's)
    flagged = sa.Table(
        "lgsp_source_deleted", metadata,
        sa.Column("dataset", sa.Text, primary_key=True),
        sa.Column("record_key", sa.Text, primary_key=True),  # as lgsp_quarantine's: the key's values joined by "|"
        sa.Column("batch_id", sa.Text, nullable=False),  # the last batch that received it marked
        sa.Column("marked_at", TZ, nullable=False),
    )
    migration = sa.Table(  # each `lgsp warehouse migrate` of a core table to its changed definition
        "lgsp_migration", metadata,
        sa.Column("migration_id", sa.Text, primary_key=True),  # also the `_batch_id` of the rows it changed
        sa.Column("dataset", sa.Text, nullable=False, index=True),
        sa.Column("steps", sa.Text, nullable=False),  # JSON: what changed, as `lgsp warehouse plan` said it
        sa.Column("rows_before", sa.BigInteger, nullable=False),
        sa.Column("rows_after", sa.BigInteger, nullable=False),
        sa.Column("rows_changed", sa.BigInteger, nullable=False),
        sa.Column("previous_table", sa.Text),  # the table as it was, kept (null: dropped at once)
        sa.Column("applied_at", TZ, nullable=False),
        sa.Column("previous_dropped_at", TZ),  # when retention dropped the kept table (`migrate.drop_previous`)
    )
    freshness = sa.Table(  # each pipeline's freshness and each feed's deadlines as the lgsp_freshness DAG last
        "lgsp_freshness", metadata,  # judged them (it alerts on changes)
        sa.Column("subject", sa.Text, primary_key=True),  # a pipeline's name, or `feed:<name>`
        sa.Column("state", sa.Text, nullable=False),  # fresh, warn, stale, never; a feed: fresh or overdue
        sa.Column("since", TZ, nullable=False),  # when it entered that state (as first judged)
        sa.Column("synced_at", TZ),
        sa.Column("checked_at", TZ, nullable=False),
    )
    freshness_event = sa.Table(  # each change of those states, for the share of time fresh (`lgsp status --history`)
        "lgsp_freshness_event", metadata,
        sa.Column("subject", sa.Text, primary_key=True),
        sa.Column("at", TZ, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
    )
    quality_score = sa.Table(  # each dataset's scorecard per day, Vietnam time (`lgsp quality --history`)
        "lgsp_quality_score", metadata,
        sa.Column("dataset", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("overall", sa.Float),  # the day's latest check
        sa.Column("lowest", sa.Float),  # the lowest overall of the day's checks
        sa.Column("weakest", sa.Text),
        *(sa.Column(d, sa.Float) for d in ("validity", "timeliness", "consistency", "accuracy")),
        sa.Column("checks", sa.Integer, nullable=False),
        sa.Column("checked_at", TZ, nullable=False),
    )
    # each `lgsp backup restore NAME --dataset D` (lgsp.backup_dataset), done or only tried (`--dry-run` is not kept)
    dataset_restore = sa.Table(
        "lgsp_dataset_restore", metadata,
        sa.Column("restore_id", sa.Text, primary_key=True),  # the `_batch_id` of the rows it wrote
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("backup", sa.Text, nullable=False),
        sa.Column("backup_created_at", TZ, nullable=False),
        sa.Column("restored_at", TZ, nullable=False),
        sa.Column("restored_by", sa.Text, nullable=False),  # the account that ran it
        sa.Column("scope", sa.Text),  # `--where` as JSON ({"commune_code": ["25210"]}); null: the whole table
        sa.Column("records_in_scope", sa.BigInteger),
        sa.Column("rows_written", sa.BigInteger, nullable=False),
        sa.Column("rows_deleted", sa.BigInteger, nullable=False),
        sa.Column("records_gone", sa.BigInteger, nullable=False),
    )
    exchange = tables_for_exchanges(metadata)
    return {t.name: t for t in (batch, cursor, quarantine, expectation, schema_state, drift, change, tombstone,
                                  flagged, migration, freshness, freshness_event, quality_score,
                                  restore_table(metadata), dataset_restore, *exchange)}


def restore_table(metadata: sa.MetaData) -> sa.Table:
    """Each `lgsp backup restore` into this store (`lgsp.backup`): the change numbers issued before it for the
    writes it undid (`changes_from`..`changes_to`), whose feed tokens the gateway refuses (read afresh)."""
    return sa.Table(
        "lgsp_restore", metadata,
        sa.Column("restored_at", TZ, primary_key=True),
        sa.Column("backup", sa.Text, nullable=False),
        sa.Column("backup_created_at", TZ, nullable=False),
        sa.Column("changes_from", sa.BigInteger, nullable=False),
        sa.Column("changes_to", sa.BigInteger, nullable=False),
    )


def tables_for_exchanges(metadata: sa.MetaData) -> list[sa.Table]:
    """Message log, health checks, circuit states and the push outbox."""
    message_log = sa.Table(
        "lgsp_message_log", metadata,
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("system", sa.Text, nullable=False, index=True),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("context", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("request_sha256", sa.Text, nullable=False),
        sa.Column("response_sha256", sa.Text, nullable=False),
        sa.Column("request_bytes", sa.BigInteger, nullable=False),
        sa.Column("response_bytes", sa.BigInteger, nullable=False),
        sa.Column("started_at", TZ, nullable=False, index=True),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("request_body", sa.Text),
        sa.Column("response_body", sa.Text),
    )
    health = sa.Table(
        "lgsp_health_check", metadata,
        sa.Column("system", sa.Text, primary_key=True),
        sa.Column("checked_at", TZ, primary_key=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("detail", sa.Text),
    )
    circuit = sa.Table(
        "lgsp_circuit", metadata,
        sa.Column("system", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("opened_at", TZ),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", TZ, nullable=False),
    )
    outbox = sa.Table(
        "lgsp_outbox", metadata,
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("feed", sa.Text, nullable=False, index=True),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_error", sa.Text),
        sa.Column("ack", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("last_attempt_at", TZ),
        sa.Column("acked_at", TZ),
    )
    outbox_item = sa.Table(
        "lgsp_outbox_item", metadata,
        sa.Column("feed", sa.Text, primary_key=True),
        sa.Column("record_key", sa.Text, primary_key=True),
        sa.Column("content_hash", sa.Text, primary_key=True),
        sa.Column("message_id", sa.Text, nullable=False, index=True),
    )
    return [message_log, health, circuit, outbox, outbox_item]
