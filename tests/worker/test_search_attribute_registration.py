"""`ensure_search_attributes` and the worker against a real dev server started without
Tidegate's search-attribute flags, each test in a namespace of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr
from temporalio import workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributeIndexedValueType as Kind
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.binaries import find_binary
from config.settings import Settings
from tests.worker.conftest import fresh_namespace, target
from worker.main import serve
from workflows import search
from workflows.search import (
    SearchAttributePermissionDenied,
    SearchAttributeTypeConflict,
    ensure_search_attributes,
    plan_search_attributes,
)

EVERY = 0.1
POLLS = 300  # bounds only keep a broken build from hanging; never a timing assertion
EXPECTED = {
    "TidegateEndpoint": int(Kind.KEYWORD),
    "TidegateFrom": int(Kind.KEYWORD),
    "TidegateTo": int(Kind.KEYWORD),
    "TidegatePhase": int(Kind.KEYWORD),
    "TidegateStepWeight": int(Kind.INT),
}


@workflow.defn(name="SearchAttributeProbeWorkflow", sandboxed=False)
class SearchAttributeProbeWorkflow:
    """What a rollout does with them: starts with `search.initial`, upserts phase and weight."""

    @workflow.run
    async def run(self) -> None:
        workflow.upsert_search_attributes(
            [search.PHASE.value_set("Promoted"), search.STEP_WEIGHT.value_set(100)]
        )


async def listed(client: Client, namespace: str) -> dict[str, int]:
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return {name: int(kind) for name, kind in response.custom_attributes.items()}


async def add(client: Client, namespace: str, attributes: dict[str, int]) -> None:
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(namespace=namespace, search_attributes=attributes)
    )


async def connect_to(env: WorkflowEnvironment, namespace: str) -> Client:
    return await Client.connect(target(env), namespace=namespace)


async def start_probe(client: Client, task_queue: str) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        SearchAttributeProbeWorkflow.run,
        id=f"probe-{uuid.uuid4()}",
        task_queue=task_queue,
        search_attributes=search.initial("sklearn", "blue", "green"),
    )


async def start_once_usable(client: Client, task_queue: str) -> WorkflowHandle[Any, Any]:
    """On a dev server an attribute just added can take a moment to be accepted."""
    refused: RPCError | None = None
    for _ in range(POLLS):
        try:
            return await start_probe(client, task_queue)
        except RPCError as error:
            if error.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            refused = error
        await asyncio.sleep(EVERY)
    raise AssertionError(f"never accepted a workflow with the search attributes: {refused}")


class RefusingOperatorService:
    """The real operator service with one call refused, as a namespace-scoped credential is."""

    def __init__(self, real: Any, refuse: str) -> None:
        self._real = real
        self._refuse = refuse

    def _refused(self, call: str) -> None:
        if call == self._refuse:
            raise RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")

    async def list_search_attributes(self, request: ListSearchAttributesRequest, **kwargs: Any) -> Any:
        self._refused("list")
        return await self._real.list_search_attributes(request, **kwargs)

    async def add_search_attributes(self, request: AddSearchAttributesRequest, **kwargs: Any) -> Any:
        self._refused("add")
        return await self._real.add_search_attributes(request, **kwargs)


class RefusingClient:
    def __init__(self, client: Client, refuse: str) -> None:
        self.operator_service = RefusingOperatorService(client.operator_service, refuse)


def refusing(client: Client, refuse: str) -> Client:
    return cast(Client, RefusingClient(client, refuse))


async def test_ensure_registers_every_missing_attribute_with_its_type(
    temporal_bare: WorkflowEnvironment,
) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    assert await listed(client, namespace) == {}

    added = await ensure_search_attributes(client, namespace)

    assert added == list(EXPECTED)
    assert await listed(client, namespace) == EXPECTED


async def test_ensure_a_second_time_adds_nothing(temporal_bare: WorkflowEnvironment) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    await ensure_search_attributes(client, namespace)

    assert await ensure_search_attributes(client, namespace) == []
    assert await listed(client, namespace) == EXPECTED


async def test_ensure_adds_only_what_is_missing(temporal_bare: WorkflowEnvironment) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    await add(client, namespace, {"TidegateEndpoint": int(Kind.KEYWORD), "CustomerId": int(Kind.TEXT)})

    added = await ensure_search_attributes(client, namespace)

    assert added == ["TidegateFrom", "TidegateTo", "TidegatePhase", "TidegateStepWeight"]
    assert await listed(client, namespace) == {**EXPECTED, "CustomerId": int(Kind.TEXT)}


async def test_a_workflow_starts_with_the_attributes_once_they_are_ensured(
    temporal_bare: WorkflowEnvironment,
) -> None:
    namespace = await fresh_namespace(temporal_bare.client)
    client = await connect_to(temporal_bare, namespace)
    task_queue = f"search-attributes-{uuid.uuid4()}"
    with pytest.raises(RPCError) as refused:
        await start_probe(client, task_queue)
    assert refused.value.status == RPCStatusCode.INVALID_ARGUMENT  # the failure this guards against

    await ensure_search_attributes(client, namespace)
    async with Worker(client, task_queue=task_queue, workflows=[SearchAttributeProbeWorkflow]):
        handle = await start_once_usable(client, task_queue)
        await handle.result()

    found = (await handle.describe()).typed_search_attributes
    assert [found.get(key) for key in search.ALL] == ["sklearn", "blue", "green", "Promoted", 100]


async def test_ensure_refuses_an_attribute_listed_with_another_type(
    temporal_bare: WorkflowEnvironment,
) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    await add(client, namespace, {"TidegatePhase": int(Kind.INT)})

    with pytest.raises(SearchAttributeTypeConflict, match="TidegatePhase is Int, Tidegate needs Keyword"):
        await ensure_search_attributes(client, namespace)
    assert await listed(client, namespace) == {"TidegatePhase": int(Kind.INT)}  # nothing added


async def test_a_refused_add_names_the_commands_an_operator_runs(temporal_bare: WorkflowEnvironment) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    await add(client, namespace, {"TidegateEndpoint": int(Kind.KEYWORD)})

    with pytest.raises(SearchAttributePermissionDenied) as refused:
        await ensure_search_attributes(refusing(client, "add"), namespace)

    message = str(refused.value)
    assert "TidegateEndpoint" not in message  # already there: not the operator's job
    commands = [line.strip() for line in message.splitlines() if line.startswith("  temporal ")]
    assert commands == search.create_commands(
        [search.FROM, search.TO, search.PHASE, search.STEP_WEIGHT], namespace
    )
    for command in commands:  # the operator runs them as printed, with their own address
        argv = [find_binary("temporal"), *shlex.split(command)[1:], "--address", target(temporal_bare)]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    assert await ensure_search_attributes(client, namespace) == []
    assert await listed(client, namespace) == EXPECTED


async def test_a_refused_list_names_every_attribute(temporal_bare: WorkflowEnvironment) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)

    with pytest.raises(SearchAttributePermissionDenied) as refused:
        await ensure_search_attributes(refusing(client, "list"), namespace)

    assert f"refused to list search attributes in namespace {namespace!r}" in str(refused.value)
    assert "An operator must add whichever of TidegateEndpoint (Keyword), " in str(refused.value)
    assert str(refused.value).endswith(
        "\n".join(f"  {c}" for c in search.create_commands(search.ALL, namespace))
    )


async def until_polling(
    client: Client, namespace: str, task_queue: str, serving: asyncio.Future[None]
) -> None:
    request = DescribeTaskQueueRequest(
        namespace=namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    for _ in range(POLLS):
        if serving.done():
            serving.result()  # raises what stopped the worker
            raise AssertionError("the worker returned before it polled")
        if (await client.workflow_service.describe_task_queue(request)).pollers:
            return
        await asyncio.sleep(EVERY)
    raise AssertionError(f"no worker ever polled {task_queue}")


async def test_the_worker_registers_them_before_it_polls(
    temporal_bare: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    task_queue = f"search-attributes-{uuid.uuid4()}"
    settings = Settings(
        home=tmp_path,
        temporal_address=target(temporal_bare),
        temporal_namespace=namespace,
        task_queue=task_queue,
        control_token=SecretStr("search-attributes-test-token"),
    )
    serving = asyncio.ensure_future(serve(settings))
    try:
        await until_polling(client, namespace, task_queue, serving)
        assert plan_search_attributes(await listed(client, namespace)).missing == ()
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_the_worker_exits_naming_an_attribute_of_another_type(
    temporal_bare: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = temporal_bare.client
    namespace = await fresh_namespace(client)
    await add(client, namespace, {"TidegateStepWeight": int(Kind.KEYWORD)})
    env = {name: value for name, value in os.environ.items() if not name.startswith("TIDEGATE_")}
    env |= {
        "TIDEGATE_HOME": str(tmp_path),
        "TIDEGATE_TEMPORAL_ADDRESS": target(temporal_bare),
        "TIDEGATE_TEMPORAL_NAMESPACE": namespace,
    }
    process = await asyncio.create_subprocess_exec(
        find_binary("tidegate"), "worker", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)  # a hang bound, not a limit

    assert process.returncode == 1
    text = stderr.decode()
    assert "worker.start_refused" in text
    assert f"Temporal namespace {namespace!r} has search attributes of the wrong type" in text
    assert "TidegateStepWeight is Keyword, Tidegate needs Int" in text
    assert await listed(client, namespace) == {"TidegateStepWeight": int(Kind.KEYWORD)}
