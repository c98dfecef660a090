# -*- test-case-name: tests.test_transports -*-
"""Certificates for TLS tests, made with ``cryptography``: a root CA, an intermediate CA and a
server certificate for ``localhost`` / ``127.0.0.1`` signed by the intermediate, so a test can
serve a chain (``extraCertChain``) to a client that trusts only the root."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@attrs.frozen
class TLSFiles:
    """PEM files: ``ca`` is what a client trusts; the server uses ``key``, ``cert``, ``chain``."""

    ca: Path
    chain: Path
    cert: Path
    key: Path

    def endpoint(self, port: int, interface: str = "127.0.0.1", chain: bool = True) -> str:
        """The ``--listen`` string serving these files on ``port``."""
        extra = f":extraCertChain={self.chain}" if chain else ""
        return f"ssl:{port}:interface={interface}:privateKey={self.key}:certKey={self.cert}{extra}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    addresses: Sequence[str] = ("127.0.0.1",),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(address)) for address in addresses)]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_tls_files(directory: Path, addresses: Sequence[str] = ("127.0.0.1",)) -> TLSFiles:
    """Write a fresh root CA, intermediate and server certificate (for localhost and
    ``addresses``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate("mcpd test root", root_key, "mcpd test root", root_key, ca=True)
    middle = _certificate("mcpd test intermediate", middle_key, "mcpd test root", root_key, ca=True)
    leaf = _certificate("localhost", leaf_key, "mcpd test intermediate", middle_key, ca=False, addresses=addresses)
    files = TLSFiles(
        ca=directory / "ca.pem", chain=directory / "chain.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )
    files.ca.write_bytes(_pem(root))
    files.chain.write_bytes(_pem(middle))
    files.cert.write_bytes(_pem(leaf))
    files.key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files
