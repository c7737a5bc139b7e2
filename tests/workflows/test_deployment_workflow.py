"""DeploymentWorkflow's control loop with a recorded host and scripted utilisation (dev server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest_asyncio
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.azure_metrics import AzureMonitorSource, MetricQuery
from config.contract.activities import QueryWindowInput, ReadAzureMetricInput, ReadAzureMetricResult
from config.contract.ids import deployment_id, endpoint_id
from config.contract.names import Activity, EndpointSignal
from config.contract.state import AutoscaleSettings, EndpointRecord
from config.contract.workflows import (
    CreateDeploymentInput,
    DeploymentReport,
    EndpointWorkflowInput,
    UpdateDeploymentInput,
)
from config.stats import WindowStats
from tests.workflows.recorders import Recorder
from tests.workflows.test_endpoint_workflow import target, wait_for
from workflows.deployment import DeploymentWorkflow
from workflows.endpoint import EndpointWorkflow


class Scripted:
    def __init__(self) -> None:
        self.utilisation = 0.9
        self.cpu_percent: float | None = 90.0
        self.cpu_queries: list[MetricQuery] = []

    def activities(self):  # noqa: ANN201
        @activity.defn(name=Activity.QUERY_WINDOW)
        async def query_window(request: QueryWindowInput) -> WindowStats:
            return WindowStats(
                endpoint=request.endpoint,
                deployment=request.deployment,
                window_seconds=request.window_seconds,
                requests=100,
                utilisation={"i-0": self.utilisation},
            )

        @activity.defn(name=Activity.READ_AZURE_METRIC)
        async def read_azure_metric(request: ReadAzureMetricInput) -> ReadAzureMetricResult:
            self.cpu_queries.append(request.query)
            return ReadAzureMetricResult(value=self.cpu_percent, counted=5, expected=5, reason="scripted")

        return [query_window, read_azure_metric]


@pytest_asyncio.fixture
async def rig(
    temporal_dev: WorkflowEnvironment,
) -> AsyncIterator[tuple[WorkflowEnvironment, Recorder, Scripted, str]]:
    recorder, scripted, queue = Recorder(), Scripted(), f"tq-{uuid.uuid4()}"
    async with Worker(
        temporal_dev.client,
        task_queue=queue,
        workflows=[EndpointWorkflow, DeploymentWorkflow],
        activities=[*recorder.activities(), *scripted.activities()],
    ):
        yield temporal_dev, recorder, scripted, queue


async def endpoint_with_autoscaled_blue(
    env: WorkflowEnvironment, queue: str, autoscale: AutoscaleSettings
) -> WorkflowHandle:
    """An endpoint whose one deployment, blue, starts at 1 instance, polled every second."""
    name = f"ep-{uuid.uuid4().hex[:8]}"
    handle = await env.client.start_workflow(
        EndpointWorkflow.run,
        EndpointWorkflowInput(state=EndpointRecord(name=name)),
        id=endpoint_id(name),
        task_queue=queue,
    )
    blue = target(name, "blue", 1)
    blue.autoscale = autoscale.model_copy(update={"min_instances": 1, "polling_interval": 1})
    await handle.execute_update(EndpointWorkflow.create_deployment, CreateDeploymentInput(target=blue))
    return handle


async def test_autoscale_goes_out_under_load_and_back_in_after_the_cool_down(rig) -> None:  # noqa: ANN001
    env, recorder, scripted, queue = rig
    handle = await endpoint_with_autoscaled_blue(
        env, queue, AutoscaleSettings(max_instances=3, target_utilization_percentage=50, scale_in_cooldown=2)
    )
    # 90 % busy against a 50 % target: out to 2 at once, then 3 (max), never more.
    state = await wait_for(handle, lambda s: len(s.deployments["blue"].instances) == 3)
    assert state.deployments["blue"].instance_count == 3  # what `online-deployment show` says
    await asyncio.sleep(2)
    assert max(r.instance_count for r in recorder.ensured) == 3
    scripted.utilisation = 0.05
    await wait_for(handle, lambda s: len(s.deployments["blue"].instances) == 1)
    counts = [r.instance_count for r in recorder.ensured]
    # In one at a time: 3 → 2 → 1, each after the cool-down.
    assert counts[counts.index(3) :] == [3, 2, 1]
    assert (await handle.query(EndpointWorkflow.describe)).deployments["blue"].instance_count == 1


async def test_a_scale_out_whose_new_instance_fails_keeps_serving_and_tries_again_later(rig) -> None:  # noqa: ANN001
    env, recorder, scripted, queue = rig
    scripted.utilisation = 0.05
    handle = await endpoint_with_autoscaled_blue(
        env, queue, AutoscaleSettings(max_instances=2, target_utilization_percentage=50)
    )
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    recorder.fail_new_instances = "init() raised: out of memory"
    scripted.utilisation = 0.9
    # The new instance fails; the one serving stays in the route and the count in force stays 1.
    await _until(lambda: sum(r.instance_count == 2 for r in recorder.ensured) >= 2)
    state = await handle.query(EndpointWorkflow.describe)
    assert [i.id for i in state.deployments["blue"].instances] == ["blue-0"]
    assert state.deployments["blue"].instance_count == 1
    # The workflow is not wedged: once instances start again, the next try scales out.
    recorder.fail_new_instances = None
    state = await wait_for(handle, lambda s: len(s.deployments["blue"].instances) == 2)
    assert state.deployments["blue"].instance_count == 2
    assert state.deployments["blue"].provisioning_state == "Succeeded"


SCALE_SET = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/tg-ep-blue"
)


async def test_a_cpu_rule_scales_out_on_the_scale_sets_percentage_cpu_not_the_gateways_load(rig) -> None:  # noqa: ANN001
    env, recorder, scripted, queue = rig
    scripted.utilisation, scripted.cpu_percent = 0.05, 90.0  # idle slots, busy CPUs
    cpu = AzureMonitorSource(resource_id=SCALE_SET, metric="Percentage CPU")
    handle = await endpoint_with_autoscaled_blue(
        env, queue, AutoscaleSettings(max_instances=3, target_utilization_percentage=50, cpu_source=cpu)
    )

    state = await wait_for(handle, lambda s: len(s.deployments["blue"].instances) == 2)

    assert state.deployments["blue"].instance_count == 2
    assert scripted.cpu_queries[0] == MetricQuery(
        resource_id=SCALE_SET, metric="Percentage CPU", window_seconds=300
    )


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(600):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


async def reported_states(env: WorkflowEnvironment, endpoint: str, deployment: str) -> list[str]:
    """Every provisioning state the deployment's workflow signalled to its endpoint, in order,
    read from its history (so no transient report is missed)."""
    handle = env.client.get_workflow_handle(deployment_id(endpoint, deployment))
    states = []
    for event in (await handle.fetch_history()).events:
        if event.HasField("signal_external_workflow_execution_initiated_event_attributes"):
            attrs = event.signal_external_workflow_execution_initiated_event_attributes
            if attrs.signal_name == EndpointSignal.DEPLOYMENT_REPORTED:
                [report] = await env.client.data_converter.decode(attrs.input.payloads, [DeploymentReport])
                states.append(report.provisioning_state)
    return states


async def test_a_failed_update_rolled_back_never_reports_succeeded_before_it_reports_failed(rig) -> None:  # noqa: ANN001
    env, recorder, _, queue = rig
    name = f"ep-{uuid.uuid4().hex[:8]}"
    start = EndpointWorkflowInput(state=EndpointRecord(name=name))
    handle = await env.client.start_workflow(
        EndpointWorkflow.run, start, id=endpoint_id(name), task_queue=queue
    )
    created = CreateDeploymentInput(target=target(name, "blue", 1))
    await handle.execute_update(EndpointWorkflow.create_deployment, created)
    await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Succeeded")
    changed = target(name, "blue", 1)
    changed.runtime = changed.runtime.model_copy(update={"spec_hash": "hash-blue-2"})
    recorder.fail_spec = ("hash-blue-2", "init() raised: the new model is broken")

    await handle.execute_update(EndpointWorkflow.update_deployment, UpdateDeploymentInput(target=changed))

    state = await wait_for(handle, lambda s: s.deployments["blue"].provisioning_state == "Failed")
    assert "rolled back" in (state.deployments["blue"].error or "")
    states = await reported_states(env, name, "blue")
    after_update = states[states.index("Updating") :]
    assert "Succeeded" not in after_update[: after_update.index("Failed")], states
