"""The data-plane hot path: an ``asyncio.Protocol`` per client connection.

Requests are parsed with httptools, routed with the pure functions in ``gateway.routing``
and forwarded over pooled keep-alive connections (``gateway.upstream``). A connection
serves its requests one at a time, in order (pipelined requests wait in a queue).

Hazards kept in mind here: httptools calls back synchronously from ``feed_data`` (several
requests may complete in one call), so nothing in a callback may raise; every request
releases its instance's outstanding count exactly once (``_release``).
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import deque
from functools import partial
from typing import Final, cast

import httptools
import structlog

from gateway.accesslog import AccessLog
from gateway.responses import (
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    CONTINUE,
    JSON_CONTENT_TYPE,
    DateHeader,
    error_body,
    model_error_body,
    status_line,
)
from gateway.routing import (
    SWAGGER,
    RequestTarget,
    RoutingError,
    bearer_token,
    choose_deployment,
    fresh_request_id,
    key_matches,
    parse_target,
    pick_instance,
    request_id,
)
from gateway.table import DeploymentState, EndpointState, RouteTable
from gateway.upstream import InstanceState, UpstreamConnection

log = structlog.get_logger("gateway.proxy")

MAX_HEAD_BYTES: Final = 64 * 1024  # request line + headers
MAX_PIPELINED: Final = 32  # queued requests before the connection stops reading
LINGER_S: Final = 2.0  # how long a rejected upload is drained before closing
EJECT_S: Final = 5.0  # an instance that refused a connection is avoided this long
IDLE_SWEEP_S: Final = 30.0  # client connections idle for one to two sweeps are closed
DRAIN_S: Final = 10.0  # on stop, in-flight requests get this long to finish
_TARGET_CACHE_MAX: Final = 4096

_WANTED_HEADERS: Final = frozenset(
    {
        b"host",
        b"authorization",
        b"content-type",
        b"content-length",
        b"azureml-model-deployment",
        b"x-request-id",
        b"x-ms-client-request-id",
        b"expect",
        b"connection",
    }
)
_METHODS: Final = {b"POST", b"GET"}
_CRLF: Final = b"\r\n"
_RID: Final = b"x-request-id: "
_CLEN: Final = b"\r\ncontent-length: "


class Gateway:
    """What every client connection shares: the route table, the log, cached header bytes."""

    def __init__(
        self,
        table: RouteTable,
        domain: str,
        access_log: AccessLog,
        upstream_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.table = table
        self.live = table.live  # mutated in place by the table, never rebound
        self.domain = domain
        self.record = access_log.record
        self.date = DateHeader()
        self.wall_offset = 0.0
        self.connections: set[ClientProtocol] = set()
        self.targets: dict[tuple[bytes, bytes | None], RequestTarget | RoutingError] = {}
        self.upstream_ssl = upstream_ssl
        self._ticker: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._tick()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(IDLE_SWEEP_S, self._sweep)

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Close idle connections now; let in-flight requests finish for up to ``drain_s``."""
        for conn in list(self.connections):
            conn.finish_up()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.shut()
        for handle in (self._ticker, self._sweeper):
            if handle is not None:
                handle.cancel()

    def protocol_factory(self) -> ClientProtocol:
        return ClientProtocol(self)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = time.time()
        self.wall_offset = now - time.perf_counter()
        self.date.refresh(now)
        self._ticker = loop.call_later(1.0 - (now % 1.0) + 0.001, self._tick)

    def _sweep(self) -> None:
        for conn in list(self.connections):
            conn.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(IDLE_SWEEP_S, self._sweep)

    def target(self, path: bytes, host: bytes | None) -> RequestTarget | RoutingError:
        """Parse (cached: the answer depends only on path and host)."""
        key = (path, host)
        found = self.targets.get(key)
        if found is None:
            found = parse_target(
                path.decode("latin-1"), host.decode("latin-1") if host else None, self.domain
            )
            if len(self.targets) >= _TARGET_CACHE_MAX:
                self.targets.clear()
            self.targets[key] = found
        return found


