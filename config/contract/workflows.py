"""Workflow inputs, updates, signals and query answers: the payloads callers and workflows
exchange. Their JSON is in every recorded history: add fields with defaults, never rename one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from config.contract.activities import PatchDeploymentResult, PatchGatewaysResult
from config.contract.defaults import DEFAULT_MAX_REQUEST_BYTES
from config.contract.rollout import Plan, RolloutState
from config.contract.state import (
    AutoscaleMemory,
    DeploymentTarget,
    EndpointRecord,
    Health,
    InstanceDetail,
    KeyType,
    ProvisioningState,
)
from config.routes import InstanceRoute


class EndpointWorkflowInput(BaseModel):
    state: EndpointRecord
    repush_seconds: float = 30.0
    continued: bool = Field(default=False, description="true after continue-as-new")
    search_attributes: bool = Field(
        default=True, description="false where the server has no custom search attributes"
    )
    history_limit: int = Field(default=2000, description="continue-as-new past this many events")
    default_max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        description="the payload limit when the properties set none (TIDEGATE_MAX_REQUEST_BYTES)",
    )


class UpdateEndpointInput(BaseModel):
    """Fields left None are not changed (Azure's `online-endpoint update`)."""

    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None
    description: str | None = None
    tags: dict[str, str] | None = None
    properties: dict[str, str] | None = Field(
        default=None, description="replaces the properties whole; tidegate/ keys set the limits"
    )
    if_match: str | None = Field(
        default=None, description="refused unless the endpoint's etag is this (config.contract.etags)"
    )


class CreateDeploymentInput(BaseModel):
    target: DeploymentTarget


class UpdateDeploymentInput(BaseModel):
    target: DeploymentTarget
    if_match: str | None = Field(
        default=None, description="refused unless the deployment's etag is this (config.contract.etags)"
    )


class DeleteDeploymentInput(BaseModel):
    name: str


class RegenerateKeysInput(BaseModel):
    key_type: KeyType


class DeploymentWorkflowInput(BaseModel):
    target: DeploymentTarget
    provisioned: bool = Field(default=False, description="true after continue-as-new")
    version: int = Field(default=0, description="the provider's instance version last seen")
    autoscale_memory: AutoscaleMemory = Field(default_factory=AutoscaleMemory)
    in_rollout: bool = Field(default=False, description="a rollout is moving its traffic")


class DeploymentReport(BaseModel):
    """What a DeploymentWorkflow tells its endpoint after each change of state."""

    name: str
    provisioning_state: ProvisioningState
    instances: list[InstanceRoute] | None = Field(
        default=None, description="None: the instances did not change"
    )
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    health: Health = "Healthy"
    health_reason: str | None = None
    details: list[InstanceDetail] | None = None
    instance_count: int | None = Field(default=None, description="the count in force (autoscale moves it)")


class StartRolloutInput(BaseModel):
    plan: Plan
    spec: dict[str, Any] = Field(default_factory=dict, description="the rollout.yml as given, for retry")


class SetRolloutTrafficInput(BaseModel):
    """A rollout's traffic change; refused unless this rollout holds the endpoint (or undo)."""

    rollout_id: str
    baseline: str
    canary: str
    pool: int
    canary_weight: int
    mirror_share: int = 0
    undo: bool = False
    endpoint: str | None = Field(
        default=None,
        description="the endpoint whose traffic changes; None from a rollout that began before "
        "the field existed (its workflow's parent is the endpoint's)",
    )


class EndRolloutInput(BaseModel):
    rollout_id: str


class RolloutWorkflowInput(BaseModel):
    rollout_id: str
    plan: Plan
    spec: dict[str, Any] = Field(default_factory=dict)
    pool: int = 100
    state: RolloutState | None = None
    search_attributes: bool = True


class RolloutStatus(BaseModel):
    """RolloutWorkflow's `status` query: the plan and where the rollout is in it (the JSON of
    RolloutWorkflowInput, which callers before this model read)."""

    rollout_id: str
    plan: Plan
    spec: dict[str, Any] = Field(default_factory=dict)
    pool: int = 100
    state: RolloutState
    search_attributes: bool = True


class HostPatchInput(BaseModel):
    deployments: list[tuple[str, str]] = Field(description="(endpoint, deployment) pairs, in order")
    gateways: bool = Field(
        default=True, description="after the deployments, the gateways too (where they are VMs)"
    )


class HostPatchResult(BaseModel):
    results: list[PatchDeploymentResult]
    gateways: PatchGatewaysResult | None = Field(
        default=None, description="the gateways' outcome; none: not asked, or a workflow from before"
    )
