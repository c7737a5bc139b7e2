"""HostPatchWorkflow: every deployment onto a refreshed environment, one after another, rolling;
then the gateways.

The local stand-in for "the platform patches the host OS": each deployment's instances are
replaced one at a time by instances of a freshly built environment, with no client errors. Then
the gateways, where they are VMs of their own (the azure network provider's gateway scale set),
roll onto the newest image one VM at a time; elsewhere that step answers Skipped.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from config.contract.activities import (
        PatchDeploymentInput,
        PatchDeploymentResult,
        PatchGatewaysInput,
        PatchGatewaysResult,
    )
    from config.contract.names import HOST_PATCH_WORKFLOW, Activity, HostPatchQuery, Patch
    from config.contract.workflows import HostPatchInput, HostPatchResult
    from workflows import options
    from workflows.deployment import failure_reason


@workflow.defn(name=HOST_PATCH_WORKFLOW)
class HostPatchWorkflow:
    def __init__(self) -> None:
        self._done: list[PatchDeploymentResult] = []

    @workflow.query(name=HostPatchQuery.PROGRESS)
    def progress(self) -> list[PatchDeploymentResult]:
        return self._done

    @workflow.run
    async def run(self, input: HostPatchInput) -> HostPatchResult:
        for endpoint, deployment in input.deployments:
            try:
                result = await workflow.execute_activity(
                    Activity.PATCH_DEPLOYMENT,
                    PatchDeploymentInput(endpoint=endpoint, deployment=deployment),
                    result_type=PatchDeploymentResult,
                    **options.PATCH,
                )
            except ActivityError as err:
                result = PatchDeploymentResult(
                    endpoint=endpoint, deployment=deployment, outcome="Failed", detail=failure_reason(err)
                )
            self._done.append(result)
            workflow.logger.info("host.patch %s/%s %s", endpoint, deployment, result.outcome)
        gateways = None
        # Histories from before this step replay without it (a running patch ends as it began).
        if input.gateways and workflow.patched(Patch.HOST_PATCH_GATEWAYS):
            gateways = await self._patch_gateways()
        return HostPatchResult(results=self._done, gateways=gateways)

    async def _patch_gateways(self) -> PatchGatewaysResult:
        try:
            result = await workflow.execute_activity(
                Activity.PATCH_GATEWAYS,
                PatchGatewaysInput(),
                result_type=PatchGatewaysResult,
                **options.PATCH_GATEWAYS,
            )
        except ActivityError as err:
            result = PatchGatewaysResult(outcome="Failed", detail=failure_reason(err))
        workflow.logger.info("host.patch gateways %s", result.outcome)
        return result
