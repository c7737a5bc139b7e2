"""A deployment's scale set as ARM takes it, decided without calling ARM: its name, the whole
body a PUT sends (so the same request is the same body), and how a VM's power state and health
read as an instance phase."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from activities.azure.bootstrap import custom_data
from config.azure_vm import VmBoot
from config.contract.activities import RequestInstancesInput
from config.host_api import InstancePhase, ProbeSpec
from config.settings import Settings

# Tags that map a scale set back to its deployment (and say which spec its model runs).
TAG_ENDPOINT = "tidegate-endpoint"
TAG_DEPLOYMENT = "tidegate-deployment"
TAG_SPEC = "tidegate-spec-hash"
NIC_NAME = "tidegate-nic"
# Azure's bounds for the Application Health extension's settings.
HEALTH_INTERVAL_BOUNDS = (5, 60)
HEALTH_PROBES_BOUNDS = (1, 24)
SCALE_SET_NAME_MAX = 64


class AzureSettingsMissing(ValueError):
    """The azure provider was chosen without the settings it cannot work without."""


def scale_set_name(endpoint: str, deployment: str) -> str:
    """The deployment's scale set, the same name every time (Azure: at most 64 characters)."""
    name = f"tg-{endpoint}-{deployment}".lower()
    if len(name) <= SCALE_SET_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: SCALE_SET_NAME_MAX - 9]}-{digest}"


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))


def health_extension(probe: ProbeSpec, port: int) -> dict[str, Any]:
    """The Application Health extension probing the readiness route (`GET /` on azmlinfsrv)."""
    return {
        "name": "HealthExtension",
        "properties": {
            "publisher": "Microsoft.ManagedServices",
            "type": "ApplicationHealthLinux",
            "typeHandlerVersion": "2.0",
            "autoUpgradeMinorVersion": True,
            "settings": {
                "protocol": "http",
                "port": port,
                "requestPath": "/",
                "intervalInSeconds": _clamp(probe.period, HEALTH_INTERVAL_BOUNDS),
                "numberOfProbes": _clamp(probe.failure_threshold, HEALTH_PROBES_BOUNDS),
            },
        },
    }


def image_reference(image: str) -> dict[str, str]:
    """`publisher:offer:sku:version` (the az CLI's URN) or an image resource id."""
    if image.startswith("/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4:
        raise AzureSettingsMissing(
            f"TIDEGATE_AZURE_IMAGE={image!r}: expected publisher:offer:sku:version or a resource id"
        )
    publisher, offer, sku, version = parts
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def vm_boot(request: RequestInstancesInput, settings: Settings) -> VmBoot:
    """What each VM is told: the runtime with its artifacts as URLs the VM can fetch."""
    runtime = request.runtime
    model_dir = _fetchable(runtime.model_dir) if runtime.model_dir else None
    fetched = runtime.model_copy(update={"code_dir": _fetchable(runtime.code_dir), "model_dir": model_dir})
    return VmBoot(
        runtime=fetched, port=settings.azure_instance_port, allow_pip_options=settings.allow_pip_options
    )


def scale_set_body(request: RequestInstancesInput, settings: Settings) -> dict[str, Any]:
    """The whole desired state of a deployment's scale set: the same request, the same body."""
    runtime = request.runtime
    subnet_id = (
        f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{settings.azure_resource_group}"
        f"/providers/Microsoft.Network/virtualNetworks/{settings.azure_vnet}/subnets/{settings.azure_subnet}"
    )
    user = settings.azure_admin_username
    prefix = "tg" + hashlib.sha256(f"{runtime.endpoint}/{runtime.deployment}".encode()).hexdigest()[:7]
    return {
        "location": settings.azure_location,
        "tags": {
            TAG_ENDPOINT: runtime.endpoint,
            TAG_DEPLOYMENT: runtime.deployment,
            TAG_SPEC: runtime.spec_hash,
        },
        "sku": {"name": request.instance_type, "tier": "Standard", "capacity": request.instance_count},
        "properties": {
            "orchestrationMode": "Uniform",
            # A new spec reimages every VM (max_surge 0's meaning); rolling updates are not here yet.
            "upgradePolicy": {"mode": "Automatic"},
            "overprovision": False,
            "virtualMachineProfile": {
                "osProfile": {
                    "computerNamePrefix": prefix,
                    "adminUsername": user,
                    "customData": custom_data(vm_boot(request, settings)),
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {
                            "publicKeys": [
                                {
                                    "path": f"/home/{user}/.ssh/authorized_keys",
                                    "keyData": settings.azure_ssh_public_key,
                                }
                            ]
                        },
                    },
                },
                "storageProfile": {
                    "imageReference": image_reference(settings.azure_image),
                    "osDisk": {
                        "createOption": "FromImage",
                        "caching": "ReadWrite",
                        "managedDisk": {"storageAccountType": "Standard_LRS"},
                    },
                },
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {
                            "name": NIC_NAME,
                            "properties": {
                                "primary": True,
                                "ipConfigurations": [
                                    {"name": "ipconfig", "properties": {"subnet": {"id": subnet_id}}}
                                ],
                            },
                        }
                    ]
                },
                "extensionProfile": {
                    "extensions": [health_extension(runtime.readiness_probe, settings.azure_instance_port)]
                },
            },
        },
    }


def instance_phase(power: str | None, health: str | None) -> InstancePhase:
    """A VM's power state and Application Health verdict as the host's instance phase."""
    if power is not None and power != "PowerState/running":
        return "stopped" if power in ("PowerState/stopping", "PowerState/deallocating") else "failed"
    match health:
        case "HealthState/healthy":
            return "ready"
        case "HealthState/unhealthy":
            return "unready"
        case _:
            return "starting"


def _fetchable(source: str) -> str:
    """A snapshot URL (signed by the provider) as it is; a local path as a file URL (the fake's)."""
    return source if source.startswith(("https://", "http://")) else Path(source).as_uri()
