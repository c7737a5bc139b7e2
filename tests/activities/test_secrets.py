"""Endpoint keys: the local store makes them once per version, and the façade reads them only
through the secrets protocol, whichever store the settings choose."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.local.secrets import LocalSecretStore, key_sha256
from activities.providers import PROVIDERS
from config.contract.errors import NotFound
from config.contract.state import EndpointRecord, KeyType
from config.settings import Settings
from control.facade import Tidegate


async def test_keys_are_made_once_per_version_and_only_their_hashes_leave(tmp_path: Path) -> None:
    store = LocalSecretStore(Settings(home=tmp_path))
    first = await store.ensure_keys("ep", {"primary": 1, "secondary": 1})
    again = await store.ensure_keys("ep", {"primary": 1, "secondary": 1})
    keys = await store.keys("ep")
    assert again == first
    assert first.key_sha256 == [key_sha256(keys["primary"]), key_sha256(keys["secondary"])]
    assert stat.S_IMODE((tmp_path / "secrets" / "ep.json").stat().st_mode) == 0o600


async def test_a_higher_version_replaces_that_key_alone(tmp_path: Path) -> None:
    store = LocalSecretStore(Settings(home=tmp_path))
    await store.ensure_keys("ep", {"primary": 1, "secondary": 1})
    before = await store.keys("ep")
    result = await store.ensure_keys("ep", {"primary": 1, "secondary": 2})
    after = await store.keys("ep")
    assert result.versions == {"primary": 1, "secondary": 2}
    assert after["primary"] == before["primary"]
    assert after["secondary"] != before["secondary"]


async def test_deleted_keys_are_gone(tmp_path: Path) -> None:
    store = LocalSecretStore(Settings(home=tmp_path))
    await store.ensure_keys("ep", {"primary": 1, "secondary": 1})
    await store.delete_keys("ep")
    await store.delete_keys("ep")  # again: nothing to do
    assert await store.keys("ep") == {}


class MemoryStore:
    def __init__(self) -> None:
        self.held: dict[str, dict[KeyType, str]] = {"ep": {"primary": "p-key", "secondary": "s-key"}}

    async def keys(self, endpoint: str) -> dict[KeyType, str]:
        return self.held.get(endpoint, {})


async def test_the_facade_reads_keys_from_the_store_the_settings_choose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PROVIDERS["secrets"], "memory", lambda settings: MemoryStore())
    settings = Settings(home=tmp_path, control_token=SecretStr("test-credential"), secrets_provider="memory")
    facade = Tidegate(settings, client=None)  # type: ignore[arg-type]

    async def key_endpoint(name: str) -> EndpointRecord:  # as the endpoint's workflow answers
        return EndpointRecord(name=name, auth_mode="key")

    monkeypatch.setattr(facade, "describe", key_endpoint)
    assert await facade.get_credentials("ep") == {"primaryKey": "p-key", "secondaryKey": "s-key"}
    with pytest.raises(NotFound):
        await facade.get_credentials("other")


async def test_the_token_signing_key_follows_the_primary_key(tmp_path: Path) -> None:
    store = LocalSecretStore(Settings(home=tmp_path))
    first = await store.ensure_keys("ep", {"primary": 1, "secondary": 1})
    secondary = await store.ensure_keys("ep", {"primary": 1, "secondary": 2})
    primary = await store.ensure_keys("ep", {"primary": 2, "secondary": 2})

    signing = await store.signing_key("ep")
    assert len(first.token_public_keys) == 1 and secondary.token_public_keys == first.token_public_keys
    assert primary.token_public_keys != first.token_public_keys
    assert signing is not None and [signing.public] == primary.token_public_keys and signing.version == 2
    assert signing.private not in json.dumps(primary.model_dump())  # only the public half leaves
