"""A deployment's own certificate authority and the certificates it issues (NATS clients and routes, HTTPS,
PostgreSQL), for a self-contained deployment; an operator with a CA of their own passes its files instead.

Keys are ECDSA P-256 (small, fast handshakes, accepted by nats-server, nginx, PostgreSQL and every client
library here). Private keys are written 0600 and never printed; certificates are public and written 0644 so a
container running under another uid can read them. Leaf certificates live 397 days (the CA/Browser Forum's
upper bound, so the same files also suit a browser-facing proxy); the CA ten years. `renew` issues new leaf
certificates from the same CA: peers keep trusting them, so servers reload them one at a time without downtime
(nats-server on SIGHUP, nginx on `-s reload`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
LEAF_DAYS = 397
CA_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its private key and the CA that verifies the peers (PEM files)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key in PKCS#8 PEM, readable by its owner only."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path

    @classmethod
    def load_or_create(cls, directory: Path, *, name: str = "Shinchoku deployment CA") -> CertificateAuthority:
        """The CA kept in `directory` (ca.pem, ca-key.pem 0600), created on first use."""
        cert_file, key_file = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_file.exists() and key_file.exists():
            return cls.from_files(cert_file, key_file)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = _now() - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_key(key_file, key)
        write_cert(cert_file, cert)
        return cls(cert=cert, key=key, cert_file=cert_file)

    @classmethod
    def from_files(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """An existing CA (the operator's intermediate, or one made by `load_or_create`)."""
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file}: only an ECDSA CA key is supported here")
        return cls(cert=cert, key=key, cert_file=cert_file)

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        server: bool = True,
        client: bool = False,
        days: int = LEAF_DAYS,
    ) -> TlsFiles:
        """A new key and certificate `name.pem` / `name-key.pem` in `directory`, signed by this CA.

        `server` certificates carry the DNS names and IP addresses as subject alternative names (what clients
        verify); `client` adds the clientAuth use (a NATS route presents its certificate both ways).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        dns, ips = list(dns), list(ips)
        uses = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        start = _now() - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(uses), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = TlsFiles(
            cert_file=directory / f"{name}.pem", key_file=directory / f"{name}-key.pem", ca_file=self.cert_file
        )
        write_key(files.key_file, key)
        write_cert(files.cert_file, cert)
        return files


def expires(cert_file: Path) -> dt.datetime:
    """When a certificate stops being valid (for `generate.py`'s renewal notice and the runbook)."""
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc
