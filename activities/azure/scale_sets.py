"""A deployment's scale set as ARM takes it, decided without calling ARM: its name, the whole
body a PUT sends (so the same request is the same body), and how a VM's power state and health
read as an instance phase."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from activities.azure.bootstrap import custom_data
from config.azure_vm import VmBoot
from config.contract.activities import RequestInstancesInput
from config.host_api import InstancePhase, ProbeSpec
from config.settings import Settings
from decisions.scale_set_update import ImageRecord

# Tags that map a scale set back to its deployment (and say which spec its model runs).
TAG_ENDPOINT = "tidegate-endpoint"
TAG_DEPLOYMENT = "tidegate-deployment"
TAG_SPEC = "tidegate-spec-hash"
# The rolling update's state, where every worker reads it: the VMs wanted of the spec, how many
# more may run meanwhile, which VMs are draining, the image chosen per runtime patch level.
TAG_WANTED = "tidegate-instance-count"
TAG_SURGE = "tidegate-max-surge"
TAG_DRAINING = "tidegate-draining"
TAG_IMAGES = ("tidegate-image", "tidegate-image-before")
USER_DATA_SPEC = "tidegate-spec-hash"
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


# A Compute Gallery image definition (no version): its newest version is looked up.
_GALLERY_IMAGE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/galleries/[^/]+/images/[^/]+$",
    re.IGNORECASE,
)


def gallery_image(image: str) -> bool:
    """A gallery image definition's resource id, whose versions are listed for the newest."""
    return bool(_GALLERY_IMAGE.match(image))


def image_records(tags: dict[str, str]) -> list[ImageRecord]:
    """The images a scale set's tags remember (`<patch level>=<spec>=<image>`), the current
    model's first."""
    records = []
    for name in TAG_IMAGES:
        level, _, rest = tags.get(name, "").partition("=")
        spec, _, image = rest.partition("=")
        if level.isdigit() and spec and image:
            records.append(ImageRecord(image=image, spec=spec, patch=int(level)))
    return records


def image_tags(records: list[ImageRecord]) -> dict[str, str]:
    return {name: f"{r.patch}={r.spec}={r.image}" for name, r in zip(TAG_IMAGES, records, strict=False)}


def spec_user_data(spec_hash: str) -> str:
    """Each VM's user data: the spec it was created with, readable for its whole life."""
    return base64.b64encode(json.dumps({USER_DATA_SPEC: spec_hash}).encode()).decode()


def spec_of_user_data(user_data: str | None) -> str | None:
    """The spec a VM's user data names; None: none (a VM from before user data was set)."""
    if not user_data:
        return None
    try:
        found = json.loads(base64.b64decode(user_data))
    except ValueError:
        return None
    spec = found.get(USER_DATA_SPEC) if isinstance(found, dict) else None
    return str(spec) if spec else None


def vm_boot(request: RequestInstancesInput, settings: Settings) -> VmBoot:
    """What each VM is told: the runtime with its artifacts as URLs the VM can fetch."""
    runtime = request.runtime
    model_dir = _fetchable(runtime.model_dir) if runtime.model_dir else None
    fetched = runtime.model_copy(update={"code_dir": _fetchable(runtime.code_dir), "model_dir": model_dir})
    return VmBoot(
        runtime=fetched, port=settings.azure_instance_port, allow_pip_options=settings.allow_pip_options
    )


def scale_set_body(
    request: RequestInstancesInput,
    settings: Settings,
    *,
    capacity: int | None = None,
    image: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole desired state of a deployment's scale set: the same request, the same body.
    `capacity`: the VMs to hold now (a rolling update's first step; default the count);
    `image`: the image version chosen (default the settings'); `tags`: the rolling update's."""
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
            TAG_WANTED: str(request.instance_count),
            TAG_SURGE: str(request.max_surge),
            **(tags or {}),
        },
        "sku": {
            "name": request.instance_type,
            "tier": "Standard",
            "capacity": request.instance_count if capacity is None else capacity,
        },
        "properties": {
            "orchestrationMode": "Uniform",
            # A new model reaches no VM by itself: new VMs are made from it and old ones deleted,
            # as the rolling update says (decisions/scale_set_update.py).
            "upgradePolicy": {"mode": "Manual"},
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
                "userData": spec_user_data(runtime.spec_hash),
                # The serial console, where a VM that fails says why (managed storage).
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
                "storageProfile": {
                    "imageReference": image_reference(image or settings.azure_image),
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
    """A VM's power state and Application Health verdict as the host's instance phase. A VM
    still powering on is starting, not failed (a new VM of a rolling update goes through it)."""
    if power == "PowerState/starting":
        return "starting"
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
