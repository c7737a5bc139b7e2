"""Azure Monitor platform metrics as Tidegate reads them: the query (any metric of any resource)
and the one-minute series it returns. Shared by the reader (activities/azure/monitor.py), the
bucket rule (decisions/metric_buckets.py) and a rollout gate's `azure_monitor` source."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Aggregation = Literal["Average", "Minimum", "Maximum", "Total", "Count"]

# /subscriptions/<id>/resourceGroups/<rg>/providers/<Namespace>/<type>/<name>[/<type>/<name>]...
_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>[A-Za-z0-9.]+)"
    r"(?P<rest>(?:/[^/]+/[^/]+)+)$",
    re.IGNORECASE,
)
SCALE_SET_NAMESPACE = "Microsoft.Compute/virtualMachineScaleSets"


def metric_namespace(resource_id: str) -> str:
    """The metric namespace of a resource: its provider and resource types
    (`.../providers/Microsoft.MachineLearningServices/workspaces/w/onlineEndpoints/e` →
    `Microsoft.MachineLearningServices/workspaces/onlineEndpoints`)."""
    match = _RESOURCE_ID.match(resource_id)
    if match is None:
        raise ValueError(
            f"'{resource_id}' is not a resource id "
            "(/subscriptions/<id>/resourceGroups/<group>/providers/<Namespace>/<type>/<name>)"
        )
    parts = match["rest"].strip("/").split("/")
    return "/".join([match["ns"], *parts[0::2]])


class AzureMonitorSource(BaseModel):
    """Which metric of which resource: a rollout gate's `azure_monitor:` block, e.g. an Azure ML
    endpoint's `RequestLatency_P99` filtered to `deployment eq 'green'`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource_id: str = Field(description="the resource's full ARM id")
    metric: str = Field(min_length=1, max_length=256, description="e.g. 'Percentage CPU'")
    aggregation: Aggregation = "Average"
    filter: str | None = Field(
        default=None, max_length=2048, description="dimension filter, e.g. \"deployment eq 'green'\""
    )
    namespace: str | None = Field(default=None, description="default: the resource id's own")

    @field_validator("resource_id")
    @classmethod
    def _a_resource_id(cls, value: str) -> str:
        metric_namespace(value)
        return value

    @property
    def metric_namespace(self) -> str:
        return self.namespace or metric_namespace(self.resource_id)


class MetricQuery(AzureMonitorSource):
    """One metric of one resource over a window (at least Azure Monitor's minute)."""

    window_seconds: float = Field(default=300.0, ge=60.0, le=24 * 3600.0)


class MetricPoint(BaseModel):
    """One bucket as Azure Monitor returns it: a start time and the aggregation asked for, absent
    when the bucket holds no data (yet)."""

    start: datetime
    value: float | None = None


class MetricSeries(BaseModel):
    """One time series of a metric: its dimension values (empty when the filter splits by none)."""

    dimensions: dict[str, str] = Field(default_factory=dict)
    points: list[MetricPoint] = Field(default_factory=list)
