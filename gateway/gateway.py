"""The ``Gateway``: what every client connection shares, and the timers that keep it.

The data plane is split by job: ``gateway.client`` parses a connection's requests,
authenticates and routes them and writes the answers; ``gateway.admission`` gives them slots,
queues and holds them; ``gateway.upstream`` sends them to instances (``Sender``, shared with
``gateway.mirror``'s copies). This module holds the shared state and does what runs on a
clock rather than per request:

- the tick, once a second: the cached ``Date`` line, windows sealed, and the slow-client
  checks: a request's line and headers must arrive within ``header_timeout_s`` of its first
  byte, and its body at ``min_body_rate`` bytes/s or faster once ``body_grace_s`` has passed
  since the headers (time spent with reading paused by us does not count); else 408 and the
  connection is closed. Not a timer per request.
- the deadline sweep, every ``DEADLINE_SWEEP_S``: requests and mirror copies on an instance
  past their ``request_timeout_ms`` (``timed``), and admission's queue bounds.
- the idle sweep: a connection with no byte for one to two ``idle_timeout_s`` between
  requests is closed (one sweep of every connection per period). Past ``max_connections``
  open client connections a new one is closed at once (counted in ``refused``).
- ejection: an instance that fails ``EJECT_AFTER`` connections in a row (refused, or closed
  with no byte back) is ejected until a probe (``GET /``) answers, after a back-off doubling
  from ``EJECT_BASE_S``; when it answers, waiting requests get its slots.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from gateway.accesslog import AccessLog
from gateway.admission import Admission
from gateway.request import Request
from gateway.responses import DateHeader
from gateway.routing import RequestIds, RequestTarget, RoutingError, parse_target
from gateway.table import EndpointState, RouteTable
from gateway.upstream import Attempt, InstanceState, Sender
from gateway.windows import HORIZON_S, InstanceLoad, WindowData

_perf = time.perf_counter

log = structlog.get_logger("gateway.gateway")

EJECT_AFTER: Final = 5  # connection failures in a row that eject an instance
EJECT_BASE_S: Final = 1.0  # first back-off before the probe; doubles per ejection in a row
EJECT_MAX_S: Final = 30.0
PROBE_TIMEOUT_S: Final = 2.0
PRUNE_EVERY_S: Final = 60
# Request timeouts and queue waits are checked by one sweep this often (not a timer per
# request: uvloop's call_later plus cancel costs more than the rest of the limiter).
DEADLINE_SWEEP_S: Final = 0.01
FEATURES: Final = frozenset({"limits", "windows", "accesslog", "mirror"})
DRAIN_S: Final = 10.0  # on stop, in-flight requests get this long to finish
_TARGET_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """How slowly a client may send a request, and how many may be connected at once."""

    header_timeout_s: float = 10.0
    min_body_rate: float = 1024.0  # bytes/s once the grace is over; 0: no minimum
    body_grace_s: float = 5.0
    max_connections: int = 10_000
    idle_timeout_s: float = 30.0  # idle for one to two of these between requests: closed


class Client(Protocol):
    """What the timers ask of a client connection (``gateway.client.ClientProtocol``)."""

    req: Request | None  # being read
    in_head: bool
    closing: bool
    paused: bool

    def too_slow(self, message: str) -> None: ...

    def finish_up(self) -> None: ...

    def shut(self) -> None: ...

    def idle(self) -> bool: ...

    def sweep(self) -> None: ...


class Gateway:
    """What every client connection shares: the route table, windows, log, cached bytes."""

    # Read many times per request: slots keep each read one fast lookup, however many there
    # are (past 30 instance attributes, CPython 3.11 reads them from a plain dict: slower).
    __slots__ = (
        "table",
        "live",
        "windows",
        "domain",
        "record",
        "date",
        "wall_offset",
        "connections",
        "targets",
        "upstream_ssl",
        "request_id",
        "limits",
        "windows_on",
        "logging",
        "mirroring",
        "second",
        "second_started",
        "opened",
        "client_limits",
        "max_connections",
        "refused",
        "_refused_logged",
        "draining",
        "_ticker",
        "_sweeper",
        "_deadliner",
        "_probes",
        "timed",
        "loop",
        "sender",
        "admission",
    )

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
        self.connections: set[Client] = set()
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
        # Set once by `drain()`, never cleared: the health path answers 503 and every answer
        # closes its connection (read per response: a plain attribute).
        self.draining = False
        self._ticker: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._deadliner: asyncio.TimerHandle | None = None
        self._probes: set[asyncio.Task[None]] = set()
        # What the deadline sweep expires: requests and mirror copies on an instance.
        self.timed: set[Attempt] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sender = Sender(upstream_ssl, self.instance_failed)
        self.admission = admission = Admission(
            self.live,
            self.sender,
            self.timed,
            limits=self.limits,
            windows_on=self.windows_on,
            mirroring=self.mirroring,
        )
        table.on_rebuilt = self._rebuilt
        table.on_dropped = admission.dropped

    def start(self) -> None:
        self.loop = self.sender.loop = loop = asyncio.get_running_loop()
        self.second = int(time.time())
        self.second_started = _perf()
        self._tick()
        self._sweeper = loop.call_later(self.client_limits.idle_timeout_s, self._sweep)
        self._deadliner = loop.call_later(DEADLINE_SWEEP_S, self._check_deadlines)

    def drain(self, close_idle_after: float | None = None) -> bool:
        """Leave the load balancer's rotation: the health path says 503 from now on, and each
        connection closes after its next answer, so clients reconnect to another gateway.
        Requests keep being served. `close_idle_after`: then close the connections with no
        request under way too (their clients' pools see the close, where a deleted VM would
        say nothing). False: it was draining already (nothing changes)."""
        if self.draining:
            return False
        self.draining = True
        if close_idle_after is not None and self.loop is not None:
            self.loop.call_later(close_idle_after, self._close_idle)
        log.info("gateway.draining", connections=len(self.connections), close_idle_after=close_idle_after)
        return True

    def _close_idle(self) -> None:
        idle = [conn for conn in list(self.connections) if conn.idle()]
        for conn in idle:
            conn.shut()
        log.info("gateway.drain_closed_idle", closed=len(idle), left=len(self.connections))

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
        late_head: list[Client] = []
        slow_body: list[Client] = []
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
        admission = self.admission
        if admission.queueing:
            admission.expire_waits(now)
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

    def _rebuilt(self, endpoint: EndpointState) -> None:
        """A push may have added instances: hand their slots to waiting requests."""
        if self.loop is None:
            return
        self.admission.rebuilt(endpoint)

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

    # --- reading the windows ---
    def window_data(self, endpoint: str, deployment: str, seconds: float, minutes: int = 0) -> WindowData:
        """This process's part of a window (the admin API sums the processes), with the last
        ``minutes`` minutes' counts when asked."""
        window = self.windows.find(endpoint, deployment)
        data = window.data(seconds, self.second) if window is not None else WindowData.empty()
        if window is not None and minutes:
            data.minutes = window.minute_counts(minutes, self.second)
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
