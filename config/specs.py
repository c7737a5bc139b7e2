"""Endpoint and deployment specs: the YAML that Azure ML CLI v2 reads, as pydantic models.

Field names, allowed values and defaults follow Azure's `managedOnlineEndpoint` and
`managedOnlineDeployment` schemas (azure-ai-ml's marshmallow schemas and the
"CLI (v2) online endpoint / managed online deployment YAML schema" reference), so a
file written for `az ml online-endpoint create -f` loads here unchanged. Unknown
fields are errors, as in `az ml`. Where Tidegate cannot honour a field Azure accepts
(`aad_token`, `compute`, `type: kubernetes`), the error says so rather than "unknown".

Values are plain JSON types (paths are strings) so specs travel through Temporal as is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from config.contract.defaults import (
    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE,
    DEFAULT_MAX_QUEUE_WAIT_MS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
)

__all__ = [
    "DEPLOYMENT_NAME_RULE",
    "ENDPOINT_NAME_RULE",
    "MAX_REQUESTS_PER_SECOND",
    "MAX_REQUEST_BYTES",
    "NAME_PATTERN",
    "BuildContextSpec",
    "CodeConfigurationSpec",
    "DefaultScaleSettings",
    "DeploymentSpec",
    "EndpointLimits",
    "EndpointSpec",
    "EnvironmentSpec",
    "IdentitySpec",
    "InferenceConfigSpec",
    "LivenessProbeSettings",
    "ModelSpec",
    "ProbeSettings",
    "RequestSettings",
    "RouteSpec",
    "TargetUtilizationScaleSettings",
    "UserAssignedIdentity",
    "endpoint_limits",
    "is_asset_ref",
    "property_problems",
    "validate_deployment_name",
    "validate_endpoint_name",
]

# ---------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------

# azure-ai-ml `validate_endpoint_or_deployment_name`: 3-32 characters matching this pattern.
# It allows consecutive hyphens ("a--b"); Azure's quota page only says single dashes are
# accepted, so we follow the pattern the CLI actually enforces.
NAME_PATTERN = r"^[A-Za-z]([-A-Za-z0-9]*[A-Za-z0-9])?$"
NAME_MIN_LENGTH = 3
NAME_MAX_LENGTH = 32

ENDPOINT_NAME_RULE = (
    "3-32 characters: a letter first, then letters, digits or '-', ending with a letter or digit"
)
DEPLOYMENT_NAME_RULE = ENDPOINT_NAME_RULE  # Azure applies the same rule to both

_NAME_RE = re.compile(NAME_PATTERN)
_ALLOWED_NAME_CHARS = re.compile(r"^[-A-Za-z0-9]*$")


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{kind} name must be a string")
    if _NAME_RE.fullmatch(name) and NAME_MIN_LENGTH <= len(name) <= NAME_MAX_LENGTH:
        return name
    if not NAME_MIN_LENGTH <= len(name) <= NAME_MAX_LENGTH:
        reason = f"must be {NAME_MIN_LENGTH}-{NAME_MAX_LENGTH} characters long (it has {len(name)})"
    elif not name[0].isascii() or not name[0].isalpha():
        reason = "must start with a letter"
    elif not _ALLOWED_NAME_CHARS.fullmatch(name):
        reason = "may contain only letters, digits and '-'"
    else:
        reason = "must end with a letter or digit"
    raise ValueError(f"invalid {kind} name {name!r}: {reason}")


def validate_endpoint_name(name: str) -> str:
    """Check an endpoint name against Azure's rule; also used for names typed on the CLI.
    Azure's endpoint names are case-insensitive (they become a DNS label): the name is
    lower-cased here, so `My-Ep` and `my-ep` are one endpoint everywhere."""
    return _check_name("endpoint", name).lower()


def validate_deployment_name(name: str) -> str:
    """Check a deployment name against Azure's rule; also used for names typed on the CLI."""
    return _check_name("deployment", name)


# ---------------------------------------------------------------------------------------
# Shared field types
# ---------------------------------------------------------------------------------------


def _scalars_to_str(value: Any) -> Any:
    """Tags and environment variables are strings in Azure, but YAML makes `WORKERS: 4` an
    int; accept scalars as their YAML spelling and leave anything else to fail validation."""
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, int | float):
            out[key] = str(item)
        else:
            out[key] = item
    return out


