"""The route table: what an endpoint pushes to every gateway (the network contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.contract.defaults import (
    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE,
    DEFAULT_MAX_QUEUE_WAIT_MS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
)

# The gateway's own health path, for the load balancer's probe (200 in rotation, 503 draining):
# no endpoint's route can take it (theirs are `/endpoints/<name>/score|swagger.json`, or
# `/score` and `/swagger.json` on a host of their own).
HEALTH_PATH = "/.tidegate/health"


class InstanceRoute(BaseModel):
    id: str
    url: str = Field(description="base URL of the instance, e.g. http://127.0.0.1:31001")


class DeploymentRoute(BaseModel):
    name: str
    instances: list[InstanceRoute] = Field(default_factory=list)
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    max_concurrent_requests_per_instance: int = DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE
    max_queue_wait_ms: int = DEFAULT_MAX_QUEUE_WAIT_MS


class EndpointRoute(BaseModel):
    """One endpoint's slice of the table. A push with an older generation is ignored."""

    name: str
    generation: int
    auth_mode: Literal["key", "aml_token"] = "key"
    key_sha256: list[str] = Field(
        default_factory=list, description="hex sha256 of each valid key; never the key"
    )
    token_public_keys: list[str] = Field(
        default_factory=list, description="base64 Ed25519 public keys that verify aml_token tokens"
    )
    traffic: dict[str, int] = Field(default_factory=dict)
    mirror_traffic: dict[str, int] = Field(default_factory=dict)
    deployments: dict[str, DeploymentRoute] = Field(default_factory=dict)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_requests_per_second: float = Field(
        default=0.0, description="shared by all gateways and their processes; 0: no limit"
    )
    retry_dropped_requests: bool = Field(
        default=False,
        description="a request an instance read and dropped with no byte of answer is sent once more",
    )
    gateways: int = Field(
        default=1,
        ge=1,
        description="how many gateways the table is pushed to (the pusher sets it): each takes "
        "an equal share of the endpoint's rate and of each instance's concurrency",
    )


class ApplyRouteResult(BaseModel):
    applied: bool
    generation: int = Field(description="the generation the gateway now holds")
