"""DeploymentWorkflow's control loop with a recorded host and scripted utilisation (dev server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messages import QueryWindowInput
from config.stats import WindowStats
from decisions.autoscale import AutoscaleSettings
from decisions.state import EndpointState
from tests.workflows.recorders import Recorder
from tests.workflows.test_endpoint_workflow import target, wait_for
from workflows.deployment import DeploymentWorkflow
from workflows.endpoint import EndpointWorkflow
from workflows.ids import endpoint_id
from workflows.messages import CreateDeploymentInput, EndpointWorkflowInput


class Scripted:
    def __init__(self) -> None:
        self.utilisation = 0.9

    def activity(self):  # noqa: ANN201
        @activity.defn(name="query_window")
        async def query_window(request: QueryWindowInput) -> WindowStats:
            return WindowStats(
                endpoint=request.endpoint,
                deployment=request.deployment,
                window_seconds=request.window_seconds,
                requests=100,
                utilisation={"i-0": self.utilisation},
            )

        return query_window


@pytest_asyncio.fixture
async def rig(
    temporal_dev: WorkflowEnvironment,
) -> AsyncIterator[tuple[WorkflowEnvironment, Recorder, Scripted, str]]:
    recorder, scripted, queue = Recorder(), Scripted(), f"tq-{uuid.uuid4()}"
    async with Worker(
        temporal_dev.client,
        task_queue=queue,
        workflows=[EndpointWorkflow, DeploymentWorkflow],
        activities=[*recorder.activities(), scripted.activity()],
    ):
        yield temporal_dev, recorder, scripted, queue


async def test_autoscale_goes_out_under_load_and_back_in_after_the_cool_down(rig) -> None:  # noqa: ANN001
    env, recorder, scripted, queue = rig
    name = f"ep-{uuid.uuid4().hex[:8]}"
    handle = await env.client.start_workflow(
        EndpointWorkflow.run,
        EndpointWorkflowInput(state=EndpointState(name=name)),
        id=endpoint_id(name),
        task_queue=queue,
    )
    scaled = target(name, "blue", 1)
    scaled.autoscale = AutoscaleSettings(
        min_instances=1,
        max_instances=3,
        target_utilization_percentage=50,
        polling_interval=1,
        scale_in_cooldown=2,
    )
    await handle.execute_update(EndpointWorkflow.create_deployment, CreateDeploymentInput(target=scaled))
    # 90 % busy against a 50 % target: out to 2 at once, then 3 (max), never more.
    await wait_for(handle, lambda s: len(s.deployments["blue"].instances) == 3)
    await asyncio.sleep(2)
    assert max(r.instance_count for r in recorder.ensured) == 3
    scripted.utilisation = 0.05
    await wait_for(handle, lambda s: len(s.deployments["blue"].instances) == 1)
    counts = [r.instance_count for r in recorder.ensured]
    # In one at a time: 3 → 2 → 1, each after the cool-down.
    assert counts[counts.index(3) :] == [3, 2, 1]
