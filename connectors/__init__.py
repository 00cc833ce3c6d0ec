"""Connectors: talk to external systems (SOAP via zeep, REST via requests).

`open_transport(system, source)` picks the transport for the system's
protocol; `iter_pages` pages through an operation with retries; the outbox
(`lgsp.outbox`) pushes with `Transport.send`.
"""
from __future__ import annotations

from catalog.loader import resolve_endpoint
from catalog.models import SourceSpec, SystemSpec
from connectors.errors import ConnectorError, FatalError, RetriableError, RetriesExhausted
from connectors.limits import CircuitOpen, limits_for
from connectors.message_log import MessageLog
from connectors.source import Page, Transport, iter_pages


def open_transport(system: SystemSpec, source: SourceSpec | None = None, operation: str | None = None,
                   method: str = "POST", log: MessageLog | None = None) -> Transport:
    """The transport for `system`'s protocol, bound to `source.operation` (pull) or `operation` (push)."""
    endpoint = resolve_endpoint(system)
    name = source.operation if source is not None else (operation or "")
    if system.protocol == "reference":
        from connectors.reference import ReferenceTransport

        return ReferenceTransport(system, endpoint, name)
    if system.protocol == "soap":
        from connectors.soap import SoapTransport

        return SoapTransport(system, endpoint, name, log=log)
    from connectors.rest import RestTransport

    return RestTransport(system, endpoint, name, method=source.method if source is not None else method, log=log)


__all__ = ["CircuitOpen", "ConnectorError", "FatalError", "MessageLog", "Page", "RetriableError",
           "RetriesExhausted", "Transport", "iter_pages", "limits_for", "open_transport"]
