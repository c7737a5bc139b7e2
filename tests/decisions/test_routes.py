"""Route table rules: only provisioned deployments with instances are routable."""

from __future__ import annotations

import pytest

from config.contract.state import DeploymentEntry, DeploymentTarget, EndpointRecord
from config.host_api import DeploymentRuntime
from config.routes import InstanceRoute
from decisions.routes import build_endpoint_route, next_generation


def record(name: str, state: str, instances: int = 1) -> DeploymentEntry:
    runtime = DeploymentRuntime(endpoint="ep", deployment=name, code_dir="/c", spec_hash="h")
    return DeploymentEntry(
        name=name,
        provisioning_state=state,  # type: ignore[arg-type]
        target=DeploymentTarget(name=name, endpoint="ep", runtime=runtime, instance_count=max(instances, 1)),
        instances=[
            InstanceRoute(id=f"{name}-{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(instances)
        ],
    )


@pytest.mark.parametrize(
    ("state", "routable"),
    [("Succeeded", True), ("Updating", True), ("Failed", True), ("Creating", False), ("Deleting", False)],
)
def test_a_deployment_with_instances_is_routable_unless_creating_or_deleting(
    state: str, routable: bool
) -> None:
    endpoint = EndpointRecord(name="ep", deployments={"blue": record("blue", state)}, traffic={"blue": 100})
    route = build_endpoint_route(endpoint, generation=5)
    assert ("blue" in route.deployments) is routable
    assert ("blue" in route.traffic) is routable


def test_a_provisioned_deployment_with_no_ready_instance_stays_routed_for_a_503() -> None:
    endpoint = EndpointRecord(name="ep", deployments={"blue": record("blue", "Succeeded", instances=0)})
    assert build_endpoint_route(endpoint, generation=1).deployments["blue"].instances == []


def test_a_failed_deployment_is_routed_only_while_old_instances_serve() -> None:
    endpoint = EndpointRecord(name="ep", deployments={"blue": record("blue", "Failed", instances=0)})
    assert build_endpoint_route(endpoint, generation=1).deployments == {}


def test_the_route_carries_key_hashes_and_request_settings_never_keys() -> None:
    endpoint = EndpointRecord(
        name="ep", key_sha256=["a" * 64, "b" * 64], deployments={"blue": record("blue", "Succeeded", 2)}
    )
    route = build_endpoint_route(endpoint, generation=7)
    assert route.key_sha256 == ["a" * 64, "b" * 64]
    assert route.generation == 7
    assert route.deployments["blue"].request_timeout_ms == 5000
    assert [i.id for i in route.deployments["blue"].instances] == ["blue-0", "blue-1"]


def test_the_route_carries_the_endpoints_payload_and_rate_limits() -> None:
    endpoint = EndpointRecord(name="ep", max_request_bytes=1024, max_requests_per_second=50)
    route = build_endpoint_route(endpoint, generation=1)
    assert (route.max_request_bytes, route.max_requests_per_second) == (1024, 50)


@pytest.mark.parametrize(
    ("previous", "now_ms", "expected"),
    [(0, 1_000, 1_000), (1_000, 1_000, 1_001), (5_000, 1_000, 5_001)],
    ids=["first", "same-millisecond", "clock-behind"],
)
def test_generations_always_increase(previous: int, now_ms: int, expected: int) -> None:
    assert next_generation(previous, now_ms) == expected
