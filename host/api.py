"""The host's HTTP API: desired instances per deployment in, their status and logs out."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from config.host_api import EnsureInstancesRequest
from config.security import bearer_matches
from config.settings import Settings
from host.errors import HostError, bad_request
from host.supervisor import Supervisor

log = structlog.get_logger("host.api")

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor", Supervisor)
DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 100_000
MAX_REQUEST_ID_CHARS = 100  # the gateway's bound on x-request-id
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 60.0
# Names become path segments of log files: letters, digits, '-' and '_' only.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

SNAPSHOT_ROOTS: web.AppKey[tuple[Path, ...]] = web.AppKey("snapshot_roots", tuple)
APP_INSIGHTS: web.AppKey[bool] = web.AppKey("app_insights", bool)  # the host has a key to give
HEALTH_PATH = "/healthz"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def create_app(supervisor: Supervisor, *, settings: Settings, token: str) -> web.Application:
    """The API in front of `supervisor`; every route but `GET /healthz` needs `token` as
    `Authorization: Bearer <token>`, and runs only code and models under Tidegate's stores."""
    app = web.Application(middlewares=[_errors, _require_credential(token), _wait_until_loaded])
    app[SUPERVISOR] = supervisor
    app[SNAPSHOT_ROOTS] = (settings.artifacts_dir, settings.registry_dir)
    app[APP_INSIGHTS] = settings.app_insights_key is not None
    app.router.add_get(HEALTH_PATH, _healthz)
    app.router.add_get("/deployments", _list)
    app.router.add_get("/changes", _changes)
    app.router.add_put("/deployments/{endpoint}/{deployment}", _put)
    app.router.add_get("/deployments/{endpoint}/{deployment}", _get)
    app.router.add_delete("/deployments/{endpoint}/{deployment}", _delete)
    app.router.add_get("/deployments/{endpoint}/{deployment}/logs", _logs)
    return app


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One place that turns failures into `{"error": {code, message}}`."""
    try:
        return await handler(request)
    except HostError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.replace(" ", ""), f"{request.method} {request.path}")
    except Exception:  # an unexpected bug must still answer JSON, and be logged in full
        log.exception("api.unhandled", method=request.method, path=request.path)
        return _error(500, "InternalError", "the host failed to handle the request; see its log")


def _require_credential(token: str) -> Middleware:
    """401 before anything else runs, so a caller without the credential changes nothing."""

    @web.middleware
    async def require_credential(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET" and request.path == HEALTH_PATH:
            return await handler(request)
        given = request.headers.get("Authorization")
        if not bearer_matches(given, token):
            log.warning(
                "api.unauthorized",
                method=request.method,
                path=request.path,
                credential="missing" if given is None else "wrong",
                peer=request.remote,
            )
            response = _error(
                401,
                "Unauthorized",
                "the host API needs the control credential: Authorization: Bearer <credential> "
                "($TIDEGATE_HOME/control.token or TIDEGATE_CONTROL_TOKEN)",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return require_credential


@web.middleware
async def _wait_until_loaded(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The socket is bound before the state file is loaded; answers wait for the adoption.
    await request.app[SUPERVISOR].ready.wait()
    return await handler(request)


def _model(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


def _names(request: web.Request) -> tuple[str, str]:
    endpoint = request.match_info["endpoint"]
    deployment = request.match_info["deployment"]
    for field, value in (("endpoint", endpoint), ("deployment", deployment)):
        if not _NAME.match(value):
            raise bad_request(
                f"{field} {value!r} must be letters, digits, '-' or '_' (at most 63)",
                code="InvalidName",
            )
    return endpoint, deployment


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _list(request: web.Request) -> web.Response:
    items = request.app[SUPERVISOR].list_deployments()
    return web.Response(
        text="[" + ",".join(i.model_dump_json() for i in items) + "]",
        content_type="application/json",
    )


async def _changes(request: web.Request) -> web.Response:
    """The host-wide long poll, one per watcher for every deployment on the host: the
    deployments whose instances changed since sequence `since` (default 0: all of them), as
    soon as there is one, or none after `timeout` seconds (default 30, at most 60); with the
    sequence to pass next time."""
    since = _non_negative_int(request, "since", "0")
    timeout = _wait_seconds(request.query.get("timeout"))
    return _model(await request.app[SUPERVISOR].changes(since=since, timeout=timeout))


def _non_negative_int(request: web.Request, name: str, default: str) -> int:
    """A query parameter that counts versions or sequence numbers."""
    raw = request.query.get(name, default)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise bad_request(f"{name} must be a non-negative integer, got {raw!r}")
    return value


def _wait_seconds(raw: str | None) -> float:
    """A long poll's `timeout` query parameter, capped at MAX_WAIT_SECONDS."""
    try:
        timeout = DEFAULT_WAIT_SECONDS if raw is None else float(raw)
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout) or timeout < 0:
        raise bad_request(f"timeout must be a number of seconds >= 0, got {raw!r}")
    return min(timeout, MAX_WAIT_SECONDS)


async def _get(request: web.Request) -> web.Response:
    """The deployment's instances; with `wait_version=N` a long poll: answered as soon as the
    version passes N, or after `timeout` seconds (default 30, at most 60) as it is then."""
    endpoint, deployment = _names(request)
    supervisor = request.app[SUPERVISOR]
    if request.query.get("wait_version") is None:
        return _model(supervisor.get(endpoint, deployment))
    after = _non_negative_int(request, "wait_version", "0")
    timeout = _wait_seconds(request.query.get("timeout"))
    waited = await supervisor.wait(endpoint, deployment, after=after, timeout=timeout)
    return _model(waited)


