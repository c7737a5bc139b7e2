"""RolloutWorkflow with the real EndpointWorkflow, on a real Temporal dev server.

Holds and intervals are short (the time-skipping test server does not run these workflows
reliably: Updates waiting on pushes stall its clock), so each test takes seconds.

The route pushes and the gateway's windows are recorded/scripted activities; traffic changes
go through the real endpoint update, so the weights asserted are the ones a gateway received.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest_asyncio
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.endpoints import EndpointActivities
from config.contract.activities import QueryWindowInput
from config.contract.ids import endpoint_id
from config.contract.names import Activity
from config.contract.rollout import RolloutState
from config.contract.state import AutoscaleSettings, DeploymentTarget, EndpointRecord
from config.contract.workflows import (
    CreateDeploymentInput,
    EndpointWorkflowInput,
    StartRolloutInput,
    UpdateEndpointInput,
)
from config.rollout import RolloutSpec
from config.stats import WindowStats
from decisions.rollout import expand_plan
from tests.support.polling import eventually
from tests.workflows.recorders import Recorder, scripted_window
from tests.workflows.test_endpoint_workflow import target, wait_for
from workflows.deployment import DeploymentWorkflow
from workflows.endpoint import EndpointWorkflow
from workflows.rollout import RolloutWorkflow

Health = Callable[[str], float]  # deployment -> error rate the scripted gateway reports


class Rig:
    def __init__(self, env: WorkflowEnvironment, recorder: Recorder, task_queue: str) -> None:
        self.env = env
        self.recorder = recorder
        self.task_queue = task_queue
        self.error_rate: dict[str, float] = {"blue": 0.0, "green": 0.0}
        self.utilisation = 0.05  # of every instance: low, so an autoscaled deployment would scale in

    def activities(self) -> list:
        @activity.defn(name=Activity.QUERY_WINDOW)
        async def query_window(request: QueryWindowInput) -> WindowStats:
            return scripted_window(request, self.error_rate[request.deployment], self.utilisation)

        return [
            *self.recorder.activities(),
            query_window,
            EndpointActivities(self.env.client).retire_deployment,
            EndpointActivities(self.env.client).set_rollout_traffic,
        ]

    def worker(self) -> Worker:
        return Worker(
            self.env.client,
            task_queue=self.task_queue,
            workflows=[EndpointWorkflow, DeploymentWorkflow, RolloutWorkflow],
            activities=self.activities(),
        )

    def green_weights(self) -> list[int]:
        """Green's share in each route pushed, without repeats."""
        weights: list[int] = []
        for route in self.recorder.routes:
            share = route.traffic.get("green")
            if share is not None and (not weights or weights[-1] != share):
                weights.append(share)
        return weights

    async def endpoint_with_blue_and_green(self, blue: DeploymentTarget | None = None) -> WorkflowHandle:
        name = f"ep-{uuid.uuid4().hex[:8]}"
        handle = await self.env.client.start_workflow(
            EndpointWorkflow.run,
            EndpointWorkflowInput(state=EndpointRecord(name=name), repush_seconds=30),
            id=endpoint_id(name),
            task_queue=self.task_queue,
        )
        for deployment in ("blue", "green"):
            made = target(name, deployment)
            if deployment == "blue" and blue is not None:
                made = blue.model_copy(update={"endpoint": name, "runtime": made.runtime})
            await handle.execute_update(
                EndpointWorkflow.create_deployment, CreateDeploymentInput(target=made)
            )
        await wait_for(
            handle, lambda s: all(d.provisioning_state == "Succeeded" for d in s.deployments.values())
        )
        await handle.execute_update(
            EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 100, "green": 0})
        )
        return handle

    async def start(self, endpoint: WorkflowHandle, **spec: object) -> WorkflowHandle:
        state = await endpoint.query(EndpointWorkflow.describe)
        plan = expand_plan(RolloutSpec(**spec), endpoint=state.name, baseline="blue", canary="green")
        rid = await endpoint.execute_update(EndpointWorkflow.start_rollout, StartRolloutInput(plan=plan))
        return self.env.client.get_workflow_handle_for(RolloutWorkflow.run, rid)


@pytest_asyncio.fixture
async def rig(temporal_dev: WorkflowEnvironment) -> AsyncIterator[Rig]:
    rig = Rig(temporal_dev, Recorder(), f"tq-{uuid.uuid4()}")
    async with rig.worker():
        yield rig


GATED = {
    "steps": [{"weight": 10, "hold": "1s"}, {"weight": 25, "hold": "1s"}, {"weight": 50, "hold": "1s"}],
    "gates": [{"when": "error_rate <= 0.05"}],
    "check_interval": "200ms",
    "after_success": {"keep_previous_for": "1s", "then": "keep"},
}


async def outcome(rig: Rig, handle: WorkflowHandle) -> RolloutState:
    return await handle.result()


async def test_happy_path_steps_through_to_100(rig: Rig) -> None:
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(endpoint, **GATED)
    final = await outcome(rig, rollout)
    assert final.phase == "Succeeded"
    assert rig.green_weights() == [0, 10, 25, 50, 100]
    state = await endpoint.query(EndpointWorkflow.describe)
    assert state.traffic == {"blue": 0, "green": 100}
    assert state.rollout_id is None


