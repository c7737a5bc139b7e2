"""Activity payloads: `<Verb><Noun>Input` / `<Verb><Noun>Result`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.host_api import DeploymentRuntime
from config.routes import EndpointRoute, InstanceRoute
from decisions.state import KeyType


class ApplyRouteInput(BaseModel):
    route: EndpointRoute


class RemoveRouteInput(BaseModel):
    endpoint: str
    generation: int


class EnsureKeysInput(BaseModel):
    """Target key versions: a version above the stored one makes a new key (idempotent)."""

    endpoint: str
    versions: dict[KeyType, int] = Field(default_factory=lambda: {"primary": 1, "secondary": 1})


class EnsureKeysResult(BaseModel):
    key_sha256: list[str]
    versions: dict[KeyType, int]


class DeleteKeysInput(BaseModel):
    endpoint: str


class EnsureInstancesInput(BaseModel):
    runtime: DeploymentRuntime
    instance_count: int


class EnsureInstancesResult(BaseModel):
    instances: list[InstanceRoute]
    warnings: list[str] = Field(default_factory=list)


class DeleteInstancesInput(BaseModel):
    endpoint: str
    deployment: str


class RetireDeploymentInput(BaseModel):
    endpoint: str
    deployment: str
    action: str = Field(description="keep | scale_down | delete")


class QueryWindowInput(BaseModel):
    endpoint: str
    deployment: str
    window_seconds: float
