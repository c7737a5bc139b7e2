"""Activities that change an endpoint through its workflow (a rollout's traffic, retiring)."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.messages import PatchDeploymentInput, PatchDeploymentResult, RetireDeploymentInput
from decisions.instances import patched
from decisions.state import EndpointState
from workflows.ids import endpoint_id
from workflows.messages import (
    DeleteDeploymentInput,
    SetRolloutTrafficInput,
    UpdateDeploymentInput,
)

HEARTBEAT_SECONDS = 2.0


class EndpointActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def _update(
        self, endpoint: str, update: str, arg: object, result_type: type | None = None
    ) -> object:
        handle = self._client.get_workflow_handle(endpoint_id(endpoint))
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

    @activity.defn(name="set_rollout_traffic")
    async def set_rollout_traffic(self, request: SetRolloutTrafficInput) -> None:
        """Returns once every gateway serves the new split (the update waits for the push)."""
        endpoint = request.rollout_id.split("/")[1]
        await self._update(endpoint, "set_rollout_traffic", request, EndpointState)

    @activity.defn(name="patch_deployment")
    async def patch_deployment(self, request: PatchDeploymentInput) -> PatchDeploymentResult:
        """Roll one deployment onto a refreshed environment and wait until it has settled."""
        handle = self._client.get_workflow_handle(endpoint_id(request.endpoint))
        state = await handle.query("describe", result_type=EndpointState)
        record = state.deployments.get(request.deployment)
        if record is None or record.provisioning_state != "Succeeded":
            shown = record.provisioning_state if record else "gone"
            return PatchDeploymentResult(
                endpoint=request.endpoint, deployment=request.deployment, outcome="Skipped", detail=shown
            )
        target = record.target.model_copy(update={"runtime": patched(record.target.runtime)})
        await self._update(request.endpoint, "update_deployment", UpdateDeploymentInput(target=target))
        while True:
            await asyncio.sleep(1.0)
            activity.heartbeat()
            state = await handle.query("describe", result_type=EndpointState)
            record = state.deployments.get(request.deployment)
            if record is None:
                return PatchDeploymentResult(
                    endpoint=request.endpoint,
                    deployment=request.deployment,
                    outcome="Skipped",
                    detail="deleted",
                )
            if record.provisioning_state in ("Succeeded", "Failed"):
                return PatchDeploymentResult(
                    endpoint=request.endpoint,
                    deployment=request.deployment,
                    outcome=record.provisioning_state,
                    detail=record.error or f"environment patch level {target.runtime.environment.patch}",
                )

    @activity.defn(name="retire_deployment")
    async def retire_deployment(self, request: RetireDeploymentInput) -> None:
        if request.action == "delete":
            await self._update(
                request.endpoint, "delete_deployment", DeleteDeploymentInput(name=request.deployment)
            )
            return
        if request.action == "scale_down":
            handle = self._client.get_workflow_handle(endpoint_id(request.endpoint))
            state = await handle.query("describe", result_type=EndpointState)
            record = state.deployments.get(request.deployment)
            if record is None or record.target.instance_count == 1:
                return  # already gone or already at its floor: nothing to do again
            target = record.target.model_copy(update={"instance_count": 1})
            target.spec["instance_count"] = 1
            await self._update(request.endpoint, "update_deployment", UpdateDeploymentInput(target=target))
