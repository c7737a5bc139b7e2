"""Compute activities: instances of a deployment, whatever runs them."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from activities.messages import DeleteInstancesInput, EnsureInstancesInput, EnsureInstancesResult


class ComputeProvider(Protocol):
    async def ensure_instances(self, request: EnsureInstancesInput) -> EnsureInstancesResult: ...

    async def delete_instances(self, request: DeleteInstancesInput) -> None: ...


class ComputeActivities:
    def __init__(self, provider: ComputeProvider) -> None:
        self._provider = provider

    @activity.defn(name="ensure_instances")
    async def ensure_instances(self, request: EnsureInstancesInput) -> EnsureInstancesResult:
        return await self._provider.ensure_instances(request)

    @activity.defn(name="delete_instances")
    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        await self._provider.delete_instances(request)
