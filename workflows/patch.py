"""HostPatchWorkflow: every deployment onto a refreshed environment, one after another, rolling.

The local stand-in for "the platform patches the host OS": each deployment's instances are
replaced one at a time by instances of a freshly built environment, with no client errors.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from config.contract.activities import PatchDeploymentInput, PatchDeploymentResult
    from config.contract.names import HOST_PATCH_WORKFLOW, Activity, HostPatchQuery
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
        return HostPatchResult(results=self._done)
