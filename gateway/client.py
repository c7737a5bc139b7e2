"""One client connection: an ``asyncio.Protocol`` parsing requests with httptools,
authenticating and routing them, and writing and logging their answers.

A connection serves its requests one at a time, in order (pipelined requests wait in a
queue of at most ``MAX_PIPELINED``, then reading pauses). Routing is the pure functions in
``gateway.routing``; once it is a request's turn, ``gateway.admission`` gives it a slot, a
place in a queue or a refusal, and ``gateway.upstream``'s ``Sender`` sends it; the instance's
answer comes back here (this connection is the upstream ``Exchange``). Timers (request
deadlines, slow clients, idle connections) are the ``Gateway``'s (``gateway.gateway``).

Failures upstream: a request written on a reused keep-alive connection that closes with no
byte back is sent once more on a fresh connection (``Sender.resend``); a refused connect, or
one an endpoint allows (``tidegate/retry_dropped_requests``: read and dropped with no byte
back), goes to another instance (``Admission.elsewhere``); anything else is a 502, and an
instance's 5xx is a 424.

Hazards kept in mind here: httptools calls back synchronously from ``feed_data`` (several
requests may complete in one call), so nothing in a callback may raise; every request is
answered and logged exactly once (``finish``, ``_answer_error``, or 499 when the client
goes); a request over ``MAX_HEAD_BYTES`` of head, or one the parser cannot read, is answered
if it is its turn and the connection closed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Final, cast

import httptools

from config.routes import HEALTH_PATH
from gateway.gateway import Gateway
from gateway.request import Request
from gateway.responses import (
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    CONTINUE,
    JSON_CONTENT_TYPE,
    error_body,
    health_body,
    model_error_body,
    status_line,
)
from gateway.routing import (
    SCORE,
    SWAGGER,
    RoutingError,
    bearer_token,
    choose_deployment,
    fresh_request_id,
    key_matches,
    request_id,
)
from gateway.table import EndpointState, rate_limited, token_expiry
from gateway.upstream import InstanceState, UpstreamConnection
from gateway.windows import LIMITED_ENDPOINT_RATE, LIMITED_MODEL, bucket_of

_perf = time.perf_counter

MAX_HEAD_BYTES: Final = 64 * 1024  # request line + headers
MAX_PIPELINED: Final = 32  # queued requests before the connection stops reading
LINGER_S: Final = 2.0  # how long a rejected upload is drained before closing

_WANTED_HEADERS: Final = frozenset(
    {
        b"host",
        b"authorization",
        b"content-type",
        b"content-length",
        b"azureml-model-deployment",
        b"x-request-id",
        b"x-ms-client-request-id",
        b"traceparent",
        b"tracestate",
        b"expect",
        b"connection",
    }
)
_METHODS: Final = {b"POST", b"GET"}
_HEALTH_PATH: Final = HEALTH_PATH.encode()
_HEALTHY: Final = RoutingError(200, "Healthy", "this gateway takes new connections")
_NO_ROUTES: Final = RoutingError(503, "NoRoutes", "this gateway holds no endpoint's route yet")
_DRAINING: Final = RoutingError(503, "Draining", "this gateway is draining; connect again for another one")
_RESOURCE_BYTES: Final = {SCORE: SCORE.encode(), SWAGGER: SWAGGER.encode()}
_CRLF: Final = b"\r\n"
_RID: Final = b"x-request-id: "
_CLEN: Final = b"\r\ncontent-length: "


def protocol_factory(gateway: Gateway) -> Callable[[], ClientProtocol]:
    """What a listener calls for each connection it accepts."""
    return partial(ClientProtocol, gateway)


class ClientProtocol(asyncio.Protocol):
    """One client connection (plain or TLS): HTTP/1.1 keep-alive, answers in request order."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.req: Request | None = None  # being parsed
        self.active: Request | None = None  # being answered
        self.queue: deque[Request] = deque()
        self.in_head = False
        self.closing = False  # no new requests are parsed or started
        self.draining = False  # closing, but still reading a rejected upload to its end
        self.close_scheduled = False
        self.paused = False
        self.activity = 0
        self.swept = -1
        self.auth_endpoint: EndpointState | None = None
        self.auth_header: bytes | None = None
        self.auth_expires: float | None = None  # a remembered token's expiry (None: a key)
        # Held, and its methods called on it (one admit and one release per request): cheaper
        # than holding its bound methods (measured with cachegrind, about 140 instructions a call).
        self.admission = gateway.admission

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        gw = self.gw
        if len(gw.connections) >= gw.max_connections:
            gw.refused += 1
            self.closing = True
            self.transport.abort()
            return
        gw.connections.add(self)
        gw.opened += 1

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
        self.req = Request(self, _perf())
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
        req.read_from = _perf()
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
        if req is None:
            return
        req.body_size += len(body)  # counted even when dropped: the minimum rate reads it
        if req.error is not None:
            return  # answered or to be answered without the body: drop it
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
    def _route(self, req: Request) -> None:
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
            req.rid = gw.request_id()
            req.rid_bytes = req.rid.encode("latin-1")
        else:
            rid = request_id(
                xrid.decode("latin-1") if xrid else None,
                crid.decode("latin-1") if crid else None,
                "",
            )
            if isinstance(rid, RoutingError):
                req.rid = gw.request_id()
                req.rid_bytes = req.rid.encode("latin-1")
                req.error = rid
                return
            req.rid = rid or gw.request_id()
            req.rid_bytes = req.rid.encode("latin-1")
        if url[:1] != b"/":
            req.error = RoutingError(400, "BadRequest", "the request target must be a path")
            return
        target = gw.target(req.path, headers.get(b"host"))
        if isinstance(target, RoutingError):
            # Off the routed path: only a path no endpoint has reaches this comparison.
            req.error = self._health(req) if req.path == _HEALTH_PATH else target
            return
        if req.method not in _METHODS or (target.resource == SWAGGER and req.method != b"GET"):
            req.error = RoutingError(405, "MethodNotAllowed", f"{req.method.decode()} is not allowed here")
            return
        req.resource_bytes = _RESOURCE_BYTES[target.resource]
        endpoint = gw.live.get(target.endpoint)
        if endpoint is None:
            req.error = RoutingError(404, "EndpointNotFound", f"no endpoint named {target.endpoint!r}")
            return
        req.endpoint = endpoint
        authorization = headers.get(b"authorization")
        # A keep-alive client repeats the same header: the last one that passed for this
        # endpoint state (rebuilt on every push, so rotation invalidates it) is remembered on
        # this connection only, until a token's expiry; the table holds only hashes and public keys.
        if (
            endpoint is not self.auth_endpoint
            or authorization != self.auth_header
            or (self.auth_expires is not None and time.time() >= self.auth_expires)
        ):
            credential = bearer_token(authorization.decode("latin-1")) if authorization else None
            if endpoint.auth_mode == "key":
                if not key_matches(credential, endpoint.key_sha256):
                    req.error = RoutingError(
                        401, "Unauthorized", "missing or invalid key: send Authorization: Bearer <key>"
                    )
                    return
                self.auth_expires = None
            else:
                expires = token_expiry(endpoint, credential, time.time())
                if expires is None:
                    req.error = RoutingError(
                        401,
                        "Unauthorized",
                        "missing, invalid or expired token: send Authorization: Bearer <accessToken> "
                        "(online-endpoint get-credentials)",
                    )
                    return
                self.auth_expires = expires
            self.auth_endpoint = endpoint
            self.auth_header = authorization
        req.max_bytes = endpoint.max_bytes
        length = headers.get(b"content-length")
        if length is not None and int(length) > endpoint.max_bytes:
            req.error = self._too_large(req)
            return
        limiter = endpoint.limiter
        if limiter is not None:
            # The endpoint's own rate, before a deployment is chosen: a 429 here is the
            # endpoint's (its window counts it), never held against a deployment's gates.
            wait = limiter.take(_perf())
            if wait:
                req.error = rate_limited(endpoint.name, endpoint.route.max_requests_per_second, wait)
                req.limited = LIMITED_ENDPOINT_RATE
                return
        target_header = headers.get(b"azureml-model-deployment")
        req.targeted = target_header is not None
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

    def _health(self, req: Request) -> RoutingError:
        """The load balancer's probe: 200 while this gateway takes new connections; 503 once it
        drains, or while it serves no endpoint yet (answered by the gateway itself, like an
        error, never sent upstream)."""
        if req.method != b"GET":
            return RoutingError(405, "MethodNotAllowed", f"{req.method.decode()} is not allowed here")
        gw = self.gw
        if gw.draining:
            return _DRAINING
        if not gw.live:  # a new gateway before its first table: the balancer must not send it clients
            return _NO_ROUTES
        return _HEALTHY

    @staticmethod
    def _too_large(req: Request) -> RoutingError:
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
            body_parts = req.body
            req.body = [b"".join(body_parts)] if len(body_parts) > 1 else body_parts
            self.admission.admit(req)
            return
        if self.paused and self.transport is not None and not self.closing:
            self._resume()

    def _resume(self) -> None:
        """Read again; the request being read is not charged for the time we did not."""
        assert self.transport is not None
        self.paused = False
        self.transport.resume_reading()
        if self.req is not None:
            self.req.read_from = _perf()

    # --- called by UpstreamConnection (this connection is its Exchange) and the Sender ---
    def upstream_response(self, status: int, headers: bytes, body: bytes) -> None:
        req = self.active
        if req is None or req.done:
            return
        req.conn = None
        now = _perf()
        instance = req.instance
        if instance is not None and instance.failures:
            instance.failures = 0
        self.admission.release(req, now, False)  # no wake yet: the queue gets the slot after the answer
        deployment = req.deployment
        assert deployment is not None
        if req.mirrors is not None:
            req.upstream_status = status
            req.upstream_body = body
            req.upstream_ms = (now - req.sent_at) * 1000.0
        if status >= 500:
            self.finish(req, 424, JSON_CONTENT_TYPE, model_error_body(deployment.name), "ModelError")
        else:
            self.finish(req, status, headers, body, None)
        if deployment.queued:
            self.admission.wake(deployment)

    def upstream_failed(self, conn: UpstreamConnection, replay_safe: bool) -> None:
        req = self.active
        if req is None or req.done or req.conn is not conn:
            return
        req.conn = None
        instance = req.instance
        assert instance is not None
        gw = self.gw
        if replay_safe and gw.sender.resend(self, req, instance, req.upstream):
            # The instance closed an idle pooled connection as we reused it: nothing came
            # back, so it was sent once more on a fresh connection (see gateway.upstream).
            return
        endpoint = req.endpoint
        if not conn.received and not req.replayed and endpoint is not None and endpoint.retry_dropped:
            # The endpoint allows it (tidegate/retry_dropped_requests): the instance read the
            # request and dropped it unanswered, as one killed in run() does; once more,
            # elsewhere, as for a refused connect.
            req.replayed = True
            gw.instance_failed(instance)
            self.admission.elsewhere(
                req, instance, "upstream.dropped", "read the request, closed with no answer"
            )
            return
        self.admission.release(req)
        if not conn.received:
            gw.instance_failed(instance)
        self.fail(req, 502, "BadGateway", f"the connection to instance {instance.id} failed")

    def connect_failed(self, req: Request, instance: InstanceState, reason: str) -> None:
        """Nothing reached the instance: try another one of the deployment not tried yet;
        with none left, hold the request for an instance (a push or a probe brings one)."""
        self.admission.elsewhere(req, instance, "upstream.connect_failed", reason)

    def request_timed_out(self, req: Request) -> None:
        """The deadline sweep found ``req`` on its instance past request_timeout_ms."""
        if req.done or req is not self.active:
            return
        self._abandon(req)
        deployment = req.deployment
        assert deployment is not None
        self.fail(
            req,
            408,
            "RequestTimeout",
            f"deployment {deployment.name} did not answer within {int(deployment.timeout * 1000)} ms",
        )

    def _abandon(self, req: Request) -> None:
        """Stop waiting upstream: drop the connection (it is mid-exchange), the connect or
        the place in the queue; the slot goes to the next waiting request."""
        conn, req.conn = req.conn, None
        if conn is not None:
            conn.abort()
        task, req.connecting = req.connecting, None
        if task is not None:
            task.cancel()
        if req.deadline:
            req.deadline = 0.0
            self.gw.timed.discard(req)
        if req.waiting:
            self.admission.leave_queue(req)
        self.admission.release(req)
        req.done = True

    # --- answers ---
    def fail(self, req: Request, status: int, code: str, message: str) -> None:
        self.finish(req, status, JSON_CONTENT_TYPE, error_body(code, message), code)

    def _answer_error(self, req: Request) -> None:
        error = req.error
        assert error is not None
        req.done = True
        if error.status < 400:  # the health path's 200
            body = health_body(error.code, error.message)
        else:
            body = error_body(error.code, error.message, error.limit)
        headers = JSON_CONTENT_TYPE
        if error.retry_after:
            headers += b"retry-after: %d\r\n" % error.retry_after
        self._write(req, error.status, headers, body)
        self._log(req, error.status, error.code, len(body))

    def _answer_early(self, req: Request) -> None:
        """Answer before the body is read (413, refused Expect), then drain and close."""
        req.answered = True
        req.close = True
        self._answer_error(req)
        self._close()

    def finish(self, req: Request, status: int, headers: bytes, body: bytes, code: str | None) -> None:
        req.done = True
        if req.deadline:
            req.deadline = 0.0
            self.gw.timed.discard(req)
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
            self._resume()

    def _write(self, req: Request, status: int, headers: bytes, body: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        deployment = req.deployment
        if not req.keep_alive or req.close:
            connection = CONNECTION_CLOSE
        elif self.gw.draining and not self.queue:
            # Draining: this answer ends the connection (`_after` closes it), so the client's
            # next request opens one the load balancer sends to a gateway still in rotation.
            # Requests already pipelined behind it are answered first.
            req.close = True
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
                    req.rid_bytes,
                    length,
                    connection,
                    _CRLF,
                    body,
                )
            )
        )

    def _log(self, req: Request, status: int, code: str | None, bytes_out: int) -> None:
        """Every request ends here once: windows, mirror comparisons, the access log."""
        gw = self.gw
        started = req.started
        latency_ms = (_perf() - started) * 1000.0
        endpoint = req.endpoint
        deployment = req.deployment
        if gw.windows_on and endpoint is not None:
            bucket = bucket_of(latency_ms)
            endpoint.window.record_at(status, latency_ms, bucket)
            if status == 429:  # by reason: the limit the gateway named, else the instance's own
                limited = req.limited or LIMITED_MODEL
                endpoint.window.record_limited(limited)
                if deployment is not None:
                    deployment.window.record_limited(limited)
            if deployment is not None:
                window = deployment.window
                window.record_at(status, latency_ms, bucket)
                if req.counted:
                    window.in_flight -= 1
        mirrors = req.mirrors
        if mirrors is not None:
            upstream_ms = req.upstream_ms
            for copy in mirrors:
                copy.live_finished(req.upstream_status, req.upstream_body, upstream_ms)
            req.mirrors = None
            req.upstream_body = b""
        if gw.logging:
            instance = req.last_instance
            # A plain tuple in AccessEntry's field order: the log thread does the rest.
            gw.record(
                (
                    started + gw.wall_offset,
                    req.method,
                    req.path,
                    endpoint.name if endpoint is not None else None,
                    deployment.name if deployment is not None else None,
                    instance.id if instance is not None else None,
                    status,
                    code,
                    latency_ms,
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
            req = req or Request(self, _perf())
            if not req.rid:
                req.rid = fresh_request_id()
                req.rid_bytes = req.rid.encode("latin-1")
            req.close = True
            req.error = RoutingError(status, code, message)
            self._answer_error(req)
        self._close()

    def too_slow(self, message: str) -> None:
        """The client is sending its request too slowly: 408 (when it is this request's turn
        to be answered) and close. Counted for the endpoint, never against a deployment."""
        if self.req is not None:
            self.req.deployment = None
        self._fatal(408, "RequestTimeout", message)

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

    def idle(self) -> bool:
        """No request under way: none being read, answered or waiting its turn."""
        return self.active is None and not self.queue and self.req is None and not self.closing

    def sweep(self) -> None:
        """Close a connection with no request in flight and no bytes since the last sweep."""
        if self.active is None and not self.queue and self.activity == self.swept:
            self.shut()
        self.swept = self.activity
