"""Endpoint tokens (`auth_mode: aml_token`): issued by the control plane, checked by every gateway
with no network call.

A token is a compact JWS (`header.claims.signature`, base64url) signed with the endpoint's
Ed25519 key: the private key stays in the secret store, the gateways hold only public keys
(they arrive in the route table, and may sit in workflow history: they open nothing). The
header must say `EdDSA`; any other algorithm, `none` included, is refused before anything else
is read. Claims: `aud` (the endpoint), `iat`, `exp` (seconds since the epoch), `kid` (the
signing key's version, which follows the primary key's: `regenerate-keys --key-type primary`
retires every token issued before).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALGORITHM = "EdDSA"
ISSUER = "tidegate"
DEFAULT_LIFETIME_SECONDS = 24 * 3600
_HEADER_PREFIX = "tidegate-endpoint:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def audience(endpoint: str) -> str:
    return f"{_HEADER_PREFIX}{endpoint}"


@dataclass(frozen=True)
class SigningKey:
    """An endpoint's private signing key, as the secret store keeps it (raw, base64)."""

    private: str
    version: int

    @classmethod
    def generate(cls, version: int) -> SigningKey:
        raw = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(private=base64.b64encode(raw).decode("ascii"), version=version)

    @property
    def public(self) -> str:
        """The verifying half: raw public key, base64 (what a route table carries)."""
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(self.private))
        return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_at: int  # seconds since the epoch
    refresh_after: int


def issue_token(key: SigningKey, endpoint: str, *, now: float, lifetime_seconds: int) -> IssuedToken:
    """A token for `endpoint`, valid from `now` for `lifetime_seconds`; refresh it after half."""
    issued = int(now)
    expires = issued + lifetime_seconds
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": str(key.version)}
    claims = {"iss": ISSUER, "aud": audience(endpoint), "iat": issued, "exp": expires}
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private))
    token = signing_input + "." + _b64(private.sign(signing_input.encode("ascii")))
    return IssuedToken(access_token=token, expires_at=expires, refresh_after=issued + lifetime_seconds // 2)


def load_public_keys(public_keys: list[str]) -> list[Ed25519PublicKey]:
    """Route-table public keys as verifiers; a malformed one is skipped (it verifies nothing)."""
    loaded = []
    for text in public_keys:
        try:
            loaded.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(text)))
        except (ValueError, binascii.Error):
            continue
    return loaded


def verify_token(token: str, endpoint: str, keys: list[Ed25519PublicKey], *, now: float) -> int | None:
    """The token's expiry if it is a valid, unexpired token for `endpoint` signed by one of
    `keys`; None otherwise (the caller answers 401 and says no more)."""
    parts = token.split(".")
    if len(parts) != 3 or not keys:
        return None
    try:
        header = json.loads(_unb64(parts[0]))
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            return None  # `none`, HS256 and the rest: refused before the signature is read
        signature = _unb64(parts[2])
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
    except (ValueError, binascii.Error, UnicodeError):
        return None
    for key in keys:
        try:
            key.verify(signature, signed)
            break
        except InvalidSignature:
            continue
    else:
        return None
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict) or claims.get("aud") != audience(endpoint):
        return None
    expires = claims.get("exp")
    if not isinstance(expires, int) or isinstance(expires, bool) or expires <= now:
        return None
    return expires
