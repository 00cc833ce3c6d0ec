"""A throw-away PKI for the mutual-TLS sandbox service (civil servants).

At sandbox start :func:`make_test_pki` writes, into a fresh directory, a CA,
a server certificate for ``127.0.0.1`` (IP SAN, plus DNS SAN ``localhost``)
and a client certificate (CN ``lgsp``), all EC P-256 and valid for 30 days.
:func:`server_context` builds the server side: TLS >= 1.2, client
certificate required and checked against that CA.

Example:
    >>> pki = make_test_pki(tempfile.mkdtemp())
    >>> requests.get(url, cert=(pki.client_cert, pki.client_key), verify=pki.ca_cert)
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=30)
CLIENT_COMMON_NAME = "lgsp"


@dataclass(frozen=True)
class TlsFiles:
    """PEM file paths of the sandbox PKI.

    Attributes:
        directory: The folder holding them (removed by ``SandboxHandle.stop``).
        ca_cert: CA certificate; clients verify the server with it.
        server_cert: Server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``).
        server_key: Server private key.
        client_cert: Client certificate (CN ``lgsp``) the server requires.
        client_key: Client private key (unencrypted, mode 600).
    """

    directory: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lgsp sandbox"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 usage: ExtendedKeyUsageOID | None = None,
                 sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool = False) -> str:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return str(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_test_pki(directory: str, host: str = "127.0.0.1") -> TlsFiles:
    """Generate the CA, server and client certificates into ``directory``.

    Args:
        directory: An existing, private folder (e.g. from ``tempfile.mkdtemp()``).
        host: The server address put in the IP SAN (when it is an IP address).

    Returns:
        The written :class:`TlsFiles`.
    """
    folder = Path(directory)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = _name("lgsp sandbox CA")
    ca = _certificate("lgsp sandbox CA", ca_key, ca_name, ca_key, ca=True)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = ipaddress.ip_address(host)
        if str(address) != "127.0.0.1":
            sans.append(x509.IPAddress(address))
    except ValueError:
        sans.append(x509.DNSName(host))
    server = _certificate(host, server_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans)
    client = _certificate(CLIENT_COMMON_NAME, client_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        directory=str(folder),
        ca_cert=_write(folder / "ca.pem", _cert_pem(ca)),
        server_cert=_write(folder / "server.pem", _cert_pem(server) + _cert_pem(ca)),
        server_key=_write(folder / "server-key.pem", _key_pem(server_key), private=True),
        client_cert=_write(folder / "client.pem", _cert_pem(client)),
        client_key=_write(folder / "client-key.pem", _key_pem(client_key), private=True),
    )


def server_context(pki: TlsFiles) -> ssl.SSLContext:
    """TLS server context requiring a client certificate signed by the sandbox CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(cafile=pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
