"""The dashboard's routes: server-rendered pages (Jinja2, autoescaped), the live part of each
page as a fragment the page's script polls, the steering forms, and the static script and
stylesheet. The credential check is the API's own middleware; here, the CSRF check."""

from __future__ import annotations

import functools
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
import structlog
from aiohttp import web
from temporalio.service import RPCError

from config.contract.errors import BadRequest, NotFound, TidegateError
from config.contract.names import RolloutSignal
from config.security import bearer_matches
from config.settings import Settings
from config.stats import LIMIT_REASONS
from control.dashboard.charts import WIDTH, Chart, line_chart
from control.dashboard.data import LOG_LINES, EndpointPage, RolloutPage, Sample, Source
from control.dashboard.security import (
    API_PREFIX,
    CSRF_FIELD,
    CSRF_HEADER,
    PREFIX,
    Csrf,
    protect,
)

log = structlog.get_logger("control.dashboard")

ACTIONS = (RolloutSignal.PAUSE, RolloutSignal.RESUME, RolloutSignal.PROMOTE, RolloutSignal.ROLLBACK)
REFRESH_MS = 2000
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

SOURCE: web.AppKey[Source] = web.AppKey("dashboard_source", Source)
CSRF: web.AppKey[Csrf] = web.AppKey("dashboard_csrf", Csrf)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("dashboard_templates", jinja2.Environment)
COOKIE: web.AppKey[str] = web.AppKey("dashboard_cookie", str)
CREDENTIAL: web.AppKey[str] = web.AppKey("dashboard_credential", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, settings: Settings, *, credential: str, session_cookie: str) -> None:
    """The dashboard under ``/ui/`` in the API application ``app``."""
    app[SOURCE] = Source(settings)
    app[CSRF] = Csrf(credential)
    app[COOKIE] = session_cookie
    app[CREDENTIAL] = credential
    app[TEMPLATES] = environment()
    app.router.add_get(PREFIX, _to_index)
    app.router.add_get(f"{PREFIX}/", _endpoints)
    app.router.add_get(f"{API_PREFIX}endpoints", _endpoints_json)
    app.router.add_get(f"{PREFIX}/endpoints/{{name}}", _endpoint)
    app.router.add_get(f"{PREFIX}/endpoints/{{name}}/rollout", _rollout)
    app.router.add_get(f"{PREFIX}/endpoints/{{name}}/deployments/{{deployment}}/logs", _logs)
    app.router.add_post(
        f"{PREFIX}/endpoints/{{name}}/rollout/{{action:{'|'.join(ACTIONS)}}}",
        _steer,
    )
    app.router.add_get(f"{PREFIX}/static/{{file}}", _static)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("control.dashboard", "templates"),
        autoescape=True,  # every user string (names, tags, descriptions, reasons) escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["when"] = _when
    env.filters["quote"] = lambda s: urllib.parse.quote(str(s), safe="")
    return env


