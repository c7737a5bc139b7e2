"""ARM's resource JSON for online endpoints and deployments, and Tidegate's specs: pure mapping
both ways, no I/O.

Shapes follow Azure's REST spec (Microsoft.MachineLearningServices, stable/2024-04-01:
OnlineEndpoint, ManagedOnlineDeployment): camelCase fields under ``properties``, durations as ISO
8601 (``PT5S``), ``sku.capacity`` for the instance count. A request is read into the ARM models
below (so a type error names the ARM field), then into Tidegate's own spec (so Azure's rules are
checked once, in config/specs.py); an error from the spec is reported at the ARM path it came
from (``properties.traffic.blue``).

A deployment references registered assets by ARM id (``.../workspaces/ws/models/m/versions/1``,
``.../codes/...``, ``.../environments/...``) or as ``azureml:name:version``; GET answers with the
ARM id. An absolute path on the API's machine (``file:///...`` or ``/...``) may stand in for an
asset: a folder of scoring code for ``codeConfiguration.codeId``, a conda YAML for
``environmentId``, a model folder for ``model``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from config.contract.state import DeploymentEntry, EndpointRecord, RequestLimits
from config.specs import UNION_TAGS, DeploymentSpec, EndpointSpec, is_asset_ref

M = TypeVar("M", bound=BaseModel)
PROVIDER = "Microsoft.MachineLearningServices"
ENDPOINT_TYPE = f"{PROVIDER}/workspaces/onlineEndpoints"
DEPLOYMENT_TYPE = f"{PROVIDER}/workspaces/onlineEndpoints/deployments"
WORKSPACE_TYPE = f"{PROVIDER}/workspaces"
LOCATION = "local"
# What an environment given as a conda file is built on (not pulled locally; Azure needs a base).
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest"


# ---- errors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldProblem:
    target: str
    message: str


class ArmValidationError(ValueError):
    """A request body that does not describe a valid resource; each problem at its ARM path."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first.target}: {first.message}{more}")


def _problems(err: ValidationError, to_target: Any) -> list[FieldProblem]:
    problems = []
    for detail in err.errors(include_url=False, include_input=False):
        message = detail["msg"].removeprefix("Value error, ")
        problems.append(FieldProblem(target=to_target(detail["loc"]), message=message))
    return problems


def _arm_target(loc: tuple[int | str, ...]) -> str:
    """A location in an ARM model's error (already camelCase) as a dotted path."""
    return ".".join(str(part) for part in loc if part not in UNION_TAGS) or "body"


# ---- ISO 8601 durations ------------------------------------------------------------------------
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_iso_duration(value: object) -> float:
    """``PT5S``, ``PT1M30S``, ``PT0.5S``, ``P1DT2H`` → seconds (no years or months: not fixed)."""
    match = _ISO.match(value) if isinstance(value, str) else None
    if match is None or value in ("P", "PT") or (isinstance(value, str) and value.endswith("T")):
        raise ValueError(f"{value!r} is not an ISO 8601 duration like PT5S or PT1M30S")
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(match[k]) * factor for k, factor in units.items() if match[k] is not None)


