"""A deployment's platform metrics for `show` on the azure compute provider: its scale set's
`Percentage CPU`, `Available Memory Bytes` and `VmAvailabilityMetric` from Azure Monitor, over
the last settled minutes (activities/azure/monitor.py). Read when asked, one batch call, outside
ARM's read budget; a failed read is shown as such and never fails `show`."""

from __future__ import annotations

from typing import Any

import structlog
from azure.core.exceptions import AzureError

from activities.azure.scale_sets import scale_set_name
from config.azure_metrics import SCALE_SET_NAMESPACE
from config.contract.errors import BadRequest, NotFound, OperationFailed
from config.settings import Settings

log = structlog.get_logger("control.platform_metrics")

WINDOW_SECONDS = 300.0


def scale_set_resource_id(settings: Settings, endpoint: str, deployment: str) -> str | None:
    """The deployment's scale set's ARM id; None without a subscription and resource group."""
    if not (settings.azure_subscription_id and settings.azure_resource_group):
        return None
    return (
        f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{settings.azure_resource_group}"
        f"/providers/{SCALE_SET_NAMESPACE}/{scale_set_name(endpoint, deployment)}"
    )


async def platform_metrics(settings: Settings, endpoint: str, deployment: str) -> dict[str, Any] | None:
    """`show`'s `platform_metrics` block; None where compute is not azure."""
    if settings.provider_name("compute") != "azure":
        return None
    resource_id = scale_set_resource_id(settings, endpoint, deployment)
    if resource_id is None:
        return {"error": "TIDEGATE_AZURE_SUBSCRIPTION_ID and TIDEGATE_AZURE_RESOURCE_GROUP are needed"}
    from activities.azure.monitor import AzureMonitorReader

    try:
        reader = AzureMonitorReader.from_settings(settings)
    except ValueError as error:  # no location or metrics endpoint
        return {"error": str(error)}
    try:
        read = await reader.scale_set_metrics(resource_id, window_seconds=WINDOW_SECONDS)
    except (BadRequest, NotFound, OperationFailed, AzureError, OSError) as error:
        log.warning("platform_metrics.unread", endpoint=endpoint, deployment=deployment, error=str(error))
        return {"error": f"Azure Monitor: {error}"}
    finally:
        await reader.close()
    return {
        "window": "PT5M",
        "cpu_percent": read.cpu_percent,
        "available_memory_bytes": read.available_memory_bytes,
        "availability": read.availability,
    }
