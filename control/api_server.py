"""`tidegate api`: the control plane's HTTP front door: ``/healthz``; the ARM-shaped REST API
(control.arm: endpoints, deployments, keys, rollouts, long-running operations); the dashboard
under ``/ui/`` (control.dashboard); and the payload codec endpoint that lets the Temporal UI and
``temporal workflow show`` read the payloads Tidegate encrypts (config.contract.codec).

The codec routes follow Temporal's remote-codec protocol: ``POST /codec/decode`` and
``POST /codec/encode``, body ``{"payloads": [...]}`` (Payloads in protobuf JSON, so ``data`` and
every metadata value base64), header ``X-Namespace``; the Temporal UI appends
``?preserveStorageRefs=true``. They need the control credential, in one of two forms:

- ``Authorization: Bearer <credential>``: what ``temporal workflow show --codec-endpoint URL
  --codec-auth "Bearer <credential>"`` sends;
- a session cookie: the Temporal UI in a browser cannot send the credential (it only forwards
  its own OIDC token), but with "include cross-origin credentials" on in its Data Encoder
  settings it sends cookies. ``GET /login`` is a form; the right credential there sets an
  HttpOnly, SameSite=Strict cookie holding an expiring value signed with a key derived from
  the credential (never the credential itself), so every API process accepts it and a new
  credential ends every session.

CORS answers the Temporal UI's origin only (its preflight asks for ``content-type,x-namespace``),
with credentials allowed. Nothing here logs a credential, a cookie or a payload's contents.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from config.contract.codec import ENCODING, CodecKeyError, EncryptionCodec, codec
from config.lifecycle import run_until_signalled
from config.security import ControlAccessError, bearer_matches, control_server_ssl, ensure_control_token
from config.settings import Settings, is_loopback
from control import dashboard
from control.arm.routes import add_arm_routes
from control.dashboard.security import is_dashboard, is_page, same_origin

log = structlog.get_logger("control.api")

HEALTH_PATH = "/healthz"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
CODEC_PATH = "/codec"
SESSION_COOKIE = "tidegate_session"
SESSION_SECONDS = 12 * 3600
# A history event holds payloads of up to Temporal's 2 MiB blob limit each; a few per request.
CODEC_MAX_BYTES = 16 * 1024 * 1024
# What the Temporal UI sends (observed: content-type, x-namespace), plus what it adds when told
# to pass its OIDC token.
CORS_ALLOW_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras"
CORS_MAX_AGE_SECONDS = 600
# /openapi.json and /docs describe the routes and hold nothing secret.
_OPEN_PATHS = frozenset({HEALTH_PATH, LOGIN_PATH, LOGOUT_PATH, "/openapi.json", "/docs"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request the API refuses, with the status and code the caller sees."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def api_url(settings: Settings) -> str:
    """Where a process on this machine reaches the API (https once it has a certificate)."""
    scheme = "https" if settings.control_tls_cert and settings.control_tls_key else "http"
    bind = settings.api_bind.strip("[]")
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") or is_loopback(bind) else settings.api_bind
    return f"{scheme}://{host}:{settings.api_port}"


def codec_endpoint(settings: Settings) -> str:
    """What the Temporal UI (``--ui-codec-endpoint``) and CLI (``--codec-endpoint``) are given;
    they append ``/decode`` and ``/encode``."""
    return f"{api_url(settings)}{CODEC_PATH}"


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The Temporal UI, as a browser spells its origin (127.0.0.1 and localhost are different
    origins; a session cookie only reaches the API from a page on the API's own host name)."""
    ui = settings.temporal_ui_url.rstrip("/")
    return frozenset({ui, f"http://localhost:{settings.temporal_ui_port}"})


class Sessions:
    """Session values a browser keeps in a cookie: ``v1.<expiry>.<nonce>.<mac>``, the mac an
    HMAC-SHA256 under a key derived from the credential. Nothing is stored server-side."""

    def __init__(
        self, credential: str, *, ttl: float = SESSION_SECONDS, clock: Callable[[], float] = time.time
    ):
        self._key = hmac.new(credential.encode(), b"tidegate api session v1", hashlib.sha256).digest()
        self._ttl = ttl
        self._clock = clock

    def issue(self) -> str:
        expiry = int(self._clock() + self._ttl)
        nonce = secrets.token_urlsafe(16)
        body = f"v1.{expiry}.{nonce}"
        return f"{body}.{self._mac(body)}"

    def valid(self, value: str | None) -> bool:
        if not value:
            return False
        body, _, mac = value.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not (parts[1].isascii() and parts[1].isdigit()):
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return False
        return int(parts[1]) > self._clock()

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


CODEC: web.AppKey[EncryptionCodec] = web.AppKey("codec", EncryptionCodec)
TOKEN: web.AppKey[str] = web.AppKey("token", str)
SESSIONS: web.AppKey[Sessions] = web.AppKey("sessions", Sessions)
ORIGINS: web.AppKey[frozenset[str]] = web.AppKey("origins", frozenset)
SECURE: web.AppKey[bool] = web.AppKey("secure", bool)


