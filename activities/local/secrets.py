"""`local` secret store: endpoint keys and token signing keys in files under the state dir
(mode 0600), never in workflow history."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from config.contract.activities import EnsureKeysResult
from config.contract.state import KeyType
from config.files import write_atomically
from config.settings import Settings
from config.tokens import SigningKey

KEY_TYPES: tuple[KeyType, ...] = ("primary", "secondary")
SIGNING = "token_signing"


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class LocalSecretStore:
    def __init__(self, settings: Settings) -> None:
        self._dir = settings.secrets_dir

    def _path(self, endpoint: str) -> Path:
        return self._dir / f"{endpoint}.json"

    def _read(self, endpoint: str) -> dict[str, dict[str, Any]]:
        path = self._path(endpoint)
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    async def ensure_keys(self, endpoint: str, versions: dict[KeyType, int]) -> EnsureKeysResult:
        stored = self._read(endpoint)
        changed = False
        for key_type in KEY_TYPES:
            want = versions.get(key_type, 1)
            have = stored.get(key_type)
            if have is None or int(have["version"]) < want:
                stored[key_type] = {"key": secrets.token_urlsafe(32), "version": want}
                changed = True
        # The token signing key follows the primary key: regenerating it retires every token.
        signing = stored.get(SIGNING)
        if signing is None or int(signing["version"]) < int(stored["primary"]["version"]):
            fresh = SigningKey.generate(int(stored["primary"]["version"]))
            stored[SIGNING] = {"private": fresh.private, "version": fresh.version}
            changed = True
        if changed:
            self._write(endpoint, stored)
        return EnsureKeysResult(
            key_sha256=[key_sha256(str(stored[k]["key"])) for k in KEY_TYPES],
            versions={k: int(stored[k]["version"]) for k in KEY_TYPES},
            token_public_keys=[self._signing(stored).public],
        )

    async def signing_key(self, endpoint: str) -> SigningKey | None:
        stored = self._read(endpoint)
        return self._signing(stored) if SIGNING in stored else None

    @staticmethod
    def _signing(stored: dict[str, dict[str, Any]]) -> SigningKey:
        return SigningKey(private=str(stored[SIGNING]["private"]), version=int(stored[SIGNING]["version"]))

    async def keys(self, endpoint: str) -> dict[KeyType, str]:
        stored = self._read(endpoint)
        return {k: str(stored[k]["key"]) for k in KEY_TYPES if k in stored}

    async def delete_keys(self, endpoint: str) -> None:
        self._path(endpoint).unlink(missing_ok=True)

    def _write(self, endpoint: str, data: dict[str, dict[str, Any]]) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self._path(endpoint), json.dumps(data).encode(), 0o600)
