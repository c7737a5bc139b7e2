"""Admin API (aiohttp, its own port): endpoints push their route table here.

Every path but ``GET /healthz`` needs the control credential (``config.security``) as
``Authorization: Bearer <credential>``; without it, or with another, the answer is 401 and
nothing is read or changed.

``PUT /routes/{endpoint}`` and ``DELETE /routes/{endpoint}?generation=N`` follow the
generation rules in ``gateway.table`` (a generation is epoch milliseconds, refused when more
than ``MAX_GENERATION_AHEAD_MS`` ahead of this gateway's clock); every applied change is
persisted before the answer, so a push that got ``applied: true`` survives a crash.

``GET /stats?endpoint=E&deployment=D&window=30s`` answers a ``config.stats.WindowStats``
(the monitor contract; ``deployment`` omitted: the endpoint as clients saw it); with
``minutes=N`` (up to a day, 1440) it carries the last N minutes' counts as well. An endpoint
or deployment with no data yet answers zero requests, not 404: a canary that got no traffic
is "no data". ``GET /metrics`` is Prometheus text (see ``gateway.metrics``).

``POST /drain`` takes this gateway out of the load balancer's rotation before its VM goes:
the data plane's health path (``gateway.routing.HEALTH_PATH``) answers 503 from then on, and
every answer closes its connection; requests are still served. ``?close_idle_after=S``
(0-3600): S seconds later, the connections with no request under way are closed as well (a
client's pool sees that close; a deleted VM's connections just go silent). Idempotent
(``started``: false the second time, and nothing changes); nothing undoes it but a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from config.routes import ApplyRouteResult, EndpointRoute
from config.security import bearer_matches
from decisions.availability import DEFAULT_FAILURE_KEYS
from gateway.accesslog import find_request
from gateway.metrics import StatsSource, render
from gateway.routing import MAX_REQUEST_ID_CHARS
from gateway.table import (
    FieldProblem,
    RouteTable,
    describe_validation_error,
    generation_problems,
    route_problems,
    save_table,
    wall_ms,
)
from gateway.windows import MINUTES_KEPT, parse_window

log = structlog.get_logger("gateway.admin")

_OPEN = frozenset({("GET", "/healthz"), ("HEAD", "/healthz")})
MAX_CLOSE_IDLE_AFTER_S = 3600
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidegate"'}


class DrainResult(BaseModel):
    """``POST /drain``'s answer: `started` is false when the gateway was draining already;
    `processes`: how many of its processes said they drain."""

    draining: bool
    started: bool
    processes: int


class AdminError(Exception):
    """A request the admin API refuses, with the status and code the caller sees."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        problems: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems or []
        self.headers = headers


def _error_response(error: AdminError) -> web.Response:
    body: dict[str, object] = {"code": error.code, "message": error.message}
    if error.problems:
        body["field"] = error.problems[0].field
        body["details"] = [{"field": p.field, "message": p.message} for p in error.problems]
    return web.json_response({"error": body}, status=error.status, headers=error.headers)


def _bad_request(problems: list[FieldProblem]) -> AdminError:
    message = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return AdminError(400, "BadRequest", message, problems)


class TablePersister:
    """Writes the whole table atomically, in change order, off the event loop."""

    def __init__(self, table: RouteTable, path: Path) -> None:
        self._table = table
        self._path = path
        self._lock = asyncio.Lock()

    async def save(self) -> None:
        async with self._lock:  # a later change is always written after an earlier one
            # Snapshot on the loop; the thread then writes a table nobody mutates.
            snapshot = RouteTable(routes=dict(self._table.routes), tombstones=dict(self._table.tombstones))
            await asyncio.to_thread(save_table, self._path, snapshot)