StrDict = Annotated[dict[str, str], BeforeValidator(_scalars_to_str)]
Percent = Annotated[int, Field(ge=0, le=100)]


def _number_to_str(value: Any) -> Any:
    """Asset versions are strings, but `version: 1` in YAML is an int."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Version = Annotated[str, BeforeValidator(_number_to_str)]


def _lower_snake(value: Any) -> Any:
    """Azure accepts `Default`/`TargetUtilization`/`Managed` spellings (camel_to_snake)."""
    if isinstance(value, str) and not value.isupper():
        return re.sub(r"(?<!^)(?=[A-Z])", "_", value).lower()
    return value.lower() if isinstance(value, str) else value


# Names and versions start with a letter, digit or '_': never '.' or '..', so a reference
# cannot walk out of the registry's folder.
_ASSET_REF = re.compile(r"^azureml:[A-Za-z0-9_][A-Za-z0-9_.-]*([:@][A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def is_asset_ref(value: str) -> bool:
    """True for a registered-asset reference: `azureml:name:version`, `azureml:name@label`,
    `azureml:name`, or a full ARM/registry id (`azureml:/subscriptions/...`,
    `azureml://registries/...`)."""
    return value.startswith("azureml:/") or bool(_ASSET_REF.fullmatch(value))


def _check_asset_ref(kind: str, value: str) -> str:
    if not is_asset_ref(value):
        raise ValueError(
            f"must be azureml:<name>:<version> or azureml:<name>@latest, "
            f"or an inline {kind} mapping (got {value!r})"
        )
    return value


class _Spec(BaseModel):
    # strict: YAML already gives real ints and bools; "5" for an int is a mistake to report.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, protected_namespaces=())


# ---------------------------------------------------------------------------------------
# Tidegate's endpoint limits, in Azure's free-form `properties` map
# ---------------------------------------------------------------------------------------

# Azure's `properties` is a map of strings it stores and does not read, so a file carrying
# these keys stays valid for `az ml online-endpoint create`. Keys under the prefix are
# Tidegate's; any other key is the user's own and passes untouched.
PROPERTY_PREFIX = "tidegate/"
MAX_REQUEST_BYTES = "tidegate/max_request_bytes"
MAX_REQUESTS_PER_SECOND = "tidegate/max_requests_per_second"
RETRY_DROPPED_REQUESTS = "tidegate/retry_dropped_requests"
_KNOWN_PROPERTIES = (MAX_REQUEST_BYTES, MAX_REQUESTS_PER_SECOND, RETRY_DROPPED_REQUESTS)
_BOOLEANS = {"true": True, "false": False}


class EndpointLimits(BaseModel):
    """What the gateway enforces for one endpoint, as its properties set them."""

    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, gt=0)
    max_requests_per_second: float = Field(default=0.0, ge=0, description="0: no limit")
    retry_dropped_requests: bool = Field(
        default=False,
        description="send a request an instance dropped unanswered once more, to another instance",
    )


def _positive_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _rate(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def property_problems(properties: Mapping[str, str]) -> dict[str, str]:
    """Each Tidegate property that is misspelt or holds a value it cannot use, with what is
    wrong; other keys are not looked at."""
    problems: dict[str, str] = {}
    for key, text in properties.items():
        if key == MAX_REQUEST_BYTES:
            if _positive_int(text) is None:
                problems[key] = f"must be an integer > 0, in bytes (got {text!r})"
        elif key == MAX_REQUESTS_PER_SECOND:
            if _rate(text) is None:
                problems[key] = f"must be a number ≥ 0; 0 is no limit (got {text!r})"
        elif key == RETRY_DROPPED_REQUESTS:
            if text.lower() not in _BOOLEANS:
                problems[key] = f"must be true or false (got {text!r})"
        elif key.lower().startswith(PROPERTY_PREFIX):
            problems[key] = f"unknown Tidegate property; known: {', '.join(_KNOWN_PROPERTIES)}"
    return problems


def endpoint_limits(properties: Mapping[str, str], *, default_max_request_bytes: int) -> EndpointLimits:
    """The limits `properties` set, the default where they set none; ValueError naming the
    first bad property (validated specs never have one)."""
    problems = property_problems(properties)
    if problems:
        key, message = next(iter(problems.items()))
        raise ValueError(f"properties.{key}: {message}")
    size = properties.get(MAX_REQUEST_BYTES)
    rate = properties.get(MAX_REQUESTS_PER_SECOND)
    retry = properties.get(RETRY_DROPPED_REQUESTS, "false")
    return EndpointLimits(
        max_request_bytes=default_max_request_bytes if size is None else int(size),
        max_requests_per_second=0.0 if rate is None else float(rate),
        retry_dropped_requests=_BOOLEANS[retry.lower()],
    )


def _property_errors(properties: Mapping[str, str], problems: dict[str, str]) -> ValidationError:
    """One error per bad property, located at its key (so a YAML error names its line)."""
    details: list[InitErrorDetails] = [
        {
            "type": PydanticCustomError("tidegate_property", message),
            "loc": (key,),
            "input": properties[key],
        }
        for key, message in problems.items()
    ]
    return ValidationError.from_exception_data("properties", details)


# ---------------------------------------------------------------------------------------
# Endpoint
# ---------------------------------------------------------------------------------------


def _refuse_disabled(value: str, why: str) -> str:
    if value == "disabled":
        raise ValueError(f"disabled is not supported: {why}; remove it or set enabled")
    return value


TIDEGATE_VARIABLE_PREFIX = "TIDEGATE_"


def is_tidegate_variable(name: str) -> bool:
    """One of Tidegate's own settings (``TIDEGATE_*``, any case), never a deployment's."""
    return name.upper().startswith(TIDEGATE_VARIABLE_PREFIX)


def strip_tidegate_variables(variables: Mapping[str, str]) -> dict[str, str]:
    """The variables without Tidegate's own."""
    return {k: v for k, v in variables.items() if not is_tidegate_variable(k)}


