"""What a scale-set VM is told at boot (inside its custom data): the `azure` compute provider
writes it (activities/azure/bootstrap.py), the VM's agent reads it (host/vm.py)."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field, SecretStr

from config.host_api import DeploymentRuntime


class VmBoot(BaseModel):
    """One deployment's instance, as a VM builds and serves it.

    `runtime.code_dir` and `runtime.model_dir` name where the artifacts come from: a read-only
    SAS URL of a snapshot blob (`.../snapshots/<kind>/<content hash>.tar.gz`, whose content the VM
    checks against that hash) when a storage account is configured, else a file URL (local demos
    on the fake). The VM fetches them onto its own disk before it builds the environment."""

    runtime: DeploymentRuntime
    port: int = Field(ge=1, le=65535, description="the fixed instance port, on the VM's private address")
    allow_pip_options: bool = False


class GatewayBoot(BaseModel):
    """A gateway VM, as its custom data describes it (activities/azure/gateway_scale_set.py
    writes it, host/vm_gateway.py reads it): `tidegate gateway` on the VM's private address.

    The secrets are SecretStr, so a repr or a log of this model shows none of them; only
    `boot_document` writes them out, for the custom data (readable by root on the VM)."""

    https_port: int = Field(ge=1, le=65535, description="the data plane (the load balancer's backend port)")
    admin_port: int = Field(ge=1, le=65535, description="the admin API the worker pushes route tables to")
    domain: str = Field(description="TIDEGATE_DOMAIN: `<endpoint>.<domain>` hosts route by name")
    control_token: SecretStr = Field(description="the control credential, guarding the admin API")
    tls_cert_pem: str = Field(description="the data plane's certificate chain")
    tls_key_pem: SecretStr
    admin_cert_pem: str = Field(description="the admin API's certificate (the worker's gateway CA)")
    admin_key_pem: SecretStr


def boot_document(boot: GatewayBoot) -> str:
    """The boot description as the VM reads it, secrets written out (for the custom data only)."""
    data = boot.model_dump(mode="json")
    for name in ("control_token", "tls_key_pem", "admin_key_pem"):
        data[name] = getattr(boot, name).get_secret_value()
    return json.dumps(data, sort_keys=True)
