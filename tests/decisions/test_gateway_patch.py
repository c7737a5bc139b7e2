"""The gateway host patch's next step, from one read of the gateway VMs: table-driven."""

from __future__ import annotations

import pytest

from decisions.gateway_patch import (
    AbandonGateway,
    AddGateway,
    DrainGateway,
    GatewayStep,
    GatewayVm,
    HeldRoutes,
    PatchComplete,
    RetireGateway,
    WaitForDrain,
    WaitForGateway,
    current_tables,
    next_gateway_step,
)

OLD = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/G/images/gw/versions/1.0.0"
NEW = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/G/images/gw/versions/1.0.1"
NOW = 1_000.0
READY_SECONDS = 300.0
TABLES = HeldRoutes(routes={"alpha": 20, "beta": 7})


def vm(
    vm_id: str,
    image: str = OLD,
    *,
    power: str = "running",
    created: float = 0.0,
    held: HeldRoutes | None = TABLES,
) -> GatewayVm:
    return GatewayVm(id=vm_id, image=image, power=power, created=created, held=held)  # type: ignore[arg-type]


CASES: list[tuple[str, list[GatewayVm], GatewayStep]] = [
    ("test_every_vm_on_the_old_image_adds_one_new_vm", [vm("0"), vm("1")], AddGateway(capacity=3)),
    (
        "test_a_new_vm_whose_admin_api_is_silent_is_waited_for",
        [vm("0"), vm("1"), vm("2", NEW, created=NOW - 10, held=None)],
        WaitForGateway("2", {"alpha": "0", "beta": "0"}, waited=10.0, why="its admin API does not answer"),
    ),
    (
        "test_a_new_vm_still_starting_is_waited_for",
        [vm("0"), vm("1"), vm("2", NEW, power="starting", created=NOW - 5, held=None)],
        WaitForGateway("2", {"alpha": "0", "beta": "0"}, waited=5.0, why="its VM is starting"),
    ),
    (
        "test_a_new_vm_missing_one_endpoints_table_is_waited_for_naming_where_it_is",
        [
            vm("0", held=HeldRoutes(routes={"alpha": 20, "beta": 7})),
            vm("1", held=HeldRoutes(routes={"alpha": 21, "beta": 7})),
            vm("2", NEW, created=NOW - 3, held=HeldRoutes(routes={"alpha": 20, "beta": 7})),
        ],
        WaitForGateway(
            "2", {"alpha": "1"}, waited=3.0, why="it lacks the route table of 1 endpoint(s): alpha"
        ),
    ),
    (
        "test_a_new_vm_holding_every_table_lets_the_oldest_vm_go",
        [vm("0"), vm("1"), vm("2", NEW, created=NOW - 3)],
        RetireGateway("0"),
    ),
    (
        "test_a_new_vm_holding_a_newer_generation_than_the_old_ones_is_ready",
        [vm("0"), vm("1"), vm("2", NEW, held=HeldRoutes(routes={"alpha": 25, "beta": 7}))],
        RetireGateway("0"),
    ),
    (
        "test_an_endpoint_deleted_on_the_old_vms_is_not_wanted_on_the_new_one",
        [
            vm("0", held=HeldRoutes(routes={"alpha": 20}, tombstones={"gone": 9})),
            vm("1", held=HeldRoutes(routes={"alpha": 20, "gone": 5})),
            vm("2", NEW, held=HeldRoutes(routes={"alpha": 20})),
        ],
        RetireGateway("0"),
    ),
    ("test_after_one_old_vm_left_another_new_vm_is_added", [vm("1"), vm("2", NEW)], AddGateway(capacity=3)),
    (
        "test_the_last_old_vm_goes_once_its_successor_is_ready",
        [vm("1"), vm("2", NEW), vm("3", NEW)],
        RetireGateway("1"),
    ),
    ("test_no_vm_on_the_old_image_completes", [vm("2", NEW), vm("3", NEW)], PatchComplete(gateways=2)),
    (
        "test_the_image_is_compared_without_regard_to_case",
        [vm("2", NEW.upper()), vm("3", NEW)],
        PatchComplete(gateways=2),
    ),
    (
        "test_a_dead_old_vm_goes_at_once",
        [vm("0", power="dead"), vm("1"), vm("2", NEW, created=NOW - 1, held=None)],
        RetireGateway("0"),
    ),
    (
        "test_a_new_vm_that_stopped_is_given_up",
        [vm("0"), vm("1"), vm("2", NEW, power="dead", held=None)],
        AbandonGateway("2", f"gateway VM 2 on {NEW} stopped"),
    ),
    (
        "test_a_new_vm_not_ready_within_the_bound_is_given_up",
        [vm("0"), vm("1"), vm("2", NEW, created=NOW - 300, held=None)],
        AbandonGateway(
            "2",
            f"gateway VM 2 on {NEW} was not ready 300 s after it was made (the bound is 300 s): "
            "its admin API does not answer",
        ),
    ),
    (
        "test_a_single_gateway_is_never_left_alone_while_its_successor_boots",
        [vm("0"), vm("1", NEW, created=NOW - 1, held=None)],
        WaitForGateway("1", {"alpha": "0", "beta": "0"}, waited=1.0, why="its admin API does not answer"),
    ),
    (
        "test_a_stale_surge_above_what_is_wanted_sheds_an_old_vm_first",
        [vm("0"), vm("1"), vm("2")],
        RetireGateway("0"),
    ),
    (
        "test_fewer_vms_than_wanted_still_adds_one_at_a_time",
        [vm("0")],
        AddGateway(capacity=2),
    ),
]


