"""DeploymentWorkflow: provision a deployment's instances, apply changes, deprovision."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.messages import (
        DeleteInstancesInput,
        EnsureInstancesInput,
        EnsureInstancesResult,
    )
    from decisions.state import DeploymentTarget, ProvisioningState
    from workflows import options
    from workflows.ids import endpoint_id
    from workflows.messages import DeploymentReport, DeploymentWorkflowInput

# Continue-as-new well before Temporal's history limits.
HISTORY_LIMIT = 2000


def failure_reason(err: BaseException) -> str:
    """The innermost message: the provider's own words (e.g. init()'s traceback)."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause)


@workflow.defn
class DeploymentWorkflow:
    @workflow.init
    def __init__(self, input: DeploymentWorkflowInput) -> None:
        self._target = input.target
        self._pending: DeploymentTarget | None = None
        self._delete = False

    @workflow.signal
    def update(self, target: DeploymentTarget) -> None:
        self._pending = target

    @workflow.signal
    def delete(self) -> None:
        self._delete = True

    @workflow.run
    async def run(self, input: DeploymentWorkflowInput) -> None:
        if not input.provisioned:
            await self._provision(self._target, previous=None)
        while True:
            await workflow.wait_condition(lambda: self._pending is not None or self._delete)
            if self._delete:
                break
            target, self._pending = self._pending, None
            assert target is not None
            if await self._provision(target, previous=self._target):
                self._target = target
            if workflow.info().get_current_history_length() > HISTORY_LIMIT:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._pending is None and not self._delete:
                    workflow.continue_as_new(DeploymentWorkflowInput(target=self._target, provisioned=True))
        await self._report("Deleting")
        await workflow.execute_activity(
            "delete_instances",
            DeleteInstancesInput(endpoint=self._target.endpoint, deployment=self._target.name),
            **options.DEPROVISION,
        )
        await self._report("Deleted")

    async def _provision(self, target: DeploymentTarget, previous: DeploymentTarget | None) -> bool:
        """Bring instances to `target`; on failure, put back what was there (or nothing)."""
        await self._report("Creating" if previous is None else "Updating")
        try:
            result = await self._ensure(target)
        except ActivityError as err:
            reason = failure_reason(err)
            workflow.logger.warning("deployment provisioning failed: %s", reason)
            restored: EnsureInstancesResult | None = None
            if previous is None:
                await workflow.execute_activity(
                    "delete_instances",
                    DeleteInstancesInput(endpoint=target.endpoint, deployment=target.name),
                    **options.DEPROVISION,
                )
            else:
                try:
                    restored = await self._ensure(previous)
                except ActivityError as again:
                    reason = f"{reason}\nrestoring the previous spec failed too: "
                    reason += failure_reason(again)
            await self._report("Failed", instances=restored.instances if restored else [], error=reason)
            return False
        await self._report("Succeeded", instances=result.instances, warnings=result.warnings)
        return True

    async def _ensure(self, target: DeploymentTarget) -> EnsureInstancesResult:
        return await workflow.execute_activity(
            "ensure_instances",
            EnsureInstancesInput(runtime=target.runtime, instance_count=target.instance_count),
            result_type=EnsureInstancesResult,
            **options.PROVISION,
        )

    async def _report(
        self,
        state: ProvisioningState,
        *,
        instances: list | None = None,
        error: str | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        report = DeploymentReport(
            name=self._target.name,
            provisioning_state=state,
            instances=instances,
            error=error,
            warnings=warnings or [],
        )
        handle = workflow.get_external_workflow_handle(endpoint_id(self._target.endpoint))
        await handle.signal("deployment_reported", report)
