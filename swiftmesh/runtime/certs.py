"""A development PKI for mutual TLS between SwiftMesh services: one CA and, per service, a key
pair whose certificate is valid both as a server (its host names) and as a client (so every
service can dial the others with it). Built with ``cryptography``'s X.509 API (RFC 5280).

For production, issue certificates from your own CA (cert-manager, Vault, a corporate PKI);
these are for development clusters and tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class IssuedPair:
    """Paths of one certificate and its private key (PEM)."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SwiftMesh dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for h in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            entries.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(entries)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert, key = out / "ca.pem", out / "ca.key"
    if not (cert.exists() and key.exists()):
        return None
    return (x509.load_pem_x509_certificate(cert.read_bytes()),
            serialization.load_pem_private_key(key.read_bytes(), password=None))  # type: ignore[return-value]


def make_dev_pki(out_dir: str | Path, services: list[str], hosts: list[str] | None = None,
                 days: int = DEFAULT_DAYS) -> dict[str, IssuedPair]:
    """Write ``ca.pem``/``ca.key`` (reused when present) and ``<service>.pem``/``<service>.key`` for
    each name in ``services`` into ``out_dir`` (keys mode 0600).

    Args:
        out_dir: the directory (created).
        services: certificate names, e.g. ``["hub", "trainer", "aligner", "gateway", "worker"]``;
            each is also added as a DNS name, so ``hub`` matches a compose/Kubernetes service name.
        hosts: extra DNS names / IP addresses every certificate is valid for (default
            ``localhost`` and ``127.0.0.1``).
        days: validity in days (365).

    Returns:
        ``{"ca": IssuedPair, "<service>": IssuedPair, ...}``.

    Raises:
        ValueError: an empty service list or a name with a path separator.
    """
    if not services:
        raise ValueError("at least one service name is needed")
    for s in services:
        if not s or "/" in s or "\\" in s or s.startswith("."):
            raise ValueError(f"bad certificate name {s!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hosts = list(hosts or DEFAULT_HOSTS)
    now = dt.datetime.now(dt.UTC)
    loaded = _load_ca(out)
    if loaded is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder().subject_name(_name("SwiftMesh dev CA")).issuer_name(_name("SwiftMesh dev CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        (out / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_key(out / "ca.key", ca_key)
    else:
        ca_cert, ca_key = loaded
    issued = {"ca": IssuedPair(out / "ca.pem", out / "ca.key")}
    for svc in services:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(svc)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san([svc, *hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (out / f"{svc}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(out / f"{svc}.key", key)
        issued[svc] = IssuedPair(out / f"{svc}.pem", out / f"{svc}.key")
    return issued
