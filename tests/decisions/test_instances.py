"""What a deployment's instances amount to, for the states readiness probes move them between."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.host_api import DeploymentInstances, InstancePhase, InstanceStatus
from decisions.instances import assess, plan_recovery


def status(*states: InstancePhase) -> DeploymentInstances:
    return DeploymentInstances(
        endpoint="ep",
        deployment="blue",
        environment_state="ready",
        instances=[
            InstanceStatus(
                id=f"blue-{n}", port=40000 + n, url=f"http://127.0.0.1:{40000 + n}", state=s, spec_hash="h"
            )
            for n, s in enumerate(states)
        ],
    )


@pytest.mark.parametrize(
    ("states", "serving", "converged"),
    [
        pytest.param(("ready", "ready"), ["blue-0", "blue-1"], True, id="all_ready_serve_and_converge"),
        pytest.param(("ready", "unready"), ["blue-0"], False, id="an_unready_instance_leaves_the_route"),
        pytest.param(("starting", "ready"), ["blue-1"], False, id="a_starting_instance_does_not_serve_yet"),
    ],
)
def test_only_ready_instances_serve(
    states: tuple[InstancePhase, ...], serving: list[str], converged: bool
) -> None:
    seen = assess(status(*states), "h", 2)
    assert [route.id for route in seen.serving] == serving
    assert seen.converged is converged
    assert seen.failed == []  # unready is not failed: nothing replaces it


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def with_restarts(restarts: int, *states: InstancePhase) -> DeploymentInstances:
    seen = status(*states)
    for instance in seen.instances:
        instance.restarts = restarts
        if instance.state == "failed":
            instance.exit_code, instance.error = 3, "boom"
    return seen


@pytest.mark.parametrize(
    ("instances", "count", "due_in", "health", "replace", "next_in"),
    [
        pytest.param(
            with_restarts(0, "ready", "ready"), 2, 0, "Healthy", False, 0, id="all_well_nothing_to_do"
        ),
        pytest.param(
            with_restarts(0, "ready", "failed"), 2, 0, "Healthy", True, 1, id="first_failure_replaced_now"
        ),
        pytest.param(
            with_restarts(0, "ready"), 2, 0, "Healthy", True, 1, id="a_missing_instance_is_replaced"
        ),
        pytest.param(
            with_restarts(1, "ready", "failed"),
            2,
            0,
            "Healthy",
            True,
            2,
            id="second_replacement_waits_longer",
        ),
        pytest.param(
            with_restarts(2, "ready", "failed"), 2, 0, "Degraded", True, 4, id="a_crash_loop_is_degraded"
        ),
        pytest.param(
            with_restarts(3, "ready", "failed"), 2, 5, "Degraded", False, 5, id="within_the_back_off_it_waits"
        ),
        pytest.param(
            with_restarts(20, "failed"),
            1,
            0,
            "Degraded",
            True,
            300,
            id="the_back_off_is_capped_at_five_minutes",
        ),
    ],
)
def test_plan_recovery(
    instances: DeploymentInstances, count: int, due_in: int, health: str, replace: bool, next_in: int
) -> None:
    plan = plan_recovery(
        instances,
        assess(instances, "h", count),
        count,
        now=NOW,
        next_replacement=NOW + timedelta(seconds=due_in),
    )
    assert (plan.health, plan.replace) == (health, replace)
    assert plan.next_replacement == NOW + timedelta(seconds=next_in)
    if health == "Degraded":
        assert plan.reason is not None and plan.reason.startswith("crash loop (")
