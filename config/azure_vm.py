"""What a scale-set VM is told at boot (inside its custom data): the `azure` compute provider
writes it (activities/azure/bootstrap.py), the VM's agent reads it (host/vm.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

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
