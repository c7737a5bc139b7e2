"""The resources' state as the workflows hold it: plain models, shared with the façade."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from config.host_api import DeploymentRuntime
from config.routes import InstanceRoute
from decisions.autoscale import AutoscaleSettings
from decisions.instances import InstanceDetail

ProvisioningState = Literal["Creating", "Updating", "Succeeded", "Failed", "Deleting", "Deleted"]
KeyType = Literal["primary", "secondary"]
Health = Literal["Healthy", "Degraded"]


class RequestSettings(BaseModel):
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


class DeploymentTarget(BaseModel):
    """What a deployment should be: the runtime for the host plus what the gateway enforces."""

    name: str
    endpoint: str
    runtime: DeploymentRuntime
    instance_count: int = Field(ge=1)
    instance_type: str = "Standard_DS3_v2"
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    autoscale: AutoscaleSettings | None = Field(
        default=None, description="scale_settings: target_utilization; None is a fixed count"
    )
    spec: dict[str, Any] = Field(
        default_factory=dict, description="the validated Azure YAML spec, shown by `show`"
    )


class DeploymentRecord(BaseModel):
    """What the endpoint knows of one of its deployments."""

    name: str
    provisioning_state: ProvisioningState
    target: DeploymentTarget
    instances: list[InstanceRoute] = Field(default_factory=list)
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    health: Health = "Healthy"
    health_reason: str | None = None
    details: list[InstanceDetail] = Field(default_factory=list)
    instance_count: int | None = Field(
        default=None, description="the count in force now (autoscale moves it); None: the target's"
    )


class EndpointState(BaseModel):
    """Everything EndpointWorkflow owns; passed whole through continue-as-new."""

    name: str
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    auth_mode: Literal["key", "aml_token"] = "key"  # aml_token: refused by the spec until token auth
    traffic: dict[str, int] = Field(default_factory=dict)
    mirror_traffic: dict[str, int] = Field(default_factory=dict)
    provisioning_state: ProvisioningState = "Creating"
    deployments: dict[str, DeploymentRecord] = Field(default_factory=dict)
    key_sha256: list[str] = Field(default_factory=list)
    key_versions: dict[str, int] = Field(default_factory=lambda: {"primary": 1, "secondary": 1})
    keys_applied: dict[str, int] = Field(default_factory=dict)
    generation: int = 0
    lagging_gateways: dict[str, str] = Field(
        default_factory=dict, description="gateways that missed the last push (admin URL -> why)"
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="the spec's properties as given (tidegate/ keys set the limits)"
    )
    max_request_bytes: int = 16 * 1024 * 1024
    max_requests_per_second: float = Field(default=0.0, description="0: no limit")
    retry_dropped_requests: bool = False
    created_at: str | None = None
    rollout_id: str | None = Field(default=None, description="the running rollout, if any")
    rollout_deployments: list[str] = Field(default_factory=list)
    rollout_count: int = 0
    last_rollout_id: str | None = None
