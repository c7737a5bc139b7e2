"""The host's record on disk: desired deployments and the processes it started.

Written atomically on every change so a host killed at any moment restarts from a
consistent file: it adopts the processes still alive and starts the rest again.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from pydantic import BaseModel, Field, ValidationError

from config.files import write_atomically
from config.host_api import DeploymentRuntime, InstancePhase

log = structlog.get_logger("host.state")

STATE_VERSION = 1


class InstanceRecord(BaseModel):
    id: str
    port: int
    spec_hash: str
    pid: int | None = None
    create_time: int | None = Field(
        default=None, description="process start time from /proc/<pid>/stat, guards pid reuse"
    )
    state: InstancePhase = "starting"
    exit_code: int | None = None
    error: str | None = None
    env_key: str | None = Field(
        default=None, description="virtualenv it runs in; None in records older than runtime patches"
    )
    restarts: int = 0
    replaces: str | None = None
    drain_until: float | None = Field(
        default=None, description="wall-clock time (epoch seconds) a draining instance is stopped at"
    )


class DeploymentRecord(BaseModel):
    runtime: DeploymentRuntime
    instance_count: int
    max_surge: int = 0
    drain_seconds: float = 2.0
    version: int = 0
    instances: list[InstanceRecord] = Field(default_factory=list)


class ProcessRecord(BaseModel):
    """A process told to stop whose exit the host had not yet seen."""

    pid: int
    create_time: int


class HostState(BaseModel):
    version: int = STATE_VERSION
    sequence: int = Field(
        default=0,
        description="last deployment version handed out; versions come from this one counter, so "
        "they only grow, across restarts and a deployment deleted and made again",
    )
    deployments: list[DeploymentRecord] = Field(default_factory=list)
    stopping: list[ProcessRecord] = Field(default_factory=list)


def load_state(path: Path) -> HostState:
    """Read the state file; a missing file is an empty host, an unreadable one is set aside."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return HostState()
    try:
        return HostState.model_validate_json(text)
    except ValidationError as exc:
        aside = path.with_name(f"{path.name}.unreadable")
        os.replace(path, aside)
        log.error("state.unreadable", path=str(path), moved_to=str(aside), error=str(exc))
        return HostState()


def save_state(path: Path, state: HostState) -> None:
    write_atomically(path, state.model_dump_json(indent=2).encode())
