"""Recorded histories replay on today's workflow code: a worker upgrade keeps running workflows.

The histories in tests/workflows/histories/ come from the demo on the real local system
(`make histories`). A change that would make a running endpoint, deployment, rollout or host
patch fail its next workflow task after an upgrade fails here first.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from config.contract.codec import data_converter
from config.contract.names import ENDPOINT_WORKFLOW
from config.settings import Settings
from tests.workflows.record_histories import HISTORY_CODEC_KEY, recorded, workflow_id_of
from worker.main import WORKFLOWS

RECORDED = recorded()


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(workflow_id_of(path), path.read_text())


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def replayer(workflows: list[type]) -> Replayer:
    converter = data_converter(Settings(codec_key=HISTORY_CODEC_KEY))
    return Replayer(workflows=workflows, data_converter=converter)


def test_every_workflow_type_has_a_history_in_the_newest_recording() -> None:
    newest = max(path.parent.name for path in RECORDED)
    recorded = {workflow_type(load(path)) for path in RECORDED if path.parent.name == newest}
    assert recorded == {cls.__name__ for cls in WORKFLOWS}


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: f"{path.parent.name}/{path.stem}")
async def test_recorded_history_replays_on_the_current_workflow_code(path: Path) -> None:
    result = await replayer(WORKFLOWS).replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None


@workflow.defn(name=ENDPOINT_WORKFLOW, sandboxed=False)
class EndpointWorkflowThatWaitsFirst:
    """An 'upgrade' that puts a timer before the endpoint's first activity."""

    @workflow.run
    async def run(self, input: object) -> None:
        await workflow.sleep(timedelta(seconds=1))


async def test_a_workflow_change_that_reorders_commands_fails_replay() -> None:
    endpoint = next(path for path in RECORDED if workflow_id_of(path).startswith("endpoint/"))
    with pytest.raises(NondeterminismError):
        await replayer([EndpointWorkflowThatWaitsFirst]).replay_workflow(load(endpoint))
