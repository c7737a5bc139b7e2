"""What a scale-set VM is told at boot (inside its custom data): the `azure` compute provider
writes it (activities/azure/bootstrap.py), the VM's agent reads it (host/vm.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.host_api import DeploymentRuntime


class VmBoot(BaseModel):
    """One deployment's instance, as a VM builds and serves it.

    `runtime.code_dir` and `runtime.model_dir` name where the artifacts come from (a local
    path or a file URL for now; Blob storage later): the VM fetches them into its own disk
    before it builds the environment."""

    runtime: DeploymentRuntime
    port: int = Field(ge=1, le=65535, description="the fixed instance port, on the VM's private address")
    allow_pip_options: bool = False
