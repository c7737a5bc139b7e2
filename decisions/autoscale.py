"""Autoscale maths for `scale_settings: target_utilization` (Azure's fields). Pure; `now` given.

Out fast, in slowly: scaling out happens at the first poll above target, by as many instances
as the load needs; scaling in waits until utilisation has stayed low for the cool-down, and
then removes one instance at a time.
"""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel

from config.contract.state import AutoscaleMemory, AutoscaleSettings
from config.stats import WindowStats


class ScaleDecision(BaseModel):
    instances: int
    reason: str
    memory: AutoscaleMemory


def desired_instances(
    settings: AutoscaleSettings,
    *,
    current: int,
    utilisation: float | None,
    memory: AutoscaleMemory,
    now: datetime,
    in_rollout: bool = False,
    waiting: float = 0.0,
    slots_per_instance: int = 1,
    measure: str = "utilisation",
) -> ScaleDecision:
    """How many instances now. `utilisation` is the mean busy share (0..1) of the instances
    over the last window; None means no measurement (nothing changes). `waiting` is the mean
    number of requests the gateway held in its queue over the window (see `mean_waiting`):
    a busy instance reads 100 % however long the queue in front of it, so the queue is
    counted as work for `waiting / slots_per_instance` more instances. While a rollout moves
    the deployment's traffic (`in_rollout`), scaling out goes on but scaling in waits: a step
    that shifts traffic onto fewer instances than the load needs would fail its gates."""
    floor, ceiling = settings.min_instances, max(settings.min_instances, settings.max_instances)
    clamped = min(max(current, floor), ceiling)
    if clamped != current:
        return ScaleDecision(
            instances=clamped, reason=f"{current} outside [{floor}, {ceiling}]", memory=AutoscaleMemory()
        )
    if utilisation is None:
        return ScaleDecision(instances=current, reason="no measurement", memory=memory)
    target = settings.target_utilization_percentage / 100
    queued = max(waiting, 0.0) / max(slots_per_instance, 1)
    shown = f"{measure} {utilisation:.0%} vs target {target:.0%}"
    if queued >= 0.01:
        shown += f", {waiting:.1f} requests waiting"
    needed = min(max(math.ceil((current * utilisation + queued) / target - 1e-9), floor), ceiling)
    if needed > current:
        return ScaleDecision(instances=needed, reason=f"{shown}: out to {needed}", memory=AutoscaleMemory())
    if needed < current and in_rollout:
        return ScaleDecision(
            instances=current,
            reason=f"{shown}; scale-in held: a rollout is moving its traffic",
            memory=memory,
        )
    if needed < current:
        low_since = memory.low_since or now
        waited = (now - low_since).total_seconds()
        if waited >= settings.scale_in_cooldown:
            return ScaleDecision(
                instances=current - 1,
                reason=f"{shown} for {waited:.0f}s: in to {current - 1}",
                memory=AutoscaleMemory(),
            )
        return ScaleDecision(
            instances=current,
            reason=f"{shown}: low for {waited:.0f}s of {settings.scale_in_cooldown:g}s cool-down",
            memory=AutoscaleMemory(low_since=low_since),
        )
    return ScaleDecision(instances=current, reason=f"{shown}: steady", memory=AutoscaleMemory())


# Azure Monitor keeps one value a minute and settles it minutes later: asking it more often
# learns nothing, so a CPU rule looks once a minute at the last five (as Azure's own autoscale).
CPU_CHECK_SECONDS = 60.0
CPU_WINDOW_SECONDS = 300.0


def check_interval_seconds(settings: AutoscaleSettings) -> float:
    """Seconds between two autoscale checks."""
    if settings.cpu_source is not None:
        return max(settings.polling_interval, CPU_CHECK_SECONDS)
    return max(settings.polling_interval, 1.0)


def cpu_utilisation(percent: float | None) -> float | None:
    """A Percentage CPU reading as the utilisation `desired_instances` takes (None: no data)."""
    return None if percent is None else max(percent, 0.0) / 100.0


def mean_waiting(stats: WindowStats) -> float:
    """Little's law over the window: requests per second × mean queue wait = how many
    requests were waiting on average."""
    mean_ms = stats.queue_wait_ms.mean
    if not mean_ms or stats.window_seconds <= 0:
        return 0.0
    return stats.requests / stats.window_seconds * mean_ms / 1000.0


def replacement_delay(restarts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Crash-loop back-off: the first replacement at once, then 1 s, 2 s, 4 s … up to `cap`."""
    if restarts <= 0:
        return 0.0
    return float(min(cap, base * 2.0 ** (restarts - 1)))
