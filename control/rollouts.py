"""The façade's rollout half: plan, start, steer and list RolloutWorkflows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from config.contract.errors import BadRequest, NotFound
from config.contract.names import ROLLOUT_WORKFLOW, RolloutSignal
from config.contract.rollout import TERMINAL, Plan
from config.contract.workflows import RolloutStatus, StartRolloutInput
from config.rollout import Gate, RolloutSpec
from control.facade import Tidegate
from decisions.rollout import expand_plan
from workflows import search
from workflows.endpoint import EndpointWorkflow
from workflows.rollout import RolloutWorkflow

POLL_SECONDS = 0.5
STATES = {
    "running": 'ExecutionStatus = "Running"',
    "succeeded": 'TidegatePhase = "Succeeded"',
    "rolled_back": 'TidegatePhase = "RolledBack"',
    "paused": 'TidegatePhase = "Paused"',
}


class Rollouts:
    def __init__(self, tidegate: Tidegate) -> None:
        self._tg = tidegate
        self._client = tidegate.client

    async def plan(self, endpoint: str, to: str, spec: RolloutSpec, baseline: str | None = None) -> Plan:
        state = await self._tg.describe(endpoint)
        if to not in state.deployments:
            raise NotFound(f"--to: deployment {to} does not exist in endpoint {endpoint}")
        chosen = baseline or spec.baseline or _busiest(state.traffic, exclude=to)
        if chosen is None:
            raise BadRequest(
                f"endpoint {endpoint} has no deployment with traffic to shift from; give --baseline"
            )
        if chosen not in state.deployments:
            raise NotFound(f"baseline: deployment {chosen} does not exist in endpoint {endpoint}")
        return expand_plan(spec, endpoint=endpoint, baseline=chosen, canary=to)

    async def start(self, plan: Plan, spec: RolloutSpec) -> str:
        """Ask the endpoint (the one writer of traffic) to start it; returns the rollout id."""
        await self._tg.describe(plan.endpoint)
        return await self._tg.execute_update(
            plan.endpoint,
            EndpointWorkflow.start_rollout,
            StartRolloutInput(plan=plan, spec=spec.model_dump(mode="json")),
        )

    async def current_id(self, endpoint: str) -> str:
        state = await self._tg.describe(endpoint)
        rid = state.rollout_id or state.last_rollout_id
        if rid is None:
            raise NotFound(f"endpoint {endpoint} has had no rollout")
        return rid

    def _handle(self, rid: str) -> WorkflowHandle:
        return self._client.get_workflow_handle_for(RolloutWorkflow.run, rid)

    async def status(self, endpoint: str, rid: str | None = None) -> dict[str, Any]:
        rid = rid or await self.current_id(endpoint)
        try:
            status = await self._handle(rid).query(RolloutWorkflow.status)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(f"rollout {rid} does not exist") from None
            raise
        return rollout_view(status)

    async def wait(
        self, endpoint: str, rid: str, on_progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        return await follow_until_ended(lambda: self.status(endpoint, rid), on_progress, POLL_SECONDS)

    async def signal(self, endpoint: str, name: str, reason: str | None = None) -> str:
        rid = await self.current_id(endpoint)
        handle = self._handle(rid)
        described = await handle.describe()
        if described.status != WorkflowExecutionStatus.RUNNING:
            raise BadRequest(f"rollout {rid} has ended; nothing to {name}")
        view = await self.status(endpoint, rid)
        refused = signal_refusal(rid, name, view["phase"])
        if refused:
            raise BadRequest(refused)
        args = (
            [reason] if name in (RolloutSignal.PAUSE, RolloutSignal.PROMOTE, RolloutSignal.ROLLBACK) else []
        )
        await handle.signal(name, *args)
        return rid

    async def retry(self, endpoint: str) -> tuple[str, Plan]:
        rid = await self.current_id(endpoint)
        status = await self._handle(rid).query(RolloutWorkflow.status)
        if status.state.phase != "RolledBack":
            raise BadRequest(
                f"rollout {rid} is {status.state.phase}; only a rolled-back rollout can be retried"
            )
        spec = RolloutSpec.model_validate(status.spec) if status.spec else RolloutSpec()
        plan = status.plan
        return await self.start(plan, spec), plan

    async def list(self, endpoint: str | None, state: str | None) -> list[dict[str, Any]]:
        clauses = [f'WorkflowType = "{ROLLOUT_WORKFLOW}"']
        if endpoint:
            clauses.append(f'TidegateEndpoint = "{endpoint}"')
        if state:
            clauses.append(STATES[state])
        rows = []
        async for execution in self._client.list_workflows(" AND ".join(clauses)):
            attributes = execution.typed_search_attributes
            rows.append(
                {
                    "id": execution.id,
                    "endpoint": attributes.get(search.ENDPOINT),
                    "from": attributes.get(search.FROM),
                    "to": attributes.get(search.TO),
                    "phase": attributes.get(search.PHASE),
                    "weight": attributes.get(search.STEP_WEIGHT),
                    "status": execution.status.name if execution.status else None,
                    "started": execution.start_time.isoformat() if execution.start_time else None,
                }
            )
        return rows


async def follow_until_ended(
    status: Callable[[], Awaitable[dict[str, Any]]],
    on_progress: Callable[[dict[str, Any]], None],
    poll_seconds: float,
) -> dict[str, Any]:
    """Each status (shown to `on_progress`) until the rollout's phase is terminal; that one."""
    while True:
        view = await status()
        on_progress(view)
        if view["phase"] in TERMINAL:
            return view
        await asyncio.sleep(poll_seconds)


