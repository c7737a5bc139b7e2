"""The data-plane hot path: an ``asyncio.Protocol`` per client connection.

Requests are parsed with httptools, routed with the pure functions in ``gateway.routing``
and forwarded over pooled keep-alive connections (``gateway.upstream``). A connection
serves its requests one at a time, in order (pipelined requests wait in a queue).

Per deployment, each instance takes at most ``limit`` requests at once (its
``max_concurrent_requests_per_instance``, shared between gateway processes); beyond that a
request waits in the deployment's bounded FIFO queue for up to ``max_queue_wait_ms``, then
is answered 429. The instance is chosen by least outstanding requests among the healthy
ones; one that fails ``EJECT_AFTER`` connections in a row (refused, or closed with no byte
back) is ejected until a probe (``GET /``) answers, after a back-off doubling from
``EJECT_BASE_S``. With no healthy instance (none in the route, or every one ejected) a
request is held in the same queue for up to ``request_timeout_ms`` (a recovery, not an
overload: ``max_queue_wait_ms`` does not apply) until a push or a probe brings one, then
503; a push that takes the deployment or the endpoint away answers the held ones 404. Held
requests that find the instances back but full become ordinary waiters from that moment;
waiters that see the last healthy instance go become held ones. ``request_timeout_ms`` runs
from the moment the request is sent to an instance (the queue has its own bound) and ends
in 408 with the slot handed on.

Retries: a request goes to another instance only when nothing reached the first (the
connect failed), each instance at most once; when every instance refused it, it is held as
above (at the front of the queue), so the only instance of a deployment being killed and
replaced fails only the requests it had already accepted. A held request may go to any
instance a push or a probe brings, one that refused it included: nothing reached it. One
exception, kept from the first version: a request written on a reused keep-alive connection
that closes with no byte back is sent once more on a fresh connection, because that is how
an instance closing an idle connection just as we reuse it looks; an instance that read the
request and died at that moment would see it twice. And one the endpoint opts into
(``tidegate/retry_dropped_requests``): a request an instance read and dropped with no byte
back, as one killed in run() does, is sent once more, to another instance as after a refused
connect; at most one resend per request, whatever its cause.

Slow and hostile clients: a request's line and headers must arrive within
``header_timeout_s`` of its first byte, and its body at ``min_body_rate`` bytes/s or faster
once ``body_grace_s`` has passed since the headers (time spent with reading paused by us
does not count); else 408 and the connection is closed. Both are checked by the
once-a-second tick, not a timer per request. A connection with no byte for one to two
``idle_timeout_s`` between requests is closed (one sweep of every connection per period).
Past ``max_connections`` open client connections a new one is closed at once (counted in
``refused``).

Hazards kept in mind here: httptools calls back synchronously from ``feed_data`` (several
requests may complete in one call), so nothing in a callback may raise; every request
releases its instance's outstanding count exactly once (``_release``) and leaves the queue
exactly once (``waiting`` is cleared by whoever takes it out); a freed slot goes to the
queue before any new arrival (a new request queues behind waiting ones).
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Final, cast

import httptools
import structlog

from gateway.accesslog import AccessLog
from gateway.mirror import MirrorCopy
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
    FULL,
    SCORE,
    SWAGGER,
    RequestIds,
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
from gateway.table import DeploymentState, EndpointState, RouteTable, rate_limited
from gateway.upstream import InstanceState, UpstreamConnection
from gateway.windows import (
    HORIZON_S,
    MIRROR_DROPPED,
    MIRROR_REQUESTS,
    InstanceLoad,
    WindowData,
    bucket_of,
)

_perf = time.perf_counter

log = structlog.get_logger("gateway.proxy")

MAX_HEAD_BYTES: Final = 64 * 1024  # request line + headers
MAX_PIPELINED: Final = 32  # queued requests before the connection stops reading
LINGER_S: Final = 2.0  # how long a rejected upload is drained before closing
EJECT_AFTER: Final = 5  # connection failures in a row that eject an instance
EJECT_BASE_S: Final = 1.0  # first back-off before the probe; doubles per ejection in a row
EJECT_MAX_S: Final = 30.0
PROBE_TIMEOUT_S: Final = 2.0
RETRY_AFTER: Final = b"retry-after: 1\r\n"
TOO_MANY_HEADERS: Final = JSON_CONTENT_TYPE + RETRY_AFTER
PRUNE_EVERY_S: Final = 60
# Request timeouts and queue waits are checked by one sweep this often (not a timer per
# request: uvloop's call_later plus cancel costs more than the rest of the limiter).
DEADLINE_SWEEP_S: Final = 0.01
FEATURES: Final = frozenset({"limits", "windows", "accesslog", "mirror"})
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
_RESOURCE_BYTES: Final = {SCORE: SCORE.encode(), SWAGGER: SWAGGER.encode()}
_CRLF: Final = b"\r\n"
_RID: Final = b"x-request-id: "
_CLEN: Final = b"\r\ncontent-length: "


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """How slowly a client may send a request, and how many may be connected at once."""

    header_timeout_s: float = 10.0
    min_body_rate: float = 1024.0  # bytes/s once the grace is over; 0: no minimum
    body_grace_s: float = 5.0
    max_connections: int = 10_000
    idle_timeout_s: float = 30.0  # idle for one to two of these between requests: closed


class Gateway:
    """What every client connection shares: the route table, windows, log, cached bytes."""

    def __init__(
        self,
        table: RouteTable,
        domain: str,
        access_log: AccessLog,
        upstream_ssl: ssl.SSLContext | None = None,
        *,
        features: Iterable[str] = FEATURES,
        client_limits: ClientLimits | None = None,
    ) -> None:
        self.table = table
        self.live = table.live  # mutated in place by the table, never rebound
        self.windows = table.windows
        self.domain = domain
        self.record = access_log.record
        self.date = DateHeader()
        self.wall_offset = 0.0
        self.connections: set[ClientProtocol] = set()
        self.targets: dict[tuple[bytes, bytes | None], RequestTarget | RoutingError] = {}
        self.upstream_ssl = upstream_ssl
        self.request_id = RequestIds().new  # a bound method: calling the instance costs ~0.1 µs more
        # Features the bench turns off one at a time to price them; all on in service.
        enabled = frozenset(features)
        self.limits = "limits" in enabled
        self.windows_on = "windows" in enabled
        self.logging = "accesslog" in enabled
        self.mirroring = "mirror" in enabled
        self.second = int(time.time())  # the second windows are recording into
        self.second_started = _perf()
        self.opened = 0  # client connections accepted since start
        self.client_limits = limits = client_limits or ClientLimits()
        self.max_connections = limits.max_connections
        self.refused = 0  # client connections closed at once: max_connections were open
        self._refused_logged = 0
        self._ticker: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._deadliner: asyncio.TimerHandle | None = None
        self._probes: set[asyncio.Task[None]] = set()
        # What the deadline sweep checks: requests and mirror copies on an instance (each
        # with ``deadline`` and ``expire()``), and deployments with requests waiting.
        self.timed: set[_Request | MirrorCopy] = set()
        self.queueing: set[DeploymentState] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        table.on_rebuilt = self._rebuilt
        table.on_dropped = self._dropped

    def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.second = int(time.time())
        self.second_started = _perf()
        self._tick()
        self._sweeper = loop.call_later(self.client_limits.idle_timeout_s, self._sweep)
        self._deadliner = loop.call_later(DEADLINE_SWEEP_S, self._check_deadlines)

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
        for handle in (self._ticker, self._sweeper, self._deadliner):
            if handle is not None:
                handle.cancel()
        for task in list(self._probes):
            task.cancel()

    def protocol_factory(self) -> ClientProtocol:
        return ClientProtocol(self)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = time.time()
        perf = _perf()
        self.wall_offset = now - perf
        self.date.refresh(now)
        second = int(now)
        if second != self.second:
            closing = self.second
            if self.windows_on:
                self.windows.close(closing)
                for endpoint in self.live.values():
                    for deployment in endpoint.deployments.values():
                        for instance in deployment.instances:
                            instance.seal_second(closing, perf)
                if second % PRUNE_EVERY_S == 0:
                    self.windows.prune(second, self._window_keys())
            self.second = second
            self.second_started = perf
        if self.connections:
            self._check_reads(perf)
        self._ticker = loop.call_later(1.0 - (now % 1.0) + 0.001, self._tick)

    def _check_reads(self, now: float) -> None:
        """Once a second: 408 for a request whose head is late or whose body is too slow."""
        limits = self.client_limits
        head_by = now - limits.header_timeout_s
        rate = limits.min_body_rate
        grace = limits.body_grace_s
        late_head: list[ClientProtocol] = []
        slow_body: list[ClientProtocol] = []
        for conn in self.connections:
            req = conn.req
            if req is None or conn.closing or conn.paused or req.answered:
                continue  # between requests (the idle sweep's), or we are not reading
            if conn.in_head:
                if req.read_from < head_by:
                    late_head.append(conn)
            elif rate and req.read_from + grace + req.body_size / rate < now:
                slow_body.append(conn)
        # Closing a connection leaves self.connections alone until connection_lost, later.
        for conn in late_head:
            conn.too_slow(f"the request line and headers did not arrive within {limits.header_timeout_s:g} s")
        for conn in slow_body:
            conn.too_slow(f"the request body arrived slower than {rate:g} bytes/s")

    def _check_deadlines(self) -> None:
        now = _perf()
        timed = self.timed
        if timed:
            expired = [item for item in timed if item.deadline <= now]
            for item in expired:
                timed.discard(item)
                item.expire()
        if self.queueing:
            for deployment in list(self.queueing):
                waiting = deployment.waiting
                wait = deployment.queue_wait
                hold = deployment.timeout
                while waiting:
                    req = waiting[0]
                    if not req.waiting:
                        waiting.popleft()
                    elif req.queued_at + (hold if req.held else wait) <= now:  # FIFO: oldest first
                        waiting.popleft()
                        req.proto._wait_expired(req, now)
                    else:
                        break
                if deployment.held:
                    # Held and overloaded waiters have different bounds: the order says nothing.
                    expired = [
                        r for r in waiting if r.waiting and r.queued_at + (hold if r.held else wait) <= now
                    ]
                    for req in expired:
                        if req.waiting:
                            req.proto._wait_expired(req, now)
                if not deployment.queued:
                    self.queueing.discard(deployment)
        self._deadliner = asyncio.get_running_loop().call_later(DEADLINE_SWEEP_S, self._check_deadlines)

    def _window_keys(self) -> list[tuple[str, str]]:
        keys = []
        for name, endpoint in self.live.items():
            keys.append((name, ""))
            keys.extend((name, deployment) for deployment in endpoint.deployments)
        return keys

    def _sweep(self) -> None:
        for conn in list(self.connections):
            conn.sweep()
        if self.refused != self._refused_logged:  # once a sweep, however many there were
            log.warning(
                "gateway.connections_refused",
                refused=self.refused - self._refused_logged,
                since_start=self.refused,
                max_connections=self.max_connections,
            )
            self._refused_logged = self.refused
        self._sweeper = asyncio.get_running_loop().call_later(self.client_limits.idle_timeout_s, self._sweep)

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

    # --- the limiter's queue ---
    def wake(self, deployment: DeploymentState) -> None:
        """Give free slots to waiting requests, oldest first."""
        waiting = deployment.waiting
        limit = deployment.limit if self.limits else 0
        now = _perf()
        while deployment.queued and waiting:
            req = waiting[0]
            if not req.waiting:
                waiting.popleft()
                continue
            index = pick_instance(deployment.instances, deployment.rotor, now, limit)
            if index is None:
                if deployment.held < deployment.queued:
                    self._hold_all(deployment)
                return
            if index < 0:
                if deployment.held:
                    self._unhold(deployment, now)
                return
            deployment.rotor += 1
            waiting.popleft()
            req.waiting = False
            deployment.queued -= 1
            if req.held:
                req.held = False
                deployment.held -= 1
            proto = req.proto
            if self.windows_on:
                deployment.window.record_queue_wait((now - req.queued_at) * 1000.0)
            proto._send_to(req, deployment.instances[index], now)

    @staticmethod
    def _unhold(deployment: DeploymentState, now: float) -> None:
        """Instances are back but full: held requests wait as overloaded ones, from now."""
        for req in deployment.waiting:
            if req.waiting and req.held:
                req.held = False
                req.queued_at = now
        deployment.held = 0

    @staticmethod
    def _hold_all(deployment: DeploymentState) -> None:
        """No healthy instance is left (the last one went, or was ejected): requests waiting
        for a slot on one now wait for an instance, up to request_timeout_ms from when they
        came, as a request arriving now would."""
        for req in deployment.waiting:
            if req.waiting and not req.held:
                req.held = True
        deployment.held = deployment.queued

    def _dropped(self, deployments: list[DeploymentState], endpoint_gone: bool) -> None:
        """A push or delete took these away: their held requests get the 404 routing gives."""
        for deployment in deployments:
            if not deployment.held:
                continue
            code, message = _gone(deployment, endpoint_gone)
            for req in [r for r in deployment.waiting if r.waiting and r.held]:
                if req.waiting:
                    req.proto._leave_queue(req)
                    req.proto._fail(req, 404, code, message)

    def _rebuilt(self, endpoint: EndpointState) -> None:
        """A push may have added instances: hand their slots to waiting requests."""
        if self.loop is None:
            return
        for deployment in endpoint.deployments.values():
            if deployment.queued:
                self.wake(deployment)

    # --- instance health ---
    def instance_failed(self, instance: InstanceState) -> None:
        """A connection to ``instance`` failed before any byte came back."""
        instance.failures += 1
        if instance.failures < EJECT_AFTER or instance.ejected_until or instance.retired:
            return
        backoff = min(EJECT_MAX_S, EJECT_BASE_S * 2 ** min(instance.ejections, 16))
        instance.ejected_until = math.inf
        instance.ejections += 1
        log.warning(
            "upstream.ejected",
            instance=instance.id,
            url=instance.url,
            failures=instance.failures,
            probe_in_s=backoff,
        )
        assert self.loop is not None
        self.loop.call_later(backoff, self._probe_later, instance)

    def _probe_later(self, instance: InstanceState) -> None:
        if instance.retired:
            return
        task = asyncio.get_running_loop().create_task(self._probe(instance))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, instance: InstanceState) -> None:
        alive = await probe(instance, self.upstream_ssl)
        if instance.retired:
            return
        if not alive:
            backoff = min(EJECT_MAX_S, EJECT_BASE_S * 2 ** min(instance.ejections, 16))
            instance.ejections += 1
            log.info("upstream.probe_failed", instance=instance.id, url=instance.url, probe_in_s=backoff)
            asyncio.get_running_loop().call_later(backoff, self._probe_later, instance)
            return
        instance.ejected_until = 0.0
        instance.failures = 0
        instance.ejections = 0
        log.info("upstream.returned", instance=instance.id, url=instance.url)
        for endpoint in self.live.values():
            self._rebuilt(endpoint)

    # --- mirroring ---
    def mirror(self, req: _Request, endpoint: EndpointState, now: float) -> None:
        """Copy ``req`` to each shadow deployment its share says; never waits for a slot."""
        copies: list[MirrorCopy] = []
        chosen = req.deployment
        for deployment, share in endpoint.mirrors:
            if deployment is chosen or random.random() >= share:
                continue
            window = deployment.window
            limit = deployment.limit if self.limits else 0
            index = pick_instance(deployment.instances, deployment.rotor, now, limit)
            deployment.rotor += 1
            if index is None or index < 0 or deployment.queued:
                window.record_mirror(MIRROR_DROPPED)
                continue
            instance = deployment.instances[index]
            copy = MirrorCopy(self, deployment, instance, upstream_request(req, instance))
            window.record_mirror(MIRROR_REQUESTS)
            copy.start(now)
            copies.append(copy)
        if copies:
            req.mirrors = copies

    # --- reading the windows ---
    def window_data(self, endpoint: str, deployment: str, seconds: float) -> WindowData:
        """This process's part of a window (the admin API sums the processes)."""
        window = self.windows.find(endpoint, deployment)
        data = window.data(seconds, self.second) if window is not None else WindowData.empty()
        state = self.live.get(endpoint.lower())
        dep = state.deployments.get(deployment) if state is not None and deployment else None
        if dep is not None:
            now = _perf()
            span = max(1, min(HORIZON_S - 1, math.ceil(seconds)))
            partial_s = now - self.second_started
            for instance in dep.instances:
                busy, covered = instance.busy_over(span, self.second, now, partial_s)
                data.instances[instance.id] = InstanceLoad(busy, covered, dep.instance_limit)
        return data


