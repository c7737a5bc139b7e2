"""EndpointWorkflow: the one writer of an endpoint's deployments, traffic, keys and routes."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from config.contract.activities import (
        ApplyRouteInput,
        DeleteKeysInput,
        EnsureKeysInput,
        EnsureKeysResult,
        PushRouteResult,
        RemoveRouteInput,
    )
    from config.contract.etags import deployment_etag, endpoint_etag
    from config.contract.ids import deployment_id, rollout_id
    from config.contract.names import (
        ENDPOINT_WORKFLOW,
        Activity,
        EndpointQuery,
        EndpointSignal,
        EndpointUpdate,
        Patch,
    )
    from config.contract.state import DeploymentEntry, DeploymentTarget, EndpointRecord
    from config.contract.workflows import (
        CreateDeploymentInput,
        DeleteDeploymentInput,
        DeploymentReport,
        DeploymentWorkflowInput,
        EndpointWorkflowInput,
        EndRolloutInput,
        RegenerateKeysInput,
        RolloutWorkflowInput,
        SetRolloutTrafficInput,
        StartRolloutInput,
        UpdateDeploymentInput,
        UpdateEndpointInput,
    )
    from config.specs import endpoint_limits, property_problems
    from decisions.routes import build_endpoint_route, next_generation
    from decisions.traffic import (
        TrafficError,
        check_mirror,
        check_traffic,
        merge_traffic,
        rollout_split,
    )
    from workflows import options, search
    from workflows.deployment import DeploymentWorkflow
    from workflows.rollout import RolloutWorkflow


LAGGING_REPUSH = timedelta(seconds=5)
# A push's result, or None from a worker of before gateways were reported one by one (the
# recorded histories): the converter takes the union, though the SDK's hint says `type`.
PUSH_RESULT = cast(type, PushRouteResult | None)


def _bad_request(message: str) -> ApplicationError:
    return ApplicationError(message, type="BadRequest", non_retryable=True)


def _conflict(message: str) -> ApplicationError:
    """A request that clashes with the resource's state now (another change got there first)."""
    return ApplicationError(message, type="Conflict", non_retryable=True)


def _precondition_failed(kind: str, name: str, given: str, current: str) -> ApplicationError:
    return ApplicationError(
        f"{kind} {name} has changed (etag {current}, the request expected {given}); read it again",
        type="PreconditionFailed",
        non_retryable=True,
    )


