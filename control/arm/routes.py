"""The ARM-shaped REST API in `tidegate api`: online endpoints and deployments under
``/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}``,
long-running operations, etags, and Tidegate's rollouts under an endpoint.

Every handler parses, makes one or two calls to the client façade (control/facade.py,
control/rollouts.py) and shapes the answer (control/arm/resources.py); nothing here decides what
a change means. Errors are ARM's ``{"error": {"code", "message", "target", "details"}}``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activities.artifacts import ArtifactStore, AssetKind
from activities.local.artifacts import resolve_reference
from config.contract.errors import BadRequest, Conflict, NotFound, PreconditionFailed, TidegateError
from config.contract.etags import deployment_etag, endpoint_etag
from config.contract.ids import rollout_id
from config.contract.names import RolloutSignal
from config.contract.state import EndpointRecord
from config.rollout import RolloutSpec
from config.settings import Settings
from config.specs import DeploymentSpec, validate_deployment_name, validate_endpoint_name
from control.arm.operations import (
    RETRY_AFTER_SECONDS,
    Operation,
    OperationKind,
    decode_operation,
    encode_operation,
    operation_resource,
    operation_status,
)
from control.arm.resources import (
    AUTH_TO_ARM,
    LOCATION,
    PROVIDER,
    ArmDeployment,
    ArmDeploymentPatch,
    ArmEndpoint,
    ArmEndpointPatch,
    ArmValidationError,
    FieldProblem,
    Workspace,
    deployment_patch_data,
    deployment_resource,
    deployment_spec,
    endpoint_patch_spec,
    endpoint_resource,
    endpoint_spec,
    read_model,
    validated_deployment,
    workspace_resource,
)
from control.changes import endpoint_change
from control.facade import Tidegate
from control.platform_metrics import platform_metrics
from control.rollouts import Rollouts, describe_plan
from decisions.traffic import TrafficError

log = structlog.get_logger("control.arm")

API_VERSIONS = (
    "2024-04-01",
    "2024-10-01",
    "2024-10-01-preview",
    # What azure-ai-ml 1.35 pins: online endpoints, online deployments (same shapes for these routes);
    # code versions (2023-04-01), environment versions (2023-04-01-preview), models (2023-08-01-preview).
    "2022-02-01-preview",
    "2023-04-01",
    "2023-04-01-preview",
    "2023-08-01-preview",
)
WORKSPACE = (
    "/subscriptions/{subscription}/resourceGroups/{resource_group}"
    f"/providers/{PROVIDER}/workspaces/{{workspace}}"
)
ENDPOINTS = f"{WORKSPACE}/onlineEndpoints"
ENDPOINT = f"{ENDPOINTS}/{{endpoint}}"
DEPLOYMENTS = f"{ENDPOINT}/deployments"
DEPLOYMENT = f"{DEPLOYMENTS}/{{deployment}}"
ROLLOUTS = f"{ENDPOINT}/rollouts"
ROLLOUT = f"{ROLLOUTS}/{{rollout}}"
ASSETS = f"{WORKSPACE}/{{kind:models|codes|environments}}"
ASSET = f"{ASSETS}/{{name}}"
ASSET_VERSIONS = f"{ASSET}/versions"
ASSET_VERSION = f"{ASSET_VERSIONS}/{{version}}"
UPLOADS = f"{WORKSPACE}/uploads"
OPERATIONS = f"/subscriptions/{{subscription}}/providers/{PROVIDER}/locations/{{location}}"
OPERATION_STATUS = f"{OPERATIONS}/mfeOperationsStatus/{{operation}}"
OPERATION_RESULT = f"{OPERATIONS}/mfeOperationResults/{{operation}}"
PAGE_SIZE = 100
STEERING = (
    RolloutSignal.PAUSE,
    RolloutSignal.RESUME,
    RolloutSignal.PROMOTE,
    RolloutSignal.ROLLBACK,
    RolloutSignal.UNDO,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ApiState:
    """The façade, connected to Temporal on first use (the API starts without waiting for it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tidegate: Tidegate | None = None
        self._artifacts: ArtifactStore | None = None
        self._lock = asyncio.Lock()

    def artifacts(self) -> ArtifactStore:
        """The asset registry the CLI's `model create` writes (the artifacts provider's)."""
        if self._artifacts is None:
            from activities.providers import provider

            self._artifacts = provider("artifacts", self.settings)
        return self._artifacts

    async def tidegate(self) -> Tidegate:
        async with self._lock:
            if self._tidegate is None:
                self._tidegate = await Tidegate.connect(self.settings)
            return self._tidegate


STATE: web.AppKey[_ApiState] = web.AppKey("arm", _ApiState)


# ---- errors ------------------------------------------------------------------------------------
class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.target = status, code, message, target


def error_body(
    code: str, message: str, target: str | None = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "target": target, "details": details or []}}


