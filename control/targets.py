"""From a validated Azure deployment spec to what the workflows carry out (with snapshots)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from activities.artifacts import ArtifactStore
from activities.local.artifacts import resolve_reference
from config.azure_metrics import AzureMonitorSource
from config.contract.errors import BadRequest
from config.contract.state import AutoscaleSettings, DeploymentTarget, RequestLimits
from config.host_api import DeploymentRuntime, ProbeSpec, RuntimeEnvironment
from config.requirements import conda_pip_problems
from config.settings import Settings
from config.specs import DeploymentSpec, TargetUtilizationScaleSettings, is_asset_ref
from control.platform_metrics import scale_set_resource_id


def build_target(spec: DeploymentSpec, settings: Settings, artifacts: ArtifactStore) -> DeploymentTarget:
    """Snapshot code and model into the artifact store and hash everything an instance depends on."""
    if spec.code_configuration is None:
        raise BadRequest("code_configuration: required (Tidegate runs a scoring script)")
    code_source = spec.code_configuration.code
    if is_asset_ref(code_source):
        code_source = str(resolve_reference(artifacts, code_source, "codes").path)
    code = artifacts.snapshot(Path(code_source), "code")

    model_dir: str | None = None
    model_hash = ""
    if spec.model is not None:
        if isinstance(spec.model, str):
            model_path = artifacts.resolve_model(spec.model)
        elif spec.model.path is not None:
            model_path = Path(spec.model.path)
        else:
            raise BadRequest("model.path: required for an inline model")
        model = artifacts.snapshot(model_path, "models")
        model_hash, model_dir = model.content_hash, str(model.path.parent)

    environment = RuntimeEnvironment()
    text: str | None = None
    if isinstance(spec.environment, str):
        registered = resolve_reference(artifacts, spec.environment, "environments")
        text, source = registered.conda_file, f"{spec.environment} condaFile"
    elif spec.environment is not None and spec.environment.conda_file is not None:
        conda = spec.environment.conda_file
        text = yaml.safe_dump(conda) if isinstance(conda, dict) else Path(conda).read_text()
        source = "environment.conda_file" if isinstance(conda, dict) else Path(conda).name
    if text is not None:
        problems = [] if settings.allow_pip_options else conda_pip_problems(text, source=source)
        if problems:
            raise BadRequest("; ".join(problems))
        environment = RuntimeEnvironment(conda_file=text)

    readiness = ProbeSpec(**spec.readiness_probe.model_dump())
    liveness = ProbeSpec(**spec.liveness_probe.model_dump())
    scoring_script = spec.code_configuration.scoring_script
    env_vars = dict(spec.environment_variables or {})
    fingerprint = json.dumps(
        {
            "code": code.content_hash,
            "model": model_hash,
            "environment": environment.model_dump(),
            "scoring_script": scoring_script,
            "environment_variables": env_vars,
            "probes": [readiness.model_dump(), liveness.model_dump()],
            # Only when on: the hashes of deployments without it stay what they were.
            **({"app_insights": True} if spec.app_insights_enabled else {}),
        },
        sort_keys=True,
    )
    runtime = DeploymentRuntime(
        endpoint=spec.endpoint_name,
        deployment=spec.name,
        code_dir=str(code.path),
        scoring_script=scoring_script,
        model_dir=model_dir,
        environment=environment,
        environment_variables=env_vars,
        readiness_probe=readiness,
        liveness_probe=liveness,
        spec_hash=hashlib.sha256(fingerprint.encode()).hexdigest()[:16],
        app_insights_enabled=spec.app_insights_enabled,
    )
    request = spec.request_settings
    scale = spec.scale_settings
    autoscale = None
    if isinstance(scale, TargetUtilizationScaleSettings):
        autoscale = AutoscaleSettings(
            min_instances=scale.min_instances,
            max_instances=scale.max_instances,
            target_utilization_percentage=scale.target_utilization_percentage,
            polling_interval=scale.polling_interval,
            scale_in_cooldown=settings.scale_in_cooldown_seconds,
            cpu_source=cpu_source(spec, settings) if scale.metric == "cpu" else None,
        )
    return DeploymentTarget(
        name=spec.name,
        endpoint=spec.endpoint_name,
        runtime=runtime,
        instance_count=spec.instance_count,
        instance_type=spec.instance_type,
        autoscale=autoscale,
        request_settings=RequestLimits(
            request_timeout_ms=request.request_timeout_ms,
            max_concurrent_requests_per_instance=request.max_concurrent_requests_per_instance,
            max_queue_wait_ms=request.max_queue_wait_ms,
        ),
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def cpu_source(spec: DeploymentSpec, settings: Settings) -> AzureMonitorSource:
    """`scale_settings.metric: cpu`: the deployment's scale set's Percentage CPU in Azure Monitor,
    which only the azure compute provider has."""
    if settings.provider_name("compute") != "azure":
        raise BadRequest(
            "scale_settings.metric: cpu is the scale set's Percentage CPU from Azure Monitor and needs "
            "TIDEGATE_COMPUTE_PROVIDER=azure; on this compute provider use metric: busy"
        )
    resource_id = scale_set_resource_id(settings, spec.endpoint_name, spec.name)
    if resource_id is None:
        raise BadRequest(
            "scale_settings.metric: cpu needs TIDEGATE_AZURE_SUBSCRIPTION_ID and "
            "TIDEGATE_AZURE_RESOURCE_GROUP"
        )
    return AzureMonitorSource(resource_id=resource_id, metric="Percentage CPU", aggregation="Average")
