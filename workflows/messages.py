"""Workflow inputs, updates and signals: the payloads callers and workflows exchange."""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.routes import InstanceRoute
from decisions.state import DeploymentTarget, EndpointState, KeyType, ProvisioningState


class EndpointWorkflowInput(BaseModel):
    state: EndpointState
    repush_seconds: float = 30.0
    continued: bool = Field(default=False, description="true after continue-as-new")


class UpdateEndpointInput(BaseModel):
    """Fields left None are not changed (Azure's `online-endpoint update`)."""

    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None
    description: str | None = None
    tags: dict[str, str] | None = None


class CreateDeploymentInput(BaseModel):
    target: DeploymentTarget


class UpdateDeploymentInput(BaseModel):
    target: DeploymentTarget


class DeleteDeploymentInput(BaseModel):
    name: str


class RegenerateKeysInput(BaseModel):
    key_type: KeyType


class DeploymentWorkflowInput(BaseModel):
    target: DeploymentTarget
    provisioned: bool = Field(default=False, description="true after continue-as-new")


class DeploymentReport(BaseModel):
    """What a DeploymentWorkflow tells its endpoint after each change of state."""

    name: str
    provisioning_state: ProvisioningState
    instances: list[InstanceRoute] | None = Field(
        default=None, description="None: the instances did not change"
    )
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