_TIDEGATE_ERRORS: dict[type[TidegateError], tuple[int, str]] = {
    NotFound: (404, "ResourceNotFound"),
    BadRequest: (400, "BadRequest"),
    Conflict: (409, "Conflict"),
    PreconditionFailed: (412, "PreconditionFailed"),
}


def _to_response(exc: Exception) -> web.Response:
    if isinstance(exc, ArmError):
        return web.json_response(error_body(exc.code, exc.message, exc.target), status=exc.status)
    if isinstance(exc, ArmValidationError):
        details = [
            {"code": "ValidationError", "message": p.message, "target": p.target} for p in exc.problems
        ]
        first = exc.problems[0]
        return web.json_response(error_body("ValidationError", str(exc), first.target, details), status=400)
    if isinstance(exc, TrafficError):
        return web.json_response(error_body("BadRequest", str(exc), "properties.traffic"), status=400)
    assert isinstance(exc, TidegateError)
    for kind, (status, code) in _TIDEGATE_ERRORS.items():
        if isinstance(exc, kind):
            return web.json_response(error_body(code, str(exc)), status=status)
    # Any other failure a user can act on (Temporal unreachable, an operation failed).
    return web.json_response(error_body("ServiceUnavailable", str(exc)), status=503)


def arm(handler: Handler) -> Handler:
    """ARM's contract around a handler: api-version required and known; errors in ARM's shape."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        version = request.query.get("api-version")
        supported = ", ".join(API_VERSIONS)
        try:
            if version is None:
                raise ArmError(
                    400, "MissingApiVersionParameter", f"api-version is required; supported: {supported}"
                )
            if version not in API_VERSIONS:
                raise ArmError(
                    400,
                    "InvalidApiVersionParameter",
                    f"api-version {version!r} is not supported; supported: {supported}",
                    "api-version",
                )
            return await handler(request)
        except (ArmError, ArmValidationError, TidegateError, TrafficError) as exc:
            response = _to_response(exc)
            log.info(
                "arm.refused",
                method=request.method,
                path=request.path,
                status=response.status,
                error=str(exc),
            )
            return response

    return wrapper


# ---- request parts -----------------------------------------------------------------------------
def _workspace(request: web.Request) -> Workspace:
    info = request.match_info
    return Workspace(info["subscription"], info["resource_group"], info["workspace"])


def _endpoint_name(request: web.Request) -> str:
    try:
        return validate_endpoint_name(request.match_info["endpoint"])
    except ValueError as err:
        raise ArmError(400, "ValidationError", str(err), "name") from None


def _deployment_name(request: web.Request) -> str:
    try:
        return validate_deployment_name(request.match_info["deployment"])
    except ValueError as err:
        raise ArmError(400, "ValidationError", str(err), "name") from None


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except ValueError:
        raise ArmError(400, "InvalidRequestContent", "the body must be JSON") from None


def _tag(value: str) -> str:
    return value.strip().removeprefix("W/").strip('"')


class Preconditions(BaseModel):
    """If-Match / If-None-Match as ARM reads them: `*` means "exists" / "does not exist"."""

    if_match: str | None = None
    if_none_match_any: bool = False

    @classmethod
    def of(cls, request: web.Request) -> Preconditions:
        match = request.headers.get("If-Match")
        none_match = request.headers.get("If-None-Match")
        if none_match is not None and none_match.strip() != "*":
            raise ArmError(400, "BadRequest", "If-None-Match: only * is supported", "If-None-Match")
        return cls(if_match=_tag(match) if match else None, if_none_match_any=none_match is not None)

    def check_absent(self, kind: str, name: str) -> None:
        if self.if_match is not None:
            raise ArmError(412, "PreconditionFailed", f"{kind} {name} does not exist (If-Match was given)")

    def check_present(self, kind: str, name: str, etag: str) -> str | None:
        """The etag the change must still find (None: any), after the checks this side can make."""
        if self.if_none_match_any:
            raise ArmError(412, "PreconditionFailed", f"{kind} {name} already exists (If-None-Match: *)")
        if self.if_match is None or self.if_match == "*":
            return None
        if self.if_match != etag:
            raise ArmError(
                412,
                "PreconditionFailed",
                f"{kind} {name} has changed (etag {etag}, the request expected {self.if_match}); "
                "read it again",
            )
        return self.if_match


def _operation_headers(request: web.Request, operation: Operation) -> dict[str, str]:
    operation_id = encode_operation(operation)
    base = f"{request.scheme}://{request.host}/subscriptions/{request.match_info['subscription']}"
    where = f"{base}/providers/{PROVIDER}/locations/{LOCATION}"
    version = request.query["api-version"]
    return {
        "Azure-AsyncOperation": f"{where}/mfeOperationsStatus/{operation_id}?api-version={version}",
        "Location": f"{where}/mfeOperationResults/{operation_id}?api-version={version}",
        "Retry-After": str(RETRY_AFTER_SECONDS),
    }


def _operation(kind: OperationKind, endpoint: str, **fields: Any) -> Operation:
    return Operation(kind=kind, endpoint=endpoint, started=datetime.now(UTC), **fields)


async def _record_or_none(tg: Tidegate, name: str) -> EndpointRecord | None:
    try:
        return await tg.describe(name)
    except NotFound:
        return None


def _page(request: web.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """ARM's list: `value` and, while more remain, `nextLink` (``$skipToken`` is an offset)."""
    try:
        start = int(request.query.get("$skipToken", "0"))
        size = min(int(request.query.get("$top", str(PAGE_SIZE))), PAGE_SIZE)
    except ValueError:
        raise ArmError(400, "BadRequest", "$top and $skipToken must be integers", "$skipToken") from None
    if start < 0 or size < 1:
        raise ArmError(400, "BadRequest", "$top must be ≥ 1 and $skipToken ≥ 0", "$top")
    page: dict[str, Any] = {"value": items[start : start + size]}
    if start + size < len(items):
        query = dict(request.query) | {"$skipToken": str(start + size), "$top": str(size)}
        page["nextLink"] = str(request.url.with_query(query))
    return page


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


