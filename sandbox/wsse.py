"""WS-Security UsernameToken check for the sandbox's SOAP services, plus SOAP fault plumbing.

:func:`require_username_token` wraps a SOAP WSGI app. Every POST must carry::

    <soap-env:Header>
      <wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">
        <wsse:UsernameToken>
          <wsse:Username>lgsp</wsse:Username>
          <wsse:Password Type="...#PasswordText">s3cret</wsse:Password>
        </wsse:UsernameToken>
      </wsse:Security>
    </soap-env:Header>

or the digest form (``Type="...#PasswordDigest"``, value
``Base64(SHA-1(nonce + created + password))`` plus ``wsse:Nonce`` (Base64) and
``wsu:Created`` within :data:`MAX_CLOCK_SKEW` of now) -- what zeep's
``UsernameToken(user, pw)`` and ``UsernameToken(user, pw, use_digest=True)`` send.
A missing or wrong token gives HTTP 500 with a SOAP 1.1 Fault whose faultcode is
``Client.Authentication`` (zeep raises ``Fault`` with ``code`` ending in it).
GET requests (the WSDL) pass unchecked. Nonces are not remembered: a resent
envelope is accepted again within the clock-skew window.

The envelope is parsed with a hardened lxml parser (no entities, no network,
no huge trees) and a document type declaration is refused outright
(``Client.XmlSyntaxError``). The raw body is then handed on unchanged. spyne
ignores header blocks its services do not declare, ``mustUnderstand`` included,
so the Security header needs no further handling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree

WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
SOAP11_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PASSWORD_TEXT = "#PasswordText"
PASSWORD_DIGEST = "#PasswordDigest"
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_BODY_BYTES = 10 * 1024 * 1024

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SoapClientError(Exception):
    """A request refused before it reaches the service, e.g. ``Client.Authentication``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def soap_fault_body(code: str, message: str) -> bytes:
    """Serialise a SOAP 1.1 Fault envelope shaped like spyne's own.

    Example: ``soap_fault_body('Client.Authentication', 'wrong password')`` gives
    ``<soap11env:Envelope ...><soap11env:Body><soap11env:Fault><faultcode>
    soap11env:Client.Authentication</faultcode><faultstring>wrong password</faultstring>...``.
    """
    env = etree.Element(f"{{{SOAP11_ENV_NS}}}Envelope", nsmap={"soap11env": SOAP11_ENV_NS})
    fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP11_ENV_NS}}}Body"), f"{{{SOAP11_ENV_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"soap11env:{code}"
    etree.SubElement(fault, "faultstring").text = message
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           load_dtd=False, dtd_validation=False)


def parse_envelope(body: bytes) -> etree._Element:
    """Parse a SOAP envelope safely; a DTD or broken XML raises ``Client.XmlSyntaxError``."""
    try:
        tree = etree.parse(io.BytesIO(body), _safe_parser())
    except etree.XMLSyntaxError as exc:
        raise SoapClientError("Client.XmlSyntaxError", f"the request is not well-formed XML: {exc}") from exc
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SoapClientError("Client.XmlSyntaxError", "document type declarations are not accepted")
    return tree.getroot()


def _text(token: etree._Element, tag: str) -> str:
    element = token.find(tag)
    return (element.text or "").strip() if element is not None else ""


def _check_digest(token: etree._Element, given: str, password: str, now: datetime) -> bool:
    nonce_b64, created = _text(token, f"{{{WSSE_NS}}}Nonce"), _text(token, f"{{{WSU_NS}}}Created")
    if not nonce_b64 or not created:
        raise SoapClientError("Client.Authentication", "a password digest needs wsse:Nonce and wsu:Created")
    try:
        nonce = base64.b64decode(nonce_b64, validate=True)
        created_at = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (binascii.Error, ValueError) as exc:
        raise SoapClientError("Client.Authentication", f"bad wsse:Nonce or wsu:Created: {exc}") from exc
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    if abs(now - created_at) > MAX_CLOCK_SKEW:
        raise SoapClientError("Client.Authentication", f"wsu:Created {created} is not within 5 minutes of now")
    expected = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest())
    return hmac.compare_digest(expected, given.encode())


def check_username_token(envelope: etree._Element, username: str, password: str,
                         now: datetime | None = None) -> None:
    """Raise ``Client.Authentication`` unless the envelope carries a valid UsernameToken."""
    token = envelope.find(f"{{{SOAP11_ENV_NS}}}Header/{{{WSSE_NS}}}Security/{{{WSSE_NS}}}UsernameToken")
    if token is None:
        raise SoapClientError("Client.Authentication", "a WS-Security UsernameToken header is required")
    pw_element = token.find(f"{{{WSSE_NS}}}Password")
    given = (pw_element.text or "").strip() if pw_element is not None else ""
    pw_type = pw_element.get("Type", PASSWORD_TEXT) if pw_element is not None else PASSWORD_TEXT
    user_ok = hmac.compare_digest(_text(token, f"{{{WSSE_NS}}}Username").encode(), username.encode())
    if pw_type.endswith(PASSWORD_DIGEST):
        pw_ok = _check_digest(token, given, password, now or datetime.now(UTC))
    elif pw_type.endswith(PASSWORD_TEXT):
        pw_ok = hmac.compare_digest(given.encode(), password.encode())
    else:
        raise SoapClientError("Client.Authentication", f"unsupported password type {pw_type!r}")
    if not (user_ok and pw_ok):
        raise SoapClientError("Client.Authentication", "unknown username or wrong password")


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise SoapClientError("Client.RequestTooLong", f"request body over {MAX_BODY_BYTES} bytes")
    return environ["wsgi.input"].read(length) if length > 0 else b""


def require_username_token(app: WsgiApp, username: str, password: str) -> WsgiApp:
    """Wrap a SOAP WSGI ``app`` so every POST needs a valid WS-Security UsernameToken.

    Args:
        app: The inner SOAP application (e.g. a spyne ``WsgiApplication``).
        username: The one account the service knows.
        password: Its password (checked as text or as a digest).

    Returns:
        A WSGI callable; refused requests get HTTP 500 with a SOAP 1.1 Fault.
    """

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() != "POST":
            return app(environ, start_response)
        try:
            body = _read_body(environ)
            check_username_token(parse_envelope(body), username, password)
        except SoapClientError as err:
            logging.getLogger(__name__).info("refused SOAP request: %s %s", err.code, err.message)
            fault = soap_fault_body(err.code, err.message)
            start_response("500 Internal Server Error",
                           [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(fault)))])
            return [fault]
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)

    return guarded


class ExpectedClientFaults(logging.Filter):
    """Drop spyne's ERROR-with-traceback log for the Client faults a service raises on purpose."""

    def __init__(self, codes: Iterable[str]) -> None:
        super().__init__()
        self.codes = frozenset(codes)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return getattr(exc, "faultcode", None) not in self.codes


def quiet_client_faults(codes: Iterable[str]) -> None:
    """Install (once per set of codes) a filter on spyne's client-fault logger."""
    logger = logging.getLogger("spyne.application.client")
    wanted = frozenset(codes)
    if not any(isinstance(f, ExpectedClientFaults) and f.codes == wanted for f in logger.filters):
        logger.addFilter(ExpectedClientFaults(wanted))
