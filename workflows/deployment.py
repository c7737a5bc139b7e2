"""DeploymentWorkflow: provision a deployment, keep it healthy and sized, change it, remove it.

After provisioning it runs a control loop: wait for a change of the instances; take what is
no longer ready out of the route table first (a report to the endpoint), then ask the
provider to replace it, backing off exponentially when replacements keep failing; scale by
the gateway's utilisation when `target_utilization` is set; roll spec changes one instance at
a time.

Changes arrive as `instances_changed` signals from the worker's instance watcher (one long
poll per host for every deployment, worker/watcher.py), so an idle deployment holds no
activity slot: it waits on that signal, an update or delete, and a timer for the next job it
really has (a replacement backing off, an autoscale check), and reads its instances once
every CHECK_SECONDS in case a signal was lost. Converging (provisioning, rolling updates,
scaling) waits on the same signals, reading every CONVERGE_CHECK_SECONDS. Workflows that
started before this (no `Patch.INSTANCES_BY_SIGNAL` marker) keep long-polling their own
instances with `watch_instances` until they continue as new.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from config.azure_metrics import AzureMonitorSource, MetricQuery
    from config.contract.activities import (
        DeleteInstancesInput,
        GetInstancesInput,
        QueryWindowInput,
        ReadAzureMetricInput,
        ReadAzureMetricResult,
        RequestInstancesInput,
        WatchInstancesInput,
    )
    from config.contract.ids import endpoint_id
    from config.contract.names import DEPLOYMENT_WORKFLOW, Activity, DeploymentSignal, EndpointSignal, Patch
    from config.contract.state import DeploymentTarget, Health, ProvisioningState
    from config.contract.workflows import DeploymentReport, DeploymentWorkflowInput
    from config.host_api import DeploymentInstances
    from config.routes import InstanceRoute
    from config.stats import WindowStats
    from decisions.autoscale import (
        CPU_WINDOW_SECONDS,
        check_interval_seconds,
        cpu_utilisation,
        desired_instances,
        mean_waiting,
        replacement_delay,
    )
    from decisions.instances import Assessment, assess, failure_text, needs_repair, plan_recovery
    from workflows import options

HISTORY_LIMIT = 2000
WATCH_SECONDS = 30.0  # the old path's long poll
# How long an idle deployment trusts the watcher's signals before it reads its instances itself.
CHECK_SECONDS = 300.0
# The same while converging, when a lost signal would hold up a create or an update.
CONVERGE_CHECK_SECONDS = 10.0
ROLLING_SURGE = 1


def failure_reason(err: BaseException) -> str:
    """The innermost message: the provider's own words (e.g. init()'s traceback)."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause)


class ProvisionFailed(Exception):
    """Raised inside the workflow when instances cannot reach the target; carries the reason."""


