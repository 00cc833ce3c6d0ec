"""SOAP transport: zeep over a PeerSession, XML hardening kept on.

Example upstream operation (national population database):
    ListChangedCitizens(since=2025-08-01T00:00:00Z, page=1, page_size=500)
    -> CitizenPage{items: [Citizen{personal_id, full_name, birth_date, ...}], total_pages: 4}
"""
from __future__ import annotations

from typing import Any

import requests
import zeep
import zeep.exceptions
from lxml.etree import XMLSyntaxError
from zeep.transports import Transport as ZeepTransport

from catalog.loader import resolve_timeout
from catalog.models import SystemSpec
from connectors import soap_records
from connectors.errors import FatalError, RetriableError
from connectors.http import open_session
from connectors.message_log import MessageLog
from connectors.secrets import redact

HARDENED = zeep.Settings(strict=True, xml_huge_tree=False, forbid_dtd=True,
                         forbid_entities=True, forbid_external=True)


def _fault_is_server(fault: zeep.exceptions.Fault) -> bool:
    code = str(fault.code or "")
    return code.split(":")[-1].startswith("Server") or code.startswith("Server")


class SoapTransport:
    """Calls one operation of a WSDL service; returns the response as plain dicts."""

    def __init__(self, system: SystemSpec, wsdl: str, operation: str, log: MessageLog | None = None,
                 fast_records: bool = True) -> None:
        self.system, self.operation = system, operation
        self.wsdl = wsdl
        self.fast_records = fast_records  # flat records parsed in one pass (connectors.soap_records)
        self.fast_types: list[str] = []
        self.timeout = resolve_timeout(system)
        self.session, self.auth = open_session(system, wsdl.split("?")[0], log)
        self._client: zeep.Client | None = None

    @property
    def log(self) -> MessageLog:
        return self.session.log

    def _connect(self) -> zeep.Client:
        if self._client is None:
            self.session.operation = "WSDL"
            transport = ZeepTransport(session=self.session, timeout=self.timeout, operation_timeout=self.timeout)
            try:
                self._client = zeep.Client(self.wsdl, transport=transport, settings=HARDENED,
                                           wsse=self.auth.wsse())
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise RetriableError(self.system.name, "WSDL", f"cannot load WSDL ({type(exc).__name__})") from None
            except zeep.exceptions.TransportError as exc:
                if exc.status_code >= 500:
                    raise RetriableError(self.system.name, "WSDL", f"HTTP {exc.status_code} loading WSDL") from None
                raise FatalError(self.system.name, "WSDL", f"HTTP {exc.status_code} loading WSDL",
                                 "check the endpoint in catalog/systems.yaml") from None
            if self.fast_records and self.operation:
                self.fast_types = soap_records.install(self._client, self.operation)
        return self._client

    def _invoke(self, name: str, params: dict[str, Any]) -> Any:
        client = self._connect()
        self.session.operation = name
        try:
            return getattr(client.service, name)(**params)
        except zeep.exceptions.Fault as fault:
            message = redact(str(fault.message), self.auth.secrets)
            if _fault_is_server(fault):
                raise RetriableError(self.system.name, name, f"SOAP server fault: {message}") from None
            raise FatalError(self.system.name, name, f"SOAP client fault {fault.code}: {message}",
                             "the request was refused; check the parameters and credentials",
                             code=str(fault.code or "")) from None
        except zeep.exceptions.TransportError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                raise RetriableError(self.system.name, name, f"HTTP {exc.status_code}") from None
            raise FatalError(self.system.name, name, f"HTTP {exc.status_code}", code=f"HTTP {exc.status_code}") from None
        except requests.Timeout:
            raise RetriableError(self.system.name, name, f"timed out after {self.timeout}s") from None
        except requests.exceptions.SSLError:
            raise FatalError(self.system.name, name, "TLS handshake failed",
                             "check the client certificate, its key and the CA (auth.cert/key/ca)") from None
        except requests.ConnectionError as exc:
            raise RetriableError(self.system.name, name, f"connection failed ({type(exc).__name__})") from None
        except zeep.exceptions.ValidationError as exc:  # before sending: the arguments do not fit the WSDL
            raise FatalError(self.system.name, name, f"the request does not fit the WSDL: {exc}",
                             "give the operation the arguments its WSDL declares (source.params in the catalog)"
                             ) from None
        except (XMLSyntaxError, zeep.exceptions.XMLParseError, zeep.exceptions.DTDForbidden,
                zeep.exceptions.EntitiesForbidden) as exc:
            raise FatalError(self.system.name, name, f"malformed or unsafe XML response ({type(exc).__name__})",
                             "the peer sent a payload lgsp refuses to parse; nothing was landed from it") from None

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        """One pull request: the operation called with `params` as its arguments."""
        body = soap_records.plain(self._invoke(self.operation, params))  # zeep's serialize_object, faster
        if not isinstance(body, dict):
            return {"items": body}
        return body

    def send(self, payload: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """One push message: the operation called with `payload`; the key travels inside it."""
        return self.call(payload)

    def close(self) -> None:
        self.session.close()
