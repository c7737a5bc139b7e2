"""Idle deployments cost no activity slot: instance changes reach each DeploymentWorkflow as a
signal from the worker's instance watcher (worker/watcher.py, the real one, over a host in
memory that long-polls as the real host does), and the workflow reads its instances itself
only now and then in case a signal was lost.

The worker here has 5 activity slots. Before the watcher, each deployment's control loop held
a slot for a long poll (`watch_instances`), renewed about once a second, so 10 idle deployments
kept every slot busy and everything else queued behind them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from config.contract.ids import deployment_id, endpoint_id
from config.contract.names import Activity
from config.contract.state import EndpointRecord
from config.contract.workflows import CreateDeploymentInput, EndpointWorkflowInput, UpdateEndpointInput
from config.host_api import DeploymentInstances
from tests.conftest import time_skipping_server
from tests.support.polling import eventually
from tests.workflows.fake_host import FakeHost
from tests.workflows.test_endpoint_workflow import target
from worker.watcher import InstanceWatcher
from workflows.deployment import CHECK_SECONDS, DeploymentWorkflow
from workflows.endpoint import EndpointWorkflow

SLOTS = 5
IDLE_DEPLOYMENTS = 10
# Idle time before the eleventh deployment: the old control loop renewed its watch every second.
IDLE_SECONDS = 3.0


@dataclass
class Rig:
    env: WorkflowEnvironment
    host: FakeHost
    task_queue: str
    started: list[WorkflowHandle] = field(default_factory=list)

    async def start_endpoint(self) -> tuple[str, WorkflowHandle]:
        name = f"ep-{uuid.uuid4().hex[:8]}"
        handle = await self.env.client.start_workflow(
            EndpointWorkflow.run,
            EndpointWorkflowInput(state=EndpointRecord(name=name)),
            id=endpoint_id(name),
            task_queue=self.task_queue,
        )
        self.started.append(handle)
        await self.until(handle, lambda s: s.provisioning_state == "Succeeded", "the endpoint")
        return name, handle

    async def create(self, handle: WorkflowHandle, endpoint: str, name: str, count: int = 1) -> None:
        await handle.execute_update(
            EndpointWorkflow.create_deployment, CreateDeploymentInput(target=target(endpoint, name, count))
        )
        self.started.append(self.env.client.get_workflow_handle(deployment_id(endpoint, name)))
        await self.until(
            handle, lambda s: s.deployments[name].provisioning_state == "Succeeded", f"{name} Succeeded"
        )

    @staticmethod
    async def until(handle: WorkflowHandle, predicate: Callable[[EndpointRecord], bool], what: str) -> None:
        async def holds() -> bool:
            return predicate(await handle.query(EndpointWorkflow.describe))

        await eventually(holds, what)

    def routed(self, endpoint: str, deployment: str) -> list[str] | None:
        """The instance ids the last route pushed for `endpoint` sends `deployment`'s share to."""
        routes = [r for r in self.host.routes if r.name == endpoint]
        if not routes or deployment not in routes[-1].deployments:
            return None
        return [i.id for i in routes[-1].deployments[deployment].instances]

    def ever_routed(self, endpoint: str, deployment: str, ids: list[str]) -> bool:
        return any(
            [i.id for i in r.deployments[deployment].instances] == ids
            for r in self.host.routes
            if r.name == endpoint and deployment in r.deployments
        )

    async def history_lengths(self, endpoint: str, deployments: list[str]) -> dict[str, int]:
        lengths = {}
        for name in deployments:
            handle = self.env.client.get_workflow_handle(deployment_id(endpoint, name))
            lengths[name] = len((await handle.fetch_history()).events)
        return lengths

    async def terminate_leftovers(self) -> None:
        """Idle deployments wait on long timers; nothing of this test runs on once it is over."""
        for handle in self.started:
            try:
                await handle.terminate("test over")
            except RPCError:
                pass  # finished already


@asynccontextmanager
async def running_rig(env: WorkflowEnvironment, *, watcher: bool) -> AsyncIterator[Rig]:
    """A worker with SLOTS activity slots, and (with `watcher`) the instance watcher beside it,
    as worker/main.py runs them."""
    rig = Rig(env, FakeHost(), f"tq-{uuid.uuid4()}")
    async with Worker(
        env.client,
        task_queue=rig.task_queue,
        workflows=[EndpointWorkflow, DeploymentWorkflow],
        activities=rig.host.activities(),
        max_concurrent_activities=SLOTS,
    ):
        watching = (
            asyncio.create_task(InstanceWatcher(rig.host, env.client, poll_seconds=5).run())  # type: ignore[arg-type]
            if watcher
            else None
        )
        try:
            yield rig
        finally:
            if watching is not None:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
            await rig.terminate_leftovers()