# ---- workspace and endpoints -------------------------------------------------------------------
@arm
async def get_workspace(request: web.Request) -> web.Response:
    return _json(workspace_resource(_workspace(request), api_url=f"{request.scheme}://{request.host}"))


def _endpoint_view(request: web.Request, record: EndpointRecord) -> dict[str, Any]:
    settings = request.app[STATE].settings
    return endpoint_resource(
        record,
        _workspace(request),
        scoring_uri=settings.scoring_uri(record.name),
        swagger_uri=settings.openapi_uri(record.name),
        scoring_uri_http=settings.scoring_uri_http(record.name),
    )


def _etag_header(etag: str) -> dict[str, str]:
    return {"ETag": f'"{etag}"'}


@arm
async def list_endpoints(request: web.Request) -> web.Response:
    tg = await request.app[STATE].tidegate()
    views = [_endpoint_view(request, record) for record in await tg.endpoint_records()]
    return _json(_page(request, views))


@arm
async def get_endpoint(request: web.Request) -> web.Response:
    tg = await request.app[STATE].tidegate()
    record = await tg.describe(_endpoint_name(request))
    return _json(_endpoint_view(request, record), headers=_etag_header(endpoint_etag(record)))


@arm
async def put_endpoint(request: web.Request) -> web.Response:
    name = _endpoint_name(request)
    resource = read_model(ArmEndpoint, await _body(request))
    spec = endpoint_spec(name, resource, replace=True)
    conditions = Preconditions.of(request)
    tg = await request.app[STATE].tidegate()
    current = await _record_or_none(tg, name)
    if current is None:
        conditions.check_absent("endpoint", name)
        await tg.create_endpoint(spec, wait=False)
        record = await tg.describe(name)
        log.info("arm.endpoint_created", endpoint=name)
        headers = _operation_headers(request, _operation("endpoint.create", name)) | _etag_header(
            endpoint_etag(record)
        )
        return _json(_endpoint_view(request, record), status=201, headers=headers)
    if spec.auth_mode != current.auth_mode:
        raise ArmError(
            400, "BadRequest", "authMode cannot change once the endpoint exists", "properties.authMode"
        )
    change = endpoint_change(current, spec, None, None, [])
    change.if_match = conditions.check_present("endpoint", name, endpoint_etag(current))
    record = await _update_endpoint(tg, name, change)
    log.info("arm.endpoint_replaced", endpoint=name)
    headers = _operation_headers(request, _operation("endpoint.update", name)) | _etag_header(
        endpoint_etag(record)
    )
    return _json(_endpoint_view(request, record), headers=headers)


