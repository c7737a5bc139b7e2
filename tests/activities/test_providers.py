"""Providers are picked by name from settings, and each one implements its kind's protocol,
so a new provider package plugs in with a row in activities/providers.py."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from activities.artifacts import ArtifactStore
from activities.compute import ComputeProvider
from activities.monitor import MonitorProvider
from activities.network import NetworkProvider
from activities.providers import PROVIDERS, UnknownProvider, provider
from activities.secrets import SecretStore
from config.settings import Settings

PROTOCOLS: dict[str, type] = {
    "compute": ComputeProvider,
    "network": NetworkProvider,
    "monitor": MonitorProvider,
    "secrets": SecretStore,
    "artifacts": ArtifactStore,
}
# What a provider needs before it can be built (building one makes no call).
NEEDS: dict[str, dict[str, str]] = {
    "azure": {"azure_storage_account_url": "https://example.blob.core.windows.net"},
}
ROWS = [(kind, name) for kind, by_name in PROVIDERS.items() for name in by_name]


# What the azure providers refuse to start without (no call is made: clients are built lazily).
AZURE = {
    "azure_subscription_id": "00000000-0000-0000-0000-000000000001",
    "azure_resource_group": "rg",
    "azure_location": "westeurope",
    "azure_vnet": "vnet",
    "azure_subnet": "subnet",
    "azure_ssh_public_key": "ssh-ed25519 AAAA test",
    "azure_gateway_subnet_prefix": "10.0.1.0/24",
}


def settings(tmp_path: Path, **given: Any) -> Settings:
    return Settings(home=tmp_path, control_token=SecretStr("test-credential"), **{**AZURE, **given})


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(protocol).items()
        if callable(member) and not name.startswith("_")
    }


def test_every_kind_has_a_protocol_and_a_local_provider() -> None:
    assert set(PROVIDERS) == set(PROTOCOLS)
    assert all("local" in by_name for by_name in PROVIDERS.values())


@pytest.mark.parametrize(("kind", "name"), ROWS, ids=[f"{k}-{n}" for k, n in ROWS])
def test_a_registered_provider_implements_its_kinds_protocol(tmp_path: Path, kind: str, name: str) -> None:
    chosen = {f"{kind}_provider": name, **NEEDS.get(name, {})}
    built = provider(kind, settings(tmp_path, **chosen))  # type: ignore[call-overload]
    for method, wanted in protocol_methods(PROTOCOLS[kind]).items():
        implemented = getattr(built, method, None)
        assert implemented is not None, f"{type(built).__name__} lacks {method}"
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(
            getattr(PROTOCOLS[kind], method)
        ), f"{type(built).__name__}.{method}: async where the protocol is not, or the reverse"
        given = list(inspect.signature(implemented).parameters)
        assert given == list(wanted.parameters)[1:], f"{type(built).__name__}.{method}{given}"


def test_one_setting_picks_every_kind_and_a_kind_setting_overrides_it(tmp_path: Path) -> None:
    chosen = settings(tmp_path, provider="local", monitor_provider="prometheus")
    assert type(provider("monitor", chosen)).__name__ == "PrometheusMonitorProvider"
    assert type(provider("compute", chosen)).__name__ == "LocalComputeProvider"
    assert type(provider("secrets", chosen)).__name__ == "LocalSecretStore"


def test_the_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_MONITOR_PROVIDER", "prometheus")
    monkeypatch.setenv("TIDEGATE_PROVIDER", "local")
    chosen = Settings(home=tmp_path)
    assert (chosen.provider_name("monitor"), chosen.provider_name("network")) == ("prometheus", "local")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"provider": "kubernetes"},
            "TIDEGATE_PROVIDER=kubernetes: no compute provider of that name (known: azure, local)",
        ),
        (
            {"compute_provider": "kubernetes"},
            "TIDEGATE_COMPUTE_PROVIDER=kubernetes: no compute provider of that name (known: azure, local)",
        ),
    ],
    ids=["the_shared_setting", "the_kinds_own_setting"],
)
def test_an_unknown_provider_names_the_setting_at_fault(
    tmp_path: Path, given: dict[str, str], message: str
) -> None:
    with pytest.raises(UnknownProvider) as refused:
        provider("compute", settings(tmp_path, **given))
    assert str(refused.value) == message


def test_the_azure_network_provider_names_the_settings_it_lacks(tmp_path: Path) -> None:
    from activities.azure.scale_sets import AzureSettingsMissing

    chosen = settings(tmp_path, network_provider="azure", azure_gateway_subnet_prefix=None)
    with pytest.raises(AzureSettingsMissing, match="TIDEGATE_AZURE_GATEWAY_SUBNET_PREFIX"):
        provider("network", chosen)


@pytest.mark.parametrize(
    ("values", "artifacts"),
    [
        pytest.param({}, "local", id="local_by_default"),
        pytest.param({"compute_provider": "azure"}, "local", id="azure_compute_without_storage_keeps_local"),
        pytest.param(
            {"compute_provider": "azure", "azure_storage_account_url": "https://a.blob.core.windows.net"},
            "azure",
            id="azure_compute_with_a_storage_account_keeps_snapshots_in_blob",
        ),
        pytest.param(
            {
                "compute_provider": "azure",
                "artifacts_provider": "local",
                "azure_storage_account_url": "https://a.blob.core.windows.net",
            },
            "local",
            id="an_explicit_artifacts_provider_wins",
        ),
        pytest.param(
            {"azure_storage_account_url": "https://a.blob.core.windows.net"},
            "local",
            id="storage_alone_changes_nothing",
        ),
    ],
)
def test_azure_compute_with_a_storage_account_picks_blob_artifacts(
    tmp_path: Path, values: dict[str, Any], artifacts: str
) -> None:
    assert Settings(home=tmp_path, **values).provider_name("artifacts") == artifacts
