"""Connectors: talk to external systems (SOAP via zeep, REST via requests).

`open_transport(system, source)` picks the transport for the system's
protocol; `iter_pages` pages through an operation with retries.
"""
from __future__ import annotations

from catalog.loader import resolve_endpoint
from catalog.models import SourceSpec, SystemSpec
from connectors.errors import ConnectorError, FatalError, RetriableError, RetriesExhausted
from connectors.source import Page, Transport, iter_pages


def open_transport(system: SystemSpec, source: SourceSpec) -> Transport:
    """The transport for `system`'s protocol, bound to `source.operation`."""
    endpoint = resolve_endpoint(system)
    if system.protocol == "soap":
        from connectors.soap import SoapTransport

        return SoapTransport(system, endpoint, source.operation)
    from connectors.rest import RestTransport

    return RestTransport(system, endpoint, source.operation)


__all__ = ["ConnectorError", "FatalError", "Page", "RetriableError", "RetriesExhausted",
           "Transport", "iter_pages", "open_transport"]
