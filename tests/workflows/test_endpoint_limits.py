"""Per-endpoint request limits set through `online-endpoint update`: the update validator
refuses a bad property before anything is recorded; a good one reaches the state and the
pushed route (time-skipping server, activities recorded)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.contract.ids import endpoint_id
from config.contract.state import EndpointRecord
from config.contract.workflows import EndpointWorkflowInput, UpdateEndpointInput
from tests.support.polling import eventually
from tests.workflows.recorders import Recorder
from workflows.endpoint import EndpointWorkflow

DEFAULT_BYTES = 4096


@pytest_asyncio.fixture
async def endpoint(temporal_env: WorkflowEnvironment) -> AsyncIterator[tuple[Recorder, WorkflowHandle]]:
    recorder = Recorder()
    task_queue = f"tq-{uuid.uuid4()}"
    name = f"lim-{uuid.uuid4().hex[:8]}"
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[EndpointWorkflow],
        activities=recorder.activities(),
    ):
        handle = await temporal_env.client.start_workflow(
            EndpointWorkflow.run,
            EndpointWorkflowInput(
                state=EndpointRecord(name=name, max_request_bytes=DEFAULT_BYTES),
                repush_seconds=30,
                default_max_request_bytes=DEFAULT_BYTES,
            ),
            id=endpoint_id(name),
            task_queue=task_queue,
        )
        await eventually(lambda: recorder.routes, "a first route pushed")
        yield recorder, handle


async def pushed(recorder: Recorder, rate: float) -> None:
    await eventually(lambda: recorder.routes[-1].max_requests_per_second == rate, f"rate {rate} pushed")


async def test_a_rate_and_payload_limit_set_by_update_reach_the_state_and_the_route(
    endpoint: tuple[Recorder, WorkflowHandle],
) -> None:
    rec, handle = endpoint
    properties = {
        "tidegate/max_requests_per_second": "50",
        "tidegate/max_request_bytes": "1024",
        "team": "ml",
    }

    state = await handle.execute_update(
        EndpointWorkflow.update_endpoint, UpdateEndpointInput(properties=properties)
    )

    assert (state.properties, state.max_requests_per_second, state.max_request_bytes) == (
        properties,
        50,
        1024,
    )
    await pushed(rec, 50)
    assert rec.routes[-1].max_request_bytes == 1024
    # Dropping the properties goes back to no rate limit and the default payload limit.
    state = await handle.execute_update(EndpointWorkflow.update_endpoint, UpdateEndpointInput(properties={}))
    assert (state.max_requests_per_second, state.max_request_bytes) == (0, DEFAULT_BYTES)
    await pushed(rec, 0)
    assert rec.routes[-1].max_request_bytes == DEFAULT_BYTES


async def test_retrying_dropped_requests_set_by_update_reaches_the_state_and_the_route(
    endpoint: tuple[Recorder, WorkflowHandle],
) -> None:
    rec, handle = endpoint
    properties = {"tidegate/retry_dropped_requests": "true"}

    state = await handle.execute_update(
        EndpointWorkflow.update_endpoint, UpdateEndpointInput(properties=properties)
    )

    assert state.retry_dropped_requests is True
    await eventually(lambda: rec.routes[-1].retry_dropped_requests, "the resend setting pushed")


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        pytest.param(
            {"tidegate/max_requests_per_second": "-1"},
            "properties.tidegate/max_requests_per_second: must be a number ≥ 0",
            id="negative_rate",
        ),
        pytest.param(
            {"tidegate/max_request_bytes": "lots"},
            "properties.tidegate/max_request_bytes: must be an integer > 0",
            id="payload_limit_not_a_number",
        ),
        pytest.param(
            {"tidegate/max_rps": "5"},
            "properties.tidegate/max_rps: unknown Tidegate property",
            id="misspelt_key",
        ),
        pytest.param(
            {"tidegate/retry_dropped_requests": "always"},
            "properties.tidegate/retry_dropped_requests: must be true or false",
            id="retry_not_a_boolean",
        ),
    ],
)
async def test_update_refuses_a_bad_property_before_recording_anything(
    endpoint: tuple[Recorder, WorkflowHandle], properties: dict[str, str], message: str
) -> None:
    _, handle = endpoint

    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(
            EndpointWorkflow.update_endpoint,
            UpdateEndpointInput(properties=properties, description="not applied either"),
        )

    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "BadRequest"
    assert message in cause.message
    after = await handle.query(EndpointWorkflow.describe)
    assert (after.properties, after.description, after.max_requests_per_second) == ({}, None, 0)
