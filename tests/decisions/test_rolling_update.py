"""The rolling-update planner: new instances to start, old ones that may leave."""

from __future__ import annotations

import pytest

from decisions.rolling_update import OldInstance, Retirements, instances_to_start, old_instances_to_retire


@pytest.mark.parametrize(
    ("wanted", "holding", "running", "surge", "start"),
    [
        pytest.param(3, 0, 3, 0, 3, id="no_surge_starts_every_new_instance_at_once"),
        pytest.param(3, 0, 3, 1, 1, id="surge_of_one_starts_one_beside_three_old"),
        pytest.param(3, 1, 4, 1, 0, id="surge_used_up_waits_for_an_old_one_to_leave"),
        pytest.param(3, 1, 3, 1, 1, id="an_old_one_left_so_the_next_new_one_starts"),
        pytest.param(3, 0, 3, 2, 2, id="surge_of_two_starts_two"),
        pytest.param(2, 3, 3, 0, 0, id="more_than_wanted_starts_nothing"),
        pytest.param(1, 0, 0, 1, 1, id="a_fresh_deployment_starts_what_it_wants"),
    ],
)
def test_instances_to_start(wanted: int, holding: int, running: int, surge: int, start: int) -> None:
    assert (
        instances_to_start(wanted=wanted, holding_places=holding, running=running, max_surge=surge) == start
    )


def old(*states: str, has_process: bool = True) -> list[OldInstance]:
    return [OldInstance(f"old-{n}", state, has_process) for n, state in enumerate(states)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("wanted", "ready", "olds", "surge", "failed", "expected"),
    [
        pytest.param(
            2, 1, old("ready", "ready"), 0, False, Retirements([]), id="no_surge_keeps_old_until_enough_new"
        ),
        pytest.param(
            2,
            2,
            old("ready", "ready"),
            0,
            False,
            Retirements(["old-0", "old-1"]),
            id="no_surge_all_go_together",
        ),
        pytest.param(
            2, 0, old("failed", "ready"), 0, False, Retirements(["old-0"]), id="a_failed_old_one_goes_at_once"
        ),
        pytest.param(
            2,
            0,
            old("starting", has_process=False),
            0,
            False,
            Retirements(["old-0"]),
            id="one_never_started_goes",
        ),
        pytest.param(
            3,
            1,
            old("ready", "ready", "ready"),
            1,
            False,
            Retirements(["old-0"]),
            id="surge_one_old_leaves_per_new",
        ),
        pytest.param(
            3, 0, old("ready", "ready", "ready"), 1, False, Retirements([]), id="surge_nothing_ready_yet"
        ),
        pytest.param(
            3,
            3,
            old("ready", "ready"),
            1,
            False,
            Retirements(["old-0", "old-1"]),
            id="surge_all_new_ready_all_go",
        ),
        pytest.param(
            2,
            1,
            old("unready", "ready"),
            1,
            False,
            Retirements(["old-0"]),
            id="surge_an_unready_old_one_goes",
        ),
        pytest.param(
            3,
            1,
            old("ready", "ready", "ready"),
            1,
            True,
            Retirements([], halted=True),
            id="surge_a_failed_new_instance_halts_with_the_old_serving",
        ),
        pytest.param(0, 0, old("ready"), 1, False, Retirements(["old-0"]), id="scaled_to_zero_old_ones_go"),
    ],
)
def test_old_instances_to_retire(
    wanted: int, ready: int, olds: list[OldInstance], surge: int, failed: bool, expected: Retirements
) -> None:
    plan = old_instances_to_retire(
        wanted=wanted, ready_current=ready, old=olds, max_surge=surge, current_failed=failed
    )
    assert plan == expected