def signal_refusal(rid: str, signal: str, phase: str) -> str | None:
    """Why the CLI will not send `signal` to a running rollout in `phase` (the workflow would
    ignore it), or None."""
    if signal == RolloutSignal.UNDO:
        return (
            None
            if phase == "Succeeded"
            else f"rollout {rid} is {phase}; only a Succeeded rollout can be undone"
        )
    if phase in TERMINAL:
        return f"rollout {rid} is {phase}; nothing to {signal}"
    if signal == RolloutSignal.RESUME and phase != "Paused":
        return f"rollout {rid} is {phase}; only a Paused rollout can be resumed"
    if signal == RolloutSignal.PAUSE and phase == "Paused":
        return f"rollout {rid} is Paused already"
    return None


def _busiest(traffic: dict[str, int], *, exclude: str) -> str | None:
    candidates = [(share, name) for name, share in traffic.items() if name != exclude and share > 0]
    return max(candidates)[1] if candidates else None


def rollout_view(status: RolloutStatus) -> dict[str, Any]:
    """`rollout status`: phase, step, weights, each gate's last value against its bound, history."""
    plan, state = status.plan, status.state
    return {
        "id": status.rollout_id,
        "endpoint": plan.endpoint,
        "from": plan.baseline,
        "to": plan.canary,
        "strategy": plan.strategy,
        "phase": state.phase,
        "step": f"{state.step + 1}/{len(plan.steps)}" if state.step >= 0 else f"0/{len(plan.steps)}",
        "steps": [{"weight": s.weight, "hold": s.hold} for s in plan.steps],
        "weights": {plan.baseline: 100 - state.weight, plan.canary: state.weight},
        "mirror_share": state.mirror_share,
        "reason": state.reason or state.pause_reason,
        "gates": [
            {"gate": v.gate, "outcome": v.outcome, "value": v.value, "bound": v.bound, "detail": v.message}
            for v in state.verdicts
        ],
        "consecutive_failures": state.consecutive_failures,
        "history": [
            {"at": h.at.isoformat(), "event": h.event, "detail": h.detail} for h in state.history[-50:]
        ],
    }


def _evidence(gate: Gate) -> str:
    """What a gate needs before it judges."""
    if gate.azure_monitor is not None:
        return f"Azure Monitor {gate.azure_monitor.resource_id}, settled minutes only"
    return f"≥{gate.min_requests} requests"


def describe_plan(plan: Plan) -> list[str]:
    """`rollout plan`: every step, gate and timeout, in words."""
    lines = [
        f"rollout of {plan.endpoint}: {plan.baseline} → {plan.canary} ({plan.strategy})",
        f"checks every {plan.check_interval:g}s; roll back after {plan.failure_limit} failed "
        f"checks in a row; a step advances after {plan.success_count} passed check(s) and its hold",
    ]
    if plan.mirror is not None:
        lines.append(f"mirror: {plan.mirror.share}% shadowed to {plan.canary} for {plan.mirror.duration:g}s")
        lines += [
            f"  gate {g.label} (window {g.window:g}s, {_evidence(g)}, "
            f"no data → {g.on_no_data} (deadline {g.no_data_deadline:g}s))"
            for g in plan.mirror.gates
        ]
    for i, step in enumerate(plan.steps, start=1):
        lines.append(f"step {i}/{len(plan.steps)}: {plan.canary} {step.weight}%, hold {step.hold:g}s")
    for gate in plan.gates:
        lines.append(
            f"gate {gate.label}: window {gate.window:g}s, {_evidence(gate)}, "
            f"no data → {gate.on_no_data} (deadline {gate.no_data_deadline:g}s)"
        )
    if not plan.gates:
        lines.append("no gates: steps advance on their hold times alone")
    success = plan.after_success
    lines.append(
        f"on success: {plan.baseline} kept warm at 0% for {success.keep_previous_for:g}s, then {success.then}"
    )
    failure = plan.after_failure
    lines.append(
        f"on failure: traffic back to {plan.baseline} at once; {plan.canary} {failure.canary} "
        f"after a {failure.drain:g}s drain"
    )
    return lines
