"""The instance watcher (worker/watcher.py) on a real dev server, over a scripted provider:
each change is signalled to its deployment's workflow; a deployment whose workflow is gone is
skipped, not retried for ever; a host that does not answer is asked again after a back-off."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest_asyncio
from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.contract.ids import deployment_id
from config.contract.names import DeploymentSignal
from config.host_api import DeploymentInstances, InstanceChanges
from tests.support.polling import eventually
from worker.watcher import InstanceWatcher


@workflow.defn(sandboxed=False)
class DeploymentStandIn:
    """Answers to the deployment workflow's id and records what the watcher tells it."""

    def __init__(self) -> None:
        self.versions: list[int] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=DeploymentSignal.INSTANCES_CHANGED)
    def instances_changed(self, status: DeploymentInstances) -> None:
        self.versions.append(status.version)

    @workflow.query
    def told(self) -> list[int]:
        return self.versions


@dataclass
class ScriptedHost:
    """Answers each `changes` call with the next scripted answer (an exception is raised),
    then waits; records the positions asked from."""

    answers: list[InstanceChanges | Exception]
    asked: list[int] = field(default_factory=list)

    async def changes(self, since: int, timeout_seconds: float) -> InstanceChanges:
        self.asked.append(since)
        if not self.answers:
            await asyncio.sleep(timeout_seconds)
            return InstanceChanges(sequence=since)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def status(endpoint: str, deployment: str, version: int) -> DeploymentInstances:
    return DeploymentInstances(
        endpoint=endpoint, deployment=deployment, environment_state="ready", version=version
    )


@pytest_asyncio.fixture
async def stand_in(temporal_dev: WorkflowEnvironment) -> AsyncIterator[tuple[str, WorkflowHandle]]:
    endpoint, queue = f"ep-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    async with Worker(temporal_dev.client, task_queue=queue, workflows=[DeploymentStandIn]):
        handle = await temporal_dev.client.start_workflow(
            DeploymentStandIn.run, id=deployment_id(endpoint, "blue"), task_queue=queue
        )
        try:
            yield endpoint, handle
        finally:
            await handle.terminate("test over")


async def test_changes_reach_their_workflows_and_a_gone_workflow_is_skipped(
    temporal_dev: WorkflowEnvironment, stand_in: tuple[str, WorkflowHandle]
) -> None:
    endpoint, handle = stand_in
    host = ScriptedHost(
        [
            ConnectionRefusedError("host down"),
            InstanceChanges(
                sequence=7, deployments=[status(endpoint, "blue", 5), status(endpoint, "gone", 7)]
            ),
            InstanceChanges(sequence=9, deployments=[status(endpoint, "blue", 9)]),
        ]
    )
    watcher = asyncio.create_task(
        InstanceWatcher(host, temporal_dev.client, poll_seconds=0.2, retry_seconds=0.01).run()  # type: ignore[arg-type]
    )
    try:
        await eventually(lambda: len(host.asked) >= 4, "the watcher asking past both answers")
        await eventually(
            lambda: _told(handle, [5, 9]), "both changes of blue signalled to its workflow, in order"
        )
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    # Asked again from 0 after the failure; past the gone deployment's change, not stuck on it.
    assert host.asked[:4] == [0, 0, 7, 9]


async def _told(handle: WorkflowHandle, versions: list[int]) -> bool:
    return await handle.query(DeploymentStandIn.told) == versions