@workflow.defn(name=DEPLOYMENT_WORKFLOW)
class DeploymentWorkflow:
    @workflow.init
    def __init__(self, input: DeploymentWorkflowInput) -> None:
        self._target = input.target
        self._pending: DeploymentTarget | None = None
        self._delete = False
        self._version = input.version
        self._memory = input.autoscale_memory
        self._in_rollout = input.in_rollout
        self._reported: tuple[str, tuple[str, ...], str] | None = None
        self._next_replacement = workflow.now()
        self._next_scale_check = workflow.now()
        self._scale_failures = 0  # autoscale changes in a row that ended in a failed instance
        # The signal path (Patch.INSTANCES_BY_SIGNAL): the newest news from the watcher not yet
        # acted on, the newest instances seen, whether the host has any, when to read them.
        self._by_signal = False
        self._news: DeploymentInstances | None = None
        self._instances: DeploymentInstances | None = None
        self._acted = -1  # the version of the last instances the loop acted on
        self._on_host = True
        # A continued run reads at once (signals may have crossed the continue-as-new); a new
        # one has just been told by its own request.
        first_check = 0.0 if input.provisioned else CHECK_SECONDS
        self._check_at = workflow.now() + timedelta(seconds=first_check)
        # What steady-state reports say: a failed update keeps saying so (old spec serving).
        self._standing: ProvisioningState = "Succeeded"
        self._error: str | None = None

    @workflow.signal(name=DeploymentSignal.UPDATE)
    def update(self, target: DeploymentTarget) -> None:
        self._pending = target

    @workflow.signal(name=DeploymentSignal.DELETE)
    def delete(self) -> None:
        self._delete = True

    @workflow.signal(name=DeploymentSignal.INSTANCES_CHANGED)
    def instances_changed(self, status: DeploymentInstances) -> None:
        """The instance watcher: the instances changed. News no newer than what is known is
        dropped (several watchers may tell the same; a request's answer may have told it)."""
        known = max(self._version, self._news.version if self._news is not None else -1)
        if status.version > known:
            self._news = status

    @workflow.signal(name=DeploymentSignal.ROLLOUT)
    def rollout(self, active: bool) -> None:
        """The endpoint says a rollout started or stopped moving this deployment's traffic."""
        self._in_rollout = active

    @workflow.run
    async def run(self, input: DeploymentWorkflowInput) -> None:
        # Runs that began without the marker (recorded before it) keep the long poll throughout.
        self._by_signal = workflow.patched(Patch.INSTANCES_BY_SIGNAL)
        if not input.provisioned:
            await self._create()
        while not self._delete:
            if self._pending is not None:
                target, self._pending = self._pending, None
                await self._change(target)
                continue
            status = await self._next_change() if self._by_signal else await self._watch()
            if status is not None:
                await self._keep_healthy(status)
            await self._autoscale()
            if workflow.info().get_current_history_length() > HISTORY_LIMIT:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._pending is None and not self._delete:
                    workflow.continue_as_new(
                        DeploymentWorkflowInput(
                            target=self._target,
                            provisioned=True,
                            version=self._version,
                            autoscale_memory=self._memory,
                            in_rollout=self._in_rollout,
                        )
                    )
        await self._report("Deleting")
        await workflow.execute_activity(
            Activity.DELETE_INSTANCES,
            DeleteInstancesInput(endpoint=self._target.endpoint, deployment=self._target.name),
            **options.DEPROVISION,
        )
        await self._report("Deleted", instances=[])

    # ---- provisioning and changes ---------------------------------------------------------
    async def _create(self) -> None:
        await self._report("Creating")
        try:
            await self._converge(self._target, surge=0, state="Creating")
        except ProvisionFailed as failed:
            # Compensate: nothing half-made stays behind.
            await workflow.execute_activity(
                Activity.DELETE_INSTANCES,
                DeleteInstancesInput(endpoint=self._target.endpoint, deployment=self._target.name),
                **options.DEPROVISION,
            )
            self._on_host, self._instances = False, None  # nothing to watch until an update
            self._standing, self._error = "Failed", str(failed)
            await self._report("Failed", instances=[], error=str(failed))

    async def _change(self, target: DeploymentTarget) -> None:
        """Roll to `target` one instance at a time; if a new one fails, roll back the same way."""
        previous = self._target
        await self._report("Updating")
        try:
            await self._converge(target, surge=ROLLING_SURGE, state="Updating")
            self._standing, self._error = "Succeeded", None
        except ProvisionFailed as failed:
            reason = f"update failed, rolled back: {failed}"
            # Back on the old spec is not the update's success: until the Failed below, the
            # endpoint hears Updating, so a client waiting on the update never reads Succeeded.
            back: ProvisioningState = (
                "Updating" if workflow.patched(Patch.ROLLBACK_REPORTS_UPDATING) else "Succeeded"
            )
            try:
                await self._converge(previous, surge=ROLLING_SURGE, state="Updating", done=back)
            except ProvisionFailed as again:
                reason += f"\nrolling back failed too: {again}"
            self._standing, self._error = "Failed", reason
            await self._report("Failed", error=reason)

    async def _converge(
        self,
        target: DeploymentTarget,
        *,
        surge: int,
        state: ProvisioningState,
        done: ProvisioningState = "Succeeded",
    ) -> None:
        """Ask for `target`, then follow the instances (routing the ready ones) until it holds,
        and report `done` then."""
        status = await self._request(target, target.instance_count, surge)
        while True:
            seen = assess(status, target.runtime.spec_hash, target.instance_count)
            if seen.environment_error:
                raise ProvisionFailed(f"environment build failed: {seen.environment_error}")
            new_failures = [i for i in seen.failed if i.spec_hash == target.runtime.spec_hash]
            if new_failures:
                raise ProvisionFailed(failure_text(new_failures[0]))
            if seen.converged:
                self._target = target
                await self._report(done, seen=seen, warnings=status.warnings)
                return
            if state == "Updating":
                await self._report("Updating", seen=seen)
            status = await self._follow() if self._by_signal else await self._watch_blocking()

    async def _request(self, target: DeploymentTarget, count: int, surge: int) -> DeploymentInstances:
        try:
            status = await workflow.execute_activity(
                Activity.REQUEST_INSTANCES,
                RequestInstancesInput(
                    runtime=target.runtime,
                    instance_count=count,
                    instance_type=target.instance_type,
                    max_surge=surge,
                ),
                result_type=DeploymentInstances,
                **options.REQUEST,
            )
        except ActivityError as err:
            raise ProvisionFailed(failure_reason(err)) from None
        self._version = max(self._version, status.version)
        self._seen(status)
        self._on_host = True
        return status

    # ---- the control loop -----------------------------------------------------------------
    def _watch_input(self, timeout_seconds: float) -> WatchInstancesInput:
        return WatchInstancesInput(
            endpoint=self._target.endpoint,
            deployment=self._target.name,
            since_version=self._version,
            timeout_seconds=timeout_seconds,
        )

    async def _watch_blocking(self) -> DeploymentInstances:
        status = await workflow.execute_activity(
            Activity.WATCH_INSTANCES,
            self._watch_input(WATCH_SECONDS),
            result_type=DeploymentInstances,
            **options.WATCH,
        )
        self._version = max(self._version, status.version)
        return status

    async def _watch(self) -> DeploymentInstances | None:
        """One long poll, cut short by a signal (update/delete) or the next timed job."""
        wake = min(self._next_scale_check, self._next_replacement)
        wait = max(1.0, min(WATCH_SECONDS, (wake - workflow.now()).total_seconds()))
        handle = workflow.start_activity(
            Activity.WATCH_INSTANCES,
            self._watch_input(wait),
            result_type=DeploymentInstances,
            **options.WATCH,
        )
        await workflow.wait_condition(lambda: handle.done() or self._delete or self._pending is not None)
        if not handle.done():
            handle.cancel()
            return None
        try:
            status = handle.result()
        except ActivityError as err:
            workflow.logger.warning("watching instances failed: %s", failure_reason(err))
            return None
        self._version = max(self._version, status.version)
        return status

    # ---- the signal path (Patch.INSTANCES_BY_SIGNAL) ------------------------------------
    def _has_news(self) -> bool:
        return self._news is not None and self._news.version > self._version

    def _take_news(self) -> DeploymentInstances:
        status, self._news = self._news, None
        assert status is not None
        self._seen(status, checked=True)
        return status

    def _seen(self, status: DeploymentInstances, *, checked: bool = False) -> None:
        """The newest instances known; `checked`: they came from the watcher or a read, so
        the next read in case of a lost signal can wait a full CHECK_SECONDS again."""
        self._version = max(self._version, status.version)
        if self._instances is None or status.version >= self._instances.version:
            self._instances = status
        if checked:
            self._check_at = workflow.now() + timedelta(seconds=CHECK_SECONDS)

    def _repair_pending(self) -> bool:
        """A replacement is backing off: the loop must wake for it."""
        return self._instances is not None and needs_repair(self._instances, self._target.instance_count)

    async def _next_change(self) -> DeploymentInstances | None:
        """The instances to act on once there is something to do: the watcher's news (or a
        request's answer not yet acted on), or the next timed job that exists: a replacement
        backing off, the read in case a signal was lost. None: an update or delete to handle,
        or an autoscale check due."""
        if not self._woken() and not self._unacted():
            due = [self._check_at] if self._on_host else []
            if self._repair_pending():
                due.append(self._next_replacement)
            if self._target.autoscale is not None:
                due.append(self._next_scale_check)
            # No timer at all when nothing is due: a deployment whose create failed waits for
            # an update or delete.
            timeout = (min(due) - workflow.now()).total_seconds() if due else None
            if timeout is None or timeout > 0:
                try:
                    await workflow.wait_condition(self._woken, timeout=timeout)
                except TimeoutError:
                    pass  # a timed job is due
        if self._delete or self._pending is not None:
            return None
        if self._has_news():
            self._take_news()
        if self._unacted() or (self._repair_pending() and workflow.now() >= self._next_replacement):
            return self._act(self._instances)
        if self._on_host and workflow.now() >= self._check_at:
            status = await self._read()
            return self._act(status) if status is not None else None
        return None

    def _woken(self) -> bool:
        return self._has_news() or self._delete or self._pending is not None

    def _unacted(self) -> bool:
        return self._instances is not None and self._instances.version > self._acted

    def _act(self, status: DeploymentInstances | None) -> DeploymentInstances | None:
        if status is not None:
            self._acted = max(self._acted, status.version)
        return status

    async def _follow(self) -> DeploymentInstances:
        """While converging: the watcher's next news, or a read of the instances every
        CONVERGE_CHECK_SECONDS without any."""
        while not self._has_news():
            try:
                await workflow.wait_condition(self._has_news, timeout=CONVERGE_CHECK_SECONDS)
            except TimeoutError:
                status = await self._read()
                if status is not None:
                    return status
        return self._take_news()

    async def _read(self) -> DeploymentInstances | None:
        """The instances as they are, at once (a short activity, never a long poll)."""
        self._check_at = workflow.now() + timedelta(seconds=CHECK_SECONDS)
        try:
            status = await workflow.execute_activity(
                Activity.GET_INSTANCES,
                GetInstancesInput(endpoint=self._target.endpoint, deployment=self._target.name),
                result_type=DeploymentInstances,
                **options.READ,
            )
        except ActivityError as err:
            workflow.logger.warning("reading instances failed: %s", failure_reason(err))
            return None
        self._seen(status, checked=True)
        return status

    async def _keep_healthy(self, status: DeploymentInstances) -> None:
        """Out of the table first (the report), then a replacement, backing off in a crash loop."""
        target = self._target
        seen = assess(status, target.runtime.spec_hash, target.instance_count)
        plan = plan_recovery(
            status, seen, target.instance_count, now=workflow.now(), next_replacement=self._next_replacement
        )
        self._next_replacement = plan.next_replacement
        await self._steady_report(seen, plan.health, plan.reason)
        if not plan.replace:
            return
        for instance in seen.failed:
            workflow.logger.info("instance.replaced %s (restarts %d)", instance.id, instance.restarts)
        try:
            await self._request(target, target.instance_count, 0)
        except ProvisionFailed as failed:
            workflow.logger.warning("replacement refused: %s", failed)

    async def _steady_report(self, seen: Assessment, health: Health, reason: str | None) -> None:
        await self._report(self._standing, seen=seen, error=self._error, health=health, health_reason=reason)

    async def _autoscale(self) -> None:
        settings = self._target.autoscale
        if settings is None or workflow.now() < self._next_scale_check:
            return
        self._next_scale_check = workflow.now() + timedelta(seconds=check_interval_seconds(settings))
        try:
            if settings.cpu_source is not None:
                utilisation, waiting, measure = await self._cpu(settings.cpu_source), 0.0, "cpu"
            else:
                stats = await workflow.execute_activity(
                    Activity.QUERY_WINDOW,
                    QueryWindowInput(
                        endpoint=self._target.endpoint,
                        deployment=self._target.name,
                        window_seconds=max(10.0, settings.polling_interval),
                    ),
                    result_type=WindowStats,
                    **options.MONITOR,
                )
                values = list(stats.utilisation.values())
                utilisation = sum(values) / len(values) if values else None
                waiting, measure = mean_waiting(stats), "utilisation"
        except ActivityError as err:
            workflow.logger.warning("autoscale: no metrics: %s", failure_reason(err))
            return
        decision = desired_instances(
            settings,
            current=self._target.instance_count,
            utilisation=utilisation,
            memory=self._memory,
            now=workflow.now(),
            in_rollout=self._in_rollout,
            waiting=waiting,
            slots_per_instance=self._target.request_settings.max_concurrent_requests_per_instance,
            measure=measure,
        )
        self._memory = decision.memory
        if decision.instances != self._target.instance_count:
            workflow.logger.info("autoscale %s", decision.reason)
            scaled = self._target.model_copy(update={"instance_count": decision.instances})
            scaled.spec = {**scaled.spec, "instance_count": decision.instances}
            try:
                await self._converge(scaled, surge=0, state="Updating")
            except ProvisionFailed as failed:
                # Left to rise, this would fail every workflow task from here on. The count in
                # force stands (the loop replaces what failed); the next try backs off.
                self._scale_failures += 1
                delay = replacement_delay(self._scale_failures)
                self._next_scale_check = workflow.now() + timedelta(seconds=delay)
                workflow.logger.warning(
                    "autoscale to %d failed (%d in a row, next try in %gs): %s",
                    decision.instances,
                    self._scale_failures,
                    delay,
                    failed,
                )
                return
            self._scale_failures = 0

    async def _cpu(self, source: AzureMonitorSource) -> float | None:
        """The scale set's settled Percentage CPU over the last minutes, as a utilisation."""
        reading = await workflow.execute_activity(
            Activity.READ_AZURE_METRIC,
            ReadAzureMetricInput(query=MetricQuery(**source.model_dump(), window_seconds=CPU_WINDOW_SECONDS)),
            result_type=ReadAzureMetricResult,
            **options.MONITOR,
        )
        if reading.value is None:
            workflow.logger.info("autoscale: no CPU reading yet: %s", reading.reason)
        return cpu_utilisation(reading.value)

    # ---- reporting to the endpoint ----------------------------------------------------------
    async def _report(
        self,
        state: ProvisioningState,
        *,
        seen: Assessment | None = None,
        instances: list[InstanceRoute] | None = None,
        error: str | None = None,
        warnings: list[str] | None = None,
        health: Health = "Healthy",
        health_reason: str | None = None,
    ) -> None:
        """Tell the endpoint, only when something it routes or shows has changed."""
        if seen is not None:
            instances = seen.serving
        key = (
            state,
            tuple(i.id for i in instances) if instances is not None else ("-",),
            f"{health}{health_reason}{error}{seen.details if seen else ''}{self._target.instance_count}",
        )
        if key == self._reported:
            return
        self._reported = key
        report = DeploymentReport(
            name=self._target.name,
            provisioning_state=state,
            instances=instances,
            error=error,
            warnings=warnings or [],
            health=health,
            health_reason=health_reason,
            details=seen.details if seen else None,
            instance_count=self._target.instance_count,
        )
        handle = workflow.get_external_workflow_handle(endpoint_id(self._target.endpoint))
        await handle.signal(EndpointSignal.DEPLOYMENT_REPORTED, report)