async def _put(request: web.Request) -> web.Response:
    endpoint, deployment = _names(request)
    try:
        payload = await request.json()
    except json.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON: {exc}", code="InvalidBody") from exc
    try:
        body = EnsureInstancesRequest.model_validate(payload)
    except ValidationError as exc:
        raise bad_request(_validation_message(exc), code="InvalidBody") from exc
    _check_runtime(body, endpoint, deployment, request.app[SNAPSHOT_ROOTS])
    if body.runtime.app_insights_enabled and not request.app[APP_INSIGHTS]:
        raise bad_request(
            "runtime.app_insights_enabled: this host has no Application Insights key "
            "(TIDEGATE_APP_INSIGHTS_KEY); set it where the host runs, or remove app_insights_enabled",
            code="InvalidBody",
        )
    status = request.app[SUPERVISOR].ensure(body)
    return _model(status, status=202)


async def _delete(request: web.Request) -> web.Response:
    endpoint, deployment = _names(request)
    existed = await request.app[SUPERVISOR].delete(endpoint, deployment)
    return web.json_response({"endpoint": endpoint, "deployment": deployment, "deleted": existed})


async def _logs(request: web.Request) -> web.Response:
    endpoint, deployment = _names(request)
    request_id = request.query.get("request_id")
    if request_id is not None:
        if not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS or not request_id.isprintable():
            raise bad_request(f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} printable characters")
        # Reads whole log files: off the event loop.
        text = await asyncio.to_thread(request.app[SUPERVISOR].request_logs, endpoint, deployment, request_id)
        return web.Response(text=text, content_type="text/plain")
    raw = request.query.get("lines", str(DEFAULT_LOG_LINES))
    try:
        lines = int(raw)
    except ValueError:
        lines = -1
    if not 1 <= lines <= MAX_LOG_LINES:
        raise bad_request(f"lines must be an integer from 1 to {MAX_LOG_LINES}, got {raw!r}")
    instance = request.query.get("instance")
    if instance is not None and not _NAME.match(instance):
        raise bad_request(f"instance {instance!r} is not an instance id")
    text = request.app[SUPERVISOR].logs(endpoint, deployment, lines=lines, instance=instance)
    return web.Response(text=text, content_type="text/plain")


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _check_runtime(
    body: EnsureInstancesRequest, endpoint: str, deployment: str, roots: tuple[Path, ...]
) -> None:
    """Reject what could only fail later, or run what Tidegate did not snapshot, naming the field."""
    rt = body.runtime
    if rt.endpoint != endpoint:
        raise bad_request(
            f"runtime.endpoint: {rt.endpoint!r} differs from {endpoint!r} in the URL",
            code="InvalidBody",
        )
    if rt.deployment != deployment:
        raise bad_request(
            f"runtime.deployment: {rt.deployment!r} differs from {deployment!r} in the URL",
            code="InvalidBody",
        )
    code_dir = _snapshot_path("runtime.code_dir", rt.code_dir, roots)
    if not os.path.isdir(code_dir):
        raise bad_request(f"runtime.code_dir: {rt.code_dir!r} is not a directory", code="InvalidBody")
    _check_scoring_script(rt.scoring_script, code_dir)
    if rt.model_dir is not None:
        model_dir = _snapshot_path("runtime.model_dir", rt.model_dir, roots)
        if not os.path.exists(model_dir):
            raise bad_request(f"runtime.model_dir: {rt.model_dir!r} does not exist", code="InvalidBody")


def _snapshot_path(field: str, value: str, roots: tuple[Path, ...]) -> str:
    """The path resolved (symlinks and `..` followed), if it lies inside one of the stores the
    CLI snapshots into; an instance may run only what Tidegate copied there."""
    if not os.path.isabs(value):
        raise bad_request(f"{field}: {value!r} is not an absolute path", code="InvalidBody")
    resolved = os.path.realpath(value)
    if not any(_strictly_inside(resolved, os.path.realpath(root)) for root in roots):
        shown = "" if resolved == value else f" (it resolves to {resolved!r})"
        stores = ", ".join(str(root) for root in roots)
        raise bad_request(
            f"{field}: {value!r}{shown} is outside the artifact store ({stores}); the host runs "
            "only code and models Tidegate snapshotted",
            code="InvalidBody",
        )
    return resolved


def _check_scoring_script(script: str, code_dir: str) -> None:
    if os.path.isabs(script):
        raise bad_request(
            f"runtime.scoring_script: {script!r} must be a path relative to runtime.code_dir",
            code="InvalidBody",
        )
    resolved = os.path.realpath(os.path.join(code_dir, script))
    if not _strictly_inside(resolved, code_dir):
        raise bad_request(
            f"runtime.scoring_script: {script!r} leads outside runtime.code_dir", code="InvalidBody"
        )
    if not os.path.isfile(resolved):
        raise bad_request(f"runtime.scoring_script: {script!r} not found in {code_dir}", code="InvalidBody")


def _strictly_inside(path: str, root: str) -> bool:
    """Is `path` below `root` (both resolved)? The root itself is not inside."""
    return path != root and os.path.commonpath([path, root]) == root