async def _update_endpoint(tg: Tidegate, name: str, change: Any) -> EndpointRecord:
    await tg.update_endpoint(name, change)
    return await tg.describe(name)


@arm
async def patch_endpoint(request: web.Request) -> web.Response:
    name = _endpoint_name(request)
    patch = read_model(ArmEndpointPatch, await _body(request))
    spec = endpoint_patch_spec(name, patch)
    conditions = Preconditions.of(request)
    tg = await request.app[STATE].tidegate()
    current = await tg.describe(name)
    change = endpoint_change(current, spec, None, None, [])
    change.if_match = conditions.check_present("endpoint", name, endpoint_etag(current))
    record = await _update_endpoint(tg, name, change)
    log.info("arm.endpoint_patched", endpoint=name, fields=sorted(spec.model_fields_set - {"name"}))
    return _json(_endpoint_view(request, record), headers=_etag_header(endpoint_etag(record)))


@arm
async def delete_endpoint(request: web.Request) -> web.Response:
    name = _endpoint_name(request)
    conditions = Preconditions.of(request)
    tg = await request.app[STATE].tidegate()
    current = await _record_or_none(tg, name)
    if current is None:
        conditions.check_absent("endpoint", name)
        return web.Response(status=204)
    conditions.check_present("endpoint", name, endpoint_etag(current))
    await tg.delete_endpoint(name, wait=False)
    log.info("arm.endpoint_deleting", endpoint=name)
    operation = _operation("endpoint.delete", name, created_at=current.created_at)
    return web.Response(status=202, headers=_operation_headers(request, operation))


class RegenerateKeysBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    key_type: str = Field(alias="keyType")


@arm
async def list_keys(request: web.Request) -> web.Response:
    return await _credentials(request, "key")


@arm
async def get_token(request: web.Request) -> web.Response:
    return await _credentials(request, "aml_token")


async def _credentials(request: web.Request, auth_mode: str) -> web.Response:
    """listKeys for a Key endpoint, token for an AMLToken one (Azure's EndpointAuthKeys and
    EndpointAuthToken); the other verb on either is a 400 saying which to use."""
    name = _endpoint_name(request)
    tg = await request.app[STATE].tidegate()
    record = await tg.describe(name)
    if record.auth_mode != auth_mode:
        verb = "token" if record.auth_mode == "aml_token" else "listKeys"
        raise ArmError(
            400,
            "BadRequest",
            f"endpoint {name} uses authMode {AUTH_TO_ARM[record.auth_mode]}: POST .../{verb}",
            "properties.authMode",
        )
    credentials = await tg.get_credentials(name)
    log.info("arm.credentials_given", endpoint=name, auth_mode=auth_mode)  # never what was given
    return _json(credentials, headers={"Cache-Control": "no-store"})


@arm
async def regenerate_keys(request: web.Request) -> web.Response:
    name = _endpoint_name(request)
    body = read_model(RegenerateKeysBody, await _body(request))
    key_type = body.key_type.lower()
    if key_type not in ("primary", "secondary"):
        raise ArmError(400, "ValidationError", "keyType must be Primary or Secondary", "keyType")
    tg = await request.app[STATE].tidegate()
    await tg.regenerate_keys(name, "primary" if key_type == "primary" else "secondary")
    log.info("arm.keys_regenerated", endpoint=name, key_type=key_type)
    return web.Response(status=200)


# ---- deployments -------------------------------------------------------------------------------
def _check_local_paths(spec: DeploymentSpec) -> None:
    """Paths on this machine a deployment names must exist (else a 400, not a failed copy)."""
    checks: list[tuple[str, str | None, str]] = []
    if spec.code_configuration is not None and not spec.code_configuration.code.startswith("azureml:"):
        code = spec.code_configuration.code
        checks.append(("properties.codeConfiguration.codeId", code, "folder"))
        script = Path(code) / spec.code_configuration.scoring_script
        checks.append(("properties.codeConfiguration.scoringScript", str(script), "file"))
    if spec.model is not None and not isinstance(spec.model, str):
        checks.append(("properties.model", spec.model.path, "path"))
    if spec.environment is not None and not isinstance(spec.environment, str):
        conda = spec.environment.conda_file
        checks.append(("properties.environmentId", conda if isinstance(conda, str) else None, "file"))
    problems = []
    for target, path, kind in checks:
        if path is None:
            continue
        found = Path(path)
        ok = found.is_dir() if kind == "folder" else found.is_file() if kind == "file" else found.exists()
        if not ok:
            problems.append(FieldProblem(target, f"no {kind} at {path} on the API's machine"))
    if problems:
        raise ArmValidationError(problems)


def _registered_references(spec: DeploymentSpec) -> list[tuple[str, AssetKind, str]]:
    """(ARM field, kind, `azureml:` reference) for each registered asset a deployment names."""
    found: list[tuple[str, AssetKind, str]] = []
    if isinstance(spec.model, str):
        found.append(("properties.model", "models", spec.model))
    if spec.code_configuration is not None and spec.code_configuration.code.startswith("azureml:"):
        found.append(("properties.codeConfiguration.codeId", "codes", spec.code_configuration.code))
    if isinstance(spec.environment, str):
        found.append(("properties.environmentId", "environments", spec.environment))
    return found


async def _check_registered(request: web.Request, spec: DeploymentSpec) -> None:
    """Every asset a deployment names must be registered (else a 400 at its field, nothing stored)."""
    store = request.app[STATE].artifacts()
    problems = []
    for target, kind, reference in _registered_references(spec):
        try:
            asset = await asyncio.to_thread(resolve_reference, store, reference, kind)
        except (NotFound, BadRequest) as err:
            problems.append(FieldProblem(target, str(err)))
            continue
        if kind == "codes" and spec.code_configuration is not None and asset.path is not None:
            copy = Path(asset.path)  # on this machine for the local store (a VM's path on Azure)
            script = spec.code_configuration.scoring_script
            if copy.is_dir() and not (copy / script).is_file():
                problems.append(
                    FieldProblem(
                        "properties.codeConfiguration.scoringScript", f"{reference} holds no {script}"
                    )
                )
    if problems:
        raise ArmValidationError(problems)


@arm
async def list_deployments(request: web.Request) -> web.Response:
    name = _endpoint_name(request)
    tg = await request.app[STATE].tidegate()
    record = await tg.describe(name)
    ws = _workspace(request)
    views = [deployment_resource(name, entry, ws) for _, entry in sorted(record.deployments.items())]
    return _json(_page(request, views))