async def probe(instance: InstanceState, upstream_ssl: ssl.SSLContext | None) -> bool:
    """Whether the instance answers HTTP at all (``GET /``, azmlinfsrv's liveness route)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                instance.host, instance.port, ssl=upstream_ssl if instance.tls else None
            )
            writer.write(
                b"GET "
                + instance.path_prefix
                + b"/ HTTP/1.1\r\nhost: "
                + instance.host_header
                + b"\r\nconnection: close\r\n\r\n"
            )
            line = await reader.readline()
            return line.startswith(b"HTTP/1.")
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    finally:
        if writer is not None:
            writer.close()


def _gone(deployment: DeploymentState, endpoint_gone: bool) -> tuple[str, str]:
    """The 404 a request for a deployment a push or delete took away gets (code, message)."""
    if endpoint_gone:
        return "EndpointNotFound", f"no endpoint named {deployment.endpoint!r}"
    return "DeploymentNotFound", f"no deployment named {deployment.name!r}"


def _any_healthy(instances: list[InstanceState], now: float) -> bool:
    for instance in instances:
        if instance.ejected_until <= now:
            return True
    return False


def upstream_request(req: _Request, instance: InstanceState) -> bytes:
    """The request as the instance gets it: its own path prefix and host, our request id."""
    headers = req.headers
    body = req.body[0] if req.body else b""
    parts = [
        req.method,
        b" ",
        instance.path_prefix,
        req.resource_bytes,
        req.query,
        b" HTTP/1.1\r\nhost: ",
        instance.host_header,
        b"\r\nx-request-id: ",
        req.rid_bytes,
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


class _Request:
    """One request from parse to answer."""

    __slots__ = (
        "proto",
        "started",
        "read_from",
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
        "targeted",
        "instance",
        "last_instance",
        "tried",
        "rid",
        "rid_bytes",
        "resource_bytes",
        "query",
        "path",
        "body",
        "body_size",
        "max_bytes",
        "upstream",
        "conn",
        "connecting",
        "deadline",
        "replayed",
        "done",
        "counted",
        "waiting",
        "held",
        "queued_at",
        "sent_at",
        "upstream_status",
        "upstream_body",
        "upstream_ms",
        "mirrors",
    )

    def __init__(self, proto: ClientProtocol, started: float) -> None:
        self.proto = proto
        self.started = started
        self.read_from = started  # from when the read deadlines count (head, then body)
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
        self.targeted = False  # the client named the deployment (never mirrored)
        self.instance: InstanceState | None = None  # holds a slot on it
        self.last_instance: InstanceState | None = None
        self.tried: list[InstanceState] | None = None  # instances that refused or dropped it
        self.rid = ""
        self.rid_bytes = b""
        self.resource_bytes = b""
        self.query = b""
        self.path = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.max_bytes = 0
        self.upstream = b""
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.deadline = 0.0  # while on an instance: when it times out (in Gateway.timed)
        self.replayed = False
        self.done = False
        self.counted = False  # in its deployment's in-flight gauge
        self.waiting = False  # in its deployment's queue
        self.held = False  # ... waiting for a healthy instance (counted in deployment.held)
        self.queued_at = 0.0
        self.sent_at = 0.0
        self.upstream_status = 0
        self.upstream_body = b""
        self.upstream_ms: float | None = None
        self.mirrors: list[MirrorCopy] | None = None

    def expire(self) -> None:
        self.deadline = 0.0
        self.proto._on_timeout(self)


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
        self.req = _Request(self, _perf())
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
            req.error = target
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
        limiter = endpoint.limiter
        if limiter is not None:
            # The endpoint's own rate, before a deployment is chosen: a 429 here is the
            # endpoint's (its window counts it), never held against a deployment's gates.
            wait = limiter.take(_perf())
            if wait:
                req.error = rate_limited(endpoint.name, endpoint.route.max_requests_per_second, wait)
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
            self._resume()

    def _resume(self) -> None:
        """Read again; the request being read is not charged for the time we did not."""
        assert self.transport is not None
        self.paused = False
        self.transport.resume_reading()
        if self.req is not None:
            self.req.read_from = _perf()

    def _dispatch(self, req: _Request) -> None:
        """The request's turn on its connection: take a slot (or queue), copy to shadows."""
        deployment = req.deployment
        assert deployment is not None
        body_parts = req.body
        req.body = [b"".join(body_parts)] if len(body_parts) > 1 else body_parts
        gw = self.gw
        if gw.windows_on:
            deployment.window.in_flight += 1
            req.counted = True
        now = _perf()
        endpoint = req.endpoint
        assert endpoint is not None
        if deployment.queued and gw.limits:  # first come, first served: behind the waiting ones
            if _any_healthy(deployment.instances, now):
                self._queue_or_refuse(req, now)
            else:
                self._hold(req, now)
        else:
            limit = deployment.limit if gw.limits else 0
            index = pick_instance(deployment.instances, deployment.rotor, now, limit)
            deployment.rotor += 1
            self._place(req, index, now)
        if endpoint.mirrors and not req.targeted and not req.done and gw.mirroring:
            gw.mirror(req, endpoint, now)  # after the live request is on its way

    def _place(self, req: _Request, index: int | None, now: float) -> None:
        deployment = req.deployment
        assert deployment is not None
        if index is None:
            self._hold(req, now)
        elif index == FULL:
            self._queue_or_refuse(req, now)
        else:
            if self.gw.windows_on:
                deployment.window.record_no_wait()
            self._send_to(req, deployment.instances[index], now)

    def _no_instance(self, req: _Request, expired: bool = False) -> None:
        """503: held for request_timeout_ms with no instance coming, or no room to hold."""
        deployment = req.deployment
        assert deployment is not None
        if expired:
            why = f"within request_timeout_ms={round(deployment.timeout * 1000)}"
        else:
            why = f"and {deployment.queued} requests already wait for one"
        self._fail(
            req,
            503,
            "NoHealthyInstance",
            f"deployment {deployment.name} has no healthy instance to serve the request {why}",
        )

    def _hold(self, req: _Request, now: float) -> None:
        """No healthy instance: wait in the queue for one (up to request_timeout_ms)."""
        deployment = req.deployment
        assert deployment is not None
        if deployment.queued >= deployment.hold_limit:
            self._no_instance(req)
            return
        req.held = True
        deployment.held += 1
        self._enqueue(req, now)

    def _hold_again(self, req: _Request, now: float) -> None:
        """Every instance left refused the connection: nothing reached one, so wait for an
        instance as a request that found none does, at the front (it was sent before anything
        now waiting) and from when it first waited, so re-holds cannot stretch the bound."""
        deployment = req.deployment
        assert deployment is not None
        endpoint = self.gw.live.get(deployment.endpoint)
        if endpoint is None or endpoint.deployments.get(deployment.name) is not deployment:
            # A push took the deployment away while it connected: nothing would wake it.
            self._fail(req, 404, *_gone(deployment, endpoint is None))
            return
        if deployment.queued >= deployment.hold_limit:
            self._no_instance(req)
            return
        req.tried = None  # a push or a probe may bring back any instance, these included
        req.held = True
        deployment.held += 1
        self._enqueue(req, req.queued_at or now, front=True)

    def _queue_or_refuse(self, req: _Request, now: float) -> None:
        deployment = req.deployment
        assert deployment is not None
        if deployment.queued >= deployment.queue_limit:
            self._too_many(req, deployment.busy_body, "TooManyRequests")
            return
        self._enqueue(req, now)

    def _enqueue(self, req: _Request, since: float, front: bool = False) -> None:
        deployment = req.deployment
        assert deployment is not None
        waiting = deployment.waiting
        if len(waiting) > 2 * deployment.hold_limit + 16:
            # Requests that stopped waiting are removed lazily; shed them before the deque grows.
            live = [r for r in waiting if r.waiting]
            waiting.clear()
            waiting.extend(live)
        req.waiting = True
        req.queued_at = since
        deployment.queued += 1
        if front:
            waiting.appendleft(req)
        else:
            waiting.append(req)
        self.gw.queueing.add(deployment)

    def _wait_expired(self, req: _Request, now: float) -> None:
        """The deadline sweep took ``req`` out of the queue: it waited max_queue_wait_ms (or,
        held for want of a healthy instance, request_timeout_ms)."""
        deployment = req.deployment
        assert deployment is not None
        held = req.held
        self._leave_queue(req)
        if self.gw.windows_on:
            deployment.window.record_queue_wait((now - req.queued_at) * 1000.0)
        if held:
            self._no_instance(req, expired=True)
        else:
            self._too_many(req, deployment.wait_body, "TooManyRequests")

    def _leave_queue(self, req: _Request) -> None:
        """Out of the deployment's queue without a slot (the deque drops it lazily)."""
        deployment = req.deployment
        assert deployment is not None
        req.waiting = False
        deployment.queued -= 1
        if req.held:
            req.held = False
            deployment.held -= 1

    def _too_many(self, req: _Request, body: bytes, code: str) -> None:
        self._finish(req, 429, TOO_MANY_HEADERS, body, code)

    def _send_to(self, req: _Request, instance: InstanceState, now: float) -> None:
        instance.busy += instance.outstanding * (now - instance.mark)
        instance.mark = now
        instance.outstanding += 1
        req.instance = req.last_instance = instance
        req.sent_at = now
        if not req.deadline:
            deployment = req.deployment
            assert deployment is not None
            req.deadline = now + deployment.timeout
            self.gw.timed.add(req)
        req.upstream = upstream_request(req, instance)
        conn = instance.take_idle()
        if conn is not None:
            req.conn = conn
            conn.send(self, req.upstream)
        else:
            req.connecting = self.loop.create_task(self._connect(req, instance))

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
        """Nothing reached the instance: try another one of the deployment not tried yet;
        with none left, hold the request for an instance (a push or a probe brings one)
        rather than fail a request that never reached run()."""
        self._elsewhere(req, instance, "upstream.connect_failed", reason)

    def _elsewhere(self, req: _Request, instance: InstanceState, event: str, reason: str) -> None:
        """Take the request off ``instance``, which failed it with no byte back (counted
        towards its ejection), and send it to another instance of its deployment."""
        self._release(req, wake=False)
        self.gw.instance_failed(instance)
        log.warning(event, instance=instance.id, url=instance.url, error=reason, failures=instance.failures)
        deployment = req.deployment
        assert deployment is not None
        tried = req.tried
        if tried is None:
            tried = req.tried = []
        tried.append(instance)
        if req.deadline:  # off the instance: request_timeout_ms starts again when it is sent
            req.deadline = 0.0
            self.gw.timed.discard(req)
        now = _perf()
        limit = deployment.limit if self.gw.limits else 0
        index = pick_instance(deployment.instances, deployment.rotor, now, limit, tried)
        if index is None:
            # The wake below may send it straight back to an instance that refused it, if
            # that one is not ejected yet: safe (nothing reached it) and bounded (each
            # refusal counts towards EJECT_AFTER, and an ejected instance is not picked).
            # A dropped request may go back to the instance that dropped it: its one resend.
            self._hold_again(req, now)
        elif index == FULL:
            self._queue_or_refuse(req, now)
        else:
            self._send_to(req, deployment.instances[index], now)
        if deployment.queued:
            self.gw.wake(deployment)

    # --- called by UpstreamConnection ---
    def upstream_response(self, status: int, headers: bytes, body: bytes) -> None:
        req = self.active
        if req is None or req.done:
            return
        req.conn = None
        now = _perf()
        instance = req.instance
        if instance is not None and instance.failures:
            instance.failures = 0
        self._release(req, now=now, wake=False)
        deployment = req.deployment
        assert deployment is not None
        if req.mirrors is not None:
            req.upstream_status = status
            req.upstream_body = body
            req.upstream_ms = (now - req.sent_at) * 1000.0
        if status >= 500:
            self._finish(req, 424, JSON_CONTENT_TYPE, model_error_body(deployment.name), "ModelError")
        else:
            self._finish(req, status, headers, body, None)
        if deployment.queued:
            self.gw.wake(deployment)

    def upstream_failed(self, conn: UpstreamConnection, replay_safe: bool) -> None:
        req = self.active
        if req is None or req.done or req.conn is not conn:
            return
        req.conn = None
        instance = req.instance
        assert instance is not None
        if replay_safe and not req.replayed:
            # The instance closed an idle pooled connection as we reused it: nothing came
            # back, so send it once more on a fresh connection (see the module notes).
            req.replayed = True
            req.connecting = self.loop.create_task(self._connect(req, instance))
            return
        endpoint = req.endpoint
        if not conn.received and not req.replayed and endpoint is not None and endpoint.retry_dropped:
            # The endpoint allows it (tidegate/retry_dropped_requests): the instance read the
            # request and dropped it unanswered, as one killed in run() does; once more,
            # elsewhere, as for a refused connect.
            req.replayed = True
            self._elsewhere(req, instance, "upstream.dropped", "read the request, closed with no answer")
            return
        self._release(req)
        if not conn.received:
            self.gw.instance_failed(instance)
        self._fail(req, 502, "BadGateway", f"the connection to instance {instance.id} failed")

    def _on_timeout(self, req: _Request) -> None:
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
            self._leave_queue(req)
        self._release(req)
        req.done = True

    def _release(self, req: _Request, now: float = 0.0, wake: bool = True) -> None:
        instance, req.instance = req.instance, None
        if instance is None:
            return
        now = now or _perf()
        instance.busy += instance.outstanding * (now - instance.mark)
        instance.mark = now
        instance.outstanding -= 1
        deployment = req.deployment
        if wake and deployment is not None and deployment.queued:
            self.gw.wake(deployment)

    # --- answers ---
    def _fail(self, req: _Request, status: int, code: str, message: str) -> None:
        self._finish(req, status, JSON_CONTENT_TYPE, error_body(code, message), code)

    def _answer_error(self, req: _Request) -> None:
        error = req.error
        assert error is not None
        req.done = True
        body = error_body(error.code, error.message, error.limit)
        headers = JSON_CONTENT_TYPE
        if error.retry_after:
            headers += b"retry-after: %d\r\n" % error.retry_after
        self._write(req, error.status, headers, body)
        self._log(req, error.status, error.code, len(body))

    def _answer_early(self, req: _Request) -> None:
        """Answer before the body is read (413, refused Expect), then drain and close."""
        req.answered = True
        req.close = True
        self._answer_error(req)
        self._close()

    def _finish(self, req: _Request, status: int, headers: bytes, body: bytes, code: str | None) -> None:
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
                    req.rid_bytes,
                    length,
                    connection,
                    _CRLF,
                    body,
                )
            )
        )

    def _log(self, req: _Request, status: int, code: str | None, bytes_out: int) -> None:
        """Every request ends here once: windows, mirror comparisons, the access log."""
        gw = self.gw
        started = req.started
        latency_ms = (_perf() - started) * 1000.0
        endpoint = req.endpoint
        deployment = req.deployment
        if gw.windows_on and endpoint is not None:
            bucket = bucket_of(latency_ms)
            endpoint.window.record_at(status, latency_ms, bucket)
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
            req = req or _Request(self, _perf())
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

    def sweep(self) -> None:
        """Close a connection with no request in flight and no bytes since the last sweep."""
        if self.active is None and not self.queue and self.activity == self.swept:
            self.shut()
        self.swept = self.activity
