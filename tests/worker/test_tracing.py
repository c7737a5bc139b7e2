"""With TIDEGATE_OTLP_ENDPOINT set, a client from ``connect`` carries temporalio's OpenTelemetry
interceptor, and a worker built on it sends a span per workflow and activity execution to a
real OTLP/HTTP receiver; the worker as it serves (``worker.main.serve``) does so for
Tidegate's own workflows and activities; unset, there is no interceptor at all."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest_asyncio
from pydantic import SecretStr
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():  # the sandbox re-imports this module
    from config.contract.names import HOST_PATCH_WORKFLOW
    from config.contract.temporal_client import connect
    from config.contract.workflows import HostPatchInput, HostPatchResult
    from config.settings import Settings
    from config.telemetry import shutdown_tracing
    from tests.support.otlp import OtlpReceiver
    from tests.worker.conftest import fresh_namespace, target
    from worker.main import serve


@activity.defn(name="traced_probe_activity")
async def probe_activity(value: int) -> int:
    return value + 1


@workflow.defn(name="TracedProbeWorkflow")
class TracedProbeWorkflow:
    @workflow.run
    async def run(self, value: int) -> int:
        return await workflow.execute_activity(
            probe_activity, value, start_to_close_timeout=timedelta(seconds=30)
        )


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    made = OtlpReceiver()
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


async def test_a_traced_worker_sends_workflow_and_activity_spans_over_otlp(
    temporal_env: WorkflowEnvironment, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path,
        temporal_address=target(temporal_env),
        otlp_endpoint=f"http://127.0.0.1:{receiver.port}",
    )
    client = await connect(settings, service="tidegate-worker")
    task_queue = f"traced-{uuid.uuid4()}"
    workflow_id = f"traced-probe/{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=[TracedProbeWorkflow], activities=[probe_activity]
    ):
        assert (
            await client.execute_workflow(TracedProbeWorkflow.run, 41, id=workflow_id, task_queue=task_queue)
            == 42
        )
    # What the worker process does before it leaves: the queued spans go out. In a thread: the
    # export blocks until the receiver, on this event loop, answers.
    await asyncio.to_thread(shutdown_tracing)

    run_workflow = await receiver.first(lambda s: s.span.name == "RunWorkflow:TracedProbeWorkflow")
    run_activity = await receiver.first(lambda s: s.span.name == "RunActivity:traced_probe_activity")
    started = await receiver.first(lambda s: s.span.name == "StartWorkflow:TracedProbeWorkflow")
    assert run_workflow.resource["service.name"] == "tidegate-worker"
    assert run_workflow.attributes["temporalWorkflowID"] == workflow_id
    assert run_activity.attributes["temporalWorkflowID"] == workflow_id
    # One trace: the client's start, the workflow run under it, the activity under that.
    assert run_workflow.span.trace_id == run_activity.span.trace_id == started.span.trace_id
    assert run_workflow.span.parent_span_id == started.span.span_id


async def test_without_the_setting_a_client_has_no_tracing_interceptor(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = await connect(Settings(home=tmp_path, temporal_address=target(temporal_env), otlp_endpoint=None))
    assert client.config()["interceptors"] == []


async def test_the_serving_worker_traces_tidegates_own_workflows_and_activities(
    temporal_bare: WorkflowEnvironment, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """``serve`` as `tidegate worker` runs it, traced; the workflow started by a client without
    tracing (as the `temporal` CLI would): the worker still sends its own spans."""
    namespace = await fresh_namespace(temporal_bare.client)
    settings = Settings(
        home=tmp_path,
        temporal_address=target(temporal_bare),
        temporal_namespace=namespace,
        task_queue=f"traced-worker-{uuid.uuid4()}",
        control_token=SecretStr("traced-worker-test-token"),
        otlp_endpoint=f"http://127.0.0.1:{receiver.port}",
    )
    serving = asyncio.ensure_future(serve(settings))
    workflow_id = f"host-patch/{uuid.uuid4()}"
    try:
        starter = await connect(settings.model_copy(update={"otlp_endpoint": None}))
        # A host patch of a deployment that does not exist: one activity, then the workflow ends.
        result = await starter.execute_workflow(
            HOST_PATCH_WORKFLOW,
            HostPatchInput(deployments=[("ghost-ep", "blue")]),
            id=workflow_id,
            task_queue=settings.task_queue,
            result_type=HostPatchResult,
        )
        assert [r.outcome for r in result.results] in (["Skipped"], ["Failed"])
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    await asyncio.to_thread(shutdown_tracing)

    run_workflow = await receiver.first(lambda s: s.span.name == f"RunWorkflow:{HOST_PATCH_WORKFLOW}")
    run_activity = await receiver.first(lambda s: s.span.name.startswith("RunActivity:"))
    assert run_workflow.resource["service.name"] == run_activity.resource["service.name"] == "tidegate-worker"
    assert run_workflow.attributes["temporalWorkflowID"] == run_activity.attributes["temporalWorkflowID"]
    assert run_workflow.attributes["temporalWorkflowID"] == workflow_id
    # No starter's context to join: the workflow's span starts a trace of its own. (temporalio
    # puts its activities' spans in other traces then: they are found by the workflow id they
    # carry, not by the trace.)
    assert not run_workflow.span.parent_span_id