@workflow.defn(name=ENDPOINT_WORKFLOW)
class EndpointWorkflow:
    @workflow.init
    def __init__(self, input: EndpointWorkflowInput) -> None:
        self._state: EndpointRecord = input.state
        self._repush = timedelta(seconds=input.repush_seconds)
        self._search_attributes = input.search_attributes
        self._default_max_request_bytes = input.default_max_request_bytes
        self._dirty = True
        self._to_start: list[DeploymentTarget] = []
        self._to_update: list[DeploymentTarget] = []
        self._to_delete: list[str] = []
        self._to_roll: list[RolloutWorkflowInput] = []
        self._to_tell: list[tuple[str, bool]] = []  # (deployment, under a rollout now)
        self._started_rollouts: set[str] = set()
        # Each change bumps `_version`; a push records the version it carried, so a caller
        # can wait until its change is live in the gateways.
        self._version = 0
        self._pushed_version = 0
        self._keys_lagging: dict[str, str] = {}
        self._push_failed = False  # the last push or removal failed: try again soon

    # ---- queries -------------------------------------------------------------------------
    @workflow.query(name=EndpointQuery.DESCRIBE)
    def describe(self) -> EndpointRecord:
        return self._state

    # ---- updates: validators refuse before anything is recorded ---------------------------
    def _refuse_if_deleting(self) -> None:
        if self._state.provisioning_state == "Deleting":
            raise _conflict(f"endpoint {self._state.name} is being deleted")

    def _record(self, name: str) -> DeploymentEntry:
        record = self._state.deployments.get(name)
        if record is None:
            raise _bad_request(f"deployment {name} does not exist in endpoint {self._state.name}")
        return record

    @workflow.update(name=EndpointUpdate.UPDATE_ENDPOINT)
    def update_endpoint(self, change: UpdateEndpointInput) -> EndpointRecord:
        s = self._state
        if change.traffic is not None:
            s.traffic = merge_traffic(s.traffic, change.traffic)
        if change.mirror_traffic is not None:
            s.mirror_traffic = {k: v for k, v in change.mirror_traffic.items() if v > 0}
        if change.description is not None:
            s.description = change.description
        if change.tags is not None:
            s.tags = dict(change.tags)
        if change.properties is not None:
            limits = endpoint_limits(
                change.properties, default_max_request_bytes=self._default_max_request_bytes
            )
            s.properties = dict(change.properties)
            s.max_request_bytes = limits.max_request_bytes
            s.max_requests_per_second = limits.max_requests_per_second
            s.retry_dropped_requests = limits.retry_dropped_requests
        self._dirty = True
        return s

    @update_endpoint.validator
    def _validate_update_endpoint(self, change: UpdateEndpointInput) -> None:
        self._refuse_if_deleting()
        s = self._state
        if change.if_match is not None and change.if_match != endpoint_etag(s):
            raise _precondition_failed("endpoint", s.name, change.if_match, endpoint_etag(s))
        problems = property_problems(change.properties or {})
        if problems:
            raise _bad_request("; ".join(f"properties.{key}: {problem}" for key, problem in problems.items()))
        if s.rollout_id and (change.traffic is not None or change.mirror_traffic is not None):
            raise _conflict(
                f"endpoint {s.name} is under rollout {s.rollout_id}; steer it with "
                "`tidegate rollout pause|resume|promote|rollback`"
            )
        traffic = s.traffic
        if change.traffic is not None:
            traffic = merge_traffic(s.traffic, change.traffic)
        mirror = change.mirror_traffic if change.mirror_traffic is not None else s.mirror_traffic
        try:
            check_traffic(traffic, s.deployments)
            check_mirror(mirror, traffic, s.deployments)
        except TrafficError as err:
            raise _bad_request(str(err)) from None
        for name, percent in traffic.items():
            state = s.deployments[name].provisioning_state
            if percent > 0 and state not in ("Succeeded", "Updating"):
                raise _bad_request(
                    f"traffic: deployment {name} is {state}; only a Succeeded deployment can take traffic"
                )

    @workflow.update(name=EndpointUpdate.CREATE_DEPLOYMENT)
    def create_deployment(self, request: CreateDeploymentInput) -> DeploymentEntry:
        target = request.target
        now = workflow.now().isoformat()
        record = DeploymentEntry(
            name=target.name, provisioning_state="Creating", target=target, created_at=now, modified_at=now
        )
        self._state.deployments[target.name] = record
        self._to_start.append(target)
        return record

    @create_deployment.validator
    def _validate_create_deployment(self, request: CreateDeploymentInput) -> None:
        self._refuse_if_deleting()
        name = request.target.name
        if name in self._state.deployments:
            raise _conflict(
                f"deployment {name} already exists in endpoint {self._state.name}; "
                "use `online-deployment update`"
            )
        if request.target.endpoint != self._state.name:
            raise _bad_request(
                f"endpoint_name: {request.target.endpoint} is not this endpoint ({self._state.name})"
            )

    @workflow.update(name=EndpointUpdate.UPDATE_DEPLOYMENT)
    def update_deployment(self, request: UpdateDeploymentInput) -> DeploymentEntry:
        record = self._state.deployments[request.target.name]
        record.target = request.target
        record.provisioning_state = "Updating"
        record.modified_at = workflow.now().isoformat()
        self._to_update.append(request.target)
        return record

    @update_deployment.validator
    def _validate_update_deployment(self, request: UpdateDeploymentInput) -> None:
        self._refuse_if_deleting()
        record = self._record(request.target.name)
        if request.if_match is not None and request.if_match != deployment_etag(record):
            raise _precondition_failed("deployment", record.name, request.if_match, deployment_etag(record))
        if record.provisioning_state in ("Creating", "Updating", "Deleting"):
            raise _conflict(
                f"deployment {record.name} is {record.provisioning_state}; wait until it finishes"
            )

    @workflow.update(name=EndpointUpdate.DELETE_DEPLOYMENT)
    def delete_deployment(self, request: DeleteDeploymentInput) -> DeploymentEntry:
        record = self._state.deployments[request.name]
        record.provisioning_state = "Deleting"
        self._state.traffic.pop(request.name, None)
        self._state.mirror_traffic.pop(request.name, None)
        self._to_delete.append(request.name)
        self._dirty = True
        return record

    @delete_deployment.validator
    def _validate_delete_deployment(self, request: DeleteDeploymentInput) -> None:
        self._refuse_if_deleting()
        record = self._record(request.name)
        if record.provisioning_state == "Deleting":
            raise _conflict(f"deployment {request.name} is already being deleted")
        share = self._state.traffic.get(request.name, 0)
        if share > 0:
            raise _bad_request(
                f"deployment {request.name} takes {share}% of traffic; set its traffic to 0 "
                "before deleting it"
            )
        if self._state.mirror_traffic.get(request.name, 0) > 0:
            raise _bad_request(
                f"deployment {request.name} receives mirrored traffic; set its mirror_traffic "
                "to 0 before deleting it"
            )
        if request.name in self._state.rollout_deployments:
            raise _conflict(
                f"deployment {request.name} is part of rollout {self._state.rollout_id}; "
                "wait for it to end or roll it back"
            )

    @workflow.update(name=EndpointUpdate.REGENERATE_KEYS)
    async def regenerate_keys(self, request: RegenerateKeysInput) -> None:
        s = self._state
        s.key_versions[request.key_type] = s.key_versions.get(request.key_type, 1) + 1
        wanted = s.key_versions[request.key_type]
        await workflow.wait_condition(lambda: s.keys_applied.get(request.key_type, 0) >= wanted)
        if self._keys_lagging:
            names = ", ".join(f"{url} ({why})" for url, why in sorted(self._keys_lagging.items()))
            raise ApplicationError(
                f"the new {request.key_type} key is in force, but not yet on gateway(s) {names}; "
                "the old key may still work there until they take the next push",
                type="GatewaysLagging",
                non_retryable=True,
            )

    @regenerate_keys.validator
    def _validate_regenerate_keys(self, request: RegenerateKeysInput) -> None:
        self._refuse_if_deleting()

    @workflow.update(name=EndpointUpdate.DELETE_ENDPOINT)
    def delete_endpoint(self) -> EndpointRecord:
        s = self._state
        s.provisioning_state = "Deleting"
        for name, record in s.deployments.items():
            if record.provisioning_state != "Deleting":
                record.provisioning_state = "Deleting"
                self._to_delete.append(name)
        s.traffic = {k: 0 for k in s.traffic}
        s.mirror_traffic = {}
        self._dirty = True
        return s

    @delete_endpoint.validator
    def _validate_delete_endpoint(self) -> None:
        self._refuse_if_deleting()
        if self._state.rollout_id:
            raise _conflict(
                f"endpoint {self._state.name} is under rollout {self._state.rollout_id}; roll it back first"
            )

    # ---- rollouts: the endpoint stays the one writer of traffic ---------------------------
    @workflow.update(name=EndpointUpdate.START_ROLLOUT)
    async def start_rollout(self, request: StartRolloutInput) -> str:
        s = self._state
        plan = request.plan
        s.rollout_count += 1
        rid = rollout_id(s.name, s.rollout_count)
        pool = s.traffic.get(plan.baseline, 0) + s.traffic.get(plan.canary, 0)
        s.rollout_id, s.last_rollout_id = rid, rid
        s.rollout_deployments = [plan.baseline, plan.canary]
        self._to_tell += [(plan.baseline, True), (plan.canary, True)]
        self._to_roll.append(
            RolloutWorkflowInput(
                rollout_id=rid,
                plan=plan,
                spec=request.spec,
                pool=pool or 100,
                search_attributes=self._search_attributes,
            )
        )
        # Return once the rollout exists, so the caller can query and signal it at once.
        await workflow.wait_condition(lambda: rid in self._started_rollouts)
        return rid

    @start_rollout.validator
    def _validate_start_rollout(self, request: StartRolloutInput) -> None:
        self._refuse_if_deleting()
        s, plan = self._state, request.plan
        if s.rollout_id:
            raise _conflict(f"endpoint {s.name} already has a running rollout: {s.rollout_id}")
        if plan.baseline == plan.canary:
            raise _bad_request(f"--to: {plan.canary} is already the baseline")
        for role, name in (("baseline", plan.baseline), ("--to", plan.canary)):
            record = s.deployments.get(name)
            if record is None:
                raise _bad_request(f"{role}: deployment {name} does not exist in endpoint {s.name}")
            if record.provisioning_state != "Succeeded":
                raise _bad_request(f"{role}: deployment {name} is {record.provisioning_state}")
        others = {k: v for k, v in s.traffic.items() if k not in (plan.baseline, plan.canary) and v}
        if s.traffic.get(plan.baseline, 0) + s.traffic.get(plan.canary, 0) == 0 and others:
            raise _bad_request(f"baseline {plan.baseline} takes no traffic to shift")

    @workflow.update(name=EndpointUpdate.SET_ROLLOUT_TRAFFIC)
    async def set_rollout_traffic(self, request: SetRolloutTrafficInput) -> EndpointRecord:
        s = self._state
        s.traffic.update(rollout_split(request.baseline, request.canary, request.pool, request.canary_weight))
        s.mirror_traffic = {request.canary: request.mirror_share} if request.mirror_share else {}
        self._dirty = True
        self._version += 1
        wanted = self._version
        await workflow.wait_condition(lambda: self._pushed_version >= wanted)
        return s

    @set_rollout_traffic.validator
    def _validate_set_rollout_traffic(self, request: SetRolloutTrafficInput) -> None:
        self._refuse_if_deleting()
        s = self._state
        if request.undo:
            if s.rollout_id is not None:
                raise _bad_request(f"endpoint {s.name} is under rollout {s.rollout_id}")
            for name in (request.baseline, request.canary):
                if s.deployments.get(name) is None:
                    raise _bad_request(f"deployment {name} no longer exists; nothing to undo to")
        elif s.rollout_id != request.rollout_id:
            raise _bad_request(
                f"rollout {request.rollout_id} does not hold endpoint {s.name} "
                f"(held by {s.rollout_id or 'nobody'})"
            )

    @workflow.signal(name=EndpointSignal.END_ROLLOUT)
    def end_rollout(self, request: EndRolloutInput) -> None:
        if self._state.rollout_id == request.rollout_id:
            self._to_tell += [(d, False) for d in self._state.rollout_deployments]
            self._state.rollout_id = None
            self._state.rollout_deployments = []

    # ---- signals -------------------------------------------------------------------------
    @workflow.signal(name=EndpointSignal.DEPLOYMENT_REPORTED)
    def deployment_reported(self, report: DeploymentReport) -> None:
        record = self._state.deployments.get(report.name)
        if record is None:
            return
        if report.provisioning_state == "Deleted":
            del self._state.deployments[report.name]
            self._state.traffic.pop(report.name, None)
        else:
            record.provisioning_state = report.provisioning_state
            if report.instances is not None:
                record.instances = list(report.instances)
            record.error = report.error
            record.warnings = list(report.warnings)
            record.health, record.health_reason = report.health, report.health_reason
            if report.details is not None:
                record.details = list(report.details)
            if report.instance_count is not None:
                record.instance_count = report.instance_count
        self._dirty = True

    # ---- the loop ------------------------------------------------------------------------
    def _has_work(self) -> bool:
        s = self._state
        keys_behind = any(s.keys_applied.get(k, 0) < v for k, v in s.key_versions.items())
        return (
            self._dirty
            or keys_behind
            or bool(self._to_start or self._to_update or self._to_delete or self._to_roll or self._to_tell)
        )

    @workflow.run
    async def run(self, input: EndpointWorkflowInput) -> EndpointRecord:
        s = self._state
        if not input.continued:
            s.created_at = workflow.now().isoformat()
        while True:
            # A gateway that missed a push is tried again soon; the others every _repush.
            behind = s.lagging_gateways or self._push_failed
            wait = min(self._repush, LAGGING_REPUSH) if behind else self._repush
            try:
                await workflow.wait_condition(self._has_work, timeout=wait)
            except TimeoutError:
                self._dirty = True  # periodic re-push heals a gateway that lost its table
            if any(s.keys_applied.get(k, 0) < v for k, v in s.key_versions.items()):
                await self._ensure_keys()
            if s.provisioning_state == "Creating":
                s.provisioning_state = "Succeeded"
            if s.provisioning_state == "Deleting":
                await self._remove_route()
            elif self._dirty:
                await self._push()
            await self._carry_out()
            if s.provisioning_state == "Deleting" and not s.deployments:
                await workflow.execute_activity(
                    Activity.DELETE_KEYS, DeleteKeysInput(endpoint=s.name), **options.KEYS
                )
                s.provisioning_state = "Deleted"
                return s
            if workflow.info().get_current_history_length() > input.history_limit:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._has_work():
                    workflow.continue_as_new(input.model_copy(update={"state": s, "continued": True}))

    async def _ensure_keys(self) -> None:
        s = self._state
        result = await workflow.execute_activity(
            Activity.ENSURE_KEYS,
            EnsureKeysInput(endpoint=s.name, versions=dict(s.key_versions)),
            result_type=EnsureKeysResult,
            **options.KEYS,
        )
        s.key_sha256 = list(result.key_sha256)
        s.token_public_keys = list(result.token_public_keys)
        await self._push()
        # In force wherever the push went; a regenerate-keys caller hears of any gateway not.
        self._keys_lagging = dict(s.lagging_gateways)
        s.keys_applied = dict(result.versions)

    def _push_failed_again(self) -> None:
        if workflow.patched(Patch.PUSH_FAILURE_BACKOFF):
            self._push_failed = True  # the loop's wait ends in LAGGING_REPUSH, then a re-push
        else:
            self._dirty = True  # at once (workflows that took this branch before the patch)

    async def _push(self) -> None:
        s = self._state
        s.generation = next_generation(s.generation, int(workflow.now().timestamp() * 1000))
        self._dirty = False
        carried = self._version
        try:
            result = await workflow.execute_activity(
                Activity.APPLY_ROUTE,
                ApplyRouteInput(route=build_endpoint_route(s, s.generation)),
                result_type=PUSH_RESULT,
                **options.PUSH,
            )
        except ActivityError as err:
            # The state itself is already recorded; the push is tried again in a few seconds (a
            # refusal such as Azure's QuotaExceeded must not become a tight loop of failures).
            workflow.logger.warning("route push failed: %s", err.cause or err)
            self._push_failed_again()
            return
        self._push_failed = False
        # None: a worker from before gateways were reported one by one (histories replay).
        result = result or PushRouteResult(gateways=1)
        s.lagging_gateways = dict(result.lagging)
        if result.lagging:
            workflow.logger.warning("route push lagging on %s", sorted(result.lagging))
        if not result.reached_any:
            self._dirty = True
            return
        self._pushed_version = max(self._pushed_version, carried)

    async def _remove_route(self) -> None:
        s = self._state
        if not self._dirty:
            return
        s.generation = next_generation(s.generation, int(workflow.now().timestamp() * 1000))
        self._dirty = False
        try:
            result = await workflow.execute_activity(
                Activity.REMOVE_ROUTE,
                RemoveRouteInput(endpoint=s.name, generation=s.generation),
                result_type=PUSH_RESULT,
                **options.PUSH,
            )
        except ActivityError as err:
            workflow.logger.warning("route removal failed: %s", err.cause or err)
            self._push_failed_again()
            return
        self._push_failed = False
        s.lagging_gateways = dict(result.lagging) if result else {}

    async def _carry_out(self) -> None:
        """Start, change and delete deployments, each after the route table stops using it."""
        name = self._state.name
        while self._to_start:
            target = self._to_start.pop(0)
            try:
                await workflow.start_child_workflow(
                    DeploymentWorkflow.run,
                    DeploymentWorkflowInput(target=target),
                    id=deployment_id(name, target.name),
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                )
            except WorkflowAlreadyStartedError:
                record = self._state.deployments.get(target.name)
                if record is not None:
                    record.provisioning_state = "Failed"
                    record.error = (
                        f"the previous deployment {target.name} is still shutting down; "
                        "delete this one and create it again"
                    )
        while self._to_update:
            target = self._to_update.pop(0)
            handle = workflow.get_external_workflow_handle(deployment_id(name, target.name))
            await handle.signal(DeploymentWorkflow.update, target)
        while self._to_tell:
            deployment, active = self._to_tell.pop(0)
            if deployment in self._state.deployments:
                handle = workflow.get_external_workflow_handle(deployment_id(name, deployment))
                await handle.signal(DeploymentWorkflow.rollout, active)
        while self._to_roll:
            rollout = self._to_roll.pop(0)
            plan = rollout.plan
            await workflow.start_child_workflow(
                RolloutWorkflow.run,
                rollout,
                id=rollout.rollout_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                memo={"plan": plan.model_dump(mode="json")},
                search_attributes=(
                    search.initial(plan.endpoint, plan.baseline, plan.canary)
                    if rollout.search_attributes
                    else None
                ),
            )
            self._started_rollouts.add(rollout.rollout_id)
        while self._to_delete:
            deployment = self._to_delete.pop(0)
            handle = workflow.get_external_workflow_handle(deployment_id(name, deployment))
            await handle.signal(DeploymentWorkflow.delete)
