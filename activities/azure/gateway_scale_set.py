"""The gateway scale set as ARM takes it, decided without calling ARM: one per Tidegate
installation, the instances' image, its VMs' NICs in the load balancer's backend pool, and custom
data that boots `tidegate gateway` (through `python -m host.vm_gateway`) on each VM's private
address.

The body is the whole desired state, so the same settings and TLS material give the same body;
its hash is a tag, since ARM never returns custom data and a GET cannot show what a VM boots.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from activities.azure.bootstrap import IMAGE_PYTHON, MAX_CUSTOM_DATA_BYTES, VM_ROOT, CustomDataTooLarge
from activities.azure.load_balancer import TAG_ROLE, load_balancer_id, network_id
from activities.azure.scale_sets import image_reference
from config.azure_vm import GatewayBoot, boot_document
from config.settings import Settings

ROLE_GATEWAYS = "gateways"
TAG_GATEWAY_SPEC = "tidegate-gateway-spec"
# A host patch's image, kept in the model from then on (so the route pushes' own PUTs keep it):
# the image the model names when it is not the settings' (part of the body and its hash).
TAG_GATEWAY_IMAGE = "tidegate-gateway-image"
# A host patch's progress, not the desired state (left out of the hash): the image the model
# named before it (where a failed patch goes back to), and that a patch is rolling (one VM more
# than wanted may run: a route push must not scale it in).
TAG_GATEWAY_IMAGE_BEFORE = "tidegate-gateway-image-before"
TAG_GATEWAY_PATCHING = "tidegate-gateway-patching"
# The gateway VMs a host patch told to drain and when each may be deleted
# (`<instance id>@<unix time>`, as compute's `tidegate-draining`): a patch run again waits
# for them rather than telling them again.
TAG_GATEWAY_DRAINING = "tidegate-gateway-draining"
_PROGRESS_TAGS = (TAG_GATEWAY_SPEC, TAG_GATEWAY_IMAGE_BEFORE, TAG_GATEWAY_PATCHING, TAG_GATEWAY_DRAINING)
GATEWAY_NIC = "tidegate-gateway-nic"
COMPUTER_NAME_PREFIX = "tggw"
BOOT_FILE = "gateway-boot.json"
_HEREDOC_END = "TIDEGATE_GATEWAY_BOOT_END"


def backend_pool_id(settings: Settings) -> str:
    return f"{load_balancer_id(settings)}/backendAddressPools/{settings.azure_gateway_backend_pool}"


def gateway_subnet_id(settings: Settings) -> str:
    return (
        f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{settings.azure_resource_group}"
        f"/providers/Microsoft.Network/virtualNetworks/{settings.azure_vnet}"
        f"/subnets/{settings.azure_gateway_subnet}"
    )


def gateway_bootstrap_script(boot: GatewayBoot) -> str:
    """The cloud-init user data (POSIX sh) of a gateway VM. The boot description, secrets in
    it, goes to a file only root can read (umask 077), never onto a command line or into the
    environment; the agent reads it and hands the gateway its credential as a 0600 file.

    Floating IP: the load balancer's rules deliver packets still addressed to the endpoint's
    frontend IP. As root (cloud-init), one NAT rule redirects the HTTPS port to this VM's own
    address, where the gateway listens, for every frontend at once. The fake's VMs are not
    root, so there the rule is skipped (untested against Azure)."""
    document = boot_document(boot)
    if _HEREDOC_END in document:
        raise ValueError("the boot description contains the here-document terminator")
    port = boot.https_port
    return "\n".join(
        [
            "#!/bin/sh",
            "# Tidegate gateway bootstrap (cloud-init user data). Generated; do not edit.",
            "set -eu",
            "umask 077",
            f'root="${{TIDEGATE_VM_ROOT:-{VM_ROOT}}}"',
            f'python="${{TIDEGATE_PYTHON:-{IMAGE_PYTHON}}}"',
            'address="${TIDEGATE_VM_ADDRESS:-$(hostname -I | cut -d" " -f1)}"',
            'if [ "$(id -u)" = 0 ] && command -v iptables >/dev/null 2>&1; then',
            f"  iptables -t nat -C PREROUTING -p tcp --dport {port} -j REDIRECT --to-ports {port} 2>/dev/null"
            f" || iptables -t nat -A PREROUTING -p tcp --dport {port} -j REDIRECT --to-ports {port}",
            "fi",
            'mkdir -p "$root"',
            f"cat > \"$root/{BOOT_FILE}\" <<'{_HEREDOC_END}'",
            document,
            _HEREDOC_END,
            'cd "$root"',
            f'exec "$python" -m host.vm_gateway --boot "$root/{BOOT_FILE}" --root "$root"'
            ' --address "$address"',
            "",
        ]
    )


def gateway_custom_data(boot: GatewayBoot) -> str:
    encoded = base64.b64encode(gateway_bootstrap_script(boot).encode()).decode()
    if len(encoded) > MAX_CUSTOM_DATA_BYTES:
        raise CustomDataTooLarge(
            f"gateway custom data is {len(encoded)} bytes base64-encoded; Azure takes at most "
            f"{MAX_CUSTOM_DATA_BYTES}"
        )
    return encoded


def gateways_nsg_id(settings: Settings) -> str:
    """The NSG on the gateway VMs' NICs (activities.azure.load_balancer.gateways_nsg_body)."""
    return network_id(settings, "networkSecurityGroups", settings.azure_gateways_nsg)


