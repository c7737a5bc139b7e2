"""Monitor activities: a deployment's windowed statistics, whatever measures them."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from config.contract.activities import QueryWindowInput
from config.contract.names import Activity
from config.stats import WindowStats


class MonitorProvider(Protocol):
    """Measures a deployment: `local` sums the gateways' `/stats`, `prometheus` asks PromQL."""

    async def query_window(self, request: QueryWindowInput) -> WindowStats: ...


class MonitorActivities:
    def __init__(self, provider: MonitorProvider) -> None:
        self._provider = provider

    @activity.defn(name=Activity.QUERY_WINDOW)
    async def query_window(self, request: QueryWindowInput) -> WindowStats:
        return await self._provider.query_window(request)
