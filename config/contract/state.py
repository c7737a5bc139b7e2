"""The resources' state as the workflows hold it: plain models the workflows carry through
continue-as-new, the activities read and the façade shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from config.azure_metrics import AzureMonitorSource
from config.contract.defaults import (
    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE,
    DEFAULT_MAX_QUEUE_WAIT_MS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
)
from config.host_api import DeploymentRuntime, InstancePhase
from config.routes import InstanceRoute

ProvisioningState = Literal["Creating", "Updating", "Succeeded", "Failed", "Deleting", "Deleted"]
KeyType = Literal["primary", "secondary"]
FIRST_KEY_VERSIONS: dict[KeyType, int] = {"primary": 1, "secondary": 1}
Health = Literal["Healthy", "Degraded"]


class RequestLimits(BaseModel):
    """A deployment's `request_settings` as the gateway enforces them."""

    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    max_concurrent_requests_per_instance: int = DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE
    max_queue_wait_ms: int = DEFAULT_MAX_QUEUE_WAIT_MS


class AutoscaleSettings(BaseModel):
    """`scale_settings: target_utilization` (Azure's fields) plus Tidegate's cool-down."""

    min_instances: int = Field(default=1, ge=1)
    max_instances: int = Field(default=1, ge=1)
    target_utilization_percentage: int = Field(default=70, ge=1, le=100)
    polling_interval: float = 1.0
    scale_in_cooldown: float = Field(default=300.0, description="seconds of low load before one goes")
    cpu_source: AzureMonitorSource | None = Field(
        default=None,
        description="`metric: cpu`: the scale set's Percentage CPU; None: the gateways' busy share",
    )


class AutoscaleMemory(BaseModel):
    """What the autoscale decision remembers between polls (kept in the workflow's state)."""

    low_since: datetime | None = None


class InstanceDetail(BaseModel):
    """One instance as `online-deployment show` lists it."""

    id: str
    state: InstancePhase
    restarts: int = 0
    url: str


class DeploymentTarget(BaseModel):
    """What a deployment should be: the runtime for the host plus what the gateway enforces."""

    name: str
    endpoint: str
    runtime: DeploymentRuntime
    instance_count: int = Field(ge=1)
    instance_type: str = "Standard_DS3_v2"
    request_settings: RequestLimits = Field(default_factory=RequestLimits)
    autoscale: AutoscaleSettings | None = Field(
        default=None, description="scale_settings: target_utilization; None is a fixed count"
    )
    spec: dict[str, Any] = Field(
        default_factory=dict, description="the validated Azure YAML spec, shown by `show`"
    )


class DeploymentEntry(BaseModel):
    """What the endpoint records of one of its deployments."""

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
    created_at: str | None = None
    modified_at: str | None = Field(default=None, description="the last create or update of its spec")


class EndpointRecord(BaseModel):
    """Everything EndpointWorkflow owns; passed whole through continue-as-new."""

    name: str
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    auth_mode: Literal["key", "aml_token"] = "key"
    traffic: dict[str, int] = Field(default_factory=dict)
    mirror_traffic: dict[str, int] = Field(default_factory=dict)
    provisioning_state: ProvisioningState = "Creating"
    deployments: dict[str, DeploymentEntry] = Field(default_factory=dict)
    key_sha256: list[str] = Field(default_factory=list)
    token_public_keys: list[str] = Field(default_factory=list, description="verify its tokens; public")
    key_versions: dict[KeyType, int] = Field(default_factory=lambda: dict(FIRST_KEY_VERSIONS))
    keys_applied: dict[KeyType, int] = Field(default_factory=dict)
    generation: int = 0
    lagging_gateways: dict[str, str] = Field(
        default_factory=dict, description="gateways that missed the last push (admin URL -> why)"
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="the spec's properties as given (tidegate/ keys set the limits)"
    )
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_requests_per_second: float = Field(default=0.0, description="0: no limit")
    retry_dropped_requests: bool = False
    created_at: str | None = None
    rollout_id: str | None = Field(default=None, description="the running rollout, if any")
    rollout_deployments: list[str] = Field(default_factory=list)
    rollout_count: int = 0
    last_rollout_id: str | None = None
