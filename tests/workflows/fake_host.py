"""A compute host in memory that long-polls as the real one does, with every activity the
endpoint and deployment workflows call registered under its real name.

`watch_instances` holds its activity slot until the deployment changes or its timeout (as the
host's `GET /deployments/E/D?wait_version=N` does), and `changes` (what the instance watcher
calls, worker/watcher.py) waits for any deployment to change (`GET /changes?since=S`). Versions
come from one host-wide sequence, as on the host. Every activity is counted while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from temporalio import activity

from config.contract.activities import (
    ApplyRouteInput,
    DeleteInstancesInput,
    DeleteKeysInput,
    EnsureKeysInput,
    EnsureKeysResult,
    GetInstancesInput,
    PushRouteResult,
    RemoveRouteInput,
    RequestInstancesInput,
    WatchInstancesInput,
)
from config.contract.names import Activity
from config.host_api import DeploymentInstances, InstanceChanges, InstanceStatus
from config.routes import EndpointRoute

# How often a held long poll heartbeats, so a cancel (the old workflow's, on a signal) lands.
HEARTBEAT_SECONDS = 0.2


@dataclass
class Call:
    activity: str
    deployment: str | None = None


@dataclass
class FakeHost:
    deployments: dict[tuple[str, str], DeploymentInstances] = field(default_factory=dict)
    sequence: int = 0
    routes: list[EndpointRoute] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # ---- what the tests do to it -------------------------------------------------------------
    def status(self, endpoint: str, deployment: str) -> DeploymentInstances:
        return self.deployments[(endpoint, deployment)]

    def fail(self, endpoint: str, deployment: str, instance_id: str) -> None:
        """The instance's process died (the host saw it exit)."""
        status = self.status(endpoint, deployment)
        instances = [
            i.model_copy(update={"state": "failed", "exit_code": -9, "error": "killed"})
            if i.id == instance_id
            else i
            for i in status.instances
        ]
        self._store(status.model_copy(update={"instances": instances}))

    def count_afresh(self) -> None:
        """Forget the calls and the peak of activities in flight so far."""
        self.calls.clear()
        self.most_in_flight = self.in_flight

    def called(self, name: str, deployment: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.activity == name and deployment in (None, c.deployment)]

    # ---- the host's side -----------------------------------------------------------------------
    def _store(self, status: DeploymentInstances) -> DeploymentInstances:
        self.sequence += 1
        stored = status.model_copy(update={"version": self.sequence})
        self.deployments[(status.endpoint, status.deployment)] = stored
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        return stored

    def _ensure(self, request: RequestInstancesInput) -> DeploymentInstances:
        """Instances ready at once; a failed one is replaced (restarts + 1) on the next request."""
        runtime = request.runtime
        key = (runtime.endpoint, runtime.deployment)
        previous = self.deployments[key].instances if key in self.deployments else []
        instances = []
        for n in range(request.instance_count):
            old = previous[n] if n < len(previous) else None
            if old is not None and old.state == "ready" and old.spec_hash == runtime.spec_hash:
                instances.append(old)
                continue
            restarts = old.restarts + 1 if old is not None and old.state == "failed" else 0
            port = 40000 + 10 * n + restarts
            instances.append(
                InstanceStatus(
                    id=f"{runtime.deployment}-{n}-r{restarts}",
                    port=port,
                    url=f"http://127.0.0.1:{port}",
                    state="ready",
                    spec_hash=runtime.spec_hash,
                    restarts=restarts,
                    replaces=old.id if old is not None and restarts else None,
                )
            )
        current = self.deployments.get(key)
        if current is not None and current.instances == instances:
            return current
        return self._store(
            DeploymentInstances(
                endpoint=runtime.endpoint,
                deployment=runtime.deployment,
                environment_state="ready",
                instances=instances,
            )
        )

    async def changes(self, since: int, timeout_seconds: float) -> InstanceChanges:
        """The provider's host-wide long poll (ComputeProvider.changes), for the real watcher."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                while not any(d.version > since for d in self.deployments.values()):
                    await self._changed.wait()
        changed = [d for d in self.deployments.values() if d.version > since or since > self.sequence]
        return InstanceChanges(sequence=self.sequence, deployments=changed)

    @contextlib.contextmanager
    def _running(self, name: str, deployment: str | None = None) -> Iterator[None]:
        self.calls.append(Call(name, deployment))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    # ---- the activities ------------------------------------------------------------------------
    def activities(self) -> list:
        @activity.defn(name=Activity.REQUEST_INSTANCES)
        async def request_instances(request: RequestInstancesInput) -> DeploymentInstances:
            with self._running(Activity.REQUEST_INSTANCES, request.runtime.deployment):
                return self._ensure(request)

        @activity.defn(name=Activity.WATCH_INSTANCES)
        async def watch_instances(request: WatchInstancesInput) -> DeploymentInstances:
            with self._running(Activity.WATCH_INSTANCES, request.deployment):
                key = (request.endpoint, request.deployment)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + request.timeout_seconds
                while self.deployments[key].version <= request.since_version:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), min(remaining, HEARTBEAT_SECONDS))
                    activity.heartbeat()
                return self.deployments[key]

        @activity.defn(name=Activity.GET_INSTANCES)
        async def get_instances(request: GetInstancesInput) -> DeploymentInstances:
            with self._running(Activity.GET_INSTANCES, request.deployment):
                return self.deployments[(request.endpoint, request.deployment)]

        @activity.defn(name=Activity.DELETE_INSTANCES)
        async def delete_instances(request: DeleteInstancesInput) -> None:
            with self._running(Activity.DELETE_INSTANCES, request.deployment):
                self.deployments.pop((request.endpoint, request.deployment), None)

        @activity.defn(name=Activity.APPLY_ROUTE)
        async def apply_route(request: ApplyRouteInput) -> PushRouteResult:
            with self._running(Activity.APPLY_ROUTE):
                self.routes.append(request.route)
                return PushRouteResult(gateways=1)

        @activity.defn(name=Activity.REMOVE_ROUTE)
        async def remove_route(request: RemoveRouteInput) -> PushRouteResult:
            with self._running(Activity.REMOVE_ROUTE):
                return PushRouteResult(gateways=1)

        @activity.defn(name=Activity.ENSURE_KEYS)
        async def ensure_keys(request: EnsureKeysInput) -> EnsureKeysResult:
            with self._running(Activity.ENSURE_KEYS):
                versions = dict(request.versions)
                hashes = [f"{k}-v{v}" for k, v in sorted(versions.items())]
                return EnsureKeysResult(key_sha256=hashes, versions=versions)

        @activity.defn(name=Activity.DELETE_KEYS)
        async def delete_keys(request: DeleteKeysInput) -> None:
            with self._running(Activity.DELETE_KEYS):
                pass

        return [
            request_instances,
            watch_instances,
            get_instances,
            delete_instances,
            apply_route,
            remove_route,
            ensure_keys,
            delete_keys,
        ]