# What Tidegate sets for the inference server itself: where it listens and what it runs. A
# deployment's GUNICORN_CMD_ARGS="--bind 0.0.0.0:9000" would put /score on the network without
# the gateway's key, so a deployment may not set these (refused by the spec, dropped by the host).
SERVER_VARIABLES = frozenset(
    {
        "AML_APP_INSIGHTS_ENABLED",
        "AML_APP_INSIGHTS_KEY",
        "AML_APP_ROOT",
        "AZUREML_CONFIG_FILE",
        "AZUREML_ENTRY_SCRIPT",
        "AZUREML_MODEL_DIR",
        "GUNICORN_CMD_ARGS",
        "HEALTH_PORT",
        "PYTHONHOME",
        "SEPERATE_HEALTH_ENDPOINT",
        "SERVER_PORT",
        "VIRTUAL_ENV",
    }
)


def is_server_variable(name: str) -> bool:
    return name.upper() in SERVER_VARIABLES


class UserAssignedIdentity(_Spec):
    """One user-assigned managed identity, by ARM resource id (Azure's list-of-mappings form)."""

    resource_id: str | None = None
    client_id: str | None = None
    object_id: str | None = None
    principal_id: str | None = None


class IdentitySpec(_Spec):
    """Managed identity of the endpoint: only `type: none` is accepted until a provider uses it."""

    type: Annotated[Literal["system_assigned", "user_assigned", "none"], BeforeValidator(_lower_snake)]
    user_assigned_identities: list[UserAssignedIdentity] | None = None
    principal_id: str | None = Field(default=None, description="output only")
    tenant_id: str | None = Field(default=None, description="output only")

    @model_validator(mode="after")
    def _user_assigned_needs_ids(self) -> IdentitySpec:
        if self.type == "user_assigned" and not self.user_assigned_identities:
            raise ValueError("type user_assigned needs user_assigned_identities")
        return self