def create_app(settings: Settings) -> web.Application:
    """The API application: the credential made (or read) and the codec key loaded here, so a
    process that cannot have them fails at start, not on its first request."""
    token = ensure_control_token(settings)
    app = web.Application(middlewares=[_cors, _errors, _require_credential], client_max_size=CODEC_MAX_BYTES)
    app[TOKEN] = token
    app[SESSIONS] = Sessions(token)
    app[CODEC] = codec(settings)
    app[ORIGINS] = allowed_origins(settings)
    app[SECURE] = api_url(settings).startswith("https:")
    app.router.add_get(HEALTH_PATH, _healthz)
    app.router.add_get(LOGIN_PATH, _login_form)
    app.router.add_post(LOGIN_PATH, _login)
    app.router.add_post(LOGOUT_PATH, _logout)
    app.router.add_post(f"{CODEC_PATH}/{{op:encode|decode}}", _codec)
    dashboard.add_routes(app, settings, credential=token, session_cookie=SESSION_COOKIE)
    add_arm_routes(app, settings)
    return app


# ---- middleware ------------------------------------------------------------------------------
@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The Temporal UI's origin may call, with cookies; a preflight is answered here, before the
    credential check (a browser never sends credentials on one)."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in request.app[ORIGINS]
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            log.warning("api.cors_refused", origin=origin, path=request.path)
            return _error(403, "Forbidden", "this origin may not call the Tidegate API")
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
    else:
        response = await handler(request)
    if allowed:
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers.add("Vary", "Origin")
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON body with a code and a message, never a stack trace."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.replace(" ", ""), exc.reason)
    except Exception:  # the API answers JSON, never a stack trace; the log has it
        log.exception("api.error", method=request.method, path=request.path)
        return _error(500, "InternalError", "internal error; see the API's log")


