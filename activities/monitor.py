"""Monitor activities: a deployment's windowed statistics, whatever measures them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from config.contract.activities import QueryWindowInput, ReadAzureMetricInput, ReadAzureMetricResult
from config.contract.errors import BadRequest, NotFound
from config.contract.names import Activity
from config.settings import Settings
from config.stats import WindowStats

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from activities.azure.monitor import AzureMonitorReader


class MonitorProvider(Protocol):
    """Measures a deployment: `local` sums the gateways' `/stats`, `prometheus` asks PromQL."""

    async def query_window(self, request: QueryWindowInput) -> WindowStats: ...


class MonitorActivities:
    def __init__(self, provider: MonitorProvider) -> None:
        self._provider = provider

    @activity.defn(name=Activity.QUERY_WINDOW)
    async def query_window(self, request: QueryWindowInput) -> WindowStats:
        return await self._provider.query_window(request)


class AzureMetricActivities:
    """Azure Monitor metrics for gates whose source is `azure_monitor`, whatever the monitor
    provider. The reader (and the Azure SDK) is loaded on first use, so a worker without Azure
    settings starts, and such a gate there gets a message saying which setting is missing."""

    def __init__(self, settings: Settings, *, credential: AsyncTokenCredential | None = None) -> None:
        self._settings = settings
        self._credential = credential  # None: the identity azure-identity finds
        self._reader: AzureMonitorReader | None = None

    def _get_reader(self) -> AzureMonitorReader:
        if self._reader is None:
            from activities.azure.monitor import AzureMonitorReader

            try:
                self._reader = AzureMonitorReader.from_settings(self._settings, credential=self._credential)
            except ValueError as error:
                raise ApplicationError(
                    str(error), type="AzureMonitorNotConfigured", non_retryable=True
                ) from None
        return self._reader

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @activity.defn(name=Activity.READ_AZURE_METRIC)
    async def read_azure_metric(self, request: ReadAzureMetricInput) -> ReadAzureMetricResult:
        reader = self._get_reader()
        try:
            read = await reader.read_metric(request.query)
        except (BadRequest, NotFound) as error:  # the gate's query is wrong: retrying cannot fix it
            raise ApplicationError(str(error), type=type(error).__name__, non_retryable=True) from None
        chosen = read.selection
        return ReadAzureMetricResult(
            value=chosen.value,
            unit=read.unit,
            counted=chosen.counted,
            expected=chosen.expected,
            reason=chosen.reason,
        )
