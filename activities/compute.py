"""Compute activities: instances of a deployment, whatever runs them.

Idle deployments hold no activity: the worker's instance watcher (worker/watcher.py) follows
`changes` for every deployment on the provider at once and signals each deployment's
workflow; the workflow reads `get_instances` only now and then, in case a signal was lost.
"""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from config.contract.activities import (
    DeleteInstancesInput,
    GetInstancesInput,
    RequestInstancesInput,
    WatchInstancesInput,
)
from config.contract.names import Activity
from config.host_api import DeploymentInstances, InstanceChanges


class ComputeProvider(Protocol):
    """Runs a deployment's instances: `local` (the Tidegate host), `azure` (VM scale sets)."""

    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances: ...

    async def get_instances(self, request: GetInstancesInput) -> DeploymentInstances:
        """At once, never waiting for a change."""
        ...

    async def changes(self, since: int, timeout_seconds: float) -> InstanceChanges:
        """One shared long poll for every deployment (the watcher's, never an activity's): the
        deployments whose instances changed since position `since` (0: every deployment) as soon
        as there is one, or none after `timeout_seconds`; with the position to pass next."""
        ...

    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances:
        """A long poll on one deployment, for workflows that started before the watcher."""
        ...

    async def delete_instances(self, request: DeleteInstancesInput) -> None: ...


class ComputeActivities:
    def __init__(self, provider: ComputeProvider) -> None:
        self._provider = provider

    @activity.defn(name=Activity.REQUEST_INSTANCES)
    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances:
        """Desired state in, at once: repeating it changes nothing."""
        return await self._provider.request_instances(request)

    @activity.defn(name=Activity.GET_INSTANCES)
    async def get_instances(self, request: GetInstancesInput) -> DeploymentInstances:
        """The instances as they are now; never blocks, so it holds a slot for a moment only."""
        return await self._provider.get_instances(request)

    @activity.defn(name=Activity.WATCH_INSTANCES)
    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances:
        """Long poll: returns when anything about the instances changed, or at the timeout.
        Only deployment workflows that started before the instance watcher still call it."""
        return await self._provider.watch_instances(request)

    @activity.defn(name=Activity.DELETE_INSTANCES)
    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        await self._provider.delete_instances(request)
