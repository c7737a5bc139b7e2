"""The rollout decisions: plans per strategy, and the next decision for each situation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.contract.rollout import Plan, RolloutState, Verdict
from config.rollout import RolloutSpec
from decisions.rollout import (
    CheckGates,
    Complete,
    Pause,
    RollBack,
    SetMirror,
    SetWeights,
    WaitUntil,
    after_check,
    after_set_mirror,
    after_set_weights,
    expand_plan,
    next_decision,
    request_pause,
    request_promote,
    request_resume,
    request_rollback,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def plan_of(**spec: object) -> Plan:
    return expand_plan(RolloutSpec(**spec), endpoint="ep", baseline="blue", canary="green")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def verdict(outcome: str) -> Verdict:
    return Verdict(gate="error_rate <= 0.05", outcome=outcome, message=f"error_rate {outcome}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "weights"),
    [
        ({"strategy": "canary", "steps": [{"weight": 10}, {"weight": 50}]}, [10, 50, 100]),
        ({"strategy": "canary"}, [10, 25, 50, 100]),
        ({"strategy": "linear", "linear": {"step": 25, "interval": "30s"}}, [25, 50, 75, 100]),
        ({"strategy": "linear", "linear": {"step": 30}}, [30, 60, 90, 100]),
        ({"strategy": "blue_green"}, [100]),
    ],
    ids=["canary-explicit", "canary-default", "linear-even", "linear-uneven", "blue-green"],
)
def test_each_strategy_expands_to_its_steps(spec: dict, weights: list[int]) -> None:
    assert [s.weight for s in plan_of(**spec).steps] == weights


def test_canary_weights_must_not_decrease() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        RolloutSpec(strategy="canary", steps=[{"weight": 50}, {"weight": 10}])


def drive(plan: Plan, outcomes: list[str], *, until: float = 3600) -> tuple[list[int], RolloutState, object]:
    """Run the decisions with a simulated clock; gate checks answer from `outcomes` in turn."""
    state, now, weights = RolloutState(), 0.0, []
    answers = iter(outcomes)
    while now <= until:
        decision = next_decision(plan, state, at(now))
        match decision:
            case SetWeights():
                weights.append(decision.canary)
                state = after_set_weights(state, decision, at(now))
            case SetMirror():
                state = after_set_mirror(state, decision, at(now))
            case CheckGates():
                outcome = next(answers, "pass")
                state = after_check(
                    plan, state, [verdict(outcome)] * len(decision.gates), decision.gates, at(now)
                )
            case WaitUntil():
                assert decision.until > at(now), "a wait must move time forward"
                now = (decision.until - T0).total_seconds()
            case Complete() | RollBack() | Pause():
                return weights, state, decision
    raise AssertionError("no end")


def test_happy_path_steps_through_every_weight_to_complete() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "30s"}, {"weight": 50, "hold": "30s"}],
        gates=[{"when": "error_rate <= 0.05"}],
    )
    weights, _, decision = drive(plan, [])
    assert weights == [10, 50, 100]
    assert isinstance(decision, Complete)


def test_a_failing_gate_rolls_back_after_the_failure_limit() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "60s"}],
        gates=[{"when": "error_rate <= 0.05"}],
        failure_limit=3,
        check_interval="5s",
    )
    weights, state, decision = drive(plan, ["pass", "fail", "fail", "fail"])
    assert weights == [10]
    assert isinstance(decision, RollBack)
    assert "3 of 3 checks failed" in decision.reason
    assert state.consecutive_failures == 3


def test_a_pass_between_failures_resets_the_count() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "60s"}], gates=[{"when": "error_rate <= 0.05"}], failure_limit=2
    )
    weights, _, decision = drive(plan, ["fail", "pass", "fail", "pass"])
    assert isinstance(decision, Complete)


def test_a_step_does_not_advance_before_success_count_passes() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "5s"}],
        gates=[{"when": "error_rate <= 0.05"}],
        success_count=3,
        check_interval="5s",
    )
    state = after_set_weights(RolloutState(), SetWeights(step=0, canary=10), at(0))
    for second in (0, 5, 10):
        decision = next_decision(plan, state, at(second))
        assert isinstance(decision, CheckGates), second
        state = after_check(plan, state, [verdict("pass")], decision.gates, at(second))
    assert next_decision(plan, state, at(10)) == SetWeights(step=1, canary=100)


def test_no_data_waits_then_pauses_after_its_deadline() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "10m"}],
        gates=[{"when": "error_rate <= 0.05", "on_no_data": "wait", "no_data_deadline": "60s"}],
    )
    _, state, decision = drive(plan, ["no_data"] * 100)
    assert isinstance(decision, Pause)
    assert "no data for 60s" in decision.reason


def test_no_data_set_to_fail_counts_as_a_failure() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "10m"}], gates=[{"when": "error_rate <= 0.05", "on_no_data": "fail"}]
    )
    _, _, decision = drive(plan, ["no_data"] * 3)
    assert isinstance(decision, RollBack)


def test_inconclusive_at_the_end_of_the_hold_pauses_for_a_human() -> None:
    plan = plan_of(
        steps=[{"weight": 10, "hold": "20s"}], gates=[{"metric": "error_rate", "test": "two_proportion"}]
    )
    _, state, decision = drive(plan, ["inconclusive"] * 100)
    assert isinstance(decision, Pause)
    assert "inconclusive" in decision.reason


def test_pause_holds_until_resume() -> None:
    plan = plan_of(steps=[{"weight": 10, "hold": "30s"}])
    state = after_set_weights(RolloutState(), SetWeights(step=0, canary=10), at(0))
    state = request_pause(state, at(1), "looking at dashboards")
    assert next_decision(plan, state, at(100_000)) == Pause(reason="looking at dashboards")
    state = request_resume(state, at(100_000))
    assert next_decision(plan, state, at(100_000)) == SetWeights(step=1, canary=100)


def test_promote_skips_to_full_traffic_and_completes() -> None:
    plan = plan_of(steps=[{"weight": 10, "hold": "1h"}, {"weight": 50, "hold": "1h"}])
    state = after_set_weights(RolloutState(), SetWeights(step=0, canary=10), at(0))
    state = request_promote(state, at(5), None)
    decision = next_decision(plan, state, at(5))
    assert decision == SetWeights(step=2, canary=100)
    state = after_set_weights(state, decision, at(5))
    assert next_decision(plan, state, at(5)) == Complete()


def test_rollback_wins_over_pause_and_promote() -> None:
    plan = plan_of()
    state = request_pause(RolloutState(), at(0), None)
    state = request_promote(state, at(1), None)
    state = request_rollback(state, at(2), "bad numbers on the dashboard")
    assert next_decision(plan, state, at(3)) == RollBack(reason="bad numbers on the dashboard")


def test_a_mirror_phase_runs_first_and_is_judged_on_the_shadow() -> None:
    plan = plan_of(
        steps=[{"weight": 50, "hold": "0s"}],
        mirror={"share": 20, "duration": "30s", "gates": [{"when": "mirror_match_rate >= 0.99"}]},
    )
    state = RolloutState()
    assert next_decision(plan, state, at(0)) == SetMirror(share=20)
    state = after_set_mirror(state, SetMirror(share=20), at(0))
    check = next_decision(plan, state, at(0))
    assert isinstance(check, CheckGates) and check.on_shadow
    state = after_check(plan, state, [verdict("pass")], check.gates, at(0))
    assert isinstance(next_decision(plan, state, at(1)), WaitUntil)
    check = next_decision(plan, state, at(30))
    state = after_check(plan, state, [verdict("pass")], check.gates, at(30))
    assert next_decision(plan, state, at(30)) == SetMirror(share=0)
    state = after_set_mirror(state, SetMirror(share=0), at(30))
    assert next_decision(plan, state, at(30)) == SetWeights(step=0, canary=50)


def test_at_full_traffic_only_absolute_gates_are_judged() -> None:
    plan = plan_of(
        strategy="blue_green",
        gates=[{"when": "latency_p99 <= baseline * 1.2"}, {"when": "error_rate <= 0.05"}],
    )
    state = after_set_weights(RolloutState(), SetWeights(step=0, canary=100), at(0))
    decision = next_decision(plan, state, at(0))
    assert isinstance(decision, CheckGates)
    assert [g.when for g in decision.gates] == ["error_rate <= 0.05"]
