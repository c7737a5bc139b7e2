"""EndpointWorkflow and DeploymentWorkflow with recorded activities (time-skipping server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.contract.etags import deployment_etag, endpoint_etag
from config.contract.ids import endpoint_id
from config.contract.state import DeploymentTarget, EndpointRecord
from config.contract.workflows import (
    CreateDeploymentInput,
    DeleteDeploymentInput,
    EndpointWorkflowInput,
    RegenerateKeysInput,
    UpdateDeploymentInput,
    UpdateEndpointInput,
)
from config.host_api import DeploymentRuntime
from tests.support.polling import eventually
from tests.workflows.recorders import Recorder
from workflows.deployment import DeploymentWorkflow
from workflows.endpoint import EndpointWorkflow


def target(endpoint: str, name: str, count: int = 1) -> DeploymentTarget:
    runtime = DeploymentRuntime(
        endpoint=endpoint, deployment=name, code_dir="/code", spec_hash=f"hash-{name}"
    )
    return DeploymentTarget(name=name, endpoint=endpoint, runtime=runtime, instance_count=count)


class Stack:
    def __init__(self, env: WorkflowEnvironment, recorder: Recorder, task_queue: str) -> None:
        self.env = env
        self.recorder = recorder
        self.task_queue = task_queue

    async def start_endpoint(self, name: str) -> WorkflowHandle:
        state = EndpointRecord(name=name)
        handle = await self.env.client.start_workflow(
            EndpointWorkflow.run,
            EndpointWorkflowInput(state=state, repush_seconds=30),
            id=endpoint_id(name),
            task_queue=self.task_queue,
        )
        await wait_for(handle, lambda s: s.provisioning_state == "Succeeded")
        return handle


async def wait_for(handle: WorkflowHandle, predicate: Callable[[EndpointRecord], bool]) -> EndpointRecord:
    for _ in range(1200):  # a bound only so a broken build cannot hang CI
        state = await handle.query(EndpointWorkflow.describe)
        if predicate(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"the endpoint never reached the state asked for; last: {state}")


@asynccontextmanager
async def running_stack(env: WorkflowEnvironment) -> AsyncIterator[Stack]:
    recorder = Recorder()
    task_queue = f"tq-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[EndpointWorkflow, DeploymentWorkflow],
        activities=recorder.activities(),
    ):
        yield Stack(env, recorder, task_queue)


@pytest_asyncio.fixture
async def stack(temporal_env: WorkflowEnvironment) -> AsyncIterator[Stack]:
    async with running_stack(temporal_env) as running:
        yield running


@pytest_asyncio.fixture
async def dev_stack(temporal_dev: WorkflowEnvironment) -> AsyncIterator[Stack]:
    """On the real dev server: the time-skipping server sometimes leaves a query unanswered
    after an update has made the workflow continue as new (about 1 run in 15)."""
    async with running_stack(temporal_dev) as running:
        yield running


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_new_endpoint_makes_keys_and_pushes_an_empty_route(stack: Stack) -> None:
    name = unique("ep")
    await stack.start_endpoint(name)
    assert stack.recorder.calls[:2] == ["ensure_keys", "apply_route"]
    assert stack.recorder.routes[-1].name == name
    assert stack.recorder.routes[-1].deployments == {}


async def test_a_refused_route_push_is_tried_again_every_few_seconds_not_in_a_tight_loop(
    stack: Stack,
) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    stack.recorder.refuse_routes = True
    before = stack.recorder.calls.count("apply_route")
    await handle.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(description="x"))
    await eventually(lambda: stack.recorder.calls.count("apply_route") >= before + 2, "the push tried again")
    await stack.env.sleep(30)  # time-skipped
    tries = stack.recorder.calls.count("apply_route") - before
    # One try at once, then one every 5 s: about 7 in 30 s, where a tight loop makes hundreds.
    assert 2 <= tries <= 9, tries
    stack.recorder.refuse_routes = False
    await eventually(lambda: stack.recorder.routes[-1].name == name, "the push went through at last")


async def test_deployment_is_provisioned_and_routed_with_its_traffic(stack: Stack) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue", 2))
    )
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    await handle.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 100}))
    await wait_for(handle, lambda s: s.generation > 0 and s.traffic == {"blue": 100})
    await eventually(lambda: stack.recorder.routes[-1].traffic == {"blue": 100}, "blue's 100 % pushed")
    route = stack.recorder.routes[-1]
    assert [i.id for i in route.deployments["blue"].instances] == ["blue-0", "blue-1"]
    generations = [r.generation for r in stack.recorder.routes]
    assert generations == sorted(set(generations))


@pytest.mark.parametrize(
    ("traffic", "reason"),
    [
        ({"blue": 90, "green": 5}, "sums to 95"),
        ({"blue": 90, "ghost": 10}, "'ghost' does not exist"),
        ({"blue": 101}, "between 0 and 100"),
    ],
    ids=["not-summing-to-100", "unknown-deployment", "over-100"],
)
async def test_bad_traffic_is_refused_and_nothing_is_recorded(
    stack: Stack, traffic: dict[str, int], reason: str
) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    for deployment in ("blue", "green"):
        await handle.execute_update(
            EndpointWorkflow.create_deployment,
            CreateDeploymentInput(target=target(name, deployment)),
        )
    await wait_for(handle, lambda s: all(d.provisioning_state == "Succeeded" for d in s.deployments.values()))
    before = await handle.query(EndpointWorkflow.describe)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic=traffic))
    assert reason in str(caught.value.cause)
    after = await handle.query(EndpointWorkflow.describe)
    assert after.traffic == before.traffic
    assert after.generation == before.generation


async def test_deleting_a_deployment_that_takes_traffic_is_refused(stack: Stack) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue"))
    )
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    await handle.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 100}))
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(EndpointWorkflow.delete_deployment, DeleteDeploymentInput(name="blue"))
    assert "takes 100% of traffic" in str(caught.value.cause)
    state = await handle.query(EndpointWorkflow.describe)
    assert state.deployments["blue"].provisioning_state == "Succeeded"
    assert stack.recorder.deleted == []


async def test_a_second_deployment_with_the_same_name_is_refused(stack: Stack) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    request = CreateDeploymentInput(target=target(name, "blue"))
    await handle.execute_update(EndpointWorkflow.create_deployment, request)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(EndpointWorkflow.create_deployment, request)
    assert "already exists" in str(caught.value.cause)


async def test_failed_provision_removes_instances_and_reports_the_reason(stack: Stack) -> None:
    stack.recorder.fail_provision = "instance blue-0 failed to start:\nZeroDivisionError in init()"
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue"))
    )
    state = await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Failed")
    assert "ZeroDivisionError in init()" in (state.deployments["blue"].error or "")
    assert stack.recorder.deleted == ["blue"]
    assert "blue" not in stack.recorder.routes[-1].deployments


async def test_traffic_to_a_failed_deployment_is_refused(stack: Stack) -> None:
    stack.recorder.fail_provision = "init() raised"
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue"))
    )
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Failed")
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(
            EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 100})
        )
    assert "blue is Failed" in str(caught.value.cause)


async def test_regenerating_a_key_pushes_the_new_hash(stack: Stack) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    await handle.execute_update(EndpointWorkflow.regenerate_keys, RegenerateKeysInput(key_type="secondary"))
    assert stack.recorder.routes[-1].key_sha256 == ["primary-v1", "secondary-v2"]


async def test_deleting_the_endpoint_unroutes_then_deprovisions_everything(stack: Stack) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue"))
    )
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    await handle.execute_update(EndpointWorkflow.delete_endpoint)
    final = await handle.result()
    assert final.provisioning_state == "Deleted"
    calls = stack.recorder.calls
    assert calls.index("remove_route") < calls.index("delete_instances")
    assert calls[-1] == "delete_keys"


async def test_state_survives_continue_as_new(dev_stack: Stack) -> None:
    stack = dev_stack
    name = unique("ep")
    handle = await stack.env.client.start_workflow(
        EndpointWorkflow.run,
        EndpointWorkflowInput(state=EndpointRecord(name=name), history_limit=40),
        id=endpoint_id(name),
        task_queue=stack.task_queue,
    )
    first_run = (await handle.describe()).run_id
    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue"))
    )
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    for share in (100, 0, 100, 0, 100):
        await handle.execute_update(
            EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": share})
        )
    latest = stack.env.client.get_workflow_handle(endpoint_id(name))

    async def continued() -> bool:
        return (await latest.describe()).run_id != first_run

    await eventually(continued, "the endpoint continued as new")
    state = await latest.query(EndpointWorkflow.describe)
    assert state.traffic == {"blue": 100}
    assert state.deployments["blue"].provisioning_state == "Succeeded"
    generation = state.generation
    await latest.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 0}))
    assert (await wait_for(latest, lambda s: s.generation > generation)).traffic == {"blue": 0}


async def test_an_update_carrying_a_stale_etag_is_refused_before_anything_changes(stack: Stack) -> None:
    name = unique("ep")
    handle = await stack.start_endpoint(name)
    read = await handle.query(EndpointWorkflow.describe)
    await handle.execute_update(
        EndpointWorkflow.update_endpoint, UpdateEndpointInput(tags={"a": "1"}, if_match=endpoint_etag(read))
    )
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        stale = UpdateEndpointInput(tags={"b": "2"}, if_match=endpoint_etag(read))
        await handle.execute_update(EndpointWorkflow.update_endpoint, stale)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "PreconditionFailed"
    assert (await handle.query(EndpointWorkflow.describe)).tags == {"a": "1"}

    await handle.execute_update(
        EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(name, "blue"))
    )
    state = await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    etag = deployment_etag(state.deployments["blue"])
    changed = target(name, "blue", count=2).model_copy(update={"spec": {"instance_count": 2}})
    await handle.execute_update(
        EndpointWorkflow.update_deployment, UpdateDeploymentInput(target=changed, if_match=etag)
    )
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        again = target(name, "blue", count=3).model_copy(update={"spec": {"instance_count": 3}})
        await handle.execute_update(
            EndpointWorkflow.update_deployment, UpdateDeploymentInput(target=again, if_match=etag)
        )
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "PreconditionFailed"
    assert (await handle.query(EndpointWorkflow.describe)).deployments["blue"].target.instance_count == 2
