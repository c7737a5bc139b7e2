"""The rolling-update planner: how many new instances to start, which old ones may leave.

A deployment wants ``wanted`` instances of its current spec. With ``max_surge`` 0 every new
instance starts at once and the old ones leave once as many new ones are ready as are
wanted. With ``max_surge`` N at most ``wanted + N`` instances run (draining ones included)
and an old, ready instance leaves only while the ready ones, without it, still number
``wanted``; a current instance that failed halts the update where it is, the old ones
serving, until the caller replaces it or puts the old spec back.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.host_api import InstancePhase

DOWN: tuple[InstancePhase, ...] = ("failed", "stopped")
# Holding a process (or about to): what max_surge counts.
RUNNING: tuple[InstancePhase, ...] = ("starting", "ready", "unready", "draining")


@dataclass(frozen=True)
class OldInstance:
    """An instance of a spec that is no longer the deployment's."""

    id: str
    state: InstancePhase
    has_process: bool = True


@dataclass(frozen=True)
class Retirements:
    """Which old instances leave now (in this order), and whether the update is halted."""

    leave: list[str]
    halted: bool = False


def instances_to_start(*, wanted: int, holding_places: int, running: int, max_surge: int) -> int:
    """New instances to start now; ``holding_places``: current instances that count toward
    ``wanted``; ``running``: every instance holding a process (old and draining included)."""
    missing = wanted - holding_places
    if max_surge > 0:
        missing = min(missing, wanted + max_surge - running)
    return max(0, missing)


def old_instances_to_retire(
    *, wanted: int, ready_current: int, old: list[OldInstance], max_surge: int, current_failed: bool
) -> Retirements:
    """Let old instances go as far as the ready current ones can take over."""
    if max_surge == 0:
        leave = [
            i.id
            for i in old
            if i.state in DOWN or not i.has_process or wanted == 0 or ready_current >= wanted
        ]
        return Retirements(leave=leave)
    serving = [i for i in old if i.state == "ready" and wanted > 0]
    leave = [i.id for i in old if i not in serving]  # nothing to wait for
    if current_failed:
        return Retirements(leave=leave, halted=bool(serving))
    capacity = ready_current + len(serving)
    for instance in serving:
        if capacity - 1 < wanted:
            break
        leave.append(instance.id)
        capacity -= 1
    return Retirements(leave=leave)
