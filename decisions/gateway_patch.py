"""The gateway scale set's host patch, one VM at a time with a surge of one, decided from one read.

A host patch puts a new image in the gateway scale set's model (upgrade policy Manual: no VM
changes by itself), then: one new VM is added (capacity + 1); once it runs and holds every
endpoint's current route table (the newest generation any other gateway holds, or nothing for
an endpoint whose newest word is a deletion), one VM of the old image leaves; again, until no
VM runs the old image. An old VM that serves leaves in two steps: it is told to drain (the
load balancer's probe then takes it out of the rotation and its connections close after their
next answer), and once `drain_seconds` have passed it is deleted; a VM draining is never told
again, and goes before anything else is decided (it takes no new connection). Which VMs start
and which leave is decisions/rolling_update.py's word, as for deployments (wanted = the
gateways the settings ask for, a surge of one); this turns gateway VMs into its inputs and its
answer into one step. A new VM that stops, or is not ready
within a bound of its creation, is given up: the patch fails, the old VMs keep serving.

Everything read comes from the scale set and its VMs (their image, creation time, the tables
their admin APIs hold, the VMs draining and until when, kept in a tag), so a patch run again
after a crash continues where the first stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from config.host_api import InstancePhase
from decisions.rolling_update import DOWN, RUNNING, OldInstance, instances_to_start, old_instances_to_retire

GATEWAY_SURGE = 1

Power = Literal["running", "starting", "dead"]


@dataclass(frozen=True)
class HeldRoutes:
    """What one gateway's admin API holds: each endpoint's route generation and tombstone."""

    routes: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayVm:
    """One gateway VM as read: its instance id, the image it was made from (as ARM shows it,
    with the exact version), its power, when it was made (unix seconds), and what its admin API
    answered (None: it does not answer yet)."""

    id: str
    image: str
    power: Power
    created: float
    held: HeldRoutes | None = None


@dataclass(frozen=True)
class AddGateway:
    """Scale out to `capacity`: the new VM is made from the model, the new image."""

    capacity: int


@dataclass(frozen=True)
class WaitForGateway:
    """The new VM `id` is not ready yet; `missing`: endpoint -> the VM holding its current
    table, which the caller may copy to it rather than wait for the endpoint's re-push."""

    id: str
    missing: dict[str, str]
    waited: float
    why: str


@dataclass(frozen=True)
class DrainGateway:
    """Tell the old VM `id` to drain (its admin API's `POST /drain`) and keep `until`, the time
    it may be deleted: the balancer's probe has seen it by then and its clients have moved."""

    id: str
    until: float


@dataclass(frozen=True)
class WaitForDrain:
    """The old VM `id` drains until `until`; `left` seconds to go."""

    id: str
    until: float
    left: float


@dataclass(frozen=True)
class RetireGateway:
    """Delete the old VM `id`: the VMs left still number what is wanted, each holding every route."""

    id: str


@dataclass(frozen=True)
class AbandonGateway:
    """Delete the new VM `id` and fail the patch: it did not become ready."""

    id: str
    reason: str


@dataclass(frozen=True)
class PatchComplete:
    """No VM runs another image."""

    gateways: int


GatewayStep = (
    AddGateway | WaitForGateway | DrainGateway | WaitForDrain | RetireGateway | AbandonGateway | PatchComplete
)


def same_image(a: str, b: str) -> bool:
    """Resource ids are case-insensitive in ARM; so are URNs in practice."""
    return a.strip("/").lower() == b.strip("/").lower()


def current_tables(vms: list[GatewayVm], *, without: str) -> dict[str, tuple[int, str]]:
    """Every endpoint's current route: its highest generation any gateway but `without` holds,
    and a gateway holding it. An endpoint whose highest word is a tombstone is gone: none."""
    routes: dict[str, tuple[int, str]] = {}
    tombstones: dict[str, int] = {}
    for vm in sorted(vms, key=lambda v: _order(v.id)):
        if vm.id == without or vm.held is None:
            continue
        for endpoint, generation in vm.held.routes.items():
            if endpoint not in routes or generation > routes[endpoint][0]:
                routes[endpoint] = (generation, vm.id)
        for endpoint, generation in vm.held.tombstones.items():
            tombstones[endpoint] = max(generation, tombstones.get(endpoint, generation))
    return {e: found for e, found in routes.items() if tombstones.get(e, -1) < found[0]}


