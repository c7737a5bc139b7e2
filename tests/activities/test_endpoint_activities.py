"""The activities that change an endpoint through its workflow, in Temporal's ActivityEnvironment
against a client that records the updates and queries they send (by the contract's names)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.endpoints import EndpointActivities
from config.contract.activities import PatchDeploymentInput, RetireDeploymentInput
from config.contract.ids import endpoint_id, rollout_id
from config.contract.names import EndpointQuery, EndpointUpdate
from config.contract.state import DeploymentEntry, DeploymentTarget, EndpointRecord, ProvisioningState
from config.contract.workflows import SetRolloutTrafficInput
from config.host_api import DeploymentRuntime


@dataclass
class Described:
    parent_id: str | None


@dataclass
class FakeClient:
    """Stands in for temporalio's Client: one handle per workflow id, every call recorded."""

    endpoint: EndpointRecord | None = None
    parents: dict[str, str] = field(default_factory=dict)
    sent: list[tuple[str, str, Any]] = field(default_factory=list)  # (workflow id, update/query, arg)

    def get_workflow_handle(self, workflow_id: str, *, run_id: str | None = None) -> FakeHandle:
        return FakeHandle(self, workflow_id)


@dataclass
class FakeHandle:
    client: FakeClient
    id: str

    async def execute_update(self, update: str, arg: Any, *, result_type: type | None = None) -> Any:
        self.client.sent.append((self.id, update, arg))
        return self.client.endpoint

    async def query(self, query: str, *, result_type: type | None = None) -> Any:
        self.client.sent.append((self.id, query, None))
        return self.client.endpoint

    async def describe(self) -> Described:
        return Described(parent_id=self.client.parents.get(self.id))


def endpoint(state: ProvisioningState = "Succeeded", count: int = 3) -> EndpointRecord:
    runtime = DeploymentRuntime(endpoint="ep", deployment="blue", code_dir="/code", spec_hash="abc")
    target = DeploymentTarget(
        name="blue", endpoint="ep", runtime=runtime, instance_count=count, spec={"instance_count": count}
    )
    entry = DeploymentEntry(name="blue", provisioning_state=state, target=target)
    return EndpointRecord(name="ep", deployments={"blue": entry})


def traffic(**given: Any) -> SetRolloutTrafficInput:
    return SetRolloutTrafficInput(
        rollout_id=rollout_id("ep", 1), baseline="blue", canary="green", pool=100, canary_weight=10, **given
    )


async def test_rollout_traffic_goes_to_the_endpoint_its_input_names() -> None:
    client = FakeClient(endpoint=endpoint())
    request = traffic(endpoint="ep")
    await ActivityEnvironment().run(EndpointActivities(client).set_rollout_traffic, request)  # type: ignore[arg-type]
    assert client.sent == [(endpoint_id("ep"), EndpointUpdate.SET_ROLLOUT_TRAFFIC, request)]


async def test_rollout_traffic_from_an_older_rollout_goes_to_its_parent_endpoint() -> None:
    """A rollout that began before its inputs named the endpoint is the endpoint's child."""
    client = FakeClient(endpoint=endpoint(), parents={rollout_id("ep", 1): endpoint_id("ep")})
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=rollout_id("ep", 1), workflow_run_id="run-1")
    request = traffic()
    await env.run(EndpointActivities(client).set_rollout_traffic, request)  # type: ignore[arg-type]
    assert client.sent == [(endpoint_id("ep"), EndpointUpdate.SET_ROLLOUT_TRAFFIC, request)]


async def test_rollout_traffic_with_no_endpoint_and_no_parent_is_refused_for_good() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id="orphan", workflow_run_id="run-1")
    with pytest.raises(ApplicationError) as refused:
        await env.run(EndpointActivities(FakeClient()).set_rollout_traffic, traffic())  # type: ignore[arg-type]
    assert refused.value.non_retryable
    assert refused.value.type == "UnknownEndpoint"


@pytest.mark.parametrize(
    ("action", "count", "updates"),
    [
        ("delete", 3, [EndpointUpdate.DELETE_DEPLOYMENT]),
        ("scale_down", 3, [EndpointUpdate.UPDATE_DEPLOYMENT]),
        ("scale_down", 1, []),
        ("keep", 3, []),
    ],
    ids=[
        "delete_asks_the_endpoint",
        "scale_down_shrinks_to_one",
        "scale_down_at_one_does_nothing",
        "keep_does_nothing",
    ],
)
async def test_retiring_a_deployment(action: str, count: int, updates: list[str]) -> None:
    client = FakeClient(endpoint=endpoint(count=count))
    request = RetireDeploymentInput(endpoint="ep", deployment="blue", action=action)  # type: ignore[arg-type]
    await ActivityEnvironment().run(EndpointActivities(client).retire_deployment, request)  # type: ignore[arg-type]
    sent = [update for _, update, _ in client.sent if update != EndpointQuery.DESCRIBE]
    assert sent == updates
    if action == "scale_down" and updates:
        target = client.sent[-1][2].target
        assert (target.instance_count, target.spec["instance_count"]) == (1, 1)


async def test_patching_a_deployment_that_is_not_succeeded_skips_it() -> None:
    client = FakeClient(endpoint=endpoint(state="Updating"))
    request = PatchDeploymentInput(endpoint="ep", deployment="blue")
    result = await ActivityEnvironment().run(EndpointActivities(client).patch_deployment, request)  # type: ignore[arg-type]
    assert (result.outcome, result.detail) == ("Skipped", "Updating")
    assert [update for _, update, _ in client.sent] == [EndpointQuery.DESCRIBE]
