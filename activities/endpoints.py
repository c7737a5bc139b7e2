"""Activities that change an endpoint through its workflow (a rollout's traffic, retiring, a
runtime patch): Temporal updates and queries by the names the contract gives them."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from config.contract.activities import PatchDeploymentInput, PatchDeploymentResult, RetireDeploymentInput
from config.contract.ids import endpoint_id
from config.contract.names import Activity, EndpointQuery, EndpointUpdate
from config.contract.state import EndpointRecord
from config.contract.workflows import DeleteDeploymentInput, SetRolloutTrafficInput, UpdateDeploymentInput
from decisions.instances import bump_patch_level

HEARTBEAT_SECONDS = 2.0
PATCH_POLL_SECONDS = 1.0


class EndpointActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def _update(
        self, workflow_id: str, update: str, arg: object, result_type: type | None = None
    ) -> object:
        handle = self._client.get_workflow_handle(workflow_id)
        call = asyncio.ensure_future(handle.execute_update(update, arg, result_type=result_type))
        try:
            # Heartbeats while the endpoint waits for its push: a worker that dies here is
            # noticed in HEARTBEAT_SECONDS, not at the end of the start-to-close timeout.
            while not call.done():
                activity.heartbeat()
                await asyncio.wait({call}, timeout=HEARTBEAT_SECONDS)
            return call.result()
        except asyncio.CancelledError:
            call.cancel()
            raise
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise ApplicationError(message, type="Refused", non_retryable=True) from None

    async def _describe(self, endpoint: str) -> EndpointRecord:
        handle = self._client.get_workflow_handle(endpoint_id(endpoint))
        return await handle.query(EndpointQuery.DESCRIBE, result_type=EndpointRecord)

    async def _rollout_endpoint(self, request: SetRolloutTrafficInput) -> str:
        """The workflow id of the endpoint a rollout changes. A rollout that began before its
        input named the endpoint is the endpoint workflow's child: its parent says."""
        if request.endpoint is not None:
            return endpoint_id(request.endpoint)
        info = activity.info()
        if info.workflow_id is None:
            raise ApplicationError("set_rollout_traffic ran outside a workflow", non_retryable=True)
        described = await self._client.get_workflow_handle(
            info.workflow_id, run_id=info.workflow_run_id
        ).describe()
        if described.parent_id is None:
            raise ApplicationError(
                f"rollout {request.rollout_id} names no endpoint and has no parent workflow",
                type="UnknownEndpoint",
                non_retryable=True,
            )
        return described.parent_id

    @activity.defn(name=Activity.SET_ROLLOUT_TRAFFIC)
    async def set_rollout_traffic(self, request: SetRolloutTrafficInput) -> None:
        """Returns once every gateway serves the new split (the update waits for the push)."""
        workflow_id = await self._rollout_endpoint(request)
        await self._update(workflow_id, EndpointUpdate.SET_ROLLOUT_TRAFFIC, request, EndpointRecord)

    @activity.defn(name=Activity.PATCH_DEPLOYMENT)
    async def patch_deployment(self, request: PatchDeploymentInput) -> PatchDeploymentResult:
        """Roll one deployment onto a refreshed environment and wait until it has settled."""
        state = await self._describe(request.endpoint)
        record = state.deployments.get(request.deployment)
        if record is None or record.provisioning_state != "Succeeded":
            shown = record.provisioning_state if record else "gone"
            return PatchDeploymentResult(
                endpoint=request.endpoint, deployment=request.deployment, outcome="Skipped", detail=shown
            )
        target = record.target.model_copy(update={"runtime": bump_patch_level(record.target.runtime)})
        await self._update(
            endpoint_id(request.endpoint),
            EndpointUpdate.UPDATE_DEPLOYMENT,
            UpdateDeploymentInput(target=target),
        )
        while True:
            await asyncio.sleep(PATCH_POLL_SECONDS)
            activity.heartbeat()
            state = await self._describe(request.endpoint)
            record = state.deployments.get(request.deployment)
            if record is None:
                return PatchDeploymentResult(
                    endpoint=request.endpoint,
                    deployment=request.deployment,
                    outcome="Skipped",
                    detail="deleted",
                )
            if record.provisioning_state == "Succeeded" or record.provisioning_state == "Failed":
                return PatchDeploymentResult(
                    endpoint=request.endpoint,
                    deployment=request.deployment,
                    outcome=record.provisioning_state,
                    detail=record.error or f"environment patch level {target.runtime.environment.patch}",
                )

    @activity.defn(name=Activity.RETIRE_DEPLOYMENT)
    async def retire_deployment(self, request: RetireDeploymentInput) -> None:
        workflow_id = endpoint_id(request.endpoint)
        if request.action == "delete":
            await self._update(
                workflow_id, EndpointUpdate.DELETE_DEPLOYMENT, DeleteDeploymentInput(name=request.deployment)
            )
            return
        if request.action == "scale_down":
            state = await self._describe(request.endpoint)
            record = state.deployments.get(request.deployment)
            if record is None or record.target.instance_count == 1:
                return  # already gone or already at its floor: nothing to do again
            target = record.target.model_copy(update={"instance_count": 1})
            target.spec = {**target.spec, "instance_count": 1}
            await self._update(
                workflow_id, EndpointUpdate.UPDATE_DEPLOYMENT, UpdateDeploymentInput(target=target)
            )
