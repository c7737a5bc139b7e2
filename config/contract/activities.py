"""Activity payloads: `<Verb><Noun>Input` / `<Verb><Noun>Result`. Their JSON is in every
recorded history: add fields with defaults, never rename one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.azure_metrics import MetricQuery
from config.contract.state import FIRST_KEY_VERSIONS, KeyType
from config.host_api import DeploymentRuntime
from config.rollout import RetireAction
from config.routes import EndpointRoute

PatchOutcome = Literal["Succeeded", "Failed", "Skipped"]


class ApplyRouteInput(BaseModel):
    route: EndpointRoute


class PushRouteResult(BaseModel):
    """Which gateways did not take a push (admin URL -> why): down, refused it, or hold a
    newer generation. Empty: every gateway has it."""

    lagging: dict[str, str] = Field(default_factory=dict)
    gateways: int = 0

    @property
    def reached_any(self) -> bool:
        return len(self.lagging) < self.gateways


class RemoveRouteInput(BaseModel):
    endpoint: str
    generation: int


class EnsureKeysInput(BaseModel):
    """Target key versions: a version above the stored one makes a new key (idempotent)."""

    endpoint: str
    versions: dict[KeyType, int] = Field(default_factory=lambda: dict(FIRST_KEY_VERSIONS))


class EnsureKeysResult(BaseModel):
    key_sha256: list[str]
    versions: dict[KeyType, int]
    token_public_keys: list[str] = Field(
        default_factory=list, description="base64 Ed25519 keys that verify the endpoint's tokens"
    )


class DeleteKeysInput(BaseModel):
    endpoint: str


class RequestInstancesInput(BaseModel):
    """The desired instances; the provider converges on them in the background."""

    runtime: DeploymentRuntime
    instance_count: int
    instance_type: str = Field(
        default="Standard_DS3_v2",
        description="VM size (the azure provider's scale set sku); local ignores it",
    )
    max_surge: int = Field(default=0, description="0: all at once; N: rolling, N extra at a time")
    drain_seconds: float = 2.0


class WatchInstancesInput(BaseModel):
    """A long poll on one deployment (workflows that started before the instance watcher)."""

    endpoint: str
    deployment: str
    since_version: int = Field(description="return as soon as the provider's version passes it")
    timeout_seconds: float = 30.0


class GetInstancesInput(BaseModel):
    """The instances as they are now: answered at once, never a long poll."""

    endpoint: str
    deployment: str


class DeleteInstancesInput(BaseModel):
    endpoint: str
    deployment: str


class RetireDeploymentInput(BaseModel):
    endpoint: str
    deployment: str
    action: RetireAction


class QueryWindowInput(BaseModel):
    endpoint: str
    deployment: str
    window_seconds: float


class ReadAzureMetricInput(BaseModel):
    """A rollout gate's Azure Monitor metric (source `azure_monitor`) over its window."""

    query: MetricQuery


class ReadAzureMetricResult(BaseModel):
    """The metric over the window's settled minutes, or none (no data) and why."""

    value: float | None
    unit: str | None = None
    counted: int = 0
    expected: int = 0
    reason: str


class PatchDeploymentInput(BaseModel):
    endpoint: str
    deployment: str


class PatchDeploymentResult(BaseModel):
    endpoint: str
    deployment: str
    outcome: PatchOutcome
    detail: str = ""


class PatchGatewaysInput(BaseModel):
    """The gateways' part of a host patch: their scale set, if there is one, onto the newest image."""


class PatchGatewaysResult(BaseModel):
    outcome: PatchOutcome
    detail: str = ""
    image: str | None = Field(default=None, description="the image every gateway VM runs now")
    replaced: int = Field(default=0, description="gateway VMs replaced by this run")
