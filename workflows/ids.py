"""Workflow ids: one function each, so no id is spelled twice."""

from __future__ import annotations


def endpoint_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}"


def deployment_id(endpoint: str, deployment: str) -> str:
    return f"deployment/{endpoint}/{deployment}"


def rollout_id(endpoint: str, n: int) -> str:
    return f"rollout/{endpoint}/{n}"
