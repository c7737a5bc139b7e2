"""What a deployment's instances amount to, for the states readiness probes move them between."""

from __future__ import annotations

import pytest

from config.host_api import DeploymentInstances, InstancePhase, InstanceStatus
from decisions.instances import assess


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
