"""The rollout engine's decisions: a plan from rollout.yml, and what to do next. Pure; `now` is given.

A workflow loops `decision = next_decision(plan, state, now)`, carries the decision out, and
records the result with one of the `after_*` functions. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from config.contract.rollout import (
    TERMINAL,
    HistoryEntry,
    Phase,
    Plan,
    PlanStep,
    RolloutEvent,
    RolloutState,
    Verdict,
)
from config.rollout import Gate, RolloutSpec


def expand_plan(spec: RolloutSpec, *, endpoint: str, baseline: str, canary: str) -> Plan:
    if spec.strategy == "canary":
        steps = [PlanStep(weight=s.weight, hold=s.hold) for s in spec.steps]
    elif spec.strategy == "linear":
        assert spec.linear is not None
        weights = list(range(spec.linear.step, 100, spec.linear.step)) + [100]
        steps = [PlanStep(weight=w, hold=spec.linear.interval) for w in weights[:-1]]
        steps.append(PlanStep(weight=100, hold=0.0))
    else:  # blue_green: everything at once; the mirror phase (if any) is the test
        steps = [PlanStep(weight=100, hold=spec.blue_green_hold)]
    return Plan(
        endpoint=endpoint,
        baseline=baseline,
        canary=canary,
        strategy=spec.strategy,
        steps=steps,
        mirror=spec.mirror,
        gates=list(spec.gates),
        check_interval=spec.check_interval,
        failure_limit=spec.failure_limit,
        success_count=spec.success_count,
        after_success=spec.after_success,
        after_failure=spec.after_failure,
    )


# ---- decisions: a small closed set ---------------------------------------------------------
class SetWeights(BaseModel):
    kind: Literal["set_weights"] = "set_weights"
    step: int
    canary: int


class SetMirror(BaseModel):
    kind: Literal["set_mirror"] = "set_mirror"
    share: int


class CheckGates(BaseModel):
    kind: Literal["check_gates"] = "check_gates"
    gates: list[Gate]
    on_shadow: bool = False


class WaitUntil(BaseModel):
    kind: Literal["wait_until"] = "wait_until"
    until: datetime


class Pause(BaseModel):
    kind: Literal["pause"] = "pause"
    reason: str


class RollBack(BaseModel):
    kind: Literal["roll_back"] = "roll_back"
    reason: str


class Complete(BaseModel):
    kind: Literal["complete"] = "complete"


Decision = Annotated[
    SetWeights | SetMirror | CheckGates | WaitUntil | Pause | RollBack | Complete,
    Field(discriminator="kind"),
]


def active_gates(plan: Plan, state: RolloutState) -> list[Gate]:
    """The gates judged now: the mirror's while shadowing; at 100 % only absolute ones
    (the baseline takes no traffic left to compare with)."""
    if _mirroring(plan, state):
        assert plan.mirror is not None
        return list(plan.mirror.gates)
    if state.weight >= 100:
        return [g for g in plan.gates if not g.relative]
    return list(plan.gates)


def _mirroring(plan: Plan, state: RolloutState) -> bool:
    return plan.mirror is not None and not state.mirror_done


def _seconds(after: datetime | None, now: datetime) -> float:
    return (now - after).total_seconds() if after is not None else float("inf")


def next_decision(plan: Plan, state: RolloutState, now: datetime) -> Decision:
    if state.phase in TERMINAL:
        return Complete()
    if state.rollback_requested:
        return RollBack(reason=state.reason or "rollback requested")
    if state.promote_requested:
        if state.mirror_share:
            return SetMirror(share=0)
        if state.weight != 100:
            return SetWeights(step=len(plan.steps) - 1, canary=100)
        return Complete()
    if state.paused:
        return Pause(reason=state.pause_reason or "paused")

    if _mirroring(plan, state):
        assert plan.mirror is not None
        if state.mirror_share != plan.mirror.share and state.phase_started_at is None:
            return SetMirror(share=plan.mirror.share)
        hold = plan.mirror.duration
        finish: Decision = SetMirror(share=0)
    else:
        if state.step < 0:
            return SetWeights(step=0, canary=plan.steps[0].weight)
        hold = plan.steps[state.step].hold
        last = state.step == len(plan.steps) - 1
        finish = (
            Complete() if last else SetWeights(step=state.step + 1, canary=plan.steps[state.step + 1].weight)
        )

    gates = active_gates(plan, state)
    started = state.phase_started_at or now
    hold_over = _seconds(started, now) >= hold
    if hold <= 0 or not gates:
        if hold_over:
            return finish
        return WaitUntil(until=started + timedelta(seconds=hold))
    if _seconds(state.last_check_at, now) >= plan.check_interval:
        return CheckGates(gates=gates, on_shadow=_mirroring(plan, state))
    if hold_over and state.consecutive_successes >= plan.success_count:
        return finish
    assert state.last_check_at is not None
    next_check = state.last_check_at + timedelta(seconds=plan.check_interval)
    if not hold_over:
        next_check = min(next_check, started + timedelta(seconds=hold))
    return WaitUntil(until=next_check)


# ---- recording what happened ---------------------------------------------------------------
def _log(state: RolloutState, now: datetime, event: RolloutEvent, detail: str = "") -> None:
    state.history.append(HistoryEntry(at=now, event=event, detail=detail))


def after_set_weights(state: RolloutState, decision: SetWeights, now: datetime) -> RolloutState:
    s = state.model_copy(deep=True)
    s.step, s.weight = decision.step, decision.canary
    s.phase_started_at, s.last_check_at = now, None
    s.consecutive_successes = s.consecutive_failures = 0
    s.no_data_since = None
    s.phase = _live_phase(s)
    _log(s, now, "weights", f"canary {decision.canary}%")
    return s


def after_set_mirror(state: RolloutState, decision: SetMirror, now: datetime) -> RolloutState:
    s = state.model_copy(deep=True)
    s.mirror_share = decision.share
    if decision.share > 0:
        s.phase_started_at, s.last_check_at = now, None
        s.consecutive_successes = s.consecutive_failures = 0
        _log(s, now, "mirror", f"shadow {decision.share}%")
    else:
        s.mirror_done = True
        s.phase_started_at, s.last_check_at = None, None
        _log(s, now, "mirror", "shadow off")
    s.phase = _live_phase(s)
    return s


def _live_phase(state: RolloutState) -> Phase:
    """A signal may have paused the rollout while its traffic was changing: Paused wins."""
    if state.paused:
        return "Paused"
    return "Mirroring" if state.mirror_share else "Progressing"


def after_check(
    plan: Plan, state: RolloutState, verdicts: list[Verdict], gates: list[Gate], now: datetime
) -> RolloutState:
    """Count passes and failures; decide rollback or pause when the numbers say so."""
    s = state.model_copy(deep=True)
    s.last_check_at, s.verdicts = now, list(verdicts)
    by_outcome = {o: [v for v in verdicts if v.outcome == o] for o in ("fail", "no_data", "inconclusive")}
    failed = list(by_outcome["fail"])
    for verdict, gate in zip(verdicts, gates, strict=True):
        if verdict.outcome != "no_data":
            continue
        if gate.on_no_data == "fail":
            failed.append(verdict)
        elif gate.on_no_data == "pause":
            return _pause(s, now, f"no data: {verdict.message}")
        else:
            s.no_data_since = s.no_data_since or now
            if _seconds(s.no_data_since, now) > gate.no_data_deadline:
                return _pause(s, now, f"no data for {gate.no_data_deadline:g}s: {verdict.message}")
    if failed:
        s.consecutive_failures += 1
        s.consecutive_successes = 0
        detail = "; ".join(v.message for v in failed)
        _log(s, now, "check.failed", f"{s.consecutive_failures}/{plan.failure_limit}: {detail}")
        if s.consecutive_failures >= plan.failure_limit:
            s.rollback_requested = True
            s.reason = (
                f"{failed[0].gate}: {failed[0].message} "
                f"({s.consecutive_failures} of {plan.failure_limit} checks failed)"
            )
        return s
    if by_outcome["no_data"]:
        s.consecutive_successes = 0
        return s
    s.no_data_since = None
    if by_outcome["inconclusive"]:
        s.consecutive_successes = 0
        hold = _current_hold(plan, s)
        if _seconds(s.phase_started_at, now) >= hold:
            return _pause(
                s, now, f"inconclusive at the end of the hold: {by_outcome['inconclusive'][0].message}"
            )
        return s
    s.consecutive_failures = 0
    s.consecutive_successes += 1
    _log(s, now, "check.passed", "; ".join(v.message for v in verdicts))
    return s


def _current_hold(plan: Plan, state: RolloutState) -> float:
    if _mirroring(plan, state):
        assert plan.mirror is not None
        return plan.mirror.duration
    return plan.steps[state.step].hold if state.step >= 0 else 0.0


def _pause(state: RolloutState, now: datetime, reason: str) -> RolloutState:
    state.paused, state.pause_reason = True, reason
    state.phase = "Paused"
    _log(state, now, "paused", reason)
    return state


def request_pause(state: RolloutState, now: datetime, reason: str | None) -> RolloutState:
    s = state.model_copy(deep=True)
    if s.phase in TERMINAL:
        return s
    return _pause(s, now, reason or "paused by request")


def request_resume(state: RolloutState, now: datetime) -> RolloutState:
    s = state.model_copy(deep=True)
    if not s.paused:
        return s
    s.paused, s.pause_reason = False, None
    s.phase = _live_phase(s)
    s.no_data_since = None
    s.last_check_at = None
    _log(s, now, "resumed")
    return s


def request_promote(state: RolloutState, now: datetime, reason: str | None) -> RolloutState:
    s = state.model_copy(deep=True)
    s.promote_requested, s.paused = True, False
    _log(s, now, "promote", reason or "")
    return s


def request_rollback(state: RolloutState, now: datetime, reason: str | None) -> RolloutState:
    s = state.model_copy(deep=True)
    s.rollback_requested, s.paused = True, False
    s.reason = reason or "rollback requested"
    _log(s, now, "rollback", s.reason)
    return s


_ENDED: dict[Phase, RolloutEvent] = {"Succeeded": "succeeded", "RolledBack": "rolledback"}


def finish(
    state: RolloutState, phase: Literal["Succeeded", "RolledBack"], now: datetime, detail: str = ""
) -> RolloutState:
    s = state.model_copy(deep=True)
    s.phase = phase
    if phase == "RolledBack":
        s.weight, s.mirror_share = 0, 0
        s.reason = s.reason or detail or None  # an undo after success has no gate to name
    _log(s, now, _ENDED[phase], detail)
    return s
