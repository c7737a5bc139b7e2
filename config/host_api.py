"""The local compute host's API models (the compute contract for the `local` provider)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RuntimeEnvironment(BaseModel):
    """What an instance's virtualenv is built from. Content, not paths, so the hash is stable."""

    conda_file: str | None = Field(default=None, description="conda YAML text")
    pip_requirements: list[str] = Field(default_factory=list)
    patch: int = Field(
        default=0,
        description="runtime patch level: a higher one builds a fresh virtualenv with every "
        "requirement upgraded to its newest allowed version (`tidegate host patch`)",
    )


class ProbeSpec(BaseModel):
    """Azure's probe settings, in seconds (see decisions/probes.py for how the host honours
    them). The spec asks for initial_delay >= 1; the host also takes 0."""

    initial_delay: int = Field(default=10, ge=0)
    period: int = Field(default=10, ge=1)
    timeout: int = Field(default=2, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=30, ge=1)


class DeploymentRuntime(BaseModel):
    """Everything the host needs to start one instance of a deployment."""

    endpoint: str
    deployment: str
    code_dir: str = Field(description="absolute path of the snapshot of the code folder")
    scoring_script: str = "score.py"
    model_dir: str | None = Field(default=None, description="absolute path used as AZUREML_MODEL_DIR")
    environment: RuntimeEnvironment = Field(default_factory=RuntimeEnvironment)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    readiness_probe: ProbeSpec = Field(default_factory=ProbeSpec)
    liveness_probe: ProbeSpec = Field(default_factory=ProbeSpec)
    spec_hash: str = Field(description="content hash of code, model, environment and settings")
    app_insights_enabled: bool = Field(
        default=False, description="azmlinfsrv exports to Application Insights (the host's key)"
    )


class EnsureInstancesRequest(BaseModel):
    runtime: DeploymentRuntime
    instance_count: int = Field(ge=0)
    max_surge: int = Field(
        default=0,
        ge=0,
        description="0: a new spec replaces every instance at once; N: rolling, at most N "
        "extra instances at a time, an old one stopped only after a new one is ready",
    )
    drain_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="how long a ready instance that is leaving (rolling update, scale-in) stays "
        "up in state 'draining' before it is stopped, so its in-flight requests finish",
    )


# unready: running, but its readiness probe failed failure_threshold times in a row (out of
# the route table until it passes success_threshold times in a row).
InstancePhase = Literal["starting", "ready", "unready", "failed", "stopped", "draining"]
EnvironmentState = Literal["building", "ready", "failed"]


class InstanceStatus(BaseModel):
    id: str
    port: int
    url: str
    pid: int | None = None
    state: InstancePhase
    spec_hash: str
    exit_code: int | None = None
    error: str | None = Field(default=None, description="tail of the instance log on failure")
    restarts: int = Field(default=0, description="replacements made for this instance's slot")
    replaces: str | None = Field(default=None, description="id of the instance this one replaced")


class DeploymentInstances(BaseModel):
    endpoint: str
    deployment: str
    environment_state: EnvironmentState
    environment_error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    instances: list[InstanceStatus] = Field(default_factory=list)
    version: int = Field(default=0, description="bumps on every change of any instance's state")


class InstanceChanges(BaseModel):
    """The host-wide long poll's answer (`GET /changes?since=S`): every deployment whose
    instances changed since sequence S, as it is now, and the sequence to ask from next.
    Versions and sequences come from one host-wide counter, so a deployment changed since S
    is one whose version passed S."""

    sequence: int = Field(description="the host's sequence now: pass it as `since` next time")
    deployments: list[DeploymentInstances] = Field(default_factory=list)