def gateway_scale_set_body(
    settings: Settings, boot: GatewayBoot, *, image: str | None = None
) -> dict[str, Any]:
    """The whole desired state of the gateway scale set, tagged with its own hash. `image`: the
    image a host patch chose (default the settings'), kept in a tag."""
    user = settings.azure_admin_username
    tags = {TAG_ROLE: ROLE_GATEWAYS}
    if image is not None and image != settings.azure_image:
        tags[TAG_GATEWAY_IMAGE] = image
    body: dict[str, Any] = {
        "location": settings.azure_location,
        "tags": tags,
        "sku": {
            "name": settings.azure_gateway_vm_size,
            "tier": "Standard",
            "capacity": settings.azure_gateway_instances,
        },
        "properties": {
            "orchestrationMode": "Uniform",
            # A new model (a renewed certificate, another image) reaches VMs made after it;
            # never every gateway at once. A host patch adds one and deletes one, VM by VM.
            "upgradePolicy": {"mode": "Manual"},
            "overprovision": False,
            "virtualMachineProfile": {
                "osProfile": {
                    "computerNamePrefix": COMPUTER_NAME_PREFIX,
                    "adminUsername": user,
                    "customData": gateway_custom_data(boot),
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
                    "imageReference": image_reference(tags.get(TAG_GATEWAY_IMAGE, settings.azure_image)),
                    "osDisk": {
                        "createOption": "FromImage",
                        "caching": "ReadWrite",
                        "managedDisk": {"storageAccountType": "Standard_LRS"},
                    },
                },
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {
                            "name": GATEWAY_NIC,
                            "properties": {
                                "primary": True,
                                "networkSecurityGroup": {
                                    "id": network_id(
                                        settings, "networkSecurityGroups", settings.azure_gateways_nsg
                                    )
                                },
                                "ipConfigurations": [
                                    {
                                        "name": "ipconfig",
                                        "properties": {
                                            "subnet": {"id": gateway_subnet_id(settings)},
                                            "loadBalancerBackendAddressPools": [
                                                {"id": backend_pool_id(settings)}
                                            ],
                                        },
                                    }
                                ],
                            },
                        }
                    ]
                },
            },
        },
    }
    body["tags"][TAG_GATEWAY_SPEC] = body_hash(body)
    return body


def body_hash(body: dict[str, Any]) -> str:
    """What a body asks for, in 16 hex digits (its own tag and a patch's progress left out)."""
    tags = {k: v for k, v in (body.get("tags") or {}).items() if k not in _PROGRESS_TAGS}
    canonical = json.dumps({**body, "tags": tags}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