@pytest_asyncio.fixture
async def rig(temporal_dev: WorkflowEnvironment) -> AsyncIterator[Rig]:
    async with running_rig(temporal_dev, watcher=True) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own: workflows other modules leave waiting
    would stall its skips."""
    async with time_skipping_server() as env:
        yield env


async def test_ten_idle_deployments_hold_no_activity_slot_so_an_eleventh_is_created_and_routed(
    rig: Rig,
) -> None:
    endpoint, handle = await rig.start_endpoint()
    idle = [f"idle{n}" for n in range(IDLE_DEPLOYMENTS)]
    for name in idle:
        await rig.create(handle, endpoint, name)
    rig.host.count_afresh()
    await asyncio.sleep(IDLE_SECONDS)
    lengths = await rig.history_lengths(endpoint, idle)

    started = time.monotonic()
    await rig.create(handle, endpoint, "eleventh")
    await handle.execute_update(
        EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"eleventh": 100})
    )
    await eventually(
        lambda: [r.traffic for r in rig.host.routes if r.name == endpoint][-1:] == [{"eleventh": 100}],
        "a route with all traffic on the eleventh deployment",
    )
    print(f"eleventh deployment created and given all traffic in {time.monotonic() - started:.2f}s")

    by_idle = [c for c in rig.host.calls if c.deployment in idle]
    assert by_idle == [], f"idle deployments ran activities: {by_idle[:5]} ({len(by_idle)} in all)"
    # Nothing ever waited for a slot: the eleventh's activities and the route pushes ran at once.
    assert rig.host.most_in_flight < SLOTS
    # Nor did they write history: no timer woke them, no poll returned.
    assert await rig.history_lengths(endpoint, idle) == lengths
    assert rig.routed(endpoint, "eleventh") == ["eleventh-0-r0"]


async def test_a_failed_instance_leaves_the_route_and_is_replaced_on_the_watchers_signal(rig: Rig) -> None:
    endpoint, handle = await rig.start_endpoint()
    await rig.create(handle, endpoint, "blue", count=2)
    await handle.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(traffic={"blue": 100}))
    await eventually(lambda: rig.routed(endpoint, "blue") == ["blue-0-r0", "blue-1-r0"], "blue routed")
    rig.host.count_afresh()

    rig.host.fail(endpoint, "blue", "blue-0-r0")

    await eventually(
        lambda: rig.routed(endpoint, "blue") == ["blue-0-r1", "blue-1-r0"], "the replacement routed"
    )
    assert rig.ever_routed(endpoint, "blue", ["blue-1-r0"]), "the failed instance left the route first"
    assert [c.activity for c in rig.host.calls if c.deployment == "blue"] == [Activity.REQUEST_INSTANCES]
    state = await handle.query(EndpointWorkflow.describe)
    assert sorted(i.restarts for i in state.deployments["blue"].details or []) == [0, 1]

    # The new path is deterministic: its history (patch marker, signals, timers) replays.
    history = await rig.env.client.get_workflow_handle(deployment_id(endpoint, "blue")).fetch_history()
    assert any(e.HasField("marker_recorded_event_attributes") for e in history.events)
    replayed = await Replayer(
        workflows=[DeploymentWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None


async def test_signals_no_newer_than_what_the_workflow_has_change_nothing(rig: Rig) -> None:
    """Several workers each run a watcher, and a request's answer tells what a signal tells
    again: old news is dropped, with no activity and no report."""
    endpoint, handle = await rig.start_endpoint()
    await rig.create(handle, endpoint, "blue")
    before = await handle.query(EndpointWorkflow.describe)
    rig.host.count_afresh()
    current = rig.host.status(endpoint, "blue")
    stale = current.model_copy(update={"instances": [], "version": current.version - 1})
    deployment = rig.env.client.get_workflow_handle(deployment_id(endpoint, "blue"))
    for news in (current, current, stale):
        await deployment.signal(DeploymentWorkflow.instances_changed, news)
    # A signal handled after those: the workflow has seen them all.
    await deployment.signal(DeploymentWorkflow.rollout, False)
    await eventually(
        lambda: _history_has_signals(deployment, 4),
        "the four signals in the deployment's history",
    )
    assert rig.host.called(Activity.GET_INSTANCES) == []
    assert [c for c in rig.host.calls if c.deployment == "blue"] == []
    after = await handle.query(EndpointWorkflow.describe)
    assert after.deployments["blue"] == before.deployments["blue"]


async def _history_has_signals(handle: WorkflowHandle, count: int) -> bool:
    history = await handle.fetch_history()
    signalled = sum(1 for e in history.events if e.HasField("workflow_execution_signaled_event_attributes"))
    completed = history.events[-1].HasField("workflow_task_completed_event_attributes")
    return signalled >= count and completed


async def test_without_the_watcher_a_failure_is_found_by_the_check_within_check_seconds(
    skipping: WorkflowEnvironment,
) -> None:
    """A lost signal (no worker ran a watcher) costs at most CHECK_SECONDS: the workflow reads
    its instances itself then. Time is skipped, not waited."""
    async with running_rig(skipping, watcher=False) as rig:
        endpoint, handle = await rig.start_endpoint()
        await rig.create(handle, endpoint, "blue", count=2)
        rig.host.count_afresh()
        rig.host.fail(endpoint, "blue", "blue-0-r0")
        await skipping.sleep(timedelta(seconds=CHECK_SECONDS / 2))
        assert rig.host.called(Activity.REQUEST_INSTANCES) == []
        await skipping.sleep(timedelta(seconds=CHECK_SECONDS / 2 + 5))
        await eventually(lambda: rig.host.called(Activity.REQUEST_INSTANCES), "a replacement requested")
        assert [c.activity for c in rig.host.calls if c.deployment == "blue"][:2] == [
            Activity.GET_INSTANCES,
            Activity.REQUEST_INSTANCES,
        ]
        status: DeploymentInstances = rig.host.status(endpoint, "blue")
        assert sorted(i.restarts for i in status.instances) == [0, 1]
