"""``/openapi.json`` (OpenAPI 3.0, request bodies from the pydantic models the handlers read) and
``/docs`` (a static page listing it: no scripts, no CDN)."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from control.arm import routes as r
from control.arm.assets import ASSET_KINDS, ArmAssetVersion
from control.arm.resources import ArmDeployment, ArmDeploymentPatch, ArmEndpoint, ArmEndpointPatch

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"

_REQUEST_MODELS: list[type[BaseModel]] = [
    ArmEndpoint,
    ArmEndpointPatch,
    ArmDeployment,
    ArmDeploymentPatch,
    r.RegenerateKeysBody,
    r.GetLogsBody,
    r.StartRolloutBody,
    r.SteerBody,
    ArmAssetVersion,
]
# The asset routes' `{kind:models|codes|environments}` as OpenAPI writes a path parameter.
_KIND = "{kind:models|codes|environments}"
_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
_UPLOAD_TYPES = ("application/gzip", "application/x-tar", "application/zip", "application/octet-stream")

# (method, path, summary, request model, success statuses)
_OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, tuple[int, ...]]] = [
    ("get", r.WORKSPACE, "The workspace (one is served; any name reaches it)", None, (200,)),
    ("get", r.ENDPOINTS, "List online endpoints (value, nextLink)", None, (200,)),
    ("get", r.ENDPOINT, "Get an online endpoint (ETag)", None, (200,)),
    ("put", r.ENDPOINT, "Create or replace an online endpoint (long-running)", ArmEndpoint, (200, 201)),
    ("patch", r.ENDPOINT, "Change tags, description, traffic, mirrorTraffic", ArmEndpointPatch, (200,)),
    ("delete", r.ENDPOINT, "Delete an online endpoint (long-running)", None, (202, 204)),
    ("post", f"{r.ENDPOINT}/listKeys", "The endpoint's keys (authMode Key)", None, (200,)),
    ("post", f"{r.ENDPOINT}/token", "A fresh token (authMode AMLToken)", None, (200,)),
    ("post", f"{r.ENDPOINT}/regenerateKeys", "Regenerate one key", r.RegenerateKeysBody, (200,)),
    ("get", r.DEPLOYMENTS, "List deployments (value, nextLink)", None, (200,)),
    ("get", r.DEPLOYMENT, "Get a deployment (ETag)", None, (200,)),
    ("put", r.DEPLOYMENT, "Create or replace a deployment (long-running)", ArmDeployment, (200, 201)),
    ("patch", r.DEPLOYMENT, "Change tags and sku.capacity (long-running)", ArmDeploymentPatch, (200,)),
    ("delete", r.DEPLOYMENT, "Delete a deployment (long-running)", None, (202, 204)),
    ("post", f"{r.DEPLOYMENT}/getLogs", "The last lines of each instance's log", r.GetLogsBody, (200,)),
    ("get", r.ROLLOUTS, "List the endpoint's rollouts", None, (200,)),
    ("post", r.ROLLOUTS, "Start a rollout (?dryRun=true: the plan only)", r.StartRolloutBody, (200, 201)),
    ("get", r.ROLLOUT, "A rollout's status", None, (200,)),
    (
        "post",
        f"{r.ROLLOUT}/{{action}}",
        "Pause, resume, promote, roll back or undo a rollout",
        r.SteerBody,
        (200,),
    ),
    ("get", r.ASSETS, "List model, code or environment names (value, nextLink)", None, (200,)),
    ("get", r.ASSET, "A name: its latestVersion and nextVersion", None, (200,)),
    ("delete", r.ASSET, "Delete every version of a name", None, (200, 204)),
    ("get", r.ASSET_VERSIONS, "List a name's versions, newest first (value, nextLink)", None, (200,)),
    ("get", r.ASSET_VERSION, "Get a version", None, (200,)),
    (
        "put",
        r.ASSET_VERSION,
        "Register a version (immutable: the same body again is 200, another 409)",
        ArmAssetVersion,
        (200, 201),
    ),
    ("delete", r.ASSET_VERSION, "Delete a version (deployments keep their copies)", None, (200, 204)),
    ("post", r.UPLOADS, "Upload a tar, tar.gz or zip archive: its uri for modelUri / codeUri", None, (201,)),
    ("get", r.OPERATION_STATUS, "A long-running operation's status", None, (200,)),
    ("get", r.OPERATION_RESULT, "202 while in progress, then the status", None, (200, 202)),
]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "target": {"type": "string", "nullable": True},
                "details": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [
        part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")
    ]
    parameters = []
    for name in names:
        schema: dict[str, Any] = {"type": "string"}
        if name == "action":
            schema["enum"] = list(r.STEERING)
        elif name == "kind":
            schema["enum"] = list(ASSET_KINDS)
        elif name in ("name", "version"):
            schema |= {"pattern": _NAME_PATTERN, "maxLength": 255}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def _success(status: int, path: str) -> dict[str, Any]:
    """200 and 201 answer JSON (regenerateKeys: nothing); 202 and 204 answer nothing."""
    if status in (202, 204) or path.endswith("/regenerateKeys"):
        return {"description": "accepted" if status == 202 else "done"}
    return {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}}


def _api_version() -> dict[str, Any]:
    return {
        "name": "api-version",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "enum": list(r.API_VERSIONS)},
    }


def openapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "validation") for model in _REQUEST_MODELS],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    schemas["ErrorResponse"] = _ERROR
    paths: dict[str, dict[str, Any]] = {}
    for method, route, summary, model, statuses in _OPERATIONS:
        path = route.replace(_KIND, "{kind}")
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.rsplit('/', 1)[-1].strip('{}')}_{len(paths)}",
            "parameters": [*_path_parameters(path), _api_version()],
            "security": [{"bearer": []}],
            "responses": {
                **{str(status): _success(status, path) for status in statuses},
                "default": {
                    "description": "an error in ARM's shape",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                    },
                },
            },
        }
        if model is not None:
            operation["requestBody"] = {
                "required": method in ("put",),
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                },
            }
        if route == r.UPLOADS:
            binary = {"schema": {"type": "string", "format": "binary", "maxLength": 4096}}
            operation["requestBody"] = {
                "required": True,
                "content": {content_type: binary for content_type in _UPLOAD_TYPES},
            }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Tidegate control API",
            "version": r.API_VERSIONS[0],
            "description": "Azure Resource Manager's shape for Microsoft.MachineLearningServices online "
            "endpoints and deployments and versioned models, code and environments, plus Tidegate's "
            "rollouts and archive uploads. Bearer: the control credential.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def _docs(request: web.Request) -> web.Response:
    rows = "".join(
        f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
        f"<td>{html.escape(summary)}</td></tr>"
        for method, route, summary, _, _ in _OPERATIONS
        for path in [route.replace(_KIND, "{kind}")]
    )
    versions = ", ".join(r.API_VERSIONS)
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tidegate API</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2em}td{padding:.2em .6em;"
        "vertical-align:top}code{font-size:.9em}</style></head><body><h1>Tidegate control API</h1>"
        f'<p>The machine-readable description: <a href="{OPENAPI_PATH}">{OPENAPI_PATH}</a>. '
        f"Every call needs <code>Authorization: Bearer &lt;control credential&gt;</code> and "
        f"<code>?api-version=</code> (one of {html.escape(versions)}).</p>"
        f"<table>{rows}</table></body></html>"
    )
    response = web.Response(text=page, content_type="text/html")
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, _openapi)
    app.router.add_get(DOCS_PATH, _docs)
