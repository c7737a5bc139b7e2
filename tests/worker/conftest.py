"""A Temporal dev server started WITHOUT Tidegate's search-attribute flags, as a real cluster
would be: the worker must register them itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from config.binaries import find_binary


@pytest_asyncio.fixture(scope="package")
async def temporal_bare() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=find_binary("temporal"), ui=False)
    try:
        yield env
    finally:
        await env.shutdown()


async def fresh_namespace(client: Client) -> str:
    """A namespace of the test's own: search attributes are kept per namespace."""
    namespace = f"sa-{uuid.uuid4().hex[:12]}"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=24 * 3600)
        )
    )
    return namespace


def target(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host