class _Request:
    """One request from parse to answer."""

    __slots__ = (
        "started",
        "url",
        "headers",
        "head_bytes",
        "method",
        "keep_alive",
        "http10",
        "error",
        "close",
        "answered",
        "endpoint",
        "deployment",
        "instance",
        "tried",
        "rid",
        "resource",
        "query",
        "path",
        "body",
        "body_size",
        "max_bytes",
        "upstream",
        "conn",
        "connecting",
        "timer",
        "replayed",
        "done",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.head_bytes = 0
        self.method = b""
        self.keep_alive = True
        self.http10 = False
        self.error: RoutingError | None = None
        self.close = False
        self.answered = False
        self.endpoint: EndpointState | None = None
        self.deployment: DeploymentState | None = None
        self.instance: InstanceState | None = None
        self.tried: list[InstanceState] = []
        self.rid = ""
        self.resource = ""
        self.query = b""
        self.path = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.max_bytes = 0
        self.upstream = b""
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.replayed = False
        self.done = False


class ClientProtocol(asyncio.Protocol):
    """One client connection (plain or TLS): HTTP/1.1 keep-alive, answers in request order."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.req: _Request | None = None  # being parsed
        self.active: _Request | None = None  # being answered
        self.queue: deque[_Request] = deque()
        self.in_head = False
        self.closing = False  # no new requests are parsed or started
        self.draining = False  # closing, but still reading a rejected upload to its end
        self.close_scheduled = False
        self.paused = False
        self.activity = 0
        self.swept = -1
        self.auth_endpoint: EndpointState | None = None
        self.auth_header: bytes | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.gw.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gw.connections.discard(self)
        self.closing = True
        active, self.active = self.active, None
        if active is not None and not active.done:
            self._abandon(active)
            self._log(active, 499, "ClientClosedRequest", 0)
        self.queue.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        if self.closing and not self.draining:
            return
        if self.in_head and self.req is not None:
            self.req.head_bytes += len(data)
            if self.req.head_bytes > MAX_HEAD_BYTES:
                self._fatal(431, "RequestHeaderFieldsTooLarge", "request headers are too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, "BadRequest", "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            self._fatal(400, "BadRequest", f"malformed HTTP request: {exc}")

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self.req = _Request(time.perf_counter())
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        req = self.req
        if req is not None:
            req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WANTED_HEADERS and self.req is not None:
            self.req.headers[name] = value

    def on_headers_complete(self) -> None:
        req = self.req
        if req is None:
            return
        self.in_head = False
        parser = self.parser
        req.method = parser.get_method()
        req.keep_alive = keep_alive = parser.should_keep_alive()
        if keep_alive and req.headers.get(b"connection", b"").lower() == b"keep-alive":
            req.http10 = parser.get_http_version() == "1.0"  # wants keep-alive said back
        self._route(req)
        busy = self.active is not None or bool(self.queue)
        expect = req.headers.get(b"expect")
        if req.error is not None:
            if expect is not None or req.error.status == 413:
                # Say no before the body arrives, then stop reading this connection.
                req.close = True
                if not busy:
                    self._answer_early(req)
        elif expect is not None and expect.lower() == b"100-continue" and not busy:
            assert self.transport is not None
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        req = self.req
        if req is None or req.error is not None:
            return  # answered or to be answered without the body: drop it
        req.body_size += len(body)
        if req.body_size > req.max_bytes:
            req.error = self._too_large(req)
            req.body.clear()
            req.close = True
            if self.active is None and not self.queue:
                self._answer_early(req)
            return
        req.body.append(body)

    def on_message_complete(self) -> None:
        req, self.req = self.req, None
        if req is None:
            return
        if req.answered:  # the rejected upload is fully drained
            self._close_now()
            return
        self.queue.append(req)
        if self.active is None:
            self._next()
        elif len(self.queue) >= MAX_PIPELINED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    # --- routing (decided once the headers are in) ---
    def _route(self, req: _Request) -> None:
        gw = self.gw
        headers = req.headers
        url = req.url
        q = url.find(b"?")
        if q >= 0:
            req.path, req.query = url[:q], url[q:]
        else:
            req.path = url
        xrid = headers.get(b"x-request-id")
        crid = headers.get(b"x-ms-client-request-id")
        if xrid is None and crid is None:
            req.rid = fresh_request_id()
        else:
            rid = request_id(
                xrid.decode("latin-1") if xrid else None,
                crid.decode("latin-1") if crid else None,
                "",
            )
            if isinstance(rid, RoutingError):
                req.rid = fresh_request_id()
                req.error = rid
                return
            req.rid = rid or fresh_request_id()
        if url[:1] != b"/":
            req.error = RoutingError(400, "BadRequest", "the request target must be a path")
            return
        target = gw.target(req.path, headers.get(b"host"))
        if isinstance(target, RoutingError):
            req.error = target
            return
        if req.method not in _METHODS or (target.resource == SWAGGER and req.method != b"GET"):
            req.error = RoutingError(405, "MethodNotAllowed", f"{req.method.decode()} is not allowed here")
            return
        req.resource = target.resource
        endpoint = gw.live.get(target.endpoint)
        if endpoint is None:
            req.error = RoutingError(404, "EndpointNotFound", f"no endpoint named {target.endpoint!r}")
            return
        req.endpoint = endpoint
        if endpoint.auth_mode == "key":
            authorization = headers.get(b"authorization")
            # A keep-alive client repeats the same header: the last one that passed for this
            # endpoint state (rebuilt on every push, so rotation invalidates it) is remembered
            # on this connection only; the table still holds nothing but hashes.
            if endpoint is not self.auth_endpoint or authorization != self.auth_header:
                key = bearer_token(authorization.decode("latin-1")) if authorization else None
                if not key_matches(key, endpoint.key_sha256):
                    req.error = RoutingError(
                        401,
                        "Unauthorized",
                        "missing or invalid key: send Authorization: Bearer <key>",
                    )
                    return
                self.auth_endpoint = endpoint
                self.auth_header = authorization
        else:
            req.error = RoutingError(
                401, "Unauthorized", f"auth mode {endpoint.auth_mode} is not supported yet"
            )
            return
        req.max_bytes = endpoint.max_bytes
        length = headers.get(b"content-length")
        if length is not None and int(length) > endpoint.max_bytes:
            req.error = self._too_large(req)
            return
        target_header = headers.get(b"azureml-model-deployment")
        chosen = choose_deployment(
            endpoint.plan,
            target_header.decode("latin-1") if target_header else None,
            random.random(),
        )
        if isinstance(chosen, RoutingError):
            req.error = chosen
            return
        deployment = endpoint.deployments.get(chosen)
        if deployment is None:
            req.error = RoutingError(503, "NoHealthyInstance", f"deployment {chosen} has no instance yet")
            return
        req.deployment = deployment

    @staticmethod
    def _too_large(req: _Request) -> RoutingError:
        return RoutingError(413, "PayloadTooLarge", f"the request body exceeds {req.max_bytes} bytes")

    # --- serving queued requests in order ---
    def _next(self) -> None:
        queue = self.queue
        while queue and not self.closing:
            req = queue.popleft()
            self.active = req
            if req.error is not None:
                self._answer_error(req)
                self.active = None
                if req.close or not req.keep_alive:
                    self._close()
                    return
                continue
            self._dispatch(req)
            return
        if self.paused and self.transport is not None and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def _dispatch(self, req: _Request) -> None:
        deployment = req.deployment
        assert deployment is not None
        instances = deployment.instances
        index = pick_instance(instances, deployment.rotor, self.loop.time())
        deployment.rotor += 1
        if index is None:
            req.error = RoutingError(
                503,
                "NoHealthyInstance",
                f"deployment {deployment.name} has no instance to serve the request",
            )
            self._answer_error(req)
            self._after()
            return
        body_parts = req.body
        req.body = [b"".join(body_parts)] if len(body_parts) > 1 else body_parts
        req.timer = self.loop.call_later(deployment.timeout, self._on_timeout, req)
        self._send_to(req, instances[index])

    def _send_to(self, req: _Request, instance: InstanceState) -> None:
        instance.outstanding += 1
        req.instance = instance
        req.tried.append(instance)
        req.upstream = self._upstream_request(req, instance)
        conn = instance.take_idle()
        if conn is not None:
            req.conn = conn
            conn.send(self, req.upstream)
        else:
            req.connecting = self.loop.create_task(self._connect(req, instance))

    def _upstream_request(self, req: _Request, instance: InstanceState) -> bytes:
        headers = req.headers
        body = req.body[0] if req.body else b""
        parts = [
            req.method,
            b" ",
            instance.path_prefix,
            req.resource.encode("latin-1"),
            req.query,
            b" HTTP/1.1\r\nhost: ",
            instance.host_header,
            b"\r\nx-request-id: ",
            req.rid.encode("latin-1"),
            _CRLF,
        ]
        content_type = headers.get(b"content-type")
        if content_type is not None:
            parts += (b"content-type: ", content_type, _CRLF)
        client_rid = headers.get(b"x-ms-client-request-id")
        if client_rid is not None:
            parts += (b"x-ms-client-request-id: ", client_rid, _CRLF)
        if body or req.method == b"POST":
            parts += (b"content-length: ", str(len(body)).encode(), _CRLF)
        parts += (_CRLF, body)
        return b"".join(parts)

    async def _connect(self, req: _Request, instance: InstanceState) -> None:
        try:
            _, conn = await self.loop.create_connection(
                partial(UpstreamConnection, instance),
                instance.host,
                instance.port,
                ssl=self.gw.upstream_ssl if instance.tls else None,
            )
        except OSError as exc:
            if req.connecting is not None and not req.done:
                req.connecting = None
                self._connect_failed(req, instance, repr(exc))
            return
        if req.done or req.connecting is None:
            instance.give_back(conn)
            return
        req.connecting = None
        req.conn = conn
        conn.send(self, req.upstream)

    def _connect_failed(self, req: _Request, instance: InstanceState, reason: str) -> None:
        now = self.loop.time()
        instance.ejected_until = now + EJECT_S
        self._release(req)
        log.warning(
            "upstream.connect_failed",
            instance=instance.id,
            url=instance.url,
            error=reason,
            ejected_s=EJECT_S,
        )
        deployment = req.deployment
        assert deployment is not None
        index = pick_instance(deployment.instances, deployment.rotor, now)
        if index is not None and deployment.instances[index] not in req.tried:
            self._send_to(req, deployment.instances[index])
            return
        self._fail(req, 502, "BadGateway", f"could not reach an instance of {deployment.name}")

    # --- called by UpstreamConnection ---
    def upstream_response(self, status: int, headers: bytes, body: bytes) -> None:
        req = self.active
        if req is None or req.done:
            return
        req.conn = None
        self._release(req)
        deployment = req.deployment
        assert deployment is not None
        if status >= 500:
            self._finish(req, 424, JSON_CONTENT_TYPE, model_error_body(deployment.name), "ModelError")
        else:
            self._finish(req, status, headers, body, None)

    def upstream_failed(self, conn: UpstreamConnection, replay_safe: bool) -> None:
        req = self.active
        if req is None or req.done or req.conn is not conn:
            return
        req.conn = None
        instance = req.instance
        assert instance is not None
        if replay_safe and not req.replayed:
            # The instance closed an idle pooled connection as we reused it: the request
            # never reached it, so send it once more on a fresh connection.
            req.replayed = True
            req.connecting = self.loop.create_task(self._connect(req, instance))
            return
        self._release(req)
        self._fail(req, 502, "BadGateway", f"the connection to instance {instance.id} failed")

    def _on_timeout(self, req: _Request) -> None:
        req.timer = None
        if req.done or req is not self.active:
            return
        self._abandon(req)
        deployment = req.deployment
        assert deployment is not None
        self._fail(
            req,
            408,
            "RequestTimeout",
            f"deployment {deployment.name} did not answer within {int(deployment.timeout * 1000)} ms",
        )

    def _abandon(self, req: _Request) -> None:
        """Stop waiting upstream: drop the connection (it is mid-exchange) or the connect."""
        conn, req.conn = req.conn, None
        if conn is not None:
            conn.abort()
        task, req.connecting = req.connecting, None
        if task is not None:
            task.cancel()
        if req.timer is not None:
            req.timer.cancel()
            req.timer = None
        self._release(req)
        req.done = True

    @staticmethod
    def _release(req: _Request) -> None:
        instance, req.instance = req.instance, None
        if instance is not None:
            instance.outstanding -= 1

    # --- answers ---
    def _fail(self, req: _Request, status: int, code: str, message: str) -> None:
        self._finish(req, status, JSON_CONTENT_TYPE, error_body(code, message), code)

    def _answer_error(self, req: _Request) -> None:
        error = req.error
        assert error is not None
        req.done = True
        body = error_body(error.code, error.message)
        self._write(req, error.status, JSON_CONTENT_TYPE, body)
        self._log(req, error.status, error.code, len(body))

    def _answer_early(self, req: _Request) -> None:
        """Answer before the body is read (413, refused Expect), then drain and close."""
        req.answered = True
        req.close = True
        self._answer_error(req)
        self._close()

    def _finish(self, req: _Request, status: int, headers: bytes, body: bytes, code: str | None) -> None:
        req.done = True
        if req.timer is not None:
            req.timer.cancel()
            req.timer = None
        if self.transport is not None:
            self._write(req, status, headers, body)
        self._log(req, status, code, len(body))
        self._after()

    def _after(self) -> None:
        req, self.active = self.active, None
        if self.closing or (req is not None and (req.close or not req.keep_alive)):
            self._close()
            return
        if self.queue:
            self._next()
        elif self.paused and self.transport is not None and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def _write(self, req: _Request, status: int, headers: bytes, body: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        deployment = req.deployment
        if not req.keep_alive or req.close:
            connection = CONNECTION_CLOSE
        elif req.http10:
            connection = CONNECTION_KEEP_ALIVE
        else:
            connection = b""
        if status == 204 or status == 304:  # no body, and no content-length either
            length = b"\r\n"
            body = b""
        else:
            length = _CLEN + str(len(body)).encode() + _CRLF
        transport.write(
            b"".join(
                (
                    status_line(status),
                    self.gw.date.line,
                    headers,
                    deployment.header if deployment is not None else b"",
                    _RID,
                    req.rid.encode("latin-1"),
                    length,
                    connection,
                    _CRLF,
                    body,
                )
            )
        )

    def _log(self, req: _Request, status: int, code: str | None, bytes_out: int) -> None:
        endpoint = req.endpoint
        deployment = req.deployment
        tried = req.tried
        started = req.started
        # A plain tuple in AccessEntry's field order: the log thread does the rest.
        self.gw.record(
            (
                started + self.gw.wall_offset,
                req.method,
                req.path,
                endpoint.name if endpoint is not None else None,
                deployment.name if deployment is not None else None,
                tried[-1].id if tried else None,
                status,
                code,
                (time.perf_counter() - started) * 1000.0,
                req.body_size,
                bytes_out,
                req.rid or None,
            )
        )

    # --- connection lifecycle ---
    def _fatal(self, status: int, code: str, message: str) -> None:
        """The byte stream cannot be parsed further: answer if it is our turn, then close."""
        req, self.req = self.req, None
        self.draining = False
        if req is not None and req.answered:
            self._close()
            return
        if self.active is None and not self.queue and self.transport is not None:
            req = req or _Request(time.perf_counter())
            req.rid = req.rid or fresh_request_id()
            req.close = True
            req.error = RoutingError(status, code, message)
            self._answer_error(req)
        self._close()

    def _close(self) -> None:
        """Start no more requests; close once the answer owed is written, after a short drain
        when the client may still be uploading a body we refused."""
        self.closing = True
        transport = self.transport
        if transport is None or self.close_scheduled:
            return
        if self.active is not None and not self.active.done:
            if not self.paused:  # _after() closes once the in-flight answer is written
                self.paused = True
                transport.pause_reading()
            return
        self.close_scheduled = True
        if self.req is not None and self.req.answered:
            # Keep reading (and dropping) the upload a moment so the client sees our
            # answer instead of a connection reset.
            self.draining = True
            self.loop.call_later(LINGER_S, self._close_now)
            return
        transport.close()

    def _close_now(self) -> None:
        self.closing = True
        self.draining = False
        self.close_scheduled = True
        if self.transport is not None:
            self.transport.close()

    def finish_up(self) -> None:
        """Gateway stopping: take no new request; close once the one in flight is answered."""
        self._close()

    def shut(self) -> None:
        """Close the connection now; in-flight work is abandoned."""
        if self.transport is not None:
            self.transport.close()

    def sweep(self) -> None:
        """Close a connection with no request in flight and no bytes since the last sweep."""
        if self.active is None and not self.queue and self.activity == self.swept:
            self.shut()
        self.swept = self.activity