def iso_duration(seconds: float) -> str:
    """Seconds → the shortest ISO 8601 duration, to the millisecond (5 → ``PT5S``)."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if rest or text == "PT":
        text += f"{rest // 1000}S" if rest % 1000 == 0 else f"{rest / 1000:g}S"
    return text


IsoDuration = Annotated[float, BeforeValidator(parse_iso_duration)]


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


# ---- the ARM scope -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Workspace:
    """Subscription, resource group and workspace as the path names them (one workspace is
    served; the names are accepted and echoed in ids, as the CLI accepts -g/-w)."""

    subscription: str
    resource_group: str
    workspace: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDER}/workspaces/{self.workspace}"
        )

    def endpoint_id(self, endpoint: str) -> str:
        return f"{self.id}/onlineEndpoints/{endpoint}"

    def deployment_id(self, endpoint: str, deployment: str) -> str:
        return f"{self.endpoint_id(endpoint)}/deployments/{deployment}"


def workspace_resource(ws: Workspace, *, api_url: str) -> dict[str, Any]:
    return {
        "id": ws.id,
        "name": ws.workspace,
        "type": WORKSPACE_TYPE,
        "location": LOCATION,
        "kind": "Default",
        "tags": {},
        "identity": {"type": "None"},
        "properties": {
            "friendlyName": ws.workspace,
            "description": "Tidegate serves one workspace; any name reaches it",
            "provisioningState": "Succeeded",
            "discoveryUrl": api_url,
            "mlFlowTrackingUri": "",
            "workspaceId": ws.workspace,
            "publicNetworkAccess": "Enabled",
        },
    }


# ---- request models (camelCase, unknown fields ignored as ARM ignores read-only ones) --------
def _case_insensitive(*choices: str) -> Any:
    by_lower = {c.lower(): c for c in choices}
    return BeforeValidator(lambda v: by_lower.get(v.lower(), v) if isinstance(v, str) else v)


class _Arm(BaseModel):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


class ArmEndpointProperties(_Arm):
    description: str | None = None
    properties: dict[str, str] | None = None
    auth_mode: Annotated[
        Literal["Key", "AMLToken", "AADToken"], _case_insensitive("Key", "AMLToken", "AADToken")
    ] = "Key"
    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None
    public_network_access: (
        Annotated[Literal["Enabled", "Disabled"], _case_insensitive("Enabled", "Disabled")] | None
    ) = None
    compute: str | None = None


class ArmEndpoint(_Arm):
    location: str | None = None
    tags: dict[str, str] | None = None
    properties: ArmEndpointProperties = Field(default_factory=ArmEndpointProperties)


class ArmEndpointPatchProperties(_Arm):
    """Tidegate's PATCH also takes the split (ARM's PATCH takes tags and identity only)."""

    description: str | None = None
    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None


class ArmEndpointPatch(_Arm):
    tags: dict[str, str] | None = None
    properties: ArmEndpointPatchProperties | None = None


class ArmCodeConfiguration(_Arm):
    code_id: str | None = None
    scoring_script: str


class ArmRequestSettings(_Arm):
    request_timeout: IsoDuration | None = None
    max_concurrent_requests_per_instance: int | None = None
    max_queue_wait: IsoDuration | None = None


class ArmProbe(_Arm):
    initial_delay: IsoDuration | None = None
    period: IsoDuration | None = None
    timeout: IsoDuration | None = None
    success_threshold: int | None = None
    failure_threshold: int | None = None


class ArmScaleSettings(_Arm):
    scale_type: Annotated[
        Literal["Default", "TargetUtilization"], _case_insensitive("Default", "TargetUtilization")
    ] = "Default"
    min_instances: int | None = None
    max_instances: int | None = None
    polling_interval: IsoDuration | None = None
    target_utilization_percentage: int | None = None
    # Tidegate's: which utilisation (busy request slots, or the scale set's CPU on azure).
    metric: Literal["busy", "cpu"] | None = None


class ArmDeploymentProperties(_Arm):
    description: str | None = None
    properties: dict[str, str] | None = None
    code_configuration: ArmCodeConfiguration | None = None
    environment_id: str | None = None
    environment_variables: dict[str, str] | None = None
    scale_settings: ArmScaleSettings | None = None
    request_settings: ArmRequestSettings | None = None
    app_insights_enabled: bool | None = None
    liveness_probe: ArmProbe | None = None
    readiness_probe: ArmProbe | None = None
    instance_type: str | None = None
    model: str | None = None
    model_mount_path: str | None = None
    endpoint_compute_type: Annotated[
        Literal["Managed", "Kubernetes", "AzureMLCompute"],
        _case_insensitive("Managed", "Kubernetes", "AzureMLCompute"),
    ] = "Managed"
    egress_public_network_access: (
        Annotated[Literal["Enabled", "Disabled"], _case_insensitive("Enabled", "Disabled")] | None
    ) = None


class ArmSku(_Arm):
    name: str | None = None
    capacity: int | None = None


class ArmDeployment(_Arm):
    location: str | None = None
    tags: dict[str, str] | None = None
    sku: ArmSku | None = None
    properties: ArmDeploymentProperties


class ArmDeploymentPatch(_Arm):
    tags: dict[str, str] | None = None
    sku: ArmSku | None = None


def read_model(model: type[M], body: Any) -> M:
    """The body as an ARM model; ArmValidationError with each problem's ARM path."""
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise ArmValidationError(_problems(err, _arm_target)) from None


