"""Network activities: route table pushes to every gateway, and endpoint keys."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from activities.messages import (
    ApplyRouteInput,
    DeleteKeysInput,
    EnsureKeysInput,
    EnsureKeysResult,
    PushRouteResult,
    RemoveRouteInput,
)


class NetworkProvider(Protocol):
    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult: ...

    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult: ...

    async def ensure_keys(self, request: EnsureKeysInput) -> EnsureKeysResult: ...

    async def delete_keys(self, request: DeleteKeysInput) -> None: ...


class NetworkActivities:
    def __init__(self, provider: NetworkProvider) -> None:
        self._provider = provider

    @activity.defn(name="apply_route")
    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult:
        return await self._provider.apply_route(request)

    @activity.defn(name="remove_route")
    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult:
        return await self._provider.remove_route(request)

    @activity.defn(name="ensure_keys")
    async def ensure_keys(self, request: EnsureKeysInput) -> EnsureKeysResult:
        return await self._provider.ensure_keys(request)

    @activity.defn(name="delete_keys")
    async def delete_keys(self, request: DeleteKeysInput) -> None:
        await self._provider.delete_keys(request)
