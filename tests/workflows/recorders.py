"""Activities replaced by recorders registered under the real names."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.messages import (
    ApplyRouteInput,
    DeleteInstancesInput,
    DeleteKeysInput,
    EnsureInstancesInput,
    EnsureInstancesResult,
    EnsureKeysInput,
    EnsureKeysResult,
    RemoveRouteInput,
)
from config.routes import EndpointRoute, InstanceRoute


@dataclass
class Recorder:
    """Records every call; `fail_provision` makes ensure_instances fail like a broken init()."""

    fail_provision: str | None = None
    calls: list[str] = field(default_factory=list)
    routes: list[EndpointRoute] = field(default_factory=list)
    ensured: list[EnsureInstancesInput] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def activities(self) -> list:
        @activity.defn(name="apply_route")
        async def apply_route(request: ApplyRouteInput) -> None:
            self.calls.append("apply_route")
            self.routes.append(request.route)

        @activity.defn(name="remove_route")
        async def remove_route(request: RemoveRouteInput) -> None:
            self.calls.append("remove_route")

        @activity.defn(name="ensure_keys")
        async def ensure_keys(request: EnsureKeysInput) -> EnsureKeysResult:
            self.calls.append("ensure_keys")
            versions = dict(request.versions)
            hashes = [f"{k}-v{v}" for k, v in sorted(versions.items())]
            return EnsureKeysResult(key_sha256=hashes, versions=versions)  # type: ignore[arg-type]

        @activity.defn(name="delete_keys")
        async def delete_keys(request: DeleteKeysInput) -> None:
            self.calls.append("delete_keys")

        @activity.defn(name="ensure_instances")
        async def ensure_instances(request: EnsureInstancesInput) -> EnsureInstancesResult:
            self.calls.append("ensure_instances")
            self.ensured.append(request)
            if self.fail_provision:
                raise ApplicationError(self.fail_provision, type="InstanceFailed", non_retryable=True)
            runtime = request.runtime
            return EnsureInstancesResult(
                instances=[
                    InstanceRoute(id=f"{runtime.deployment}-{i}", url=f"http://127.0.0.1:{40000 + i}")
                    for i in range(request.instance_count)
                ]
            )

        @activity.defn(name="delete_instances")
        async def delete_instances(request: DeleteInstancesInput) -> None:
            self.calls.append("delete_instances")
            self.deleted.append(request.deployment)

        return [
            apply_route,
            remove_route,
            ensure_keys,
            delete_keys,
            ensure_instances,
            delete_instances,
        ]
