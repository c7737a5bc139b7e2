"""HostPatchWorkflow on Temporal's time-skipping test server: the deployments one after another,
then the gateways (one activity), their outcome beside the deployments'. Activities are
recorders registered under the real names."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.contract.activities import (
    PatchDeploymentInput,
    PatchDeploymentResult,
    PatchGatewaysInput,
    PatchGatewaysResult,
)
from config.contract.names import Activity
from config.contract.workflows import HostPatchInput, HostPatchResult
from workflows.patch import HostPatchWorkflow

GATEWAYS_DONE = PatchGatewaysResult(
    outcome="Succeeded", detail="2 gateway VM(s) on image 2", image="2", replaced=2
)


@dataclass
class Calls:
    order: list[str] = field(default_factory=list)
    gateways_fail: bool = False


@pytest_asyncio.fixture
async def rig(temporal_env: WorkflowEnvironment) -> AsyncIterator[tuple[WorkflowEnvironment, str, Calls]]:
    calls = Calls()

    @activity.defn(name=Activity.PATCH_DEPLOYMENT)
    async def patch_deployment(request: PatchDeploymentInput) -> PatchDeploymentResult:
        calls.order.append(f"{request.endpoint}/{request.deployment}")
        return PatchDeploymentResult(
            endpoint=request.endpoint, deployment=request.deployment, outcome="Succeeded"
        )

    @activity.defn(name=Activity.PATCH_GATEWAYS)
    async def patch_gateways(request: PatchGatewaysInput) -> PatchGatewaysResult:
        calls.order.append("gateways")
        if calls.gateways_fail:
            raise ApplicationError(
                "gateway VM 3 on image 2 stopped", type="GatewayNotReady", non_retryable=True
            )
        return GATEWAYS_DONE

    task_queue = f"host-patch-{uuid.uuid4()}"
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[HostPatchWorkflow],
        activities=[patch_deployment, patch_gateways],
    ):
        yield temporal_env, task_queue, calls


async def run(rig: tuple[WorkflowEnvironment, str, Calls], request: HostPatchInput) -> HostPatchResult:
    env, task_queue, _ = rig
    return await env.client.execute_workflow(
        HostPatchWorkflow.run,
        request,
        id=f"host-patch/{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=HostPatchResult,
    )


PAIRS = [("ep1", "blue"), ("ep2", "green")]


@pytest.mark.parametrize(
    ("gateways", "fail", "order", "outcome"),
    [
        pytest.param(
            True,
            False,
            ["ep1/blue", "ep2/green", "gateways"],
            "Succeeded",
            id="gateways_after_the_deployments",
        ),
        pytest.param(
            True,
            True,
            ["ep1/blue", "ep2/green", "gateways"],
            "Failed",
            id="a_failed_gateway_patch_is_reported",
        ),
        pytest.param(
            False,
            False,
            ["ep1/blue", "ep2/green"],
            None,
            id="a_patch_of_some_deployments_leaves_the_gateways",
        ),
    ],
)
async def test_host_patch_patches_the_gateways_after_the_deployments(
    rig: tuple[WorkflowEnvironment, str, Calls],
    gateways: bool,
    fail: bool,
    order: list[str],
    outcome: str | None,
) -> None:
    rig[2].gateways_fail = fail
    result = await run(rig, HostPatchInput(deployments=PAIRS, gateways=gateways))
    assert rig[2].order == order
    assert [r.outcome for r in result.results] == ["Succeeded", "Succeeded"]
    assert (result.gateways.outcome if result.gateways else None) == outcome
    if fail:
        assert result.gateways is not None and "gateway VM 3 on image 2 stopped" in result.gateways.detail
    elif gateways:
        assert result.gateways == GATEWAYS_DONE