def create_app(
    table: RouteTable,
    persist: Callable[[], Awaitable[None]],
    *,
    control_token: str,
    stats: StatsSource | None = None,
    access_log: tuple[Path, int] | None = None,
    failure_keys: Sequence[str] = DEFAULT_FAILURE_KEYS,
    drain: Callable[[float | None], Awaitable[DrainResult]] | None = None,
) -> web.Application:
    """The admin application; ``persist`` is awaited after every applied change. Every
    request but the health check must carry ``control_token`` (the control credential).
    ``access_log``: the access log's path and how many rotated files it keeps, for
    ``GET /access-log?request_id=``. ``failure_keys``: the statuses ``/metrics``'s availability
    counts as failures. ``drain``: what ``POST /drain`` does."""
    if not control_token:
        raise ValueError("the admin API needs a control credential")

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            # Before the handler: a refused request's body is never read.
            if (request.method, request.path) not in _OPEN and not bearer_matches(
                request.headers.get("Authorization"), control_token
            ):
                raise AdminError(
                    401,
                    "Unauthorized",
                    "missing or invalid control credential: send Authorization: Bearer <credential> "
                    "($TIDEGATE_HOME/control.token or TIDEGATE_CONTROL_TOKEN)",
                    headers=_CHALLENGE,
                )
            return await handler(request)
        except AdminError as exc:
            return _error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.replace(" ", "")
            return _error_response(AdminError(exc.status, code, exc.reason))
        except Exception:  # the admin API answers JSON, never a stack trace
            log.exception("admin.error", method=request.method, path=request.path)
            return _error_response(AdminError(500, "InternalError", "internal error; see logs"))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "endpoints": len(table.routes)})

    async def list_routes(_: web.Request) -> web.Response:
        return web.json_response(table.to_document())

    async def get_route(request: web.Request) -> web.Response:
        route = table.get(request.match_info["endpoint"])
        if route is None:
            raise AdminError(404, "EndpointNotFound", "no route for this endpoint")
        return web.json_response(route.model_dump(mode="json"))

    async def put_route(request: web.Request) -> web.Response:
        name = request.match_info["endpoint"]
        raw = await request.read()
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise _bad_request([FieldProblem("body", f"not JSON: {exc}")]) from None
        try:
            route = EndpointRoute.model_validate(document)
        except ValidationError as exc:
            raise _bad_request(describe_validation_error(exc)) from None
        problems = route_problems(route, path_name=name, now_ms=wall_ms())
        if problems:
            raise _bad_request(problems)
        result = table.put(route)
        await _persist_if(result)
        log.info(
            "routes.put",
            endpoint=route.name,
            generation=route.generation,
            applied=result.applied,
            held=result.generation,
            traffic=route.traffic,
        )
        return web.json_response(result.model_dump())

    async def delete_route(request: web.Request) -> web.Response:
        name = request.match_info["endpoint"]
        raw = request.query.get("generation")
        try:
            generation = int(raw) if raw is not None else None
        except ValueError:
            generation = None
        if generation is None or generation < 0:
            raise _bad_request([FieldProblem("generation", "query parameter must be an int >= 0")])
        problems = generation_problems(generation, wall_ms())
        if problems:
            raise _bad_request(problems)
        result = table.delete(name, generation)
        await _persist_if(result)
        log.info(
            "routes.delete",
            endpoint=name,
            generation=generation,
            applied=result.applied,
            held=result.generation,
        )
        return web.json_response(result.model_dump())

    async def _persist_if(result: ApplyRouteResult) -> None:
        if not result.applied:
            return
        try:
            await persist()
        except OSError as exc:
            log.error("routes.persist_failed", error=repr(exc))
            raise AdminError(
                500, "PersistFailed", "applied in memory but not persisted; push again"
            ) from None

    async def get_stats(request: web.Request) -> web.Response:
        if stats is None:
            raise AdminError(404, "NotFound", "this gateway keeps no windows")
        endpoint = request.query.get("endpoint", "").strip().lower()
        if not endpoint:
            raise _bad_request([FieldProblem("endpoint", "query parameter is required")])
        deployment = request.query.get("deployment", "").strip()
        try:
            seconds = parse_window(request.query.get("window"))
        except ValueError as exc:
            raise _bad_request([FieldProblem("window", f"{exc}; e.g. 30s, 5m or 90")]) from None
        raw_minutes = request.query.get("minutes", "0").strip()
        if not raw_minutes.isdigit() or int(raw_minutes) > MINUTES_KEPT:
            raise _bad_request([FieldProblem("minutes", f"query parameter must be 0-{MINUTES_KEPT}")])
        data = await stats.window(endpoint, deployment, seconds, int(raw_minutes))
        return web.json_response(data.to_stats(endpoint, deployment, seconds).model_dump(mode="json"))

    async def get_metrics(_: web.Request) -> web.Response:
        if stats is None:
            raise AdminError(404, "NotFound", "this gateway keeps no windows")
        text = render(await stats.snapshot(), now=time.time(), failure_keys=failure_keys)
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"}
        )

    async def get_access_log(request: web.Request) -> web.Response:
        """The access-log lines of one request id (every process of this gateway shares the file)."""
        if access_log is None:
            raise AdminError(404, "NotFound", "this gateway keeps no access log")
        request_id = request.query.get("request_id", "")
        if not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
            raise _bad_request(
                [FieldProblem("request_id", f"query parameter of 1 to {MAX_REQUEST_ID_CHARS} characters")]
            )
        path, backups = access_log
        lines = await asyncio.to_thread(find_request, path, backups, request_id)  # reads whole files
        return web.json_response({"request_id": request_id, "lines": lines})

    async def post_drain(request: web.Request) -> web.Response:
        if drain is None:
            raise AdminError(404, "NotFound", "this gateway has no data plane to drain")
        raw = request.query.get("close_idle_after")
        try:
            close_idle_after = float(raw) if raw is not None else None
        except ValueError:
            close_idle_after = -1.0
        if close_idle_after is not None and not 0 <= close_idle_after <= MAX_CLOSE_IDLE_AFTER_S:
            raise _bad_request(
                [
                    FieldProblem(
                        "close_idle_after", f"query parameter must be 0-{MAX_CLOSE_IDLE_AFTER_S} seconds"
                    )
                ]
            )
        result = await drain(close_idle_after)
        log.info(
            "gateway.drain",
            started=result.started,
            processes=result.processes,
            close_idle_after=close_idle_after,
        )
        return web.json_response(result.model_dump())

    app = web.Application(middlewares=[errors], client_max_size=8 * 1024 * 1024)
    app.router.add_post("/drain", post_drain)
    app.router.add_get("/access-log", get_access_log)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/routes", list_routes)
    app.router.add_get("/routes/{endpoint}", get_route)
    app.router.add_put("/routes/{endpoint}", put_route)
    app.router.add_delete("/routes/{endpoint}", delete_route)
    return app