# ---- endpoint ----------------------------------------------------------------------------------
_AUTH_TO_SPEC = {"Key": "key", "AMLToken": "aml_token", "AADToken": "aad_token"}
AUTH_TO_ARM = {"key": "Key", "aml_token": "AMLToken"}
_ENDPOINT_TARGETS = {"tags": "tags", "name": "name"}
_KEYED = frozenset({"tags", "properties", "traffic", "mirror_traffic", "environment_variables"})


def _spec_target(loc: tuple[int | str, ...], table: dict[str, str]) -> str:
    """A location in a Tidegate spec's error as the ARM path the caller wrote."""
    parts = [p for p in loc if p not in UNION_TAGS]
    if not parts:
        return "properties"
    head = str(parts[0])
    base = table.get(head, f"properties.{to_camel(head)}")
    rest = parts[1:]
    if head in _KEYED:  # map keys (a deployment's name in traffic) are the caller's own
        tail = [str(p) for p in rest]
    elif head in ("environment", "model"):  # one ARM string stands for the whole mapping
        tail = []
    else:
        tail = [_RENAMED.get(str(p), to_camel(str(p))) for p in rest]
    return ".".join([base, *tail])


_RENAMED = {"request_timeout_ms": "requestTimeout", "max_queue_wait_ms": "maxQueueWait", "code": "codeId"}


def endpoint_spec(name: str, resource: ArmEndpoint, *, replace: bool) -> EndpointSpec:
    """The endpoint a PUT describes. With `replace`, tags and properties absent are emptied;
    the split is changed only where given (a PUT without traffic keeps it, as Azure does)."""
    props = resource.properties
    data: dict[str, Any] = {"name": name, "auth_mode": _AUTH_TO_SPEC[props.auth_mode]}
    if replace or resource.tags is not None:
        data["tags"] = dict(resource.tags or {})
    if replace or props.properties is not None:
        data["properties"] = dict(props.properties or {})
    if props.description is not None:
        data["description"] = props.description
    if props.traffic is not None:
        data["traffic"] = dict(props.traffic)
    if props.mirror_traffic is not None:
        data["mirror_traffic"] = dict(props.mirror_traffic)
    if props.public_network_access is not None:
        data["public_network_access"] = props.public_network_access.lower()
    if props.compute is not None:
        data["compute"] = props.compute
    return _validated_endpoint(data)


def endpoint_patch_spec(name: str, patch: ArmEndpointPatch) -> EndpointSpec:
    """The fields a PATCH changes, as a spec whose `model_fields_set` names only them."""
    data: dict[str, Any] = {"name": name}
    if patch.tags is not None:
        data["tags"] = dict(patch.tags)
    props = patch.properties
    if props is not None:
        if props.description is not None:
            data["description"] = props.description
        if props.traffic is not None:
            data["traffic"] = dict(props.traffic)
        if props.mirror_traffic is not None:
            data["mirror_traffic"] = dict(props.mirror_traffic)
    return _validated_endpoint(data)


def _validated_endpoint(data: dict[str, Any]) -> EndpointSpec:
    try:
        return EndpointSpec.model_validate(data)
    except ValidationError as err:
        raise ArmValidationError(_problems(err, lambda loc: _spec_target(loc, _ENDPOINT_TARGETS))) from None


_STATES = {"Deleted": "Deleting"}


