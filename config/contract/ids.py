"""Workflow ids: one function each, so no id is spelled twice. They tell the Temporal UI which
endpoint and deployment a workflow is for. Nothing parses one back, except `endpoint_of` for
listing endpoints (a list of workflows gives only their ids); a payload names what it is for."""

from __future__ import annotations

from datetime import datetime

_ENDPOINT = "endpoint/"


def endpoint_id(endpoint: str) -> str:
    return f"{_ENDPOINT}{endpoint}"


def endpoint_of(workflow_id: str) -> str:
    """The endpoint an `endpoint_id` names: listing endpoints finds only their workflows' ids."""
    return workflow_id.removeprefix(_ENDPOINT)


def deployment_id(endpoint: str, deployment: str) -> str:
    return f"deployment/{endpoint}/{deployment}"


def rollout_id(endpoint: str, n: int) -> str:
    return f"rollout/{endpoint}/{n}"


def host_patch_id(started: datetime) -> str:
    return f"host-patch/{started:%Y%m%dT%H%M%S}"