async def _entry(tg: Tidegate, endpoint: str, name: str) -> Any:
    record = await tg.describe(endpoint)
    entry = record.deployments.get(name)
    if entry is None:
        raise NotFound(f"deployment {name} does not exist in endpoint {endpoint}")
    return entry


@arm
async def get_deployment(request: web.Request) -> web.Response:
    endpoint, name = _endpoint_name(request), _deployment_name(request)
    tg = await request.app[STATE].tidegate()
    entry = await _entry(tg, endpoint, name)
    resource = deployment_resource(endpoint, entry, _workspace(request))
    metrics = await platform_metrics(tg.settings, endpoint, name)
    if metrics is not None:
        resource["properties"]["tidegate"]["platform_metrics"] = metrics
    return _json(resource, headers=_etag_header(deployment_etag(entry)))


@arm
async def put_deployment(request: web.Request) -> web.Response:
    endpoint, name = _endpoint_name(request), _deployment_name(request)
    spec = deployment_spec(endpoint, name, read_model(ArmDeployment, await _body(request)))
    _check_local_paths(spec)
    await _check_registered(request, spec)
    conditions = Preconditions.of(request)
    tg = await request.app[STATE].tidegate()
    record = await tg.describe(endpoint)
    current = record.deployments.get(name)
    try:
        if current is None:
            conditions.check_absent("deployment", name)
            await tg.create_deployment(spec)
            kind: OperationKind = "deployment.create"
            status = 201
        else:
            if_match = conditions.check_present("deployment", name, deployment_etag(current))
            await tg.update_deployment(spec, if_match=if_match)
            kind, status = "deployment.update", 200
    except NotFound as err:
        if isinstance(spec.model, str) and str(err).startswith("model "):
            # The body names a model the registry lacks: the caller's field, not a missing resource.
            raise ArmError(400, "BadRequest", str(err), "properties.model") from None
        raise
    entry = await _entry(tg, endpoint, name)
    etag = deployment_etag(entry)
    log.info("arm.deployment_put", endpoint=endpoint, deployment=name, created=status == 201)
    operation = _operation(kind, endpoint, deployment=name, etag=etag)
    headers = _operation_headers(request, operation) | _etag_header(etag)
    return _json(deployment_resource(endpoint, entry, _workspace(request)), status=status, headers=headers)


@arm
async def patch_deployment(request: web.Request) -> web.Response:
    endpoint, name = _endpoint_name(request), _deployment_name(request)
    patch = read_model(ArmDeploymentPatch, await _body(request))
    conditions = Preconditions.of(request)
    tg = await request.app[STATE].tidegate()
    current = await _entry(tg, endpoint, name)
    if_match = conditions.check_present("deployment", name, deployment_etag(current))
    spec = validated_deployment(deployment_patch_data(dict(current.target.spec), patch))
    await tg.update_deployment(spec, if_match=if_match)
    entry = await _entry(tg, endpoint, name)
    etag = deployment_etag(entry)
    log.info("arm.deployment_patched", endpoint=endpoint, deployment=name)
    operation = _operation("deployment.update", endpoint, deployment=name, etag=etag)
    headers = _operation_headers(request, operation) | _etag_header(etag)
    return _json(deployment_resource(endpoint, entry, _workspace(request)), headers=headers)


@arm
async def delete_deployment(request: web.Request) -> web.Response:
    endpoint, name = _endpoint_name(request), _deployment_name(request)
    conditions = Preconditions.of(request)
    tg = await request.app[STATE].tidegate()
    record = await tg.describe(endpoint)
    current = record.deployments.get(name)
    if current is None:
        conditions.check_absent("deployment", name)
        return web.Response(status=204)
    conditions.check_present("deployment", name, deployment_etag(current))
    await tg.delete_deployment(endpoint, name, wait=False)
    log.info("arm.deployment_deleting", endpoint=endpoint, deployment=name)
    operation = _operation("deployment.delete", endpoint, deployment=name)
    return web.Response(status=202, headers=_operation_headers(request, operation))


class GetLogsBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    tail: int | None = Field(default=None, ge=1, le=10000)
    container_type: str | None = Field(default=None, alias="containerType")


@arm
async def get_logs(request: web.Request) -> web.Response:
    endpoint, name = _endpoint_name(request), _deployment_name(request)
    body = read_model(GetLogsBody, await _body(request))
    tg = await request.app[STATE].tidegate()
    content = await tg.get_logs(endpoint, name, body.tail or 100)
    return _json({"content": content})


# ---- operations --------------------------------------------------------------------------------
async def _operation_of(request: web.Request) -> tuple[str, Operation, Any]:
    operation_id = request.match_info["operation"]
    operation = decode_operation(operation_id)
    if operation is None:
        raise ArmError(404, "ResourceNotFound", "no such operation")
    tg = await request.app[STATE].tidegate()
    status = operation_status(operation, await _record_or_none(tg, operation.endpoint))
    return operation_id, operation, status


@arm
async def get_operation_status(request: web.Request) -> web.Response:
    operation_id, operation, status = await _operation_of(request)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status.status == "InProgress" else None
    return _json(operation_resource(operation_id, operation, status), headers=headers)


@arm
async def get_operation_result(request: web.Request) -> web.Response:
    operation_id, operation, status = await _operation_of(request)
    if status.status == "InProgress":
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), "Location": str(request.url)}
        return web.Response(status=202, headers=headers)
    return _json(operation_resource(operation_id, operation, status))


# ---- rollouts (Tidegate's own) -----------------------------------------------------------------
class StartRolloutBody(BaseModel):
    """What `tidegate rollout start` takes: the canary, the baseline (default: the busiest
    deployment) and rollout.yml's fields."""

    model_config = ConfigDict(extra="forbid")

    to: str
    baseline: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="rollout.yml, as JSON")


def _rollout_name(rid: str) -> str:
    return rid.rsplit("/", 1)[-1]


def _rollout_view(request: web.Request, view: dict[str, Any]) -> dict[str, Any]:
    endpoint = view["endpoint"]
    name = _rollout_name(view["id"])
    rollouts = f"{_workspace(request).endpoint_id(endpoint)}/rollouts"
    return {
        "id": f"{rollouts}/{name}",
        "name": name,
        "type": f"{PROVIDER}/workspaces/onlineEndpoints/rollouts",
        "properties": view,
    }


@arm
async def start_rollout(request: web.Request) -> web.Response:
    endpoint = _endpoint_name(request)
    body = read_model(StartRolloutBody, await _body(request))
    try:
        spec = RolloutSpec.model_validate(body.spec)
    except ValidationError as err:
        problems = [
            FieldProblem("spec." + ".".join(str(p) for p in e["loc"]) if e["loc"] else "spec", e["msg"])
            for e in err.errors(include_url=False, include_input=False)
        ]
        raise ArmValidationError(problems) from None
    rollouts = Rollouts(await request.app[STATE].tidegate())
    plan = await rollouts.plan(endpoint, body.to, spec, body.baseline)
    if request.query.get("dryRun", "false").lower() == "true":
        return _json({"plan": plan.model_dump(mode="json"), "description": describe_plan(plan)})
    rid = await rollouts.start(plan, spec)
    log.info("arm.rollout_started", endpoint=endpoint, rollout=rid, to=body.to, baseline=plan.baseline)
    view = _rollout_view(request, await rollouts.status(endpoint, rid))
    location = f"{request.scheme}://{request.host}{view['id']}?api-version={request.query['api-version']}"
    return _json(view, status=201, headers={"Location": location})