def endpoint_resource(
    record: EndpointRecord,
    ws: Workspace,
    *,
    scoring_uri: str,
    swagger_uri: str,
    scoring_uri_http: str | None = None,
) -> dict[str, Any]:
    """GET's answer: ARM's OnlineEndpoint. Keys are never in it (listKeys gives them).
    ``properties.tidegate`` (read-only, ignored in a PUT) carries what Tidegate's `show` prints
    and ARM has no field for, so the CLI prints the same through the API as straight to Temporal."""
    resource: dict[str, Any] = {
        "id": ws.endpoint_id(record.name),
        "name": record.name,
        "type": ENDPOINT_TYPE,
        "location": LOCATION,
        "kind": "Managed",
        "tags": dict(record.tags),
        "identity": {"type": "None"},
        "properties": {
            "authMode": AUTH_TO_ARM.get(record.auth_mode, record.auth_mode),
            "description": record.description,
            "properties": dict(record.properties),
            "scoringUri": scoring_uri,
            "swaggerUri": swagger_uri,
            "traffic": dict(record.traffic),
            "mirrorTraffic": dict(record.mirror_traffic),
            "publicNetworkAccess": "Enabled",
            "provisioningState": _STATES.get(record.provisioning_state, record.provisioning_state),
            "tidegate": {
                "scoringUriHttp": scoring_uri_http,
                "routeGeneration": record.generation,
                "laggingGateways": dict(record.lagging_gateways),
                # Not systemData: azure-ai-ml copies an endpoint's systemData into its
                # properties.properties, which a read-modify-PUT would then send back as the user's.
                "createdAt": record.created_at,
            },
        },
    }
    return resource


def _system_data(created_at: str | None, modified_at: str | None) -> dict[str, Any]:
    """ARM's systemData for a deployment when both times are known (deployments made before they
    were kept have none; azure-ai-ml reads both when systemData is there). Who made a change is
    not recorded."""
    if not created_at or not modified_at:
        return {}
    return {"systemData": {"createdAt": created_at, "lastModifiedAt": modified_at}}


# ---- deployment --------------------------------------------------------------------------------
_DEPLOYMENT_TARGETS = {
    "instance_count": "sku.capacity",
    "tags": "tags",
    "name": "name",
    "endpoint_name": "name",
    "environment": "properties.environmentId",
    "code_configuration": "properties.codeConfiguration",
}
_ASSET_ID = re.compile(
    r"^(?:azureml:)?/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    + re.escape(PROVIDER)
    + r"/workspaces/[^/]+/(?P<kind>models|codes|environments)/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$",
    re.IGNORECASE,
)
_SHORT_REFERENCE = re.compile(r"azureml:(?P<name>[^/:@]+):(?P<version>[^/:@]+)")


def asset_reference(value: str, kind: str) -> str | None:
    """An ARM id of a `kind` version (`/subscriptions/.../codes/c/versions/1`, with or without
    `azureml:`) as `azureml:c:1`; None when `value` is not such an id."""
    match = _ASSET_ID.match(value)
    if match is None or match["kind"].lower() != kind:
        return None
    return f"azureml:{match['name']}:{match['version']}"


def asset_id(ws: Workspace, kind: str, name: str, version: str | None = None) -> str:
    base = f"{ws.id}/{kind}/{name}"
    return f"{base}/versions/{version}" if version is not None else base


def _answered_id(value: Any, kind: str, ws: Workspace) -> Any:
    """`azureml:name:version` as the ARM id Azure answers with; anything else as it is."""
    match = _SHORT_REFERENCE.fullmatch(value) if isinstance(value, str) else None
    return asset_id(ws, kind, match["name"], match["version"]) if match else value


def _local_path(value: str, target: str) -> str:
    """`file:///abs` or `/abs` → the absolute path; anything else is the caller's mistake."""
    path = unquote(urlparse(value).path) if value.startswith("file:") else value
    if not path.startswith("/"):
        raise ArmValidationError(
            [FieldProblem(target, f"{value!r}: give an asset id or an absolute path (file:///...)")]
        )
    return path