class EndpointSpec(_Spec):
    """A managed online endpoint (`az ml online-endpoint create -f endpoint.yml`)."""

    schema_: str | None = Field(default=None, alias="$schema")
    name: str
    description: str | None = None
    tags: StrDict = Field(default_factory=dict)
    properties: StrDict = Field(default_factory=dict)
    auth_mode: Literal["key", "aml_token"] = "key"
    identity: IdentitySpec | None = None
    public_network_access: Literal["enabled", "disabled"] = "enabled"
    traffic: dict[str, Percent] = Field(
        default_factory=dict, description="deployment -> percent; sums to 100, or all 0"
    )
    mirror_traffic: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(
        default_factory=dict, description="one deployment; Azure caps it at 50 percent, Tidegate at 100"
    )
    compute: str | None = Field(default=None, description="Kubernetes endpoints only in Azure; rejected here")
    # Output-only fields of `az ml online-endpoint show`; accepted (so its output can be fed
    # back with -f) and otherwise ignored, as the az ml loader does.
    id: str | None = None
    kind: str | None = None
    location: str | None = None
    provisioning_state: str | None = None
    scoring_uri: str | None = None
    openapi_uri: str | None = None

    @field_validator("name")
    @classmethod
    def _name_rule(cls, value: str) -> str:
        return validate_endpoint_name(value)

    @field_validator("auth_mode", mode="before")
    @classmethod
    def _auth_mode_supported(cls, value: Any) -> Any:
        if value == "aad_token":
            raise ValueError(
                "aad_token (Microsoft Entra ID) is not supported by Tidegate; use key or aml_token"
            )
        return value

    @field_validator("identity")
    @classmethod
    def _no_identity(cls, value: IdentitySpec | None) -> IdentitySpec | None:
        if value is not None and value.type != "none":
            raise ValueError(
                f"a {value.type} managed identity cannot be given to a local endpoint; remove identity"
            )
        return value

    @field_validator("public_network_access")
    @classmethod
    def _public_access_enabled(cls, value: str) -> str:
        return _refuse_disabled(value, "the gateway's bind decides who reaches it (TIDEGATE_GATEWAY_*_BIND)")

    @field_validator("compute")
    @classmethod
    def _no_compute(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "compute is for Azure Arc Kubernetes endpoints; Tidegate endpoints are managed (remove it)"
            )
        return value

    @field_validator("properties")
    @classmethod
    def _tidegate_properties(cls, value: dict[str, str]) -> dict[str, str]:
        problems = property_problems(value)
        if problems:
            # Raised as a ValidationError so each problem keeps its own key in the location.
            raise _property_errors(value, problems)
        return value

    @field_validator("traffic")
    @classmethod
    def _traffic_rule(cls, value: dict[str, int]) -> dict[str, int]:
        for deployment in value:
            validate_deployment_name(deployment)
        total = sum(value.values())
        if total not in (0, 100):
            raise ValueError(f"percentages must sum to 100 or all be 0 (they sum to {total})")
        return value

    @field_validator("mirror_traffic")
    @classmethod
    def _mirror_rule(cls, value: dict[str, int]) -> dict[str, int]:
        if len(value) > 1:
            raise ValueError(f"at most one deployment can receive mirrored traffic ({len(value)})")
        for deployment in value:
            validate_deployment_name(deployment)
        return value


# ---------------------------------------------------------------------------------------
# Deployment parts
# ---------------------------------------------------------------------------------------


class ModelSpec(_Spec):
    """An inline model (Azure's anonymous model): a local path registered on the fly."""

    schema_: str | None = Field(default=None, alias="$schema")
    name: str | None = None
    version: Version | None = None
    path: str | None = Field(
        default=None, description="file or folder; made absolute against the YAML's folder"
    )
    type: Literal["custom_model", "mlflow_model", "triton_model"] = "custom_model"
    description: str | None = None
    tags: StrDict = Field(default_factory=dict)
    properties: StrDict = Field(default_factory=dict)
    flavors: dict[str, Any] | None = None


def is_inside_code(script: str) -> bool:
    """Is a scoring script's path relative and inside its code folder (no `..`, not absolute)?"""
    path = PurePosixPath(script.replace("\\", "/"))
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


class CodeConfigurationSpec(_Spec):
    """The scoring code: a folder and the script in it that defines init() and run()."""

    code: str = Field(description="folder, made absolute; or an azureml: code asset")
    scoring_script: str = Field(description="path of the script inside `code`")

    @field_validator("scoring_script")
    @classmethod
    def _inside_code(cls, value: str) -> str:
        if not is_inside_code(value):
            raise ValueError(f"{value!r} must be a relative path inside the code folder")
        return value


class BuildContextSpec(_Spec):
    """A Docker build context for the environment (used by container-based providers)."""

    path: str
    dockerfile_path: str = "Dockerfile"


class RouteSpec(_Spec):
    """One route of a custom inference container."""

    path: str
    port: int = Field(ge=1, le=65535)


class InferenceConfigSpec(_Spec):
    """Routes of a custom inference container (Azure's `inference_config`)."""

    liveness_route: RouteSpec
    readiness_route: RouteSpec
    scoring_route: RouteSpec