def missing_routes(vm: GatewayVm, vms: list[GatewayVm]) -> dict[str, str]:
    """The endpoints whose current table `vm` does not hold, each with a VM that holds it."""
    held = vm.held.routes if vm.held is not None else {}
    return {
        endpoint: source
        for endpoint, (generation, source) in sorted(current_tables(vms, without=vm.id).items())
        if held.get(endpoint, -1) < generation
    }


def _order(vm_id: str) -> int:
    return int(vm_id) if vm_id.isdigit() else 0


def _phase(vm: GatewayVm, *, current: bool, vms: list[GatewayVm]) -> InstancePhase:
    """An old VM serves while it runs; a new one once it also holds every route."""
    if vm.power == "dead":
        return "failed"
    if vm.power == "starting":
        return "starting"
    if not current:
        return "ready"
    if vm.held is None or missing_routes(vm, vms):
        return "starting"
    return "ready"


def _why_not_ready(vm: GatewayVm, vms: list[GatewayVm]) -> str:
    if vm.power == "starting":
        return "its VM is starting"
    if vm.held is None:
        return "its admin API does not answer"
    missing = missing_routes(vm, vms)
    return f"it lacks the route table of {len(missing)} endpoint(s): {', '.join(sorted(missing))}"


def next_gateway_step(
    *,
    vms: list[GatewayVm],
    image: str,
    wanted: int,
    now: float,
    ready_seconds: float,
    draining: dict[str, float] | None = None,
    drain_seconds: float = 0.0,
) -> GatewayStep:
    """The next step of moving every gateway VM onto `image`, `wanted` of them serving always.
    `draining`: instance id -> when it may be deleted (the VMs told to drain); `drain_seconds`:
    how long a serving VM drains before it is deleted (0: deleted at once)."""
    ordered = sorted(vms, key=lambda v: _order(v.id))
    new = [vm for vm in ordered if same_image(vm.image, image)]
    old = [vm for vm in ordered if not same_image(vm.image, image)]
    if not old:
        return PatchComplete(gateways=len(ordered))
    by_id = {vm.id: vm for vm in ordered}
    # A VM told to drain takes no new connection: it leaves first, whatever else happens (a new
    # VM given up afterwards leaves the old ones serving, never one stuck draining).
    for vm_id, until in sorted(draining.items() if draining else [], key=lambda p: _order(p[0])):
        vm = by_id.get(vm_id)
        if vm is None:
            continue  # deleted already
        if now >= until or vm.power != "running":
            return RetireGateway(vm_id)
        return WaitForDrain(vm_id, until, left=until - now)
    phases = {vm.id: _phase(vm, current=vm in new, vms=ordered) for vm in ordered}
    for vm in new:
        if phases[vm.id] == "failed":
            return AbandonGateway(vm.id, f"gateway VM {vm.id} on {image} stopped")
        waited = now - vm.created
        if phases[vm.id] == "starting" and waited >= ready_seconds:
            return AbandonGateway(
                vm.id,
                f"gateway VM {vm.id} on {image} was not ready {waited:.0f} s after it was made "
                f"(the bound is {ready_seconds:.0f} s): {_why_not_ready(vm, ordered)}",
            )
    plan = old_instances_to_retire(
        wanted=wanted,
        ready_current=sum(1 for vm in new if phases[vm.id] == "ready"),
        old=[OldInstance(vm.id, phases[vm.id], phases[vm.id] not in DOWN) for vm in old],
        max_surge=GATEWAY_SURGE,
        current_failed=False,
    )
    if plan.leave:
        leaving = by_id[plan.leave[0]]  # one at a time: the next read decides the next
        if drain_seconds > 0 and leaving.power == "running":
            return DrainGateway(leaving.id, until=now + drain_seconds)
        return RetireGateway(leaving.id)  # serving no one: nothing to drain
    pending = [vm for vm in new if phases[vm.id] == "starting"]
    if pending:
        vm = pending[0]
        return WaitForGateway(
            vm.id, missing_routes(vm, ordered), waited=now - vm.created, why=_why_not_ready(vm, ordered)
        )
    start = instances_to_start(
        wanted=wanted,
        holding_places=len(new),
        running=sum(1 for phase in phases.values() if phase in RUNNING),
        max_surge=GATEWAY_SURGE,
    )
    # One VM at a time, and at least one: while old VMs serve and none may leave, one more new
    # VM is what lets one go (a scale set above what is wanted sheds old VMs first, above).
    return AddGateway(capacity=len(ordered) + min(max(start, 1), GATEWAY_SURGE))
