"""A scale-set VM's custom data: the shell script cloud-init runs once at first boot.

It writes the VM's boot description (config.azure_vm.VmBoot) to disk and hands over to the
VM agent (`python -m host.vm`), which fetches the artifacts, builds the environment from the
conda/pip file exactly as the local host does (host/environments.py) and runs azmlinfsrv with
the user's score.py on the fixed instance port, bound to the VM's private address.

The image brings Tidegate's own interpreter (`TIDEGATE_PYTHON`, default below); on the test
fake, the "hypervisor" sets TIDEGATE_PYTHON, TIDEGATE_VM_ROOT and TIDEGATE_VM_ADDRESS itself.
"""

from __future__ import annotations

import base64

from config.azure_vm import VmBoot

# Where the image keeps Tidegate and where a VM keeps its state, unless the environment says.
IMAGE_PYTHON = "/opt/tidegate/.venv/bin/python"
VM_ROOT = "/var/lib/tidegate"
# Azure refuses custom data over 64 KiB once base64-encoded.
MAX_CUSTOM_DATA_BYTES = 65_535

_HEREDOC_END = "TIDEGATE_VM_BOOT_END"


class CustomDataTooLarge(ValueError):
    """The boot description does not fit in Azure's custom data."""


def bootstrap_script(boot: VmBoot) -> str:
    """The cloud-init user data script (plain POSIX sh) that boots one instance."""
    document = boot.model_dump_json()
    if _HEREDOC_END in document:
        raise ValueError("the boot description contains the here-document terminator")
    return "\n".join(
        [
            "#!/bin/sh",
            "# Tidegate instance bootstrap (cloud-init user data). Generated; do not edit.",
            "set -eu",
            f'root="${{TIDEGATE_VM_ROOT:-{VM_ROOT}}}"',
            f'python="${{TIDEGATE_PYTHON:-{IMAGE_PYTHON}}}"',
            # The VM's private address: the hypervisor's word on the fake, the NIC's on Azure.
            'address="${TIDEGATE_VM_ADDRESS:-$(hostname -I | cut -d" " -f1)}"',
            'mkdir -p "$root"',
            f"cat > \"$root/boot.json\" <<'{_HEREDOC_END}'",
            document,
            _HEREDOC_END,
            'cd "$root"',
            'exec "$python" -m host.vm --boot "$root/boot.json" --root "$root" --address "$address"',
            "",
        ]
    )


def custom_data(boot: VmBoot) -> str:
    """The script as Azure takes it: base64, within the size limit."""
    encoded = base64.b64encode(bootstrap_script(boot).encode()).decode()
    if len(encoded) > MAX_CUSTOM_DATA_BYTES:
        raise CustomDataTooLarge(
            f"custom data is {len(encoded)} bytes base64-encoded; Azure takes at most {MAX_CUSTOM_DATA_BYTES}"
        )
    return encoded