class EnvironmentSpec(_Spec):
    """An inline environment: a base image plus a conda file, or a Docker build context.

    Locally the image is not pulled; the conda file's pip dependencies become a virtualenv.
    """

    schema_: str | None = Field(default=None, alias="$schema")
    name: str | None = None
    version: Version | None = None
    description: str | None = None
    tags: StrDict = Field(default_factory=dict)
    image: str | None = None
    conda_file: str | dict[str, Any] | None = Field(
        default=None, description="path (made absolute) or the conda YAML inline"
    )
    build: BuildContextSpec | None = None
    os_type: Annotated[Literal["linux", "windows"], BeforeValidator(_lower_snake)] = "linux"
    inference_config: InferenceConfigSpec | None = None

    @model_validator(mode="after")
    def _image_or_build(self) -> EnvironmentSpec:
        if self.image is not None and self.build is not None:
            raise ValueError("image and build are mutually exclusive")
        if self.conda_file is not None and self.image is None:
            raise ValueError("conda_file needs image (Azure builds the conda env on that image)")
        if self.image is None and self.build is None:
            raise ValueError("one of image or build is required")
        return self


class DefaultScaleSettings(_Spec):
    """Manual scaling: `instance_count` instances."""

    type: Annotated[Literal["default"], BeforeValidator(_lower_snake)] = "default"


class TargetUtilizationScaleSettings(_Spec):
    """Autoscaling on utilisation between min and max instances (Azure's Kubernetes
    deployments have it; Tidegate offers it for managed ones too). Defaults are Azure's."""

    type: Annotated[Literal["target_utilization"], BeforeValidator(_lower_snake)]
    min_instances: int = Field(default=1, ge=1)
    max_instances: int = Field(default=1, ge=1)
    polling_interval: int = Field(default=1, ge=1, description="seconds")
    target_utilization_percentage: int = Field(default=70, ge=1, le=100)
    metric: Literal["busy", "cpu"] = Field(
        default="busy",
        description="busy: the share of each instance's request slots in use (the gateways' 1 s "
        "windows); cpu: the scale set's Percentage CPU from Azure Monitor (azure compute only)",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> TargetUtilizationScaleSettings:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) must be ≤ max_instances ({self.max_instances})"
            )
        return self


def _scale_type(value: Any) -> str | None:
    if isinstance(value, dict):
        return _lower_snake(value.get("type", "default"))
    return getattr(value, "type", None)


ScaleSettings = Annotated[
    Annotated[DefaultScaleSettings, Tag("default")]
    | Annotated[TargetUtilizationScaleSettings, Tag("target_utilization")],
    Discriminator(
        _scale_type,
        custom_error_type="scale_type",
        custom_error_message="must be a mapping with type default or target_utilization",
    ),
]


class RequestSettings(_Spec):
    """Per-request limits enforced by the gateway. Defaults are Azure's."""

    request_timeout_ms: int = Field(default=DEFAULT_REQUEST_TIMEOUT_MS, ge=1, le=180000)
    max_concurrent_requests_per_instance: int = Field(
        default=DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE, ge=1
    )
    max_queue_wait_ms: int = Field(
        default=DEFAULT_MAX_QUEUE_WAIT_MS,
        ge=0,
        description="deprecated in Azure, still accepted and honoured here",
    )


class ProbeSettings(_Spec):
    """Liveness or readiness probe timing, in seconds. Defaults are Azure's."""

    initial_delay: int = Field(default=10, ge=1)
    period: int = Field(default=10, ge=1)
    timeout: int = Field(default=2, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=30, ge=1)


class LivenessProbeSettings(ProbeSettings):
    """A liveness probe: Azure fixes its success_threshold at 1."""

    @field_validator("success_threshold")
    @classmethod
    def _success_is_one(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"is fixed at 1 for a liveness probe, as in Azure (got {value})")
        return value


def _ref_or_inline(value: Any) -> str | None:
    if isinstance(value, str):
        return "ref"
    if isinstance(value, dict | BaseModel):
        return "inline"
    return None


ModelField = Annotated[
    Annotated[str, Tag("ref")] | Annotated[ModelSpec, Tag("inline")],
    Discriminator(
        _ref_or_inline,
        custom_error_type="asset_ref",
        custom_error_message="must be azureml:<name>:<version> or an inline model mapping",
    ),
]
EnvironmentField = Annotated[
    Annotated[str, Tag("ref")] | Annotated[EnvironmentSpec, Tag("inline")],
    Discriminator(
        _ref_or_inline,
        custom_error_type="asset_ref",
        custom_error_message="must be azureml:<name>:<version> or an inline environment mapping",
    ),
]