def _registered(value: str, kind: str, target: str) -> str | None:
    """A registered asset's reference (`azureml:name:version`) from its ARM id or short form."""
    reference = asset_reference(value, kind)
    if reference is not None:
        return reference
    if value.startswith("azureml:") or value.startswith("/subscriptions/"):
        if not is_asset_ref(value) or value.startswith("azureml:/"):
            raise ArmValidationError(
                [FieldProblem(target, f"{value!r}: not the id of a {kind} version in a workspace")]
            )
        return value
    return None


def _model(value: str) -> str | dict[str, Any]:
    return _registered(value, "models", "properties.model") or {
        "path": _local_path(value, "properties.model")
    }


def _environment(value: str) -> str | dict[str, Any]:
    return _registered(value, "environments", "properties.environmentId") or {
        "image": DEFAULT_IMAGE,
        "conda_file": _local_path(value, "properties.environmentId"),
    }


def _code(value: str) -> str:
    target = "properties.codeConfiguration.codeId"
    return _registered(value, "codes", target) or _local_path(value, target)


def _probe(probe: ArmProbe | None) -> dict[str, Any] | None:
    if probe is None:
        return None
    out: dict[str, Any] = {}
    for field in ("initial_delay", "period", "timeout"):
        seconds = getattr(probe, field)
        if seconds is not None:
            out[field] = _whole_seconds(seconds)
    for field in ("success_threshold", "failure_threshold"):
        if getattr(probe, field) is not None:
            out[field] = getattr(probe, field)
    return out


def deployment_spec(endpoint: str, name: str, resource: ArmDeployment) -> DeploymentSpec:
    """The deployment a PUT describes (a PUT replaces it whole: what is absent takes Azure's default)."""
    props = resource.properties
    data: dict[str, Any] = {"name": name, "endpoint_name": endpoint, "tags": dict(resource.tags or {})}
    if props.endpoint_compute_type != "Managed":
        raise ArmValidationError(
            [
                FieldProblem(
                    "properties.endpointComputeType",
                    f"{props.endpoint_compute_type} deployments are not supported by Tidegate; use Managed",
                )
            ]
        )
    if props.description is not None:
        data["description"] = props.description
    if props.properties is not None:
        data["properties"] = dict(props.properties)
    if props.model is not None:
        data["model"] = _model(props.model)
    if props.model_mount_path is not None:
        data["model_mount_path"] = props.model_mount_path
    if props.code_configuration is not None:
        code = props.code_configuration
        if code.code_id is None:
            raise ArmValidationError([FieldProblem("properties.codeConfiguration.codeId", "required")])
        data["code_configuration"] = {
            "code": _code(code.code_id),
            "scoring_script": code.scoring_script,
        }
    if props.environment_id is not None:
        data["environment"] = _environment(props.environment_id)
    if props.environment_variables is not None:
        data["environment_variables"] = dict(props.environment_variables)
    if props.instance_type is not None:
        data["instance_type"] = props.instance_type
    if resource.sku is not None and resource.sku.capacity is not None:
        data["instance_count"] = resource.sku.capacity
    if props.app_insights_enabled is not None:
        data["app_insights_enabled"] = props.app_insights_enabled
    if props.egress_public_network_access is not None:
        data["egress_public_network_access"] = props.egress_public_network_access.lower()
    request = props.request_settings
    if request is not None:
        settings: dict[str, Any] = {}
        if request.request_timeout is not None:
            settings["request_timeout_ms"] = round(request.request_timeout * 1000)
        if request.max_queue_wait is not None:
            settings["max_queue_wait_ms"] = round(request.max_queue_wait * 1000)
        if request.max_concurrent_requests_per_instance is not None:
            settings["max_concurrent_requests_per_instance"] = request.max_concurrent_requests_per_instance
        data["request_settings"] = settings
    for field, probe in (
        ("liveness_probe", props.liveness_probe),
        ("readiness_probe", props.readiness_probe),
    ):
        converted = _probe(probe)
        if converted is not None:
            data[field] = converted
    scale = props.scale_settings
    if scale is not None and scale.scale_type == "TargetUtilization":
        scale_data: dict[str, Any] = {"type": "target_utilization"}
        for field in ("min_instances", "max_instances", "target_utilization_percentage", "metric"):
            if getattr(scale, field) is not None:
                scale_data[field] = getattr(scale, field)
        if scale.polling_interval is not None:
            scale_data["polling_interval"] = _whole_seconds(scale.polling_interval)
        data["scale_settings"] = scale_data
    return validated_deployment(data)


