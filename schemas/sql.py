"""Dataset definition -> SQLAlchemy table in the warehouse's core layer."""
from __future__ import annotations

import sqlalchemy as sa

from catalog.models import DatasetSpec

SQL_TYPES: dict[str, type[sa.types.TypeEngine]] = {
    "string": sa.Text,
    "integer": sa.BigInteger,
    "float": sa.Float,
    "boolean": sa.Boolean,
    "date": sa.Date,
    "timestamp": sa.DateTime,
}

LINEAGE_COLUMNS = ("_batch_id", "_source_system", "_loaded_at", "_row_hash")
HISTORY_COLUMNS = ("valid_from", "valid_to", "is_current")


def core_table(dataset: DatasetSpec, metadata: sa.MetaData) -> sa.Table:
    """The core table for `dataset`: declared columns, primary key, lineage columns.

    Every row carries lineage: the batch that last changed it, the source
    system, when it was loaded, and a hash of its business columns (so a
    rerun of the same data changes nothing). The primary key follows the
    dataset's write mode: `key` (merge, replace), `key` + `_batch_id`
    (append: one row per record per batch), `key` + `valid_from` (history,
    which also has `valid_to`, null while current, and `is_current`). On PostgreSQL the table
    has the dataset's fillfactor (`DatasetSpec.table_fillfactor`).
    """
    columns: list[sa.Column] = []
    for name, spec in dataset.columns.items():
        sql_type = sa.DateTime(timezone=True) if spec.type == "timestamp" else SQL_TYPES[spec.type]()
        columns.append(sa.Column(name, sql_type, primary_key=name in dataset.key,
                                 nullable=name in dataset.key or not spec.required))
    # PostgreSQL only (other dialects ignore it): room on each page for the rows' updated versions
    storage = {"postgresql_with": {"fillfactor": dataset.table_fillfactor}}
    if dataset.layer != "core":  # a mart table is computed from core tables: no source lineage, only the
        # computation that last changed the row (indicators.compute), for the gateway's change feed
        return sa.Table(dataset.table_name, metadata, *columns, sa.Column("_batch_id", sa.Text, nullable=True),
                        **storage)
    if dataset.write_mode == "history":
        columns += [
            sa.Column("valid_from", sa.DateTime(timezone=True), primary_key=True, nullable=False),
            sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
            sa.Column("is_current", sa.Boolean, nullable=False),
        ]
    columns += [
        sa.Column("_batch_id", sa.Text, nullable=False, primary_key=dataset.write_mode == "append"),
        sa.Column("_source_system", sa.Text, nullable=False),
        sa.Column("_loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("_row_hash", sa.BigInteger, nullable=False),
        sa.Column("_extras", sa.Text, nullable=True),
    ]
    return sa.Table(dataset.table_name, metadata, *columns, **storage)
