"""The control credential and the rules for control listeners.

One random credential guards every control surface (the gateway's admin API, the host API,
and the control API, for now the payload codec endpoint). It is made once, on the first start, as
``$TIDEGATE_HOME/control.token`` (mode 0600, the home itself 0700), or given to a process as
``TIDEGATE_CONTROL_TOKEN`` when the parts run on several machines. Callers send it as
``Authorization: Bearer <credential>``; servers compare in constant time.

A control listener on loopback may speak plain HTTP (only this machine reaches it, and the
credential still guards it); bound beyond loopback it must serve TLS, or refuse to start.
"""

from __future__ import annotations

import hmac
import os
import secrets
import ssl
from pathlib import Path

import aiohttp

from config.settings import Settings, is_loopback

CONTROL_TOKEN_FILE = "control.token"
TOKEN_ENV = "TIDEGATE_CONTROL_TOKEN"


class ControlAccessError(RuntimeError):
    """A control surface cannot start, or be reached, as configured; the message says why."""


def ensure_home(settings: Settings) -> Path:
    """The state dir, made if missing, readable by its owner only (keys, CA key, credential)."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    return home


def _token_path(settings: Settings) -> Path:
    return settings.home / CONTROL_TOKEN_FILE


def ensure_control_token(settings: Settings) -> str:
    """The credential, made on first use (by whichever process starts first; the file is
    created exclusively, so two starting at once agree on one)."""
    if settings.control_token is not None:
        return settings.control_token.get_secret_value()
    ensure_home(settings)
    path = _token_path(settings)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_control_token(settings)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return read_control_token(settings)


def read_control_token(settings: Settings) -> str:
    """The credential a client sends: the setting, else the state dir's file."""
    if settings.control_token is not None:
        return settings.control_token.get_secret_value()
    path = _token_path(settings)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ControlAccessError(
            f"no control credential: {path} does not exist; run `tidegate up` once, or set {TOKEN_ENV}"
        ) from None
    if not token:
        raise ControlAccessError(f"no control credential: {path} is empty")
    return token


def control_headers(settings: Settings) -> dict[str, str]:
    """What a client of a control surface sends."""
    return {"Authorization": f"Bearer {read_control_token(settings)}"}


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization`` header against the credential."""
    given = (authorization or "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def control_server_ssl(settings: Settings, *, bind: str, setting: str) -> ssl.SSLContext | None:
    """TLS for a control listener: none on loopback unless a certificate is set; beyond
    loopback a certificate is required. ``setting`` names the bind variable in the error."""
    cert, key = settings.control_tls_cert, settings.control_tls_key
    if cert is None or key is None:
        if is_loopback(bind):
            return None
        raise ControlAccessError(
            f"{setting}={bind} listens beyond loopback: set TIDEGATE_CONTROL_TLS_CERT and "
            "TIDEGATE_CONTROL_TLS_KEY so it serves HTTPS (the control credential is required "
            "either way), or bind it to 127.0.0.1"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def control_session(
    settings: Settings,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> aiohttp.ClientSession:
    """The one way a client reaches a control surface: the credential (read now, since a
    process started later may be the one that made it) and, for https URLs, the control CA
    (`ssl_context` when the caller keeps one, else built here)."""
    connector = aiohttp.TCPConnector(ssl=ssl_context or control_client_ssl(settings))
    headers = control_headers(settings)
    if timeout is None:  # aiohttp's own default
        return aiohttp.ClientSession(headers=headers, connector=connector)
    return aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout)


def control_client_ssl(settings: Settings) -> ssl.SSLContext:
    """What a client of an https control URL trusts: the system's CAs, plus the configured
    bundle or the local CA."""
    context = ssl.create_default_context()
    bundle = settings.control_ca_file or settings.tls_dir / "ca.pem"
    if bundle.exists():
        context.load_verify_locations(cafile=str(bundle))
    return context
