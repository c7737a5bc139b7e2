"""Network activities: route table pushes to every gateway (or whatever routes traffic)."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from config.contract.activities import (
    ApplyRouteInput,
    PatchGatewaysInput,
    PatchGatewaysResult,
    PushRouteResult,
    RemoveRouteInput,
)
from config.contract.names import Activity


class NetworkProvider(Protocol):
    """Routes an endpoint's traffic: `local` pushes the route table to every gateway."""

    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult: ...

    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult: ...

    async def patch_gateways(self, request: PatchGatewaysInput) -> PatchGatewaysResult:
        """The gateways onto the newest image where they are VMs of their own; else Skipped."""
        ...


class NetworkActivities:
    def __init__(self, provider: NetworkProvider) -> None:
        self._provider = provider

    @activity.defn(name=Activity.APPLY_ROUTE)
    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult:
        return await self._provider.apply_route(request)

    @activity.defn(name=Activity.REMOVE_ROUTE)
    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult:
        return await self._provider.remove_route(request)

    @activity.defn(name=Activity.PATCH_GATEWAYS)
    async def patch_gateways(self, request: PatchGatewaysInput) -> PatchGatewaysResult:
        return await self._provider.patch_gateways(request)