# Union tags appear in pydantic error locations; the YAML loader drops them from paths.
UNION_TAGS = frozenset({"ref", "inline", "default", "target_utilization"})


# ---------------------------------------------------------------------------------------
# Deployment
# ---------------------------------------------------------------------------------------


class DeploymentSpec(_Spec):
    """A managed online deployment (`az ml online-deployment create -f blue-deployment.yml`)."""

    schema_: str | None = Field(default=None, alias="$schema")
    name: str
    endpoint_name: str
    description: str | None = None
    tags: StrDict = Field(default_factory=dict)
    properties: StrDict = Field(default_factory=dict)
    model: ModelField | None = None
    model_mount_path: str | None = None
    code_configuration: CodeConfigurationSpec | None = None
    environment: EnvironmentField | None = Field(default=None, validate_default=True)
    environment_variables: StrDict = Field(default_factory=dict)
    instance_type: str = Field(description="VM size, e.g. Standard_DS3_v2; required as in Azure")
    instance_count: int = Field(default=1, ge=1)
    app_insights_enabled: bool = False
    scale_settings: ScaleSettings = Field(default_factory=DefaultScaleSettings)
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    liveness_probe: LivenessProbeSettings = Field(default_factory=LivenessProbeSettings)
    readiness_probe: ProbeSettings = Field(default_factory=ProbeSettings)
    egress_public_network_access: Literal["enabled", "disabled"] = "enabled"
    private_network_connection: bool | None = None
    data_collector: dict[str, Any] | None = Field(default=None, description="refused: not supported yet")
    type: Annotated[Literal["managed"], BeforeValidator(_lower_snake)] = "managed"
    # Output-only fields of `az ml online-deployment show`; accepted and ignored.
    id: str | None = None
    provisioning_state: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _count_from_min_instances(cls, data: Any) -> Any:
        """With autoscaling and no instance_count, start at min_instances."""
        if isinstance(data, dict) and "instance_count" not in data:
            scale = data.get("scale_settings")
            if isinstance(scale, dict) and _scale_type(scale) == "target_utilization":
                minimum = scale.get("min_instances", 1)
                if isinstance(minimum, int) and not isinstance(minimum, bool) and minimum >= 1:
                    return {**data, "instance_count": minimum}
        return data

    @field_validator("name")
    @classmethod
    def _name_rule(cls, value: str) -> str:
        return validate_deployment_name(value)

    @field_validator("endpoint_name")
    @classmethod
    def _endpoint_name_rule(cls, value: str) -> str:
        return validate_endpoint_name(value)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str | ModelSpec | None) -> str | ModelSpec | None:
        if isinstance(value, str):
            return _check_asset_ref("model", value)
        return value

    @field_validator("environment")
    @classmethod
    def _environment_ref(
        cls, value: str | EnvironmentSpec | None, info: ValidationInfo
    ) -> str | EnvironmentSpec | None:
        if isinstance(value, str):
            return _check_asset_ref("environment", value)
        if value is None and info.data.get("code_configuration") is not None:
            raise ValueError("required when code_configuration is given")
        return value

    @field_validator("environment_variables")
    @classmethod
    def _no_tidegate_variables(cls, value: dict[str, str]) -> dict[str, str]:
        """A deployment cannot set Tidegate's own settings (its bind address, say): they are
        dropped here, after every merge, and again by the host. Nor how the inference server
        listens or what it runs: refused, naming the variable."""
        steering = sorted(k for k in value if is_server_variable(k))
        if steering:
            raise ValueError(
                f"{', '.join(steering)}: set by Tidegate for the inference server (where it listens, "
                "what it runs); remove it"
            )
        return strip_tidegate_variables(value)

    @field_validator("egress_public_network_access")
    @classmethod
    def _egress_enabled(cls, value: str) -> str:
        return _refuse_disabled(value, "local instances are not network-isolated")

    @field_validator("private_network_connection")
    @classmethod
    def _no_private_connection(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("network isolation is not available for local instances; remove it")
        return value

    @field_validator("data_collector")
    @classmethod
    def _no_data_collector(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            raise ValueError("model data collection is not supported by Tidegate yet; remove data_collector")
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _managed_only(cls, value: Any) -> Any:
        if _lower_snake(value) == "kubernetes":
            raise ValueError("kubernetes deployments are not supported by Tidegate; use managed")
        return value
