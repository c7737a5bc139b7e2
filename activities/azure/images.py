"""Which image a host patch moves VMs onto, for every scale set that takes one (deployments'
and the gateways'): one choice, one place."""

from __future__ import annotations

from typing import Any

import structlog
from azure.mgmt.compute.aio import ComputeManagementClient
from temporalio.exceptions import ApplicationError

from activities.azure.scale_sets import gallery_image
from config.settings import Settings
from decisions.scale_set_update import GalleryVersion, newest_gallery_version

log = structlog.get_logger("activities.azure.images")


def _text(value: Any) -> str:
    """An enum member or a string as ARM's string ("Succeeded", not "…State.SUCCEEDED")."""
    return str(getattr(value, "value", value))


async def newest_image(compute: ComputeManagementClient, settings: Settings) -> str:
    """The settings' image; for a gallery image definition, its newest version (one list of
    its versions: the highest that succeeded and is not excluded from latest)."""
    image = settings.azure_image
    if not gallery_image(image):
        return image
    parts = image.strip("/").split("/")
    group, gallery, definition = parts[3], parts[7], parts[9]
    versions = [
        GalleryVersion(
            name=str(v.name),
            exclude_from_latest=bool(
                v.properties
                and v.properties.publishing_profile
                and v.properties.publishing_profile.exclude_from_latest
            ),
            provisioning_state=_text(v.properties.provisioning_state if v.properties else "Succeeded"),
        )
        async for v in compute.gallery_image_versions.list_by_gallery_image(group, gallery, definition)
    ]
    newest = newest_gallery_version(versions)
    if newest is None:
        raise ApplicationError(
            f"gallery image {image} has no version to use (none succeeded, or all are excluded from latest)",
            type="NoImageVersion",
            non_retryable=True,
        )
    log.info("azure.image.newest", image=image, version=newest, versions=len(versions))
    return f"{image}/versions/{newest}"