@arm
async def list_rollouts(request: web.Request) -> web.Response:
    endpoint = _endpoint_name(request)
    rollouts = Rollouts(await request.app[STATE].tidegate())
    rows = await rollouts.list(endpoint, None)
    items = [
        {"id": row["id"], "name": _rollout_name(row["id"]), "properties": row}
        for row in sorted(
            rows, key=lambda r: int(_rollout_name(r["id"])) if _rollout_name(r["id"]).isdigit() else 0
        )
    ]
    return _json(_page(request, items))


def _rollout_number(request: web.Request) -> int:
    text = request.match_info["rollout"]
    if not text.isdigit():
        raise ArmError(404, "ResourceNotFound", f"rollout {text!r} does not exist (rollouts are numbered)")
    return int(text)


@arm
async def get_rollout(request: web.Request) -> web.Response:
    endpoint = _endpoint_name(request)
    rollouts = Rollouts(await request.app[STATE].tidegate())
    view = await rollouts.status(endpoint, rollout_id(endpoint, _rollout_number(request)))
    return _json(_rollout_view(request, view))


class SteerBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str | None = None


@arm
async def steer_rollout(request: web.Request) -> web.Response:
    endpoint = _endpoint_name(request)
    action = request.match_info["action"]
    rid = rollout_id(endpoint, _rollout_number(request))
    body = read_model(SteerBody, await _body(request))
    rollouts = Rollouts(await request.app[STATE].tidegate())
    current = await rollouts.current_id(endpoint)
    if current != rid:
        raise ArmError(
            409,
            "Conflict",
            f"rollout {rid} is not the endpoint's current rollout ({current}); nothing to {action}",
        )
    await rollouts.signal(endpoint, action, body.reason)
    log.info("arm.rollout_steered", endpoint=endpoint, rollout=rid, signal=action)
    return _json(_rollout_view(request, await rollouts.status(endpoint, rid)))


# ---- wiring ------------------------------------------------------------------------------------
def add_arm_routes(app: web.Application, settings: Settings) -> None:
    """Mount the ARM API, /openapi.json and /docs on the API's application."""
    from control.arm import asset_routes
    from control.arm.openapi import add_docs_routes

    app[STATE] = _ApiState(settings)
    router = app.router
    router.add_get(WORKSPACE, get_workspace)
    router.add_get(ENDPOINTS, list_endpoints)
    router.add_get(ENDPOINT, get_endpoint)
    router.add_put(ENDPOINT, put_endpoint)
    router.add_patch(ENDPOINT, patch_endpoint)
    router.add_delete(ENDPOINT, delete_endpoint)
    router.add_post(f"{ENDPOINT}/listKeys", list_keys)
    router.add_post(f"{ENDPOINT}/regenerateKeys", regenerate_keys)
    router.add_post(f"{ENDPOINT}/token", get_token)
    router.add_get(DEPLOYMENTS, list_deployments)
    router.add_get(DEPLOYMENT, get_deployment)
    router.add_put(DEPLOYMENT, put_deployment)
    router.add_patch(DEPLOYMENT, patch_deployment)
    router.add_delete(DEPLOYMENT, delete_deployment)
    router.add_post(f"{DEPLOYMENT}/getLogs", get_logs)
    router.add_get(ROLLOUTS, list_rollouts)
    router.add_post(ROLLOUTS, start_rollout)
    router.add_get(ROLLOUT, get_rollout)
    router.add_post(f"{ROLLOUT}/{{action:{'|'.join(STEERING)}}}", steer_rollout)
    router.add_get(ASSETS, asset_routes.list_containers)
    router.add_get(ASSET, asset_routes.get_container)
    router.add_delete(ASSET, asset_routes.delete_container)
    router.add_get(ASSET_VERSIONS, asset_routes.list_versions)
    router.add_get(ASSET_VERSION, asset_routes.get_version)
    router.add_put(ASSET_VERSION, asset_routes.put_version)
    router.add_delete(ASSET_VERSION, asset_routes.delete_version)
    router.add_post(UPLOADS, asset_routes.upload)
    router.add_get(OPERATION_STATUS, get_operation_status)
    router.add_get(OPERATION_RESULT, get_operation_result)
    add_docs_routes(app)
