"""SOAP transport: zeep over a configured requests.Session, XML hardening kept on.

Example upstream operation (national population database):
    ListChangedCitizens(since=2025-08-01T00:00:00Z, page=1, page_size=500)
    -> CitizenPage{items: [Citizen{personal_id, full_name, birth_date, ...}], total_pages: 4}
"""
from __future__ import annotations

from typing import Any

import requests
import zeep
import zeep.exceptions
import zeep.helpers
from lxml.etree import XMLSyntaxError
from zeep.transports import Transport as ZeepTransport

from catalog.models import SystemSpec
from connectors.errors import FatalError, RetriableError
from connectors.rest import CLIENT_ID

HARDENED = zeep.Settings(strict=True, xml_huge_tree=False, forbid_dtd=True,
                         forbid_entities=True, forbid_external=True)


def _fault_is_server(fault: zeep.exceptions.Fault) -> bool:
    code = str(fault.code or "")
    return code.split(":")[-1].startswith("Server") or code.startswith("Server")


class SoapTransport:
    """Calls one operation of a WSDL service; returns the response as plain dicts."""

    def __init__(self, system: SystemSpec, wsdl: str, operation: str) -> None:
        self.system, self.operation = system, operation
        self.wsdl = wsdl
        self._client: zeep.Client | None = None

    def _connect(self) -> zeep.Client:
        if self._client is None:
            session = requests.Session()
            session.headers["X-Client-Id"] = CLIENT_ID
            transport = ZeepTransport(session=session, timeout=self.system.timeout_s,
                                      operation_timeout=self.system.timeout_s)
            try:
                self._client = zeep.Client(self.wsdl, transport=transport, settings=HARDENED)
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise RetriableError(self.system.name, "WSDL", f"cannot load WSDL ({type(exc).__name__})") from None
            except zeep.exceptions.TransportError as exc:
                if exc.status_code >= 500:
                    raise RetriableError(self.system.name, "WSDL", f"HTTP {exc.status_code} loading WSDL") from None
                raise FatalError(self.system.name, "WSDL", f"HTTP {exc.status_code} loading WSDL",
                                 "check the endpoint in catalog/systems.yaml") from None
        return self._client

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        client = self._connect()
        name = self.operation
        try:
            result = getattr(client.service, name)(**params)
        except zeep.exceptions.Fault as fault:
            if _fault_is_server(fault):
                raise RetriableError(self.system.name, name, f"SOAP server fault: {fault.message}") from None
            raise FatalError(self.system.name, name, f"SOAP client fault: {fault.message}",
                             "the request was refused; check the parameters") from None
        except zeep.exceptions.TransportError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                raise RetriableError(self.system.name, name, f"HTTP {exc.status_code}") from None
            raise FatalError(self.system.name, name, f"HTTP {exc.status_code}") from None
        except requests.Timeout:
            raise RetriableError(self.system.name, name, f"timed out after {self.system.timeout_s}s") from None
        except requests.ConnectionError as exc:
            raise RetriableError(self.system.name, name, f"connection failed ({type(exc).__name__})") from None
        except (XMLSyntaxError, zeep.exceptions.XMLParseError, zeep.exceptions.DTDForbidden,
                zeep.exceptions.EntitiesForbidden) as exc:
            raise FatalError(self.system.name, name, f"malformed or unsafe XML response ({type(exc).__name__})",
                             "the peer sent a payload lgsp refuses to parse; nothing was landed from it") from None
        body = zeep.helpers.serialize_object(result, target_cls=dict)
        if not isinstance(body, dict):
            return {"items": body}
        return body

    def close(self) -> None:
        if self._client is not None:
            self._client.transport.session.close()
