"""The consolidation's warehouse tables (SQLAlchemy Core; the same code on SQLite and PostgreSQL).

Every table has a content hash (``_row_hash``) and the run that last changed the
row (``_run_id``); :func:`sync_table` writes only rows whose hash changed and
deletes rows the run no longer produces, so a rerun on the same data changes
nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

TZ = sa.DateTime(timezone=True)
LINEAGE = ("sources", "source_systems", "source_count", "match_rule")
"""Lineage columns of every consolidated table: ``sources`` is the JSON list of ``system:key``."""

__all__ = ["LINEAGE", "TZ", "merger_tables", "row_hash", "sync_table"]


def _lineage() -> list[sa.Column[Any]]:
    return [sa.Column("sources", sa.Text, nullable=False), sa.Column("source_systems", sa.Text, nullable=False),
            sa.Column("source_count", sa.Integer, nullable=False), sa.Column("match_rule", sa.Text, nullable=False),
            sa.Column("source_updated_at", TZ)]


def _bookkeeping() -> list[sa.Column[Any]]:
    return [sa.Column("_row_hash", sa.Text, nullable=False), sa.Column("_run_id", sa.Text, nullable=False)]


def merger_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """Define ``merger_*`` tables on ``metadata``."""
    t: dict[str, sa.Table] = {}
    t["merger_citizen"] = sa.Table(
        "merger_citizen", metadata, sa.Column("consolidated_id", sa.Text, primary_key=True),
        sa.Column("personal_id", sa.Text), sa.Column("full_name", sa.Text, nullable=False),
        sa.Column("birth_date", sa.Date), sa.Column("sex", sa.Text), sa.Column("commune_code", sa.Text, nullable=False),
        sa.Column("commune_name", sa.Text, nullable=False), sa.Column("address", sa.Text), sa.Column("phone", sa.Text),
        *_lineage(), *_bookkeeping())
    t["merger_enterprise"] = sa.Table(
        "merger_enterprise", metadata, sa.Column("consolidated_id", sa.Text, primary_key=True),
        sa.Column("tax_code", sa.Text, nullable=False), sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.Text), sa.Column("registered_on", sa.Date),
        sa.Column("commune_code", sa.Text, nullable=False), sa.Column("commune_name", sa.Text, nullable=False),
        sa.Column("address", sa.Text), *_lineage(), *_bookkeeping())
    t["merger_dossier"] = sa.Table(
        "merger_dossier", metadata, sa.Column("consolidated_id", sa.Text, primary_key=True),
        sa.Column("dossier_id", sa.Text, nullable=False), sa.Column("procedure_code", sa.Text),
        sa.Column("applicant_consolidated_id", sa.Text), sa.Column("applicant_personal_id", sa.Text),
        sa.Column("received_at", TZ), sa.Column("status", sa.Text), sa.Column("channel", sa.Text),
        sa.Column("commune_code", sa.Text, nullable=False), sa.Column("commune_name", sa.Text, nullable=False),
        *_lineage(), *_bookkeeping())
    t["merger_decision"] = sa.Table(
        "merger_decision", metadata, sa.Column("decision_id", sa.Text, primary_key=True),
        sa.Column("entity", sa.Text, nullable=False), sa.Column("consolidated_id", sa.Text, nullable=False, index=True),
        sa.Column("field", sa.Text, nullable=False), sa.Column("winning_source", sa.Text, nullable=False),
        sa.Column("winning_value", sa.Text), sa.Column("losing_values", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False), sa.Column("why", sa.Text, nullable=False), *_bookkeeping())
    t["merger_review"] = sa.Table(
        "merger_review", metadata, sa.Column("review_id", sa.Text, primary_key=True),
        sa.Column("legacy_system", sa.Text, nullable=False), sa.Column("entity", sa.Text, nullable=False),
        sa.Column("record_key", sa.Text, nullable=False), sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False), sa.Column("candidates", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False), sa.Column("status", sa.Text, nullable=False),
        *_bookkeeping())
    t["merger_reconciliation"] = sa.Table(
        "merger_reconciliation", metadata, sa.Column("legacy_system", sa.Text, primary_key=True),
        sa.Column("entity", sa.Text, primary_key=True), sa.Column("records_in", sa.Integer, nullable=False),
        sa.Column("mapped", sa.Integer, nullable=False), sa.Column("mapped_by_names", sa.Integer, nullable=False),
        sa.Column("consolidated", sa.Integer, nullable=False), sa.Column("merged", sa.Integer, nullable=False),
        sa.Column("conflicts", sa.Integer, nullable=False), sa.Column("in_review", sa.Integer, nullable=False),
        sa.Column("balanced", sa.Boolean, nullable=False), *_bookkeeping())
    t["merger_commune_map"] = sa.Table(
        "merger_commune_map", metadata, sa.Column("old_province_code", sa.Text, primary_key=True),
        sa.Column("old_district_code", sa.Text, primary_key=True), sa.Column("old_commune_code", sa.Text, primary_key=True),
        sa.Column("old_province_name", sa.Text, nullable=False), sa.Column("old_district_name", sa.Text, nullable=False),
        sa.Column("old_commune_name", sa.Text, nullable=False), sa.Column("status", sa.Text, nullable=False),
        sa.Column("new_commune_code", sa.Text), sa.Column("new_commune_name", sa.Text),
        sa.Column("candidates", sa.Text, nullable=False), sa.Column("reason", sa.Text, nullable=False),
        *_bookkeeping())
    return t


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    return value.isoformat() if isinstance(value, date) else value


def row_hash(row: dict[str, Any]) -> str:
    """SHA-256 of a row's content (bookkeeping columns left out; instants compared as POSIX time)."""
    content = {k: _plain(v) for k, v in sorted(row.items()) if not k.startswith("_")}
    return hashlib.sha256(json.dumps(content, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def sync_table(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]], run_id: str) -> dict[str, int]:
    """Make ``table`` hold exactly ``rows``: insert new keys, update changed ones, delete the rest.

    Returns:
        ``{"inserted": n, "updated": n, "deleted": n}``; all zero on a rerun over the same data.
    """
    key = [c.name for c in table.primary_key]
    stored = {tuple(r[:-1]): r[-1] for r in conn.execute(sa.select(*[table.c[k] for k in key], table.c._row_hash))}
    wanted: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        wanted[tuple(row[k] for k in key)] = {**row, "_row_hash": row_hash(row), "_run_id": run_id}
    new = [r for k, r in wanted.items() if k not in stored]
    changed = [r for k, r in wanted.items() if k in stored and stored[k] != r["_row_hash"]]
    gone = [k for k in stored if k not in wanted]
    if new:
        conn.execute(table.insert(), new)
    for row in changed:
        conn.execute(table.update().where(*[table.c[k] == row[k] for k in key]).values(**row))
    for k in gone:
        conn.execute(table.delete().where(*[table.c[name] == value for name, value in zip(key, k)]))
    return {"inserted": len(new), "updated": len(changed), "deleted": len(gone)}
