"""Monitor activities: a deployment's windowed statistics, whatever measures them."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from activities.messages import QueryWindowInput
from config.stats import WindowStats


class MonitorProvider(Protocol):
    async def query_window(self, request: QueryWindowInput) -> WindowStats: ...


class MonitorActivities:
    def __init__(self, provider: MonitorProvider) -> None:
        self._provider = provider

    @activity.defn(name="query_window")
    async def query_window(self, request: QueryWindowInput) -> WindowStats:
        return await self._provider.query_window(request)
