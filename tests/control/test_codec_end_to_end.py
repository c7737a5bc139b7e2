"""A secret environment variable through a real Temporal dev server: Temporal keeps only
ciphertext, and the holder of the control credential reads it back through `tidegate api`,
by HTTP and with the real `temporal workflow show --codec-endpoint`."""

from __future__ import annotations

import subprocess
import uuid
from datetime import timedelta

import aiohttp
import pytest
from google.protobuf import json_format
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from config.binaries import find_binary
from config.contract.codec import ENCODING, data_converter
from config.contract.temporal_client import connect
from control.api_server import codec_endpoint
from tests.control.conftest import ApiProcess

SECRET = "s3cr3t-db-password-e2e-93ab"


def deployment_input() -> dict[str, object]:
    return {"deployment": "blue", "environment_variables": {"DB_PASSWORD": SECRET, "MODE": "prod"}}


@activity.defn(name="start_instance")
async def start_instance(request: dict[str, object]) -> dict[str, object]:
    """Stands in for the compute activity: gets the variables, reports what it started with."""
    return {"started_with": request["environment_variables"]}


@workflow.defn(name="CodecProbeWorkflow", sandboxed=False)
class CodecProbeWorkflow:
    @workflow.run
    async def run(self, request: dict[str, object]) -> dict[str, object]:
        return await workflow.execute_activity(
            start_instance, request, start_to_close_timeout=timedelta(seconds=30)
        )


@activity.defn(name="check_database")
async def check_database(request: dict[str, object]) -> None:
    variables = request["environment_variables"]
    assert isinstance(variables, dict)
    raise ApplicationError(f"cannot log in with password {variables['DB_PASSWORD']}", non_retryable=True)


@workflow.defn(name="CodecProbeFailingWorkflow", sandboxed=False)
class CodecProbeFailingWorkflow:
    @workflow.run
    async def run(self, request: dict[str, object]) -> None:
        await workflow.execute_activity(check_database, request, start_to_close_timeout=timedelta(seconds=30))


def target(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def history_payloads(history: WorkflowHistory) -> list[Payload]:
    """Every payload the events carry: workflow input and result, activity input and result."""
    found: list[Payload] = []
    for event in history.events:
        for field in (
            "workflow_execution_started_event_attributes",
            "activity_task_scheduled_event_attributes",
            "activity_task_completed_event_attributes",
            "workflow_execution_completed_event_attributes",
        ):
            if event.HasField(field):
                attributes = getattr(event, field)
                for name in ("input", "result"):
                    if name in attributes.DESCRIPTOR.fields_by_name and attributes.HasField(name):
                        found.extend(getattr(attributes, name).payloads)
    return found


@pytest.fixture(scope="module")
async def finished(temporal_dev: WorkflowEnvironment, api: ApiProcess) -> tuple[str, WorkflowHistory]:
    """A workflow run by a Tidegate client and worker (config.contract.temporal_client.connect), and its
    history as a client WITHOUT the codec (Temporal's own view) fetches it."""
    settings = api.settings(temporal_address=target(temporal_dev))
    client = await connect(settings)
    task_queue = f"codec-{uuid.uuid4()}"
    workflow_id = f"codec-probe/{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=[CodecProbeWorkflow], activities=[start_instance]
    ):
        result = await client.execute_workflow(
            CodecProbeWorkflow.run, deployment_input(), id=workflow_id, task_queue=task_queue
        )
    assert result == {"started_with": {"DB_PASSWORD": SECRET, "MODE": "prod"}}
    raw_client: Client = temporal_dev.client
    history = await raw_client.get_workflow_handle(workflow_id).fetch_history()
    return workflow_id, history


async def test_temporal_keeps_the_secret_only_as_ciphertext(finished: tuple[str, WorkflowHistory]) -> None:
    _, history = finished
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert SECRET.encode() not in raw
    assert SECRET not in history.to_json()
    payloads = history_payloads(history)
    assert len(payloads) == 4  # workflow input, activity input, activity result, workflow result
    assert all(p.metadata["encoding"] == ENCODING for p in payloads)


async def test_the_codec_endpoint_decodes_the_history_for_the_credential(
    finished: tuple[str, WorkflowHistory], api: ApiProcess
) -> None:
    _, history = finished
    body = json_format.MessageToJson(Payloads(payloads=history_payloads(history)))
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{api.url}/codec/decode", data=body, headers=headers) as response:
            assert response.status == 401
            assert SECRET not in await response.text()
        authorized = {**headers, "Authorization": f"Bearer {api.token}"}
        async with session.post(f"{api.url}/codec/decode", data=body, headers=authorized) as response:
            assert response.status == 200
            decoded = json_format.Parse(await response.text(), Payloads()).payloads
    assert len(decoded) == 4
    assert all(SECRET.encode() in p.data and p.metadata["encoding"] == b"json/plain" for p in decoded)


def show(
    temporal_dev: WorkflowEnvironment, workflow_id: str, *codec: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            find_binary("temporal"),
            "workflow",
            "show",
            "--address",
            target(temporal_dev),
            "--namespace",
            "default",
            "--workflow-id",
            workflow_id,
            "--detailed",
            *codec,
        ],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a limit under test
    )


async def test_temporal_workflow_show_through_the_codec_endpoint_shows_the_value(
    finished: tuple[str, WorkflowHistory], temporal_dev: WorkflowEnvironment, api: ApiProcess
) -> None:
    workflow_id, _ = finished
    endpoint = codec_endpoint(api.settings())
    shown = show(
        temporal_dev, workflow_id, "--codec-endpoint", endpoint, "--codec-auth", f"Bearer {api.token}"
    )
    assert shown.returncode == 0, shown.stderr
    assert f"input[0].environment_variables.DB_PASSWORD: {SECRET}" in shown.stdout
    without = show(temporal_dev, workflow_id)
    assert without.returncode == 0, without.stderr
    assert SECRET not in without.stdout


async def test_the_encrypted_history_replays_with_the_key(
    finished: tuple[str, WorkflowHistory], api: ApiProcess
) -> None:
    """A worker upgrade replays encrypted histories like plain ones, given the same key."""
    _, history = finished
    replayer = Replayer(workflows=[CodecProbeWorkflow], data_converter=data_converter(api.settings()))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


async def test_an_error_quoting_the_secret_reaches_the_caller_but_not_the_history(
    temporal_dev: WorkflowEnvironment, api: ApiProcess
) -> None:
    """Failure messages and stack traces are encrypted too: an error may quote a variable."""
    client = await connect(api.settings(temporal_address=target(temporal_dev)))
    task_queue = f"codec-{uuid.uuid4()}"
    workflow_id = f"codec-probe-failing/{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=[CodecProbeFailingWorkflow], activities=[check_database]
    ):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                CodecProbeFailingWorkflow.run, deployment_input(), id=workflow_id, task_queue=task_queue
            )
    activity_error = failure.value.cause
    assert isinstance(activity_error, ActivityError)
    assert str(activity_error.cause) == f"cannot log in with password {SECRET}"
    history = await temporal_dev.client.get_workflow_handle(workflow_id).fetch_history()
    assert SECRET.encode() not in b"".join(event.SerializeToString() for event in history.events)
