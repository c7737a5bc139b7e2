"""The host's HTTP API: desired instances per deployment in, their status and logs out."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from config.host_api import EnsureInstancesRequest
from host.errors import HostError, bad_request
from host.supervisor import Supervisor

log = structlog.get_logger("host.api")

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor", Supervisor)
DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 100_000
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 60.0
# Names become path segments of log files: letters, digits, '-' and '_' only.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(supervisor: Supervisor) -> web.Application:
    app = web.Application(middlewares=[_errors, _wait_until_loaded])
    app[SUPERVISOR] = supervisor
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/deployments", _list)
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


async def _get(request: web.Request) -> web.Response:
    """The deployment's instances; with `wait_version=N` a long poll: answered as soon as the
    version passes N, or after `timeout` seconds (default 30, at most 60) as it is then."""
    endpoint, deployment = _names(request)
    supervisor = request.app[SUPERVISOR]
    raw_version = request.query.get("wait_version")
    if raw_version is None:
        return _model(supervisor.get(endpoint, deployment))
    try:
        after = int(raw_version)
    except ValueError:
        after = -1
    if after < 0:
        raise bad_request(f"wait_version must be a non-negative integer, got {raw_version!r}")
    raw_timeout = request.query.get("timeout")
    try:
        timeout = DEFAULT_WAIT_SECONDS if raw_timeout is None else float(raw_timeout)
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout) or timeout < 0:
        raise bad_request(f"timeout must be a number of seconds >= 0, got {raw_timeout!r}")
    waited = await supervisor.wait(endpoint, deployment, after=after, timeout=min(timeout, MAX_WAIT_SECONDS))
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
    _check_runtime(body, endpoint, deployment)
    status = request.app[SUPERVISOR].ensure(body)
    return _model(status, status=202)


async def _delete(request: web.Request) -> web.Response:
    endpoint, deployment = _names(request)
    existed = await request.app[SUPERVISOR].delete(endpoint, deployment)
    return web.json_response({"endpoint": endpoint, "deployment": deployment, "deleted": existed})


async def _logs(request: web.Request) -> web.Response:
    endpoint, deployment = _names(request)
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


def _check_runtime(body: EnsureInstancesRequest, endpoint: str, deployment: str) -> None:
    """Reject what could only fail later, naming the field."""
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
    code_dir = Path(rt.code_dir)
    if not code_dir.is_absolute() or not code_dir.is_dir():
        raise bad_request(
            f"runtime.code_dir: {rt.code_dir!r} is not an absolute path of a directory",
            code="InvalidBody",
        )
    if not (code_dir / rt.scoring_script).is_file():
        raise bad_request(
            f"runtime.scoring_script: {rt.scoring_script!r} not found in {rt.code_dir}",
            code="InvalidBody",
        )
    if rt.model_dir is not None and not Path(rt.model_dir).is_absolute():
        raise bad_request(f"runtime.model_dir: {rt.model_dir!r} is not an absolute path", code="InvalidBody")
    if rt.model_dir is not None and not Path(rt.model_dir).exists():
        raise bad_request(f"runtime.model_dir: {rt.model_dir!r} does not exist", code="InvalidBody")
