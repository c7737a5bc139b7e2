"""Entity tags: a short hash of what a PUT sets on a resource, so a caller can say "change it
only if it is still what I read" (HTTP If-Match). The REST API shows them and EndpointWorkflow's
update validators check them, so the check and the change are one step (two callers holding the
same tag: the first change moves the tag and the second is refused)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from config.contract.state import DeploymentEntry, EndpointRecord


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def endpoint_etag(record: EndpointRecord) -> str:
    """Changes with anything a PUT or PATCH of the endpoint sets, traffic included, and with its
    creation (a re-created endpoint never shares a tag with the one before it)."""
    return _digest(
        {
            "name": record.name,
            "created_at": record.created_at,
            "auth_mode": record.auth_mode,
            "description": record.description,
            "tags": record.tags,
            "properties": record.properties,
            "traffic": {k: v for k, v in record.traffic.items() if v > 0},
            "mirror_traffic": record.mirror_traffic,
        }
    )


def deployment_etag(entry: DeploymentEntry) -> str:
    """Changes with the deployment's spec (what a PUT or PATCH of it sets)."""
    return _digest({"name": entry.name, "spec": entry.target.spec})
