"""Activities replaced by recorders registered under the real names."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from config.contract.activities import (
    ApplyRouteInput,
    DeleteInstancesInput,
    DeleteKeysInput,
    EnsureKeysInput,
    EnsureKeysResult,
    GetInstancesInput,
    PushRouteResult,
    QueryWindowInput,
    RemoveRouteInput,
    RequestInstancesInput,
    WatchInstancesInput,
)
from config.contract.names import Activity
from config.host_api import DeploymentInstances, InstanceStatus
from config.routes import EndpointRoute
from config.stats import LatencySummary, WindowStats


def scripted_window(request: QueryWindowInput, error_rate: float, utilisation: float = 0.0) -> WindowStats:
    """What a gateway would report for 200 requests at `error_rate`, each instance as busy as
    `utilisation`."""
    errors = int(200 * error_rate)
    return WindowStats(
        endpoint=request.endpoint,
        deployment=request.deployment,
        window_seconds=request.window_seconds,
        requests=200,
        status={"2xx": 200 - errors, "5xx": errors},
        latency_ms=LatencySummary(p50=5, p90=8, p99=12),
        utilisation={f"{request.deployment}-0": utilisation},
    )


@dataclass
class Recorder:
    """Records every call; `fail_provision` makes ensure_instances fail like a broken init()."""

    fail_provision: str | None = None
    fail_new_instances: str | None = None  # instances beyond the ones already there fail
    fail_spec: tuple[str, str] | None = None  # (spec hash, error): that spec's instances fail
    calls: list[str] = field(default_factory=list)
    routes: list[EndpointRoute] = field(default_factory=list)
    ensured: list[RequestInstancesInput] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    hosts: dict[str, DeploymentInstances] = field(default_factory=dict)
    refuse_routes: bool = False  # apply_route fails as Azure refuses a public IP over quota

    def activities(self) -> list:
        @activity.defn(name=Activity.APPLY_ROUTE)
        async def apply_route(request: ApplyRouteInput) -> PushRouteResult:
            self.calls.append("apply_route")
            if self.refuse_routes:
                raise ApplicationError(
                    "QuotaExceeded: public IP addresses", type="QuotaExceeded", non_retryable=True
                )
            self.routes.append(request.route)
            return PushRouteResult(gateways=1)

        @activity.defn(name=Activity.REMOVE_ROUTE)
        async def remove_route(request: RemoveRouteInput) -> PushRouteResult:
            self.calls.append("remove_route")
            return PushRouteResult(gateways=1)

        @activity.defn(name=Activity.ENSURE_KEYS)
        async def ensure_keys(request: EnsureKeysInput) -> EnsureKeysResult:
            self.calls.append("ensure_keys")
            versions = dict(request.versions)
            hashes = [f"{k}-v{v}" for k, v in sorted(versions.items())]
            return EnsureKeysResult(key_sha256=hashes, versions=versions)  # type: ignore[arg-type]

        @activity.defn(name=Activity.DELETE_KEYS)
        async def delete_keys(request: DeleteKeysInput) -> None:
            self.calls.append("delete_keys")

        @activity.defn(name=Activity.REQUEST_INSTANCES)
        async def request_instances(request: RequestInstancesInput) -> DeploymentInstances:
            """A host in memory: instances are ready at once, or failed like a broken init()."""
            self.calls.append("request_instances")
            self.ensured.append(request)
            runtime = request.runtime
            previous = self.hosts.get(runtime.deployment)
            kept = len(previous.instances) if previous else 0

            def outcome(i: int) -> tuple[str, str | None]:
                if self.fail_spec and self.fail_spec[0] == runtime.spec_hash:
                    return "failed", self.fail_spec[1]
                if self.fail_new_instances and i >= kept:
                    return "failed", self.fail_new_instances
                return ("failed", self.fail_provision) if self.fail_provision else ("ready", None)

            status = DeploymentInstances(
                endpoint=runtime.endpoint,
                deployment=runtime.deployment,
                environment_state="ready",
                version=(previous.version if previous else 0) + 1,
                instances=[
                    InstanceStatus(
                        id=f"{runtime.deployment}-{i}",
                        port=40000 + i,
                        url=f"http://127.0.0.1:{40000 + i}",
                        state=outcome(i)[0],  # type: ignore[arg-type]
                        spec_hash=runtime.spec_hash,
                        error=outcome(i)[1],
                    )
                    for i in range(request.instance_count)
                ],
            )
            self.hosts[runtime.deployment] = status
            return status

        @activity.defn(name=Activity.WATCH_INSTANCES)
        async def watch_instances(request: WatchInstancesInput) -> DeploymentInstances:
            status = self.hosts[request.deployment]
            if status.version <= request.since_version:
                await asyncio.sleep(min(request.timeout_seconds, 0.2))
            return status

        @activity.defn(name=Activity.GET_INSTANCES)
        async def get_instances(request: GetInstancesInput) -> DeploymentInstances:
            self.calls.append("get_instances")
            return self.hosts[request.deployment]

        @activity.defn(name=Activity.DELETE_INSTANCES)
        async def delete_instances(request: DeleteInstancesInput) -> None:
            self.calls.append("delete_instances")
            self.deleted.append(request.deployment)

        return [
            apply_route,
            remove_route,
            ensure_keys,
            delete_keys,
            request_instances,
            watch_instances,
            get_instances,
            delete_instances,
        ]
