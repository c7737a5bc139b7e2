"""Endpoint keys: made, read and forgotten by a secret store; only their hashes (and the token
signing key's public half) leave it.

Workflows reach the store through the key activities; the control façade reads keys from it
directly (`get-credentials`, `invoke`). Keys never enter workflow history.
"""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from config.contract.activities import DeleteKeysInput, EnsureKeysInput, EnsureKeysResult
from config.contract.names import Activity
from config.contract.state import KeyType
from config.tokens import SigningKey


class SecretStore(Protocol):
    """Keeps each endpoint's primary and secondary key and its token signing key: `local` in
    files under the state dir."""

    async def ensure_keys(self, endpoint: str, versions: dict[KeyType, int]) -> EnsureKeysResult:
        """Make each key whose stored version is below the asked one (idempotent), and a token
        signing key whenever the primary key is new; the hashes and versions of the keys now
        held, and the signing key's public half."""
        ...

    async def signing_key(self, endpoint: str) -> SigningKey | None:
        """The private key the control plane signs the endpoint's tokens with."""
        ...

    async def keys(self, endpoint: str) -> dict[KeyType, str]:
        """The keys themselves; empty when the endpoint has none."""
        ...

    async def delete_keys(self, endpoint: str) -> None: ...


class SecretActivities:
    def __init__(self, store: SecretStore) -> None:
        self._store = store

    @activity.defn(name=Activity.ENSURE_KEYS)
    async def ensure_keys(self, request: EnsureKeysInput) -> EnsureKeysResult:
        return await self._store.ensure_keys(request.endpoint, dict(request.versions))

    @activity.defn(name=Activity.DELETE_KEYS)
    async def delete_keys(self, request: DeleteKeysInput) -> None:
        await self._store.delete_keys(request.endpoint)
