"""What a deployment's instances amount to: who may serve, is it converged, what failed. Pure."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from config.contract.state import Health, InstanceDetail
from config.host_api import DeploymentInstances, DeploymentRuntime, InstanceStatus
from config.routes import InstanceRoute
from decisions.autoscale import replacement_delay


class Assessment(BaseModel):
    serving: list[InstanceRoute] = Field(description="ready instances: the route table's")
    converged: bool = Field(description="exactly `count` ready instances of the spec, nothing else")
    failed: list[InstanceStatus] = Field(default_factory=list)
    environment_error: str | None = None
    restarts: int = 0
    details: list[InstanceDetail] = Field(default_factory=list)


def assess(status: DeploymentInstances, spec_hash: str, count: int) -> Assessment:
    ready = [i for i in status.instances if i.state == "ready"]
    current_ready = [i for i in ready if i.spec_hash == spec_hash]
    failed = [i for i in status.instances if i.state == "failed"]
    converged = (
        status.environment_state == "ready" and len(current_ready) == count and len(status.instances) == count
    )
    return Assessment(
        serving=[InstanceRoute(id=i.id, url=i.url) for i in sorted(ready, key=lambda i: i.id)],
        converged=converged,
        failed=failed,
        environment_error=status.environment_error if status.environment_state == "failed" else None,
        restarts=max((i.restarts for i in status.instances), default=0),
        details=[
            InstanceDetail(id=i.id, state=i.state, restarts=i.restarts, url=i.url)
            for i in sorted(status.instances, key=lambda i: i.id)
        ],
    )


def failure_text(instance: InstanceStatus) -> str:
    """The reason a user reads: which instance, how it ended, the tail of its log."""
    how = f"exited with code {instance.exit_code}" if instance.exit_code is not None else "failed"
    return f"instance {instance.id} {how}:\n{instance.error or '(no log)'}".rstrip()


def bump_patch_level(runtime: DeploymentRuntime) -> DeploymentRuntime:
    """The same deployment on a refreshed environment: next patch level, a new spec hash."""
    level = runtime.environment.patch + 1
    environment = runtime.environment.model_copy(update={"patch": level})
    digest = hashlib.sha256(f"{runtime.spec_hash}/patch-{level}".encode()).hexdigest()[:16]
    return runtime.model_copy(update={"environment": environment, "spec_hash": digest})


def missing_instances(status: DeploymentInstances, count: int) -> int:
    """How many of `count` places no instance holds (a failed one holds none)."""
    return count - len([i for i in status.instances if i.state != "failed"])


def needs_repair(status: DeploymentInstances, count: int) -> bool:
    """Something to replace: an instance failed, or places are empty."""
    return any(i.state == "failed" for i in status.instances) or missing_instances(status, count) > 0


CRASH_LOOP_RESTARTS = 2  # replacements of one place before the deployment says Degraded


class RecoveryPlan(BaseModel):
    """What the control loop does with the instances it sees: the health it reports, and
    whether it asks for replacements now (then not again before ``next_replacement``)."""

    health: Health
    reason: str | None = None
    replace: bool = False
    next_replacement: datetime


def plan_recovery(
    status: DeploymentInstances, seen: Assessment, count: int, *, now: datetime, next_replacement: datetime
) -> RecoveryPlan:
    """Node recovery with crash-loop back-off: a failed or missing instance is replaced at
    once, then after 1 s, 2 s, 4 s … (`replacement_delay`); from the second replacement of a
    place on, the deployment is Degraded with the last failure's text."""
    if not seen.failed and missing_instances(status, count) <= 0:
        return RecoveryPlan(health="Healthy", next_replacement=next_replacement)
    restarts = max([i.restarts for i in seen.failed] + [seen.restarts])
    health: Health = "Healthy"
    reason = None
    if restarts >= CRASH_LOOP_RESTARTS:
        cause = failure_text(seen.failed[0]) if seen.failed else "instances missing"
        health, reason = "Degraded", f"crash loop ({restarts} replacements): {cause}"
    if now < next_replacement:
        return RecoveryPlan(health=health, reason=reason, next_replacement=next_replacement)
    delay = timedelta(seconds=replacement_delay(restarts + 1))
    return RecoveryPlan(health=health, reason=reason, replace=True, next_replacement=now + delay)