@pytest.mark.parametrize(("vms", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_gateway_step(vms: list[GatewayVm], expected: GatewayStep) -> None:
    assert next_gateway_step(vms=vms, image=NEW, wanted=2, now=NOW, ready_seconds=READY_SECONDS) == expected


DRAIN_SECONDS = 15.0

# (id, VMs, the VMs draining and until when, the step), with a drain of DRAIN_SECONDS.
DRAIN_CASES: list[tuple[str, list[GatewayVm], dict[str, float], GatewayStep]] = [
    (
        "test_the_oldest_vm_serving_is_told_to_drain_before_it_goes",
        [vm("0"), vm("1"), vm("2", NEW)],
        {},
        DrainGateway("0", until=NOW + DRAIN_SECONDS),
    ),
    (
        "test_a_vm_draining_is_waited_for_not_told_again",
        [vm("0"), vm("1"), vm("2", NEW)],
        {"0": NOW + 4},
        WaitForDrain("0", until=NOW + 4, left=4.0),
    ),
    (
        "test_a_vm_drained_goes",
        [vm("0"), vm("1"), vm("2", NEW)],
        {"0": NOW},
        RetireGateway("0"),
    ),
    (
        "test_a_vm_that_stopped_while_draining_goes_at_once",
        [vm("0", power="dead"), vm("1"), vm("2", NEW)],
        {"0": NOW + 10},
        RetireGateway("0"),
    ),
    (
        "test_a_vm_draining_goes_before_a_new_vm_that_stopped_is_given_up",
        [vm("0"), vm("1"), vm("2", NEW, power="dead", held=None)],
        {"0": NOW + 10},
        WaitForDrain("0", until=NOW + 10, left=10.0),
    ),
    (
        "test_a_vm_deleted_while_draining_is_forgotten_and_the_next_one_drains",
        [vm("1"), vm("2", NEW), vm("3", NEW)],
        {"0": NOW - 30},
        DrainGateway("1", until=NOW + DRAIN_SECONDS),
    ),
    (
        "test_a_dead_old_vm_is_not_drained_but_goes_at_once",
        [vm("0", power="dead"), vm("1"), vm("2", NEW, created=NOW - 1, held=None)],
        {},
        RetireGateway("0"),
    ),
    (
        "test_nothing_is_drained_while_the_new_vm_is_not_ready",
        [vm("0"), vm("1"), vm("2", NEW, created=NOW - 1, held=None)],
        {},
        WaitForGateway("2", {"alpha": "0", "beta": "0"}, waited=1.0, why="its admin API does not answer"),
    ),
    (
        "test_the_patch_completes_with_a_deleted_vm_still_in_the_drain_record",
        [vm("2", NEW), vm("3", NEW)],
        {"1": NOW - 1},
        PatchComplete(gateways=2),
    ),
]


@pytest.mark.parametrize(
    ("vms", "draining", "expected"), [c[1:] for c in DRAIN_CASES], ids=[c[0] for c in DRAIN_CASES]
)
def test_next_gateway_step_with_a_drain(
    vms: list[GatewayVm], draining: dict[str, float], expected: GatewayStep
) -> None:
    step = next_gateway_step(
        vms=vms,
        image=NEW,
        wanted=2,
        now=NOW,
        ready_seconds=READY_SECONDS,
        draining=draining,
        drain_seconds=DRAIN_SECONDS,
    )
    assert step == expected


def test_a_whole_patch_with_a_drain_tells_each_old_vm_once_and_deletes_it_after_the_drain() -> None:
    """Played out: each old VM drains DRAIN_SECONDS, and two VMs serve at every moment."""
    vms = [vm("0"), vm("1")]
    draining: dict[str, float] = {}
    now, told, deleted = NOW, [], []
    for _ in range(50):
        step = next_gateway_step(
            vms=vms,
            image=NEW,
            wanted=2,
            now=now,
            ready_seconds=READY_SECONDS,
            draining=draining,
            drain_seconds=DRAIN_SECONDS,
        )
        serving = [v for v in vms if v.id not in draining]
        assert len(serving) >= 2 or isinstance(step, PatchComplete | AddGateway | WaitForGateway)
        match step:
            case PatchComplete():
                break
            case AddGateway(capacity=capacity):
                vms.append(vm(str(max(int(v.id) for v in vms) + 1), NEW, created=now))
                assert len(vms) == capacity
            case DrainGateway(id=vm_id, until=until):
                told.append((vm_id, now))
                draining[vm_id] = until
            case WaitForDrain(left=left):
                now += min(left, 2.0)
            case RetireGateway(id=vm_id):
                deleted.append((vm_id, now))
                vms = [v for v in vms if v.id != vm_id]
            case _:
                raise AssertionError(step)
        now += 0.5
    else:
        raise AssertionError("the patch never completed")
    assert [i for i, _ in told] == ["0", "1"]
    assert [i for i, _ in deleted] == ["0", "1"]
    for (_, told_at), (_, deleted_at) in zip(told, deleted, strict=True):
        assert deleted_at - told_at >= DRAIN_SECONDS
    assert sorted(v.id for v in vms) == ["2", "3"]


def test_a_whole_patch_of_two_gateways_never_serves_with_fewer_than_two_ready() -> None:
    """Applying each step to the VMs (a new VM ready at once) ends with both on the new image,
    and at every moment at least two VMs serve: old running ones, or new ones with every table."""
    vms = [vm("0"), vm("1")]
    next_id = 2
    steps: list[str] = []
    for _ in range(20):
        step = next_gateway_step(vms=vms, image=NEW, wanted=2, now=NOW, ready_seconds=READY_SECONDS)
        match step:
            case AddGateway(capacity=capacity):
                assert capacity == len(vms) + 1 <= 3
                vms.append(vm(str(next_id), NEW, created=NOW))
                next_id += 1
                steps.append("add")
            case RetireGateway(id=gone):
                vms = [v for v in vms if v.id != gone]
                steps.append(f"retire {gone}")
            case PatchComplete():
                break
            case _:
                pytest.fail(f"unexpected {step}")
        assert len(vms) >= 2
    assert steps == ["add", "retire 0", "add", "retire 1"]
    assert sorted(v.id for v in vms) == ["2", "3"]


def test_the_current_tables_are_the_newest_generation_any_gateway_holds() -> None:
    vms = [
        vm("0", held=HeldRoutes(routes={"a": 1, "b": 9})),
        vm("1", held=HeldRoutes(routes={"a": 3}, tombstones={"b": 10})),
        vm("2", held=None),
    ]
    assert current_tables(vms, without="9") == {"a": (3, "1")}
    assert current_tables(vms, without="1") == {"a": (1, "0"), "b": (9, "0")}