async def test_a_failing_gate_rolls_back(rig: Rig) -> None:
    rig.error_rate["green"] = 0.3
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(endpoint, **GATED)
    final = await outcome(rig, rollout)
    assert final.phase == "RolledBack"
    assert rig.green_weights() == [0, 10, 0]
    assert "error_rate 0.3 > 0.05" in (final.reason or "")
    state = await endpoint.query(EndpointWorkflow.describe)
    assert state.traffic == {"blue": 100, "green": 0}


async def test_pause_holds_past_every_hold_then_resume_finishes(rig: Rig) -> None:
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(endpoint, **GATED)
    await _until_weight(rig, 10)
    await rollout.signal(RolloutWorkflow.pause, "checking dashboards")
    await asyncio.sleep(4)  # longer than every hold: only a resume moves it on
    status = await rollout.query(RolloutWorkflow.status)
    assert status.state.phase == "Paused"
    assert rig.green_weights()[-1] <= 10
    await rollout.signal(RolloutWorkflow.resume)
    assert (await outcome(rig, rollout)).phase == "Succeeded"


async def test_promote_by_signal_goes_straight_to_100(rig: Rig) -> None:
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(endpoint, **{**GATED, "steps": [{"weight": 10, "hold": "5h"}]})
    await _until_weight(rig, 10)
    await rollout.signal(RolloutWorkflow.promote, "looks great")
    final = await outcome(rig, rollout)
    assert final.phase == "Succeeded"
    assert rig.green_weights() == [0, 10, 100]


async def test_rollback_by_signal_puts_traffic_back(rig: Rig) -> None:
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(endpoint, **GATED)
    await _until_weight(rig, 10)
    await rollout.signal(RolloutWorkflow.rollback, "operator says no")
    final = await outcome(rig, rollout)
    assert (final.phase, final.reason) == ("RolledBack", "operator says no")
    assert rig.green_weights() == [0, 10, 0]


async def test_a_second_rollout_is_refused_while_one_runs(rig: Rig) -> None:
    from temporalio.client import WorkflowUpdateFailedError

    endpoint = await rig.endpoint_with_blue_and_green()
    first = await rig.start(endpoint, **GATED)
    try:
        await rig.start(endpoint, **GATED)
    except WorkflowUpdateFailedError as err:
        assert f"already has a running rollout: {first.id}" in str(err.cause)
    else:
        raise AssertionError("second rollout was accepted")
    try:
        await endpoint.execute_update(
            EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 50, "green": 50})
        )
    except WorkflowUpdateFailedError as err:
        assert f"under rollout {first.id}" in str(err.cause)
    else:
        raise AssertionError("manual traffic change was accepted during a rollout")


async def test_a_worker_restart_mid_rollout_changes_nothing(temporal_dev: WorkflowEnvironment) -> None:
    rig = Rig(temporal_dev, Recorder(), f"tq-{uuid.uuid4()}")
    async with rig.worker():
        endpoint = await rig.endpoint_with_blue_and_green()
        rollout = await rig.start(endpoint, **GATED)
        await _until_weight(rig, 10)
    # No worker for longer than a hold: the rollout waits, durable in Temporal.
    await asyncio.sleep(2)
    async with rig.worker():
        final = await outcome(rig, rollout)
    assert final.phase == "Succeeded"
    assert rig.green_weights() == [0, 10, 25, 50, 100]


async def test_undo_after_success_puts_the_baseline_back(rig: Rig) -> None:
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(
        endpoint,
        **{**GATED, "steps": [{"weight": 50, "hold": "1s"}], "after_success": {"keep_previous_for": "1h"}},
    )

    async def succeeded() -> bool:
        return (await rollout.query(RolloutWorkflow.status)).state.phase == "Succeeded"

    await eventually(succeeded, "the rollout succeeded")
    await rollout.signal(RolloutWorkflow.undo)
    final = await outcome(rig, rollout)
    assert final.phase == "RolledBack"
    state = await endpoint.query(EndpointWorkflow.describe)
    assert state.traffic == {"blue": 100, "green": 0}


async def test_an_autoscaled_baseline_does_not_scale_in_while_a_rollout_moves_its_traffic(rig: Rig) -> None:
    blue = target("-", "blue", count=2)
    blue.autoscale = AutoscaleSettings(
        min_instances=1,
        max_instances=2,
        target_utilization_percentage=50,
        polling_interval=1,
        scale_in_cooldown=1,
    )
    endpoint = await rig.endpoint_with_blue_and_green(blue=blue)
    rollout = await rig.start(endpoint, **{**GATED, "steps": [{"weight": 10, "hold": "1h"}]})
    await _until_weight(rig, 10)
    await asyncio.sleep(4)  # 5 % busy for four cool-downs: only the rollout holds blue at 2
    state = await endpoint.query(EndpointWorkflow.describe)
    assert len(state.deployments["blue"].instances) == 2
    await rollout.signal(RolloutWorkflow.rollback, "done looking")
    assert (await outcome(rig, rollout)).phase == "RolledBack"
    await wait_for(endpoint, lambda s: len(s.deployments["blue"].instances) == 1)


async def _until_weight(rig: Rig, weight: int) -> None:
    await eventually(lambda: weight in rig.green_weights(), f"green at {weight} %")
