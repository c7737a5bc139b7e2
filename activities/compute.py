"""Compute activities: instances of a deployment, whatever runs them."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from config.contract.activities import DeleteInstancesInput, RequestInstancesInput, WatchInstancesInput
from config.contract.names import Activity
from config.host_api import DeploymentInstances


class ComputeProvider(Protocol):
    """Runs a deployment's instances: `local` (the Tidegate host), later Azure VM scale sets."""

    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances: ...

    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances: ...

    async def delete_instances(self, request: DeleteInstancesInput) -> None: ...


class ComputeActivities:
    def __init__(self, provider: ComputeProvider) -> None:
        self._provider = provider

    @activity.defn(name=Activity.REQUEST_INSTANCES)
    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances:
        """Desired state in, at once: repeating it changes nothing."""
        return await self._provider.request_instances(request)

    @activity.defn(name=Activity.WATCH_INSTANCES)
    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances:
        """Long poll: returns when anything about the instances changed, or at the timeout."""
        return await self._provider.watch_instances(request)

    @activity.defn(name=Activity.DELETE_INSTANCES)
    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        await self._provider.delete_instances(request)
