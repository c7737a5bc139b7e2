"""A scale set's next step in a rolling update (upgrade policy Manual), decided from one read.

The scale set cannot step by itself as the local host does, so whoever reads it (the shared
watcher each round, a request once) asks what to do next and does it: scale out (new VMs
take the scale set's latest model), take ready VMs out of the routes first (`drain`), delete
VMs. Which VMs start and which leave is decisions/rolling_update.py's word, as on the local
host; this only turns VMs into its inputs and its answer into scale-set operations. A VM's
spec is the one it was created with (each keeps its own model), so putting an old spec back
makes the old VMs current again and only the new ones leave.

Also here: which image a scale set's model names (kept per spec: an update keeps the patched
image, a host patch takes the newest, a failed one goes back) and a gallery's newest version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config.host_api import InstancePhase
from decisions.rolling_update import DOWN, RUNNING, OldInstance, instances_to_start, old_instances_to_retire

# Which VMs go first when there are more current ones than wanted: broken before booting
# before serving, then the newest.
_SHED_ORDER = {"failed": 0, "stopped": 0, "starting": 1, "unready": 1, "ready": 2, "draining": 3}


@dataclass(frozen=True)
class ScaleSetVm:
    """One VM as read: its instance id, the spec it was created with, its phase."""

    id: str
    spec: str
    state: InstancePhase


@dataclass(frozen=True)
class ScaleSetStep:
    """What to do now: `delete` these VMs (an operation of its own, first); `capacity`: scale
    out to it (None: no new VM); `draining`: every VM out of the routes, with the time it may
    be deleted (one update of the scale set with the capacity)."""

    delete: list[str] = field(default_factory=list)
    capacity: int | None = None
    draining: dict[str, float] = field(default_factory=dict)
    halted: bool = False


def _order(vm_id: str) -> int:
    return int(vm_id) if vm_id.isdigit() else 0


def next_scale_set_step(
    *,
    vms: list[ScaleSetVm],
    spec: str,
    wanted: int,
    max_surge: int,
    draining: dict[str, float],
    now: float,
    drain_seconds: float,
) -> ScaleSetStep:
    """The next step towards `wanted` VMs of `spec`, at most `wanted + max_surge` running."""
    by_id = {vm.id: vm for vm in vms}
    still = {i: until for i, until in draining.items() if i in by_id}
    # A drained VM goes, and so does one that stopped serving while draining.
    delete = [i for i, until in still.items() if now >= until or by_id[i].state != "ready"]
    still = {i: until for i, until in still.items() if i not in delete}
    active = [vm for vm in sorted(vms, key=lambda v: _order(v.id)) if vm.id not in draining]
    current = [vm for vm in active if vm.spec == spec]
    old = [vm for vm in active if vm.spec != spec]

    leaving: list[ScaleSetVm] = []
    excess = len(current) - wanted
    if excess > 0:
        ranked = sorted(current, key=lambda v: (_SHED_ORDER[v.state], -_order(v.id)))
        leaving.extend(ranked[:excess])
        current = [vm for vm in current if vm not in leaving]

    current_failed = any(vm.state in DOWN for vm in current)
    running = sum(1 for vm in vms if vm.id in draining or vm.state in RUNNING)
    # Halted where it is: no new VM beside a failed one until the caller replaces it or puts
    # the old spec back (a failed VM is only listed, it holds no process the surge counts).
    start = (
        0
        if current_failed
        else instances_to_start(
            wanted=wanted, holding_places=len(current), running=running, max_surge=max_surge
        )
    )
    plan = old_instances_to_retire(
        wanted=wanted,
        ready_current=sum(1 for vm in current if vm.state == "ready"),
        old=[OldInstance(vm.id, vm.state, vm.state not in DOWN) for vm in old],
        max_surge=max_surge,
        current_failed=current_failed,
    )
    leaving.extend(by_id[i] for i in plan.leave)
    for vm in leaving:
        if vm.state == "ready" and drain_seconds > 0:
            still[vm.id] = now + drain_seconds
        else:
            delete.append(vm.id)
    return ScaleSetStep(
        delete=sorted(set(delete), key=_order),
        capacity=len(vms) + start if start > 0 else None,
        draining=still,
        halted=plan.halted,
    )


def parse_draining(tag: str | None) -> dict[str, float]:
    """The draining tag, `<instance id>@<unix time it may be deleted>` separated by spaces."""
    found: dict[str, float] = {}
    for item in (tag or "").split():
        vm_id, _, until = item.partition("@")
        try:
            found[vm_id] = float(until)
        except ValueError:
            continue  # a hand-edited tag: that VM is not draining
    return found


def format_draining(draining: dict[str, float]) -> str:
    return " ".join(f"{i}@{until:.1f}" for i, until in sorted(draining.items(), key=lambda p: _order(p[0])))


@dataclass(frozen=True)
class GalleryVersion:
    name: str
    exclude_from_latest: bool = False
    provisioning_state: str = "Succeeded"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def newest_gallery_version(versions: list[GalleryVersion]) -> str | None:
    """The version Azure's "latest" means: the highest Major.Minor.Patch that succeeded and is
    not excluded from latest."""
    usable = [v.name for v in versions if v.provisioning_state == "Succeeded" and not v.exclude_from_latest]
    return max(usable, key=_version_key, default=None)


@dataclass(frozen=True)
class ImageRecord:
    """The image a scale set's model names for a spec (kept in its tags), and the runtime patch
    level that spec was at."""

    image: str
    spec: str
    patch: int


def image_for(records: list[ImageRecord], *, spec: str, patch: int) -> str | None:
    """The image a request for `spec` at runtime patch level `patch` runs on; None: the newest
    (a new scale set, or a host patch: a level above the current model's). A spec already
    recorded (a repeat, or the old spec put back) keeps its image; any other change keeps the
    current image, so an update never moves VMs off a patched image."""
    for record in records:
        if record.spec == spec:
            return record.image
    if records and patch <= records[0].patch:
        return records[0].image
    return None


def remember_image(records: list[ImageRecord], chosen: ImageRecord) -> list[ImageRecord]:
    """The records after choosing: the chosen first, then the current one it replaces (where
    a failed update goes back to). Putting that one back forgets the failed one, so a patch
    tried again looks for the newest image again."""
    if records and records[0].spec == chosen.spec:
        return [chosen, *records[1:2]]
    if len(records) > 1 and records[1].spec == chosen.spec:
        return [chosen]
    return [chosen, *records[:1]]
