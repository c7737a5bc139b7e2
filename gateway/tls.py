"""Local TLS: a CA made on first start, a server certificate, and per-endpoint certificates.

Clients such as curl refuse a wildcard directly under a single-label name (``*.localhost``),
so the server context's SNI callback mints a certificate for the exact name asked for
(``my-ep.localhost``), signed by the same CA, caches it in memory and under ``tls/sni/``.
Only names of endpoints the gateway serves are minted, so a client cannot make it sign (and
store) certificates for arbitrary names.

The CA and the server certificate are made by config/tls.py (see there for the CA's name
constraints); this module serves them.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from config.settings import Settings
from config.tls import (
    CA_DAYS,
    LEAF_DAYS,
    RENEW_BEFORE,
    TlsMaterial,
    _leaf_ok,
    _load_ca,
    _load_cert,
    _make_leaf,
    ca_problem,
    ensure_tls,
    material_paths,
    name_constraints,
    server_names,
)

__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "RENEW_BEFORE",
    "SniMinter",
    "TlsMaterial",
    "ca_problem",
    "ensure_tls",
    "given_context",
    "given_material",
    "material_paths",
    "name_constraints",
    "server_context",
    "server_names",
]

log = structlog.get_logger("gateway.tls")
MAX_SNI_NAMES = 1024
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def given_material(settings: Settings) -> TlsMaterial | None:
    """The certificate the settings hand the data plane (TIDEGATE_GATEWAY_TLS_CERT/_KEY), or
    None (the local CA's). A gateway VM on Azure serves one the worker made or was given: it
    holds no CA key, so it mints nothing."""
    cert, key = settings.gateway_tls_cert, settings.gateway_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TIDEGATE_GATEWAY_TLS_CERT and TIDEGATE_GATEWAY_TLS_KEY go together")
    return TlsMaterial(
        domain=settings.domain.lower(), ca_cert=cert, ca_key=key, cert=cert, key=key, sni_dir=cert.parent
    )


def given_context(material: TlsMaterial) -> ssl.SSLContext:
    """The listening context for a given certificate: that one for every name, no minting."""
    context = _new_server_context()
    context.load_cert_chain(material.cert, material.key)
    return context


def server_context(material: TlsMaterial, *, serves: Callable[[str], bool] | None = None) -> ssl.SSLContext:
    """The listening context: the main certificate, plus exact-name certificates by SNI for
    ``<label>.<domain>`` when ``serves(label)`` says the gateway serves that endpoint."""
    context = _new_server_context()
    context.load_cert_chain(material.cert, material.key)
    minter = SniMinter(material, serves or (lambda _label: True))
    context.sni_callback = minter.callback
    return context


class SniMinter:
    """Finds or mints the certificate for an exact SNI name, caching one context per name."""

    def __init__(self, material: TlsMaterial, serves: Callable[[str], bool]) -> None:
        self._material = material
        self._serves = serves
        self._suffix = "." + material.domain
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def callback(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        # Runs inside the handshake: must not raise (that aborts the handshake with an alert
        # and a traceback on stderr). A refusal just leaves the main certificate in place.
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        context = self._contexts.get(name)
        if context is None:
            context = self._context_for(name)
            if context is None:
                return None
        sslobj.context = context
        return None

    def _context_for(self, name: str) -> ssl.SSLContext | None:
        if not name.endswith(self._suffix):
            return None
        label = name[: -len(self._suffix)]
        if not _LABEL.match(label) or not self._serves(label):
            return None
        if len(self._contexts) >= MAX_SNI_NAMES:
            return None
        try:
            cert_path, key_path = self._files_for(name)
            context = _new_server_context()
            context.load_cert_chain(cert_path, key_path)
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("tls.sni_mint_failed", name=name, error=repr(exc))
            return None
        self._contexts[name] = context
        return context

    def _files_for(self, name: str) -> tuple[Path, Path]:
        material = self._material
        cert_path = material.sni_dir / f"{name}.pem"
        key_path = material.sni_dir / f"{name}-key.pem"
        now = dt.datetime.now(dt.UTC)
        if self._ca is None:
            ca = _load_ca(material, now)
            if ca is None:
                raise ValueError("the local CA is missing or unreadable")
            self._ca = ca
        ca_cert, ca_key = self._ca
        leaf = _load_cert(cert_path)
        if leaf is None or not _leaf_ok(leaf, ca_cert, now, [name]) or not key_path.exists():
            _make_leaf(cert_path, key_path, ca_cert, ca_key, now, [name])
            log.info("tls.sni_cert_created", name=name)
        return cert_path, key_path


def _new_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context
