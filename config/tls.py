"""Tidegate's CAs and certificates on disk: a CA made on first use, name-constrained to what
it vouches for, and a server certificate it signs, both kept and renewed.

The local gateway serves them (gateway/tls.py, which also mints per-endpoint certificates by
SNI); the azure network provider makes the gateway VMs' own with the same code
(activities/azure/gateway_tls.py), which is why it lives below both.

Users are told to trust the CA; so that trusting it cannot let its key vouch for any other
site, the CA carries a critical X.509 NameConstraints extension permitting only what the
gateway serves: DNS ``localhost`` and the configured domain (each with its subdomains) and
the loopback addresses its certificates name (127.0.0.0/8, ::1). A CA on disk without exactly
these constraints (made before, or for another domain) is replaced on start
(``tls.ca_replaced``), and the certificates it signed are made again.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.files import write_atomically
from config.settings import Settings

log = structlog.get_logger("config.tls")

CA_DAYS = 3650
LEAF_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Paths of the gateway's TLS files; ``ca_cert`` is what clients trust."""

    domain: str
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    sni_dir: Path


def material_paths(settings: Settings) -> TlsMaterial:
    tls = settings.tls_dir
    return TlsMaterial(
        domain=settings.domain.lower(),
        ca_cert=tls / "ca.pem",
        ca_key=tls / "ca-key.pem",
        cert=tls / "server.pem",
        key=tls / "server-key.pem",
        sni_dir=tls / "sni",
    )


def server_names(domain: str) -> list[str]:
    """DNS names the main server certificate covers."""
    names = ["localhost", "*.localhost", domain, f"*.{domain}"]
    return list(dict.fromkeys(names))


def name_constraints(domain: str) -> x509.NameConstraints:
    """What the CA may vouch for: the names and addresses the gateway serves, nothing else."""
    dns = list(dict.fromkeys(["localhost", domain.lower().rstrip(".")]))
    permitted: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    permitted += [
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    ]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def ca_problem(ca: x509.Certificate, domain: str) -> str | None:
    """Why a CA on disk may not serve ``domain`` (None: it may): its name constraints must be
    critical and exactly those ``name_constraints(domain)`` gives."""
    try:
        found = ca.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return "the CA has no name constraints"
    if not found.critical:
        return "the CA's name constraints are not critical"
    wanted = name_constraints(domain)
    if set(found.value.permitted_subtrees or []) != set(wanted.permitted_subtrees or []) or (
        found.value.excluded_subtrees
    ):
        return f"the CA's name constraints are not those for domain {domain!r}"
    return None


def ensure_tls(settings: Settings) -> TlsMaterial:
    """Make the CA and server certificate on first start; reuse them later.

    The server certificate is remade when it no longer matches the CA or the domain, or
    nears expiry; the CA is kept as long as it is valid and constrained to the names served
    (a new domain makes a new CA), so clients keep trusting it.
    """
    material = material_paths(settings)
    material.sni_dir.mkdir(parents=True, exist_ok=True)
    with _locked(material.sni_dir.parent / ".lock"):
        now = dt.datetime.now(dt.UTC)
        ca = _load_ca(material, now)
        problem = ca_problem(ca[0], material.domain) if ca is not None else None
        if ca is None or problem is not None:
            replaced = ca is not None
            ca = _make_ca(material, now)
            if replaced:
                log.warning(
                    "tls.ca_replaced",
                    path=str(material.ca_cert),
                    reason=problem,
                    hint="clients that trusted the old CA must trust this file again",
                )
            else:
                log.info("tls.ca_created", path=str(material.ca_cert))
        ca_cert, ca_key = ca
        leaf = _load_cert(material.cert)
        wanted = server_names(material.domain)
        if leaf is None or not _leaf_ok(leaf, ca_cert, now, wanted) or not material.key.exists():
            _make_leaf(material.cert, material.key, ca_cert, ca_key, now, wanted)
            log.info("tls.cert_created", path=str(material.cert), names=wanted)
    return material


# --- certificate files ---


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise TLS set-up between processes sharing a state dir."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    write_atomically(path, data, mode)


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_ca(
    material: TlsMaterial, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert = _load_cert(material.ca_cert)
    if cert is None or cert.not_valid_after_utc - RENEW_BEFORE < now:
        return None
    try:
        key = serialization.load_pem_private_key(material.ca_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return None
    if key.public_key().public_numbers() != public.public_numbers():
        return None
    return cert, key


def _leaf_ok(leaf: x509.Certificate, ca: x509.Certificate, now: dt.datetime, names: list[str]) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if leaf.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    return set(names) <= set(sans.get_values_for_type(x509.DNSName))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(material: TlsMaterial, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidegate"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tidegate local CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(name_constraints(material.domain), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_file(material.ca_key, _key_pem(key), 0o600)
    _write_file(material.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _make_leaf(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    names: list[str],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    if "localhost" in names:
        alt_names += [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_file(key_path, _key_pem(key), 0o600)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
