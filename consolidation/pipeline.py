"""The consolidation run: pull -> land -> remap -> match -> resolve -> write, in that order.

Everything the run produces is written in one transaction (``merger_*``
tables, see :mod:`consolidation.tables`); a rerun over the same legacy data
changes no row. Nothing is lost: every record pulled ends in exactly one
consolidated record (``sources`` lists it) or in ``merger_review`` with a
reason, and the run stops before writing if that does not hold. Every
exchange with a legacy system goes to ``lgsp_message_log``, failed runs
included.

Example:
    >>> outcome = run_merger()          # LGSP_LEGACY_*_URL / _API_KEY point at the three systems
    >>> outcome.totals()["records_in"] == outcome.totals()["consolidated"] + outcome.totals()["in_review"]
    True
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from connectors import MessageLog
from consolidation.build import build_rows, reconciliation_rows, review_rows
from consolidation.mapping import commune_table
from consolidation.matching import Cluster, Review, match_citizens, match_dossiers, match_enterprises
from consolidation.records import SourceRecord, remap
from consolidation.sources import MergerCatalog, load_merger_catalog, pull_system
from consolidation.tables import merger_tables, sync_table
from lgsp.settings import load_settings
from warehouse.lake import Lake
from warehouse.store import make_engine
from warehouse.tables import tables_for_exchanges

KINDS = ("citizen", "enterprise", "dossier")
MATCHERS = {"citizen": match_citizens, "enterprise": match_enterprises, "dossier": match_dossiers}

__all__ = ["KINDS", "MergerOutcome", "consolidate", "run_merger"]


@dataclass
class MergerOutcome:
    """What one run did: the rows per table, what changed in the warehouse, where pages landed."""

    run_id: str
    rows: dict[str, list[dict[str, Any]]]
    changes: dict[str, dict[str, int]] = field(default_factory=dict)
    landed: list[str] = field(default_factory=list)

    @property
    def reconciliation(self) -> list[dict[str, Any]]:
        return self.rows["merger_reconciliation"]

    def totals(self) -> dict[str, int]:
        """Sums of the reconciliation counts over every system and kind."""
        names = ("records_in", "mapped", "consolidated", "merged", "conflicts", "in_review")
        return {n: sum(r[n] for r in self.reconciliation) for n in names}

    def changed_rows(self) -> int:
        return sum(sum(c.values()) for c in self.changes.values())


def _pull(merger: MergerCatalog, lake: Lake, run_id: str,
          logs: list[MessageLog]) -> tuple[list[SourceRecord], list[str]]:
    """Every kind from every system, typed; each system's exchanges in its own message log (appended to ``logs``)."""
    records: list[SourceRecord] = []
    landed: list[str] = []
    for priority, (system, spec) in enumerate(merger.systems.items()):
        log = MessageLog(system, spec.message_log)
        logs.append(log)
        for kind in KINDS:
            pulled = pull_system(merger, system, kind, lake, run_id, log)
            records += [SourceRecord.from_json(system, kind, priority, row) for row in pulled.records]
            landed.append(str(pulled.landing))
    return records, landed


def consolidate(records: list[SourceRecord]) -> dict[str, list[dict[str, Any]]]:
    """The rows of every ``merger_*`` table for these legacy records (pure: no I/O but the package data).

    Raises:
        RuntimeError: The counts do not balance (a bug: the run writes nothing then).
    """
    table = commune_table()
    reviews: list[Review] = []
    mapped_how: dict[str, str | None] = {}
    by_kind: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in records:
        outcome = remap(record, table)
        mapped_how[record.ref] = outcome.how
        if outcome.problem:
            reviews.append(Review(record, "unmapped_commune", outcome.problem))
        else:
            record.new_commune = outcome.new_code
            by_kind[record.kind].append(record)
    clusters: dict[str, list[Cluster]] = {}
    for kind in KINDS:
        clusters[kind], kind_reviews = MATCHERS[kind](by_kind[kind])
        reviews += kind_reviews
    built = build_rows(clusters, table.new_communes)
    merged = {m.ref for found in clusters.values() for c in found if len(c.members) > 1 for m in c.members}
    rows = dict(built.rows)
    rows["merger_review"] = review_rows(reviews)
    rows["merger_reconciliation"] = reconciliation_rows(records, mapped_how, built, reviews, merged)
    rows["merger_commune_map"] = table.rows()
    return rows


def run_merger(database_url: str | None = None, lake_root: str | None = None,
               merger: MergerCatalog | None = None) -> MergerOutcome:
    """Pull the three legacy systems, consolidate, and write the ``merger_*`` tables in one transaction.

    Args:
        database_url: The warehouse (default: ``LGSP_DATABASE_URL`` or the embedded SQLite).
        lake_root: Where pages land (default: ``LGSP_LAKE``).
        merger: The legacy systems (default: ``catalog/merger.yaml``).

    Raises:
        connectors.ConnectorError: A legacy system failed (names the system and operation); nothing written.
        RuntimeError: The counts do not balance; nothing written.
    """
    settings = load_settings()
    engine = make_engine(database_url or settings.database_url)
    metadata = sa.MetaData()
    tables = merger_tables(metadata)
    message_log = next(t for t in tables_for_exchanges(metadata) if t.name == "lgsp_message_log")
    metadata.create_all(engine, tables=[*tables.values(), message_log])
    run_id = datetime.now(UTC).strftime("merger-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    logs: list[MessageLog] = []
    try:
        records, landed = _pull(merger or load_merger_catalog(), Lake(lake_root or settings.lake_root), run_id, logs)
        rows = consolidate(records)
        outcome = MergerOutcome(run_id, rows, landed=landed)
        with engine.begin() as conn:
            for name, table in tables.items():
                outcome.changes[name] = sync_table(conn, table, rows[name], run_id)
            _write_exchanges(conn, message_log, logs)
    except BaseException:
        with engine.begin() as conn:  # what was said to the peers is kept even when the run fails
            _write_exchanges(conn, message_log, logs)
        raise
    finally:
        engine.dispose()
    return outcome


def _write_exchanges(conn: sa.Connection, table: sa.Table, logs: list[MessageLog]) -> None:
    """The run's exchanges with the legacy systems into ``lgsp_message_log`` (bodies redacted by the log)."""
    exchanges = [row for log in logs for row in log.drain()]
    if exchanges:
        conn.execute(table.insert(), exchanges)