def deployment_patch_data(current: dict[str, Any], patch: ArmDeploymentPatch) -> dict[str, Any]:
    """A deployment's spec (as recorded) with a PATCH's tags and sku.capacity over it."""
    data = {k: v for k, v in current.items() if k not in ("id", "provisioning_state")}
    if patch.tags is not None:
        data["tags"] = dict(patch.tags)
    if patch.sku is not None and patch.sku.capacity is not None:
        data["instance_count"] = patch.sku.capacity
    return data


def validated_deployment(data: dict[str, Any]) -> DeploymentSpec:
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as err:
        raise ArmValidationError(_problems(err, lambda loc: _spec_target(loc, _DEPLOYMENT_TARGETS))) from None


def _file_uri(path: str) -> str:
    return f"file://{path}"


def _arm_model(model: Any) -> str | None:
    if isinstance(model, str):
        return model
    if isinstance(model, dict) and model.get("path"):
        return _file_uri(str(model["path"]))
    return None


def _arm_code(code: str) -> str:
    return code if code.startswith("azureml:") else _file_uri(code)


def _arm_environment(environment: Any) -> str | None:
    if isinstance(environment, str):
        return environment
    if isinstance(environment, dict) and isinstance(environment.get("conda_file"), str):
        return _file_uri(environment["conda_file"])
    return None


def _arm_probe(probe: dict[str, Any]) -> dict[str, Any]:
    return {
        "initialDelay": iso_duration(probe.get("initial_delay", 10)),
        "period": iso_duration(probe.get("period", 10)),
        "timeout": iso_duration(probe.get("timeout", 2)),
        "successThreshold": probe.get("success_threshold", 1),
        "failureThreshold": probe.get("failure_threshold", 30),
    }


def deployment_properties(spec: dict[str, Any], limits: RequestLimits, instance_type: str) -> dict[str, Any]:
    """A deployment spec (as dumped by alias) as ARM's ``properties``, without provisioningState:
    what GET answers and what a client PUTs."""
    scale = spec.get("scale_settings", {"type": "default"})
    code = spec.get("code_configuration")
    properties: dict[str, Any] = {
        "endpointComputeType": "Managed",
        "description": spec.get("description"),
        "properties": spec.get("properties", {}),
        "model": _arm_model(spec.get("model")),
        "modelMountPath": spec.get("model_mount_path"),
        "codeConfiguration": (
            {"codeId": _arm_code(code["code"]), "scoringScript": code["scoring_script"]} if code else None
        ),
        "environmentId": _arm_environment(spec.get("environment")),
        "environmentVariables": spec.get("environment_variables", {}),
        "instanceType": instance_type,
        "appInsightsEnabled": spec.get("app_insights_enabled", False),
        "egressPublicNetworkAccess": "Enabled",
        "requestSettings": {
            "requestTimeout": iso_duration(limits.request_timeout_ms / 1000),
            "maxConcurrentRequestsPerInstance": limits.max_concurrent_requests_per_instance,
            "maxQueueWait": iso_duration(limits.max_queue_wait_ms / 1000),
        },
        "livenessProbe": _arm_probe(spec.get("liveness_probe", {})),
        "readinessProbe": _arm_probe(spec.get("readiness_probe", {})),
        "scaleSettings": (
            {
                "scaleType": "TargetUtilization",
                "minInstances": scale.get("min_instances", 1),
                "maxInstances": scale.get("max_instances", 1),
                "pollingInterval": iso_duration(scale.get("polling_interval", 1)),
                "targetUtilizationPercentage": scale.get("target_utilization_percentage", 70),
                **({"metric": scale["metric"]} if "metric" in scale else {}),
            }
            if scale.get("type") == "target_utilization"
            else {"scaleType": "Default"}
        ),
    }
    return properties