@web.middleware
async def _require_credential(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless the caller sends the credential as a bearer header or a signed session."""
    if request.path in _OPEN_PATHS:
        return await handler(request)
    authorization = request.headers.get("Authorization")
    if authorization is not None and bearer_matches(authorization, request.app[TOKEN]):
        return await handler(request)
    origin = request.headers.get("Origin")
    session = _session_state(request)
    # A session serves the Temporal UI's fetches only: a browser always sends their Origin, so
    # a cookie that reached here any other way (a link, a form, another local page) is refused.
    if session == "valid" and origin in request.app[ORIGINS]:
        return await handler(request)
    # The dashboard's own pages and their fetches and forms, from this origin (its POSTs carry
    # a CSRF token as well, checked by the dashboard).
    if session == "valid" and is_dashboard(request.path) and same_origin(request):
        return await handler(request)
    log.warning(
        "api.unauthorized",
        method=request.method,
        path=request.path,
        authorization="missing" if authorization is None else "wrong",
        session=session if session != "valid" else "valid, but not from an allowed origin",
        origin=origin,
        peer=request.remote,
    )
    if is_page(request):  # a person, signed out: the login form, then back here
        query = urllib.parse.urlencode({"next": request.path_qs})
        return web.Response(status=303, headers={"Location": f"{LOGIN_PATH}?{query}"})
    response = _error(
        401,
        "Unauthorized",
        "the Tidegate API needs the control credential: Authorization: Bearer <credential> "
        f"($TIDEGATE_HOME/control.token or TIDEGATE_CONTROL_TOKEN), or a session from {LOGIN_PATH}",
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="tidegate"'
    return response


def _session_state(request: web.Request) -> str:
    value = request.cookies.get(SESSION_COOKIE)
    if value is None:
        return "missing"
    return "valid" if request.app[SESSIONS].valid(value) else "invalid or expired"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# ---- handlers --------------------------------------------------------------------------------
async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _codec(request: web.Request) -> web.Response:
    """One Payloads in, the same number out: encrypted (encode) or in clear (decode)."""
    op = request.match_info["op"]
    raw = await request.read()
    try:
        payloads = json_format.Parse(raw, Payloads())
    except (json_format.ParseError, UnicodeDecodeError):
        # The parser's message may quote the body; the caller gets none of it back.
        raise ApiError(
            400, "BadRequest", 'the body must be Payloads as protobuf JSON: {"payloads": [...]}'
        ) from None
    codec_ = request.app[CODEC]
    encrypted = sum(1 for p in payloads.payloads if p.metadata.get("encoding") == ENCODING)
    try:
        if op == "decode":
            result = await codec_.decode(payloads.payloads)
        else:
            result = await codec_.encode(payloads.payloads)
    except CodecKeyError as exc:  # the message names key ids, never key or payload bytes
        log.warning("codec.refused", op=op, namespace=request.headers.get("X-Namespace"), error=str(exc))
        raise ApiError(400, "UndecodablePayload", str(exc)) from None
    log.debug(
        f"codec.{op}",
        namespace=request.headers.get("X-Namespace"),
        payloads=len(payloads.payloads),
        encrypted=encrypted,
    )
    body = json_format.MessageToJson(Payloads(payloads=result), indent=None)
    return web.Response(text=body, content_type="application/json")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tidegate: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}
input{{font:inherit;padding:.3em;width:100%;box-sizing:border-box}}button{{font:inherit;margin-top:.6em}}
code{{background:#eee;padding:0 .2em}}.error{{color:#a00}}</style></head>
<body><h1>Tidegate</h1>{body}</body></html>
"""

_FORM = """<p>Sign in with the control credential (<code>$TIDEGATE_HOME/control.token</code>) to open
the dashboard, and so that the Temporal UI in this browser can show the payloads Tidegate
encrypts.</p>{problem}
<form method="post" action="{login}">
<input type="hidden" name="next" value="{next}">
<label for="credential">Control credential</label>
<input id="credential" name="credential" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form>
"""

_SIGNED_IN = """<p>Signed in: this browser's Temporal UI can decode payloads until the session
ends (after {hours} hours, or when the control credential changes).</p>
<p><a href="{dashboard}">Open the dashboard</a>.</p>
<p>In the Temporal UI (<a href="{ui}">{ui}</a>), open <b>Data Encoder</b> and set:</p>
<ul><li>Remote codec endpoint: <code>{endpoint}</code></li>
<li><b>Include cross-origin credentials</b>: on (the UI sends this session's cookie only then)</li>
<li>Pass access token: off</li></ul>
<form method="post" action="{logout}"><button type="submit">Sign out</button></form>
"""


def _page(body: str, *, status: int = 200) -> web.Response:
    response = web.Response(text=_PAGE.format(body=body), content_type="text/html", status=status)
    # No scripts, no framing, forms post only here.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _form(problem: str = "", *, next_path: str = "", status: int = 200) -> web.Response:
    note = f'<p class="error">{html.escape(problem)}</p>' if problem else ""
    return _page(_FORM.format(problem=note, login=LOGIN_PATH, next=html.escape(next_path)), status=status)


def _next_path(raw: object) -> str:
    """Where to go after signing in: a dashboard page of this origin, never another site."""
    if not isinstance(raw, str):
        return ""
    parsed = urllib.parse.urlsplit(raw)
    if parsed.scheme or parsed.netloc or raw.startswith("//") or "\\" in raw or not is_dashboard(parsed.path):
        return ""
    return raw


async def _login_form(request: web.Request) -> web.Response:
    next_path = _next_path(request.query.get("next"))
    if not request.app[SESSIONS].valid(request.cookies.get(SESSION_COOKIE)):
        return _form(next_path=next_path)
    if next_path:
        return web.Response(status=303, headers={"Location": next_path})
    origins: frozenset[str] = request.app[ORIGINS]
    ui = sorted(origins)[0]
    endpoint = f"{request.scheme}://{request.host}{CODEC_PATH}"
    return _page(
        _SIGNED_IN.format(
            hours=SESSION_SECONDS // 3600,
            ui=html.escape(ui),
            endpoint=html.escape(endpoint),
            logout=LOGOUT_PATH,
            dashboard=f"{dashboard.PREFIX}/",
        )
    )


async def _login(request: web.Request) -> web.Response:
    form = await request.post()
    given = form.get("credential")
    next_path = _next_path(form.get("next"))
    expected = request.app[TOKEN].encode()
    if not isinstance(given, str) or not hmac.compare_digest(given.strip().encode(), expected):
        log.warning("api.login_refused", peer=request.remote)
        return _form("That is not the control credential.", next_path=next_path, status=401)
    log.info("api.login", peer=request.remote, session_hours=SESSION_SECONDS // 3600)
    response = web.Response(status=303, headers={"Location": next_path or LOGIN_PATH})
    response.set_cookie(
        SESSION_COOKIE,
        request.app[SESSIONS].issue(),
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.app[SECURE],
    )
    return response


async def _logout(request: web.Request) -> web.Response:
    response = web.Response(status=303, headers={"Location": LOGIN_PATH})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# ---- the process -----------------------------------------------------------------------------
async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or the task is cancelled)."""
    # Refuse a listener beyond loopback without TLS before anything else happens.
    ssl_context = control_server_ssl(settings, bind=settings.api_bind, setting="TIDEGATE_API_BIND")
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.api_bind, settings.api_port, ssl_context=ssl_context).start()
        origins: frozenset[str] = runner.app[ORIGINS]
        log.info(
            "api.started",
            url=api_url(settings),
            bind=settings.api_bind,
            tls=ssl_context is not None,
            codec_endpoint=codec_endpoint(settings),
            codec_key_id=runner.app[CODEC].key_id,
            cors_origins=sorted(origins),
        )
        await (stop or asyncio.Event()).wait()
        log.info("api.stopping")
    finally:
        await runner.cleanup()
        log.info("api.stopped")


def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""

    try:
        run_until_signalled(lambda stop: serve(settings, stop=stop))
    except (ControlAccessError, CodecKeyError) as exc:  # bound beyond loopback without TLS; bad key
        log.error("api.failed", error=str(exc))
        raise SystemExit(1) from None
    except OSError as exc:  # typically the port is taken
        log.error("api.failed", error=str(exc), port=settings.api_port)
        raise SystemExit(1) from None
