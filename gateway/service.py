"""The gateway's operations, independent of HTTP: authenticate, authorise, read, audit.

`Gateway` holds the engines (a read-only one for the shared views, a writer for the
registry and the audit), the agency registry, the reader and the dataset catalog. The
REST routes (gateway.api) and the CKAN actions (gateway.ckan) both call it, so both
apply the same access rules and write the same audit.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from catalog import load_catalog
from catalog.models import Catalog, SharedDatasetSpec
from gateway import metrics
from gateway.access import AccessDenied, Authenticator, RateLimiter, authorize
from gateway.agencies import AgencyRegistry, Principal
from gateway.audit import AuditEntry, AuditLog
from gateway.changes import ChangeFeed, TokenExpired
from gateway.datasets import DatasetCatalog
from gateway.lookup import LiveLookups, LookupFailed
from gateway.records import QueryError, Reader, RecordQuery, read_engine
from gateway.settings import GatewaySettings, load_gateway_settings
from warehouse.store import make_engine

log = logging.getLogger("lgsp.gateway")


class UnknownDataset(LookupError):
    """No shared dataset by that name (404)."""


class Gateway:
    """Everything a request needs, built once per process."""

    def __init__(self, settings: GatewaySettings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or load_gateway_settings()
        self.catalog = catalog or load_catalog()
        self.read_engine = read_engine(self.settings.database_url, self.settings.query_timeout_s)
        self.write_engine = _write_engine(self.settings.database_url)
        self.registry = AgencyRegistry(self.write_engine, self.catalog)
        self.authenticator = Authenticator(self.registry, self.settings)
        self.limiter = RateLimiter()
        self.reader = Reader(self.read_engine, self.catalog, self.settings)
        self.datasets = DatasetCatalog(self.read_engine, self.catalog,
                                       {n: self.reader.sortable(n) for n in self.catalog.sharing})
        self.audit = AuditLog(self.write_engine)
        self.lookups = LiveLookups(self.settings, self.catalog, self.reader, self.datasets.freshness)
        self.changes = ChangeFeed(self.reader)

    def close(self) -> None:
        """Flush the audit and release the connections."""
        self.audit.close()
        self.lookups.close()
        self.read_engine.dispose()
        self.write_engine.dispose()

    # --- who and how often -------------------------------------------------------------

    def authenticate(self, secret: str | None, client: str) -> Principal:
        """The caller, rate-limited (per agency, or per client address when anonymous)."""
        return self._limited(self.authenticator.principal(secret), client)

    def authenticate_cached(self, secret: str | None, client: str) -> Principal | None:
        """`authenticate` when it needs no registry lookup (anonymous or a fresh cache entry), else None."""
        principal = self.authenticator.cached(secret)
        return None if principal is None else self._limited(principal, client)

    def _limited(self, principal: Principal, client: str) -> Principal:
        if principal.agency_id is None:
            self.limiter.take(f"address:{client}", self.settings.anonymous_rate_per_s)
        else:
            self.limiter.take(f"agency:{principal.agency_id}", principal.rate_per_s or self.settings.rate_per_s)
        return principal

    def shared(self, name: str) -> SharedDatasetSpec:
        shared = self.catalog.sharing.get(name)
        if shared is None:
            raise UnknownDataset(f"no shared dataset '{name}' (shared: {', '.join(sorted(self.catalog.sharing))})")
        return shared

    @contextmanager
    def audited(self, principal: Principal, name: str, action: str, query: RecordQuery) -> Iterator[dict[str, Any]]:
        """Authorise a read of `name` and audit it: refusals and bad queries too.

        Yields a dict the caller fills: `granted` (set here: a `Grant`), `rows` (the rows returned) and, if the
        read's outcome names it more exactly, `action`. A refusal with a `status` (AccessDenied, a
        failed lookup) is audited with it. The audit row is committed before the response leaves
        (AuditUnavailable otherwise).
        """
        shared = self.shared(name)
        outcome: dict[str, Any] = {"rows": None}
        described = query.describe(set(shared.personal), self.settings.pseudonym_key)
        try:
            outcome["granted"] = authorize(principal, shared)
            if outcome["granted"].scope:  # the rows the grant covers: the audit says which rows could be read
                described["scope"] = outcome["granted"].scope_dict()
            yield outcome
        except QueryError:
            self._record(principal, name, action, described, None, 400)
            raise
        except TokenExpired:
            self._record(principal, name, action, described, None, 410)
            raise
        except (AccessDenied, LookupFailed) as exc:
            self._record(principal, name, outcome.get("action", action), described, None, exc.status)
            raise
        self._record(principal, name, outcome.get("action", action), described, outcome["rows"], 200)

    def _record(self, principal: Principal, name: str, action: str, query: dict[str, Any],
                rows: int | None, status: int) -> None:
        self.audit.record(AuditEntry(agency_id=principal.label, dataset=name, action=action, query=query,
                                     rows_returned=rows, status=status))
        metrics.read_audited(name, action, principal.label, status, rows)
        log.info("read %s %s by %s: status %s, %s rows", action, name, principal.label, status, rows)


def _write_engine(url: str) -> sa.Engine:
    """The registry's and audit's engine (no parameters in error messages)."""
    if url.startswith("sqlite"):
        return make_engine(url)
    url = "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url
    return sa.create_engine(url, hide_parameters=True, pool_size=5, max_overflow=10, pool_pre_ping=True)


def prepare_database(database_url: str, catalog: Catalog) -> list[str]:
    """Bring the warehouse up to date, (re)create the shared views and the gateway's tables, index the scoped
    grants' columns, tell agencies of their datasets' changed columns (`gateway.events.note_schema_changes`).

    Run once before the gateway's processes start (`lgsp serve` does), never from
    each worker: DDL from several processes at once would contend. Returns the views.
    """
    from gateway.events import note_schema_changes
    from gateway.tables import create_gateway_tables
    from warehouse.shared import create_shared_views
    from warehouse.store import Warehouse

    warehouse = Warehouse(database_url, catalog)
    warehouse.create_all()
    views = create_shared_views(warehouse, catalog)
    create_gateway_tables(warehouse.engine)
    AgencyRegistry(warehouse.engine, catalog).index_scopes()  # a table remade since a scope was granted
    note_schema_changes(warehouse.engine, catalog)  # agencies told of their datasets' changed columns
    warehouse.engine.dispose()
    return views