def deployment_status(entry: DeploymentEntry) -> dict[str, Any]:
    """What `show` prints of a deployment beyond its spec (health, instances, error, warnings);
    in ARM's resource as the read-only ``properties.tidegate``."""
    instances = [i.model_dump(mode="json") for i in entry.details] or [
        {"id": i.id, "state": "ready", "restarts": 0, "url": i.url} for i in entry.instances
    ]
    status: dict[str, Any] = {"health": entry.health, "instances": instances}
    if entry.health_reason:
        status["health_reason"] = entry.health_reason
    if entry.error:
        status["error"] = entry.error
    if entry.warnings:
        status["warnings"] = list(entry.warnings)
    return status


def deployment_resource(endpoint: str, entry: DeploymentEntry, ws: Workspace) -> dict[str, Any]:
    """GET's answer: ARM's ManagedOnlineDeployment, from the spec the endpoint recorded."""
    spec = entry.target.spec
    properties = deployment_properties(spec, entry.target.request_settings, entry.target.instance_type)
    properties["provisioningState"] = _STATES.get(entry.provisioning_state, entry.provisioning_state)
    properties["model"] = _answered_id(properties["model"], "models", ws)
    properties["environmentId"] = _answered_id(properties["environmentId"], "environments", ws)
    if properties["codeConfiguration"] is not None:
        code_id = properties["codeConfiguration"]["codeId"]
        properties["codeConfiguration"]["codeId"] = _answered_id(code_id, "codes", ws)
    properties["tidegate"] = deployment_status(entry)
    return _system_data(entry.created_at, entry.modified_at) | {
        "id": ws.deployment_id(endpoint, entry.name),
        "name": entry.name,
        "type": DEPLOYMENT_TYPE,
        "location": LOCATION,
        "kind": "Managed",
        "tags": spec.get("tags", {}),
        "sku": {
            "name": "Default",
            "tier": "Standard",
            "capacity": entry.instance_count or entry.target.instance_count,
        },
        "properties": properties,
    }


# ---- what a client sends: a spec as a request body (the mappers above, run from a spec) -------
def endpoint_request(spec: EndpointSpec) -> dict[str, Any]:
    """An endpoint spec as the body of a PUT: `endpoint_resource`'s writable fields."""
    record = EndpointRecord(
        name=spec.name,
        description=spec.description,
        tags=dict(spec.tags or {}),
        properties=dict(spec.properties),
        auth_mode=spec.auth_mode,
        traffic=dict(spec.traffic or {}),
        mirror_traffic=dict(spec.mirror_traffic or {}),
    )
    resource = endpoint_resource(record, Workspace("-", "-", "-"), scoring_uri="", swagger_uri="")
    properties = {k: resource["properties"][k] for k in _ENDPOINT_WRITABLE if k in resource["properties"]}
    if "traffic" not in spec.model_fields_set:
        properties.pop("traffic", None)  # a PUT without traffic keeps the split
    if "mirror_traffic" not in spec.model_fields_set:
        properties.pop("mirrorTraffic", None)
    return {"location": LOCATION, "tags": resource["tags"], "properties": properties}


_ENDPOINT_WRITABLE = ("authMode", "description", "properties", "traffic", "mirrorTraffic")


def deployment_request(spec: DeploymentSpec) -> dict[str, Any]:
    """A deployment spec as the body of a PUT (paths must already be absolute):
    `deployment_resource`'s fields; `deployment_spec` reads it back to the same spec."""
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    request = spec.request_settings
    limits = RequestLimits(
        request_timeout_ms=request.request_timeout_ms,
        max_concurrent_requests_per_instance=request.max_concurrent_requests_per_instance,
        max_queue_wait_ms=request.max_queue_wait_ms,
    )
    return {
        "location": LOCATION,
        "tags": dict(spec.tags or {}),
        "sku": {"name": "Default", "capacity": spec.instance_count},
        "properties": deployment_properties(dumped, limits, spec.instance_type),
    }