class _Failed(Exception):
    """A page that cannot be shown: its status and a message for the person looking."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _pages(handler: Handler) -> Handler:
    """A failure becomes an error page (the API's own error middleware answers JSON)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Failed as failed:
            return _error_page(request, failed.status, failed.message)

    return wrapped


# ---- handlers ----------------------------------------------------------------------------
async def _to_index(_: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": f"{PREFIX}/"})


@_pages
async def _endpoints(request: web.Request) -> web.StreamResponse:
    rows = await _call(request, request.app[SOURCE].endpoint_rows())
    return _render(request, "endpoints.html", "endpoints_live.html", title="Endpoints", rows=rows)


@_pages
async def _endpoints_json(request: web.Request) -> web.StreamResponse:
    rows = await _call(request, request.app[SOURCE].endpoint_rows())
    return web.json_response([row.model_dump(mode="json") for row in rows])


@_pages
async def _endpoint(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    page = await _call(request, request.app[SOURCE].endpoint_page(name))
    charts, endpoint_charts = endpoint_page_charts(page, time.time())
    return _render(
        request,
        "endpoint.html",
        "endpoint_live.html",
        title=f"Endpoint {name}",
        page=page,
        charts=charts,
        endpoint_charts=endpoint_charts,
    )


def endpoint_page_charts(page: EndpointPage, now: float) -> tuple[dict[str, list[Chart]], list[Chart]]:
    """Each deployment's charts (by name), and the endpoint's own (as clients saw it), over
    the samples kept up to ``now`` (at least the last minute)."""
    charts: dict[str, list[Chart]] = {}
    for panel in page.deployments:
        series = panel.series
        start = now - max(60.0, now - series[0].at) if series else now - 60
        charts[panel.name] = [
            line_chart(
                "requests/s", "req/s", {"requests/s": [(s.at, s.rps) for s in series]}, start=start, end=now
            ),
            line_chart(
                "latency",
                "ms",
                {"p50": [(s.at, s.p50) for s in series], "p99": [(s.at, s.p99) for s in series]},
                start=start,
                end=now,
            ),
            line_chart(
                "errors/s by class",
                "err/s",
                {
                    k: [(s.at, s.errors.get(k, 0.0)) for s in series]
                    for k in ("5xx", "408", "424", "429", "4xx")
                },
                start=start,
                end=now,
            ),
            # A deployment is never refused for the endpoint's rate (that is before routing).
            _limited_chart(series, [r for r in LIMIT_REASONS if r != "endpoint_rate"], start, now),
        ]
    series = page.series
    start = now - max(60.0, now - series[0].at) if series else now - 60
    endpoint_charts = [
        line_chart(
            "requests/s", "req/s", {"requests/s": [(s.at, s.rps) for s in series]}, start=start, end=now
        ),
        _limited_chart(series, list(LIMIT_REASONS), start, now),
    ]
    return charts, endpoint_charts


def _limited_chart(series: list[Sample], reasons: list[str], start: float, end: float) -> Chart:
    """429s per second, a line per reason (the ``limit`` a 429's body names)."""
    return line_chart(
        "429s/s by reason",
        "429/s",
        {reason: [(s.at, s.limited.get(reason, 0.0)) for s in series] for reason in reasons},
        start=start,
        end=end,
    )


@_pages
async def _rollout(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    page = await _call(request, request.app[SOURCE].rollout_page(name))
    return _render(
        request,
        "rollout.html",
        "rollout_live.html",
        title=f"Rollout {page.view['id']}",
        page=page,
        chart=_weights_chart(page),
        gate_charts=_gate_charts(page),
        problem=None,
    )


@_pages
async def _logs(request: web.Request) -> web.StreamResponse:
    """A deployment's logs: each instance's tail, or one instance's, or what one request
    left; with ``follow``, the live part (the filter kept) is polled like every page's."""
    name = request.match_info["name"]
    deployment = request.match_info["deployment"]
    instance = request.query.get("instance", "").strip() or None
    request_id = request.query.get("request_id", "").strip() or None
    raw_lines = request.query.get("lines", "").strip()
    lines = int(raw_lines) if raw_lines.isdigit() and len(raw_lines) < 7 else LOG_LINES
    follow = request.query.get("follow") == "1"
    page = await _call(
        request,
        request.app[SOURCE].logs_page(
            name, deployment, instance=instance, request_id=request_id, lines=lines, follow=follow
        ),
    )
    kept = {"instance": instance, "request_id": request_id, "lines": str(lines), "follow": "1"}
    return _render(
        request,
        "logs.html",
        "logs_live.html",
        live_query={k: v for k, v in kept.items() if v is not None},
        title=f"Logs of {name}/{deployment}",
        page=page,
    )


@_pages
async def _steer(request: web.Request) -> web.StreamResponse:
    """Pause, resume, promote or roll back the endpoint's rollout: a form post with the CSRF
    token (a session-cookie request without it is 403; a bearer caller sends no cookie)."""
    name = request.match_info["name"]
    action = request.match_info["action"]
    form = await request.post()
    authorization = request.headers.get("Authorization")
    if authorization is None or not bearer_matches(authorization, request.app[CREDENTIAL]):
        session = request.cookies.get(request.app[COOKIE])
        given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not request.app[CSRF].valid(session, given if isinstance(given, str) else None):
            log.warning("dashboard.csrf_refused", endpoint=name, action=action, peer=request.remote)
            return protect(
                web.json_response(
                    {
                        "error": {
                            "code": "Forbidden",
                            "message": "missing or wrong CSRF token; reload the page",
                        }
                    },
                    status=403,
                )
            )
    raw_reason = form.get("reason")
    reason = raw_reason.strip()[:500] if isinstance(raw_reason, str) and raw_reason.strip() else None
    if reason is None and action in (RolloutSignal.PAUSE, RolloutSignal.PROMOTE, RolloutSignal.ROLLBACK):
        reason = f"{action} from the dashboard"
    try:
        rid = await _call(request, request.app[SOURCE].signal(name, action, reason), refusals=True)
    except (BadRequest, NotFound) as exc:
        log.info("dashboard.signal_refused", endpoint=name, action=action, error=str(exc))
        page = await _call(request, request.app[SOURCE].rollout_page(name))
        return _render(
            request,
            "rollout.html",
            "rollout_live.html",
            status=409,
            live_path=f"{PREFIX}/endpoints/{urllib.parse.quote(name, safe='')}/rollout",
            title=f"Rollout {page.view['id']}",
            page=page,
            chart=_weights_chart(page),
            gate_charts=_gate_charts(page),
            problem=str(exc),
        )
    log.info("dashboard.signal", endpoint=name, action=action, rollout=rid)
    location = f"{PREFIX}/endpoints/{urllib.parse.quote(name, safe='')}/rollout?sent={action}"
    return protect(web.Response(status=303, headers={"Location": location}))


async def _static(request: web.Request) -> web.StreamResponse:
    file = request.match_info["file"]
    if file not in _STATIC:
        raise web.HTTPNotFound()
    body = resources.files("control.dashboard").joinpath("static", file).read_bytes()
    response = web.Response(body=body, content_type=_STATIC[file])
    protect(response)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


# ---- plumbing ----------------------------------------------------------------------------
async def _call(request: web.Request, work: Awaitable[Any], *, refusals: bool = False) -> Any:
    """The façade's answer, or a page that says what went wrong (no stack trace); with
    ``refusals``, a refused request (BadRequest, NotFound) is the caller's to show."""
    try:
        return await work
    except (BadRequest, NotFound) as exc:
        if refusals:
            raise
        raise _Failed(404 if isinstance(exc, NotFound) else 400, str(exc)) from None
    except TidegateError as exc:  # Temporal unreachable, a refused change
        raise _Failed(503, str(exc)) from None
    except RPCError as exc:
        log.warning("dashboard.temporal_error", path=request.path, error=str(exc))
        raise _Failed(503, "Temporal did not answer; is `tidegate up` running?") from None


def _error_page(request: web.Request, status: int, message: str) -> web.StreamResponse:
    if request.path.startswith(API_PREFIX):
        return protect(web.json_response({"error": {"code": str(status), "message": message}}, status=status))
    return _render(
        request, "error.html", "error.html", status=status, title="Error", code=status, message=message
    )


def _render(
    request: web.Request,
    template: str,
    fragment: str,
    *,
    status: int = 200,
    live_path: str | None = None,
    live_query: dict[str, str] | None = None,
    **context: Any,
) -> web.StreamResponse:
    """The whole page, or (``?part=live``) the live part the page's script swaps in (polled
    from ``live_path``, by default the page's own path, with ``live_query`` kept)."""
    env = request.app[TEMPLATES]
    session = request.cookies.get(request.app[COOKIE])
    live = urllib.parse.urlencode({**(live_query or {}), "part": "live"})
    context.update(
        prefix=PREFIX,
        csrf=request.app[CSRF].token(session) if session else "",
        sent=request.query.get("sent") if request.query.get("sent") in ACTIONS else None,
        refresh=f"{live_path or request.path}?{live}",
        refresh_ms=REFRESH_MS,
        rendered_at=time.time(),
    )
    name = fragment if request.query.get("part") == "live" else template
    response = web.Response(
        text=env.get_template(name).render(**context), content_type="text/html", status=status
    )
    return protect(response)


def _weights_chart(page: RolloutPage) -> Chart:
    view = page.view
    now = time.time()
    points = [(t, float(w)) for t, w in page.weights]
    baseline = [(t, 100.0 - w) for t, w in points]
    start = points[0][0] - 1 if points else now - 60
    markers = []
    for entry in view["history"]:
        if entry["event"] in ("paused", "resumed", "promote", "rollback", "rolledback", "succeeded"):
            markers.append((datetime.fromisoformat(entry["at"]).timestamp(), entry["event"]))
    return line_chart(
        "traffic weight",
        "%",
        {f"{view['to']} (canary)": points, f"{view['from']} (baseline)": baseline},
        start=start,
        end=max(now, start + 1),
        top=100.0,
        markers=markers,
        step=True,
        width=2 * WIDTH,
    )


def _gate_charts(page: RolloutPage) -> list[Chart]:
    """Each gate's value at each look, against its threshold (a dashed line)."""
    now = time.time()
    charts = []
    for gate, points in sorted(page.gate_values.items()):
        start = points[0][0] if points else now - 60
        charts.append(
            line_chart(
                gate,
                "",
                {"value": points},
                start=min(start, now - 60),
                end=now,
                threshold=page.gate_bounds.get(gate),
            )
        )
    return charts


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None, digits: int = 3) -> str:
    return "no data" if value is None else f"{value:.{digits}f} %"


def _when(value: str | float) -> str:
    moment = datetime.fromtimestamp(value) if isinstance(value, float) else datetime.fromisoformat(value)
    return moment.strftime("%H:%M:%S")
