"""Azure Monitor platform metrics through azure-monitor-querymetrics' `MetricsClient`: the metrics
data plane's batch API (`POST /subscriptions/<id>/metrics:getBatch`), one call for up to 50
resources of one region and namespace, outside ARM's read budget.

Gates keep reading the gateways' windows (`MonitorProvider`); this reads what only Azure knows:
a scale set's `Percentage CPU`, `Available Memory Bytes` and `VmAvailabilityMetric`, and any
metric of any resource for a gate. Which minutes count is decided by
`decisions.metric_buckets.select_buckets`: the newest minutes are never a pass.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError
from azure.monitor.querymetrics.aio import MetricsClient
from pydantic import BaseModel

from config.azure_metrics import SCALE_SET_NAMESPACE, Aggregation, MetricPoint, MetricQuery, MetricSeries
from config.contract.errors import BadRequest, NotFound, OperationFailed
from config.settings import Settings
from decisions.metric_buckets import DEFAULT_GRAIN, DEFAULT_SETTLE, BucketSelection, select_buckets

log = structlog.get_logger("activities.azure.monitor")

SCALE_SET_METRICS: dict[str, Aggregation] = {
    "Percentage CPU": "Average",
    "Available Memory Bytes": "Minimum",  # the tightest instance's headroom
    "VmAvailabilityMetric": "Average",  # the share of instances up, 0..1
}


class ReadMetricResult(BaseModel):
    query: MetricQuery
    unit: str | None = None
    series: list[MetricSeries]
    selection: BucketSelection


class ScaleSetMetrics(BaseModel):
    """A scale set's settled platform metrics over a window; `None` where there is no data."""

    resource_id: str
    cpu_percent: float | None
    available_memory_bytes: float | None
    availability: float | None
    selections: dict[str, BucketSelection]


def _query_span(window: timedelta, now: datetime) -> tuple[datetime, datetime]:
    """Ask from the window's start to `now`: the fresh minutes come back too and are shown
    (counted as ignored) rather than silently cut off."""
    start = now - window - DEFAULT_SETTLE - DEFAULT_GRAIN
    return start, now


class AzureMonitorReader:
    """Reads platform metrics with an async `MetricsClient` on the region's metrics endpoint."""

    def __init__(
        self, client: MetricsClient, *, owned_credential: AsyncTokenCredential | None = None
    ) -> None:
        self._client = client
        self._owned_credential = owned_credential  # made here, so closed here

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: AsyncTokenCredential | None = None
    ) -> AzureMonitorReader:
        """The settings' credential (activities.azure.credentials) unless one is given."""
        owned = None
        if credential is None:
            from activities.azure.credentials import azure_credential

            credential = owned = azure_credential(settings)
        extra: dict[str, Any] = {}
        if settings.azure_ca_file is not None:
            extra["connection_verify"] = str(settings.azure_ca_file)
        client = MetricsClient(settings.azure_metrics_url, credential, **extra)
        return cls(client, owned_credential=owned)

    async def close(self) -> None:
        await self._client.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def _series(
        self,
        resource_id: str,
        namespace: str,
        metrics: dict[str, Aggregation],
        *,
        window: timedelta,
        now: datetime,
        filter: str | None = None,
    ) -> dict[str, tuple[str | None, list[MetricSeries]]]:
        start, end = _query_span(window, now)
        try:
            results = await self._client.query_resources(
                resource_ids=[resource_id],
                metric_namespace=namespace,
                metric_names=list(metrics),
                timespan=(start, end),
                granularity=DEFAULT_GRAIN,
                aggregations=sorted(set(metrics.values())),
                filter=filter,
            )
        except HttpResponseError as error:
            raise _refusal(error, resource_id) from None
        asked = {name.lower(): (name, aggregation) for name, aggregation in metrics.items()}
        found: dict[str, tuple[str | None, list[MetricSeries]]] = {}
        for result in results:
            for metric in result.metrics:
                if (metric.name or "").lower() not in asked:
                    continue
                name, aggregation = asked[metric.name.lower()]
                field = aggregation.lower()
                series = [
                    MetricSeries(
                        dimensions={k: str(v) for k, v in (element.metadata_values or {}).items()},
                        points=[
                            MetricPoint(start=value.timestamp, value=getattr(value, field))
                            for value in element.data
                        ],
                    )
                    for element in metric.timeseries
                ]
                found[name] = (metric.unit, series)
        return found

    async def read_metric(self, query: MetricQuery, *, now: datetime | None = None) -> ReadMetricResult:
        """Any metric of any resource over its window, judged on settled minutes."""
        now = now or datetime.now(UTC)
        window = timedelta(seconds=query.window_seconds)
        found = await self._series(
            query.resource_id,
            query.metric_namespace,
            {query.metric: query.aggregation},
            window=window,
            now=now,
            filter=query.filter,
        )
        if query.metric not in found:
            raise NotFound(f"{query.resource_id}: Azure Monitor returned no metric '{query.metric}'")
        unit, series = found[query.metric]
        selection = select_buckets(series, aggregation=query.aggregation, window=window, now=now)
        log.info(
            "monitor.azure_metric",
            resource=query.resource_id,
            metric=query.metric,
            aggregation=query.aggregation,
            value=selection.value,
            counted=selection.counted,
            expected=selection.expected,
        )
        return ReadMetricResult(query=query, unit=unit, series=series, selection=selection)

    async def scale_set_metrics(
        self, resource_id: str, *, window_seconds: float = 300.0, now: datetime | None = None
    ) -> ScaleSetMetrics:
        """CPU, memory headroom and availability of one scale set (for `show` and autoscale), in
        one call."""
        now = now or datetime.now(UTC)
        window = timedelta(seconds=window_seconds)
        found = await self._series(
            resource_id, SCALE_SET_NAMESPACE, SCALE_SET_METRICS, window=window, now=now
        )
        selections = {
            name: select_buckets(
                found.get(name, (None, []))[1], aggregation=aggregation, window=window, now=now
            )
            for name, aggregation in SCALE_SET_METRICS.items()
        }
        metrics = ScaleSetMetrics(
            resource_id=resource_id,
            cpu_percent=selections["Percentage CPU"].value,
            available_memory_bytes=selections["Available Memory Bytes"].value,
            availability=selections["VmAvailabilityMetric"].value,
            selections=selections,
        )
        log.info(
            "monitor.scale_set_metrics",
            resource=resource_id,
            cpu_percent=metrics.cpu_percent,
            available_memory_bytes=metrics.available_memory_bytes,
            availability=metrics.availability,
        )
        return metrics


def _refusal(error: HttpResponseError, resource_id: str) -> Exception:
    """Azure's own code and message (never the request's headers): a bad query is the user's to
    fix; anything else the SDK already retried."""
    code = getattr(error.error, "code", None) or (error.response.reason if error.response else None)
    message = getattr(error.error, "message", None) or str(error.message)
    text = f"{resource_id}: Azure Monitor refused the query: {code}: {message}"
    if error.status_code in (400, 404):
        return BadRequest(text)
    return OperationFailed(f"{text} (HTTP {error.status_code})")
