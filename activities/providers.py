"""Which provider serves each kind, by name: `TIDEGATE_PROVIDER` for all, a per-kind setting
(`TIDEGATE_MONITOR_PROVIDER=prometheus`, ...) for one. A new provider (activities/azure/) is a
row here and a package beside local/; workflows and decisions do not change.

Factories import their module when called, so a process loads only the providers it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, overload

from config.settings import ProviderKind, Settings

if TYPE_CHECKING:
    from activities.artifacts import ArtifactStore
    from activities.compute import ComputeProvider
    from activities.monitor import MonitorProvider
    from activities.network import NetworkProvider
    from activities.secrets import SecretStore


def _local_compute(settings: Settings) -> ComputeProvider:
    from activities.local.compute import LocalComputeProvider

    return LocalComputeProvider(settings)


def _azure_compute(settings: Settings) -> ComputeProvider:
    from activities.azure.compute import AzureComputeProvider

    return AzureComputeProvider(settings)


def _local_network(settings: Settings) -> NetworkProvider:
    from activities.local.network import LocalNetworkProvider

    return LocalNetworkProvider(settings)


def _azure_network(settings: Settings) -> NetworkProvider:
    from activities.azure.network import AzureNetworkProvider

    return AzureNetworkProvider(settings)


def _local_monitor(settings: Settings) -> MonitorProvider:
    if settings.provider_name("network") == "azure" and settings.azure_gateway_instances > 0:
        # The gateways to read are the gateway scale set's VMs, found as route pushes find them.
        from activities.azure.gateway_monitor import AzureGatewaysMonitor

        return AzureGatewaysMonitor(settings)
    from activities.local.monitor import LocalMonitorProvider

    return LocalMonitorProvider(settings)


def _prometheus_monitor(settings: Settings) -> MonitorProvider:
    from activities.prometheus.monitor import PrometheusMonitorProvider

    return PrometheusMonitorProvider(settings.prometheus_url)


def _local_secrets(settings: Settings) -> SecretStore:
    from activities.local.secrets import LocalSecretStore

    return LocalSecretStore(settings)


def _local_artifacts(settings: Settings) -> ArtifactStore:
    from activities.local.artifacts import LocalArtifactStore

    return LocalArtifactStore(settings)


def _azure_artifacts(settings: Settings) -> ArtifactStore:
    from activities.azure.artifacts import BlobArtifactStore

    return BlobArtifactStore.from_settings(settings)


PROVIDERS: dict[ProviderKind, dict[str, Callable[[Settings], Any]]] = {
    "compute": {"local": _local_compute, "azure": _azure_compute},
    "network": {"local": _local_network, "azure": _azure_network},
    "monitor": {"local": _local_monitor, "prometheus": _prometheus_monitor},
    "secrets": {"local": _local_secrets},
    "artifacts": {"local": _local_artifacts, "azure": _azure_artifacts},
}


class UnknownProvider(ValueError):
    """A provider setting names no provider of its kind."""


@overload
def provider(kind: Literal["compute"], settings: Settings) -> ComputeProvider: ...
@overload
def provider(kind: Literal["network"], settings: Settings) -> NetworkProvider: ...
@overload
def provider(kind: Literal["monitor"], settings: Settings) -> MonitorProvider: ...
@overload
def provider(kind: Literal["secrets"], settings: Settings) -> SecretStore: ...
@overload
def provider(kind: Literal["artifacts"], settings: Settings) -> ArtifactStore: ...
def provider(kind: ProviderKind, settings: Settings) -> Any:
    """The provider of `kind` the settings choose, built from them."""
    name = settings.provider_name(kind)
    factory = PROVIDERS[kind].get(name)
    if factory is None:
        setting = (
            f"TIDEGATE_{kind.upper()}_PROVIDER"
            if getattr(settings, f"{kind}_provider")
            else "TIDEGATE_PROVIDER"
        )
        known = ", ".join(sorted(PROVIDERS[kind]))
        raise UnknownProvider(f"{setting}={name}: no {kind} provider of that name (known: {known})")
    return factory(settings)
