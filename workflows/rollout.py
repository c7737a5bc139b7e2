"""RolloutWorkflow: shift traffic from a baseline to a canary, step by step, under gates."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from config.azure_metrics import MetricQuery
    from config.contract.activities import (
        QueryWindowInput,
        ReadAzureMetricInput,
        ReadAzureMetricResult,
        RetireDeploymentInput,
    )
    from config.contract.ids import endpoint_id
    from config.contract.names import ROLLOUT_WORKFLOW, Activity, EndpointSignal, RolloutQuery, RolloutSignal
    from config.contract.rollout import TERMINAL, RolloutState, Verdict
    from config.contract.workflows import (
        EndRolloutInput,
        RolloutStatus,
        RolloutWorkflowInput,
        SetRolloutTrafficInput,
    )
    from config.rollout import Gate, RetireAction
    from config.stats import WindowStats
    from decisions import rollout
    from decisions.gates import judge_azure_monitor_gate, judge_gate
    from decisions.rollout import (
        CheckGates,
        Complete,
        Pause,
        RollBack,
        SetMirror,
        SetWeights,
        WaitUntil,
    )
    from workflows import options, search
    from workflows.deployment import failure_reason

HISTORY_LIMIT = 5000


@workflow.defn(name=ROLLOUT_WORKFLOW)
class RolloutWorkflow:
    @workflow.init
    def __init__(self, input: RolloutWorkflowInput) -> None:
        self._input = input
        self._plan = input.plan
        self._state = input.state or RolloutState()
        self._signals = 0  # bumped by every signal: a wait ends early when it moves
        self._undo = False

    # ---- steering: signals record intent, the loop acts -----------------------------------
    @workflow.signal(name=RolloutSignal.PAUSE)
    def pause(self, reason: str | None = None) -> None:
        self._state = rollout.request_pause(self._state, workflow.now(), reason)
        self._signals += 1

    @workflow.signal(name=RolloutSignal.RESUME)
    def resume(self) -> None:
        self._state = rollout.request_resume(self._state, workflow.now())
        self._signals += 1

    @workflow.signal(name=RolloutSignal.PROMOTE)
    def promote(self, reason: str | None = None) -> None:
        if self._state.phase not in TERMINAL:
            self._state = rollout.request_promote(self._state, workflow.now(), reason)
        self._signals += 1

    @workflow.signal(name=RolloutSignal.ROLLBACK)
    def rollback(self, reason: str | None = None) -> None:
        if self._state.phase not in TERMINAL:
            self._state = rollout.request_rollback(self._state, workflow.now(), reason)
        self._signals += 1

    @workflow.signal(name=RolloutSignal.UNDO)
    def undo(self) -> None:
        """Only a Succeeded rollout (its previous deployment still warm) can be undone."""
        if self._state.phase == "Succeeded":
            self._undo = True
        else:
            workflow.logger.warning("undo ignored: the rollout is %s", self._state.phase)
        self._signals += 1

    @workflow.query(name=RolloutQuery.STATUS)
    def status(self) -> RolloutStatus:
        return RolloutStatus(**dict(self._carried_on()))

    def _carried_on(self) -> RolloutWorkflowInput:
        """The input of the run after continue-as-new: the plan and the state so far."""
        return RolloutWorkflowInput(
            rollout_id=self._input.rollout_id,
            plan=self._plan,
            spec=self._input.spec,
            pool=self._input.pool,
            state=self._state,
            search_attributes=self._input.search_attributes,
        )

    # ---- the loop: decide, act, record -----------------------------------------------------
    @workflow.run
    async def run(self, input: RolloutWorkflowInput) -> RolloutState:
        while True:
            now = workflow.now()
            decision = rollout.next_decision(self._plan, self._state, now)
            match decision:
                case SetWeights():
                    await self._set_traffic(decision.canary, self._state.mirror_share)
                    self._state = rollout.after_set_weights(self._state, decision, workflow.now())
                    self._publish()
                case SetMirror():
                    await self._set_traffic(self._state.weight, decision.share)
                    self._state = rollout.after_set_mirror(self._state, decision, workflow.now())
                    self._publish()
                case CheckGates():
                    await self._check(decision)
                case WaitUntil():
                    await self._sleep_until(decision)
                case Pause():
                    self._publish()
                    await self._wait_for_signal()
                case RollBack():
                    await self._roll_back(decision.reason)
                    return self._state
                case Complete():
                    await self._complete()
                    return self._state
            if workflow.info().get_current_history_length() > HISTORY_LIMIT:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carried_on())

    async def _wait_for_signal(self) -> None:
        seen = self._signals
        await workflow.wait_condition(lambda: self._signals != seen)

    async def _sleep_until(self, decision: WaitUntil) -> None:
        seen = self._signals
        delay = decision.until - workflow.now()
        if delay <= timedelta(0):
            return
        try:
            await workflow.wait_condition(lambda: self._signals != seen, timeout=delay)
        except TimeoutError:
            pass

    async def _check(self, decision: CheckGates) -> None:
        plan = self._plan
        gates = decision.gates
        # Each gate's verdict in the gates' order (after_check pairs them up).
        found: dict[int, Verdict] = {}
        on_gateway = [i for i, g in enumerate(gates) if g.source == "gateway"]
        if on_gateway:
            window = max(gates[i].window for i in on_gateway)
            try:
                canary = await self._window(plan.canary, window)
                baseline = await self._window(plan.baseline, window)
            except ActivityError as err:
                # No numbers is "no data", never a pass: each gate's on_no_data decides.
                message = f"monitor unavailable: {failure_reason(err)}"
                found |= {
                    i: Verdict(gate=gates[i].label, outcome="no_data", message=message) for i in on_gateway
                }
            else:
                found |= {i: judge_gate(gates[i], canary, baseline) for i in on_gateway}
        for i, gate in enumerate(gates):
            if gate.source == "azure_monitor":
                found[i] = await self._azure_monitor_verdict(gate)
        verdicts = [found[i] for i in range(len(gates))]
        self._state = rollout.after_check(plan, self._state, verdicts, decision.gates, workflow.now())
        workflow.logger.info(
            "rollout.check %s",
            "; ".join(f"{v.outcome}: {v.message}" for v in verdicts),
        )

    async def _azure_monitor_verdict(self, gate: Gate) -> Verdict:
        """A gate on an Azure Monitor metric; a failed read is no data, never a pass."""
        assert gate.azure_monitor is not None
        query = MetricQuery(**gate.azure_monitor.model_dump(), window_seconds=gate.window)
        try:
            reading = await workflow.execute_activity(
                Activity.READ_AZURE_METRIC,
                ReadAzureMetricInput(query=query),
                result_type=ReadAzureMetricResult,
                **options.MONITOR,
            )
        except ActivityError as err:
            message = f"Azure Monitor read failed: {failure_reason(err)}"
            return Verdict(gate=gate.label, outcome="no_data", message=message)
        return judge_azure_monitor_gate(gate, reading)

    async def _window(self, deployment: str, window: float) -> WindowStats:
        return await workflow.execute_activity(
            Activity.QUERY_WINDOW,
            QueryWindowInput(endpoint=self._plan.endpoint, deployment=deployment, window_seconds=window),
            result_type=WindowStats,
            **options.MONITOR,
        )

    async def _set_traffic(self, canary_weight: int, mirror_share: int, *, undo: bool = False) -> None:
        plan = self._plan
        await workflow.execute_activity(
            Activity.SET_ROLLOUT_TRAFFIC,
            SetRolloutTrafficInput(
                rollout_id=self._input.rollout_id,
                baseline=plan.baseline,
                canary=plan.canary,
                pool=self._input.pool,
                canary_weight=canary_weight,
                mirror_share=mirror_share,
                undo=undo,
                endpoint=plan.endpoint,
            ),
            **options.TRAFFIC,
        )

    async def _roll_back(self, reason: str) -> None:
        """Traffic back first; capacity is touched only after the drain delay."""
        await self._set_traffic(0, 0)
        self._state = rollout.finish(self._state, "RolledBack", workflow.now(), reason)
        self._publish()
        await self._release()
        failure = self._plan.after_failure
        if failure.canary == "delete":
            await workflow.sleep(timedelta(seconds=failure.drain))
            await self._retire(self._plan.canary, "delete")

    async def _complete(self) -> None:
        self._state = rollout.finish(self._state, "Succeeded", workflow.now())
        self._publish()
        await self._release()
        success = self._plan.after_success
        # The previous deployment stays warm at 0 % so `rollout undo` is instant. An undo may
        # already have come while the endpoint was being released: `_undo` is only ever set
        # once the rollout is Succeeded, so waiting for it (not for a change) cannot miss it.
        try:
            await workflow.wait_condition(
                lambda: self._undo, timeout=timedelta(seconds=success.keep_previous_for)
            )
        except TimeoutError:
            pass
        if self._undo:
            try:
                await self._set_traffic(0, 0, undo=True)
            except ActivityError as err:
                workflow.logger.warning("undo refused: %s", failure_reason(err))
                return
            self._state = rollout.finish(self._state, "RolledBack", workflow.now(), "undone after success")
            self._publish()
            return
        if success.then != "keep":
            await self._retire(self._plan.baseline, success.then)

    async def _retire(self, deployment: str, action: RetireAction) -> None:
        try:
            await workflow.execute_activity(
                Activity.RETIRE_DEPLOYMENT,
                RetireDeploymentInput(endpoint=self._plan.endpoint, deployment=deployment, action=action),
                **options.TRAFFIC,
            )
        except ActivityError as err:
            workflow.logger.warning("retiring %s failed: %s", deployment, failure_reason(err))

    async def _release(self) -> None:
        handle = workflow.get_external_workflow_handle(endpoint_id(self._plan.endpoint))
        await handle.signal(EndpointSignal.END_ROLLOUT, EndRolloutInput(rollout_id=self._input.rollout_id))

    def _publish(self) -> None:
        if not self._input.search_attributes:
            return
        workflow.upsert_search_attributes(
            [
                search.PHASE.value_set(self._state.phase),
                search.STEP_WEIGHT.value_set(self._state.weight),
            ]
        )
