"""Pooled keep-alive HTTP/1.1 connections from the gateway to model instances, and sending
a request over one.

One ``InstanceState`` per instance holds its live load (outstanding requests, ejection) and
its idle connections. An ``UpstreamConnection`` carries one exchange at a time and reports
back to its ``Exchange`` owner by plain method calls: no futures or tasks on the hot path.

``Sender`` is the one connect-and-send both live requests (``gateway.client``) and mirror
copies (``gateway.mirror``) use: an idle pooled connection if there is one, else a new one;
a refused connect counts towards the instance's ejection before the ``Attempt`` hears of it;
and one resend on a fresh connection when a reused one closes with no byte back, which is how
an instance closing an idle connection just as we reuse it looks (an instance that read the
request and died at that moment would see it twice).
"""

from __future__ import annotations

import asyncio
import ssl
from array import array
from collections.abc import Callable
from functools import partial
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from gateway.windows import HORIZON_S

# Idle connections kept per instance; more are closed when they come back.
MAX_IDLE_PER_INSTANCE = 256

# Upstream headers the gateway sets itself or that only describe the hop.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"date",
        b"server",
        b"x-request-id",
        b"azureml-model-deployment",
        b"proxy-connection",
        b"trailer",
        b"upgrade",
        b"te",
    }
)


_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_KEEP, _DROP, _FRAMED = 0, 1, 2
# What to do with a response header, by its name as the instance spelled it (instances
# send the same few names over and over); bounded, since names come from the instance.
_HEADER_ACTION: dict[bytes, int] = {}
_HEADER_ACTION_MAX = 1024


def _header_action(name: bytes) -> int:
    lower = name.lower()
    action = _FRAMED if lower in _FRAMING else _DROP if lower in _DROPPED_RESPONSE_HEADERS else _KEEP
    if len(_HEADER_ACTION) < _HEADER_ACTION_MAX:
        _HEADER_ACTION[name] = action
    return action


_CRLF = b"\r\n"


class Exchange(Protocol):
    """The side an upstream connection reports to: the client connection for a live request,
    the copy itself for a mirror copy."""

    def upstream_response(self, status: int, headers: bytes, body: bytes) -> None: ...

    def upstream_failed(self, conn: UpstreamConnection, replay_safe: bool) -> None: ...


class Attempt(Protocol):
    """A request on its way to an instance (a live one or a mirror copy): what ``Sender`` sets
    and reads, and what the gateway's deadline sweep reads (``deadline``, then ``expire()``)."""

    conn: UpstreamConnection | None
    connecting: asyncio.Task[None] | None
    done: bool
    replayed: bool
    deadline: float

    def expire(self) -> None: ...

    def connect_failed(self, instance: InstanceState, reason: str) -> None:
        """Nothing reached ``instance``: the connect failed (already counted towards its
        ejection)."""
        ...


class Forwarded(Protocol):
    """What ``upstream_request`` reads of a client's request."""

    method: bytes
    resource_bytes: bytes
    query: bytes
    rid_bytes: bytes
    headers: dict[bytes, bytes]
    body: list[bytes]


def upstream_request(req: Forwarded, instance: InstanceState) -> bytes:
    """The request as the instance gets it: its own path prefix and host, our request id, the
    trace context."""
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
    # W3C trace context: the client's, passed through; with tracing on, the gateway's span's
    # (gateway.tracing put it there). The one test tracing adds per request when it is off.
    traceparent = headers.get(b"traceparent")
    if traceparent is not None:
        parts += (b"traceparent: ", traceparent, _CRLF)
        tracestate = headers.get(b"tracestate")
        if tracestate is not None:
            parts += (b"tracestate: ", tracestate, _CRLF)
    if body or req.method == b"POST":
        parts += (b"content-length: ", str(len(body)).encode(), _CRLF)
    parts += (_CRLF, body)
    return b"".join(parts)


class InstanceState:
    """Live state of one instance: its address, load, health and idle connection pool.

    ``busy`` integrates ``outstanding`` over time (slot-seconds) for the current second;
    the gateway's tick seals it into ``busy_ring`` (one entry per second, tagged in
    ``busy_tag``), from which a window's utilisation is read.
    """

    __slots__ = (
        "id",
        "url",
        "host",
        "port",
        "tls",
        "host_header",
        "path_prefix",
        "outstanding",
        "ejected_until",
        "failures",
        "ejections",
        "idle",
        "retired",
        "busy",
        "mark",
        "busy_ring",
        "busy_tag",
        "born",
    )

    def __init__(self, instance_id: str, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"instance url must be http(s)://host:port, got {url!r}")
        self.id = instance_id
        self.url = url
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = (parts.netloc).encode("latin-1")
        self.path_prefix = parts.path.rstrip("/").encode("latin-1")
        self.outstanding = 0
        self.ejected_until = 0.0  # inf while ejected: a probe brings it back
        self.failures = 0  # connection failures in a row
        self.ejections = 0  # ejections in a row (the back-off doubles with each)
        self.idle: list[UpstreamConnection] = []
        self.retired = False
        self.busy = 0.0
        self.mark = 0.0
        self.busy_ring = array("d", bytes(8 * HORIZON_S))
        self.busy_tag = array("q", [-1]) * HORIZON_S
        self.born = -1

    def seal_second(self, second: int, now: float) -> None:
        """Close ``second``: its busy slot-seconds go into the ring."""
        if self.born < 0:
            self.born = second
        busy = self.busy + self.outstanding * (now - self.mark) if self.mark else self.busy
        self.mark = now
        slot = second % HORIZON_S
        self.busy_ring[slot] = busy
        self.busy_tag[slot] = second
        self.busy = 0.0

    def busy_over(self, span: int, now_second: int, now: float, partial: float) -> tuple[float, float]:
        """Busy slot-seconds and covered wall seconds over the current second and the
        ``span - 1`` before it."""
        busy = self.busy + (self.outstanding * (now - self.mark) if self.mark else 0.0)
        ring, tags = self.busy_ring, self.busy_tag
        full = 0
        for second in range(now_second - span + 1, now_second):
            slot = second % HORIZON_S
            if tags[slot] == second:
                busy += ring[slot]
                full += 1
        return busy, full + partial

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
        return None

    def give_back(self, conn: UpstreamConnection) -> None:
        if self.retired or len(self.idle) >= MAX_IDLE_PER_INSTANCE:
            conn.close()
        else:
            self.idle.append(conn)

    def retire(self) -> None:
        """The instance left the route table: close idle connections, pool no more."""
        self.retired = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an instance, parsing responses with httptools."""

    __slots__ = (
        "instance",
        "transport",
        "parser",
        "owner",
        "usable",
        "reused",
        "received",
        "_status",
        "_headers",
        "_body",
        "_framed",
        "_headers_done",
    )

    def __init__(self, instance: InstanceState) -> None:
        self.instance = instance
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.owner: Exchange | None = None
        self.usable = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.received = False
        self._status = 0
        self._headers: list[bytes] = []
        self._body: list[bytes] = []
        self._framed = False
        self._headers_done = False

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.usable = True

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.owner is None:  # bytes nobody asked for: the stream is out of step
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            owner, self.owner = self.owner, None
            self.close()
            if owner is not None:
                owner.upstream_failed(self, False)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        owner, self.owner = self.owner, None
        if owner is None:
            return
        if self._headers_done and not self._framed:
            # A response delimited by closing the connection ends here.
            owner.upstream_response(self._status, b"".join(self._headers), b"".join(self._body))
            return
        # Nothing came back on a connection that had served before: the instance closed it
        # while idle, so the request was never seen and may be sent again.
        owner.upstream_failed(self, self.reused and not self.received)

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        action = _HEADER_ACTION.get(name)
        if action is None:
            action = _header_action(name)
        if action == _KEEP:
            self._headers.append(b"%s: %s\r\n" % (name, value))
        elif action == _FRAMED:
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        owner, self.owner = self.owner, None
        status = self._status
        if status < 200:  # 1xx interim answer: the real one follows on this exchange
            self.owner = owner
            self._reset()
            return
        headers = b"".join(self._headers)
        body_parts = self._body
        body = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
        keep = self.parser.should_keep_alive()
        self._reset()
        if keep and self.usable:
            self.reused = True
            self.instance.give_back(self)
        else:
            self.close()
        if owner is not None:
            owner.upstream_response(status, headers, body)

    # --- used by the exchange ---
    def send(self, owner: Exchange, request: bytes) -> None:
        self.owner = owner
        assert self.transport is not None
        self.transport.write(request)

    def abort(self) -> None:
        """Drop this connection mid-exchange (timeout, client gone): it is never reused."""
        self.owner = None
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()


class Sender:
    """Sends an attempt's request to an instance, for live requests and mirror copies alike.

    ``instance_failed`` (the gateway's ejection) hears of every refused connect before the
    attempt does. One per gateway; ``loop`` is set when the gateway starts.
    """

    __slots__ = ("loop", "upstream_ssl", "instance_failed")

    def __init__(
        self, upstream_ssl: ssl.SSLContext | None, instance_failed: Callable[[InstanceState], None]
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.upstream_ssl = upstream_ssl
        self.instance_failed = instance_failed

    def send(self, owner: Exchange, attempt: Attempt, instance: InstanceState, request: bytes) -> None:
        """On an idle pooled connection (``owner`` hears the answer), else on a new one."""
        conn = instance.take_idle()
        if conn is not None:
            attempt.conn = conn
            conn.send(owner, request)
        else:
            attempt.connecting = self._open(owner, attempt, instance, request)

    def resend(self, owner: Exchange, attempt: Attempt, instance: InstanceState, request: bytes) -> bool:
        """Once per attempt, on a fresh connection: a reused one closed with no byte back (the
        instance closed it while idle, so the request was never seen). False: already resent."""
        if attempt.replayed:
            return False
        attempt.replayed = True
        attempt.connecting = self._open(owner, attempt, instance, request)
        return True

    def _open(
        self, owner: Exchange, attempt: Attempt, instance: InstanceState, request: bytes
    ) -> asyncio.Task[None]:
        loop = self.loop
        assert loop is not None, "the gateway has not started"
        return loop.create_task(self._connect(loop, owner, attempt, instance, request))

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        owner: Exchange,
        attempt: Attempt,
        instance: InstanceState,
        request: bytes,
    ) -> None:
        try:
            _, conn = await loop.create_connection(
                partial(UpstreamConnection, instance),
                instance.host,
                instance.port,
                ssl=self.upstream_ssl if instance.tls else None,
            )
        except OSError as exc:
            if attempt.connecting is not None and not attempt.done:
                attempt.connecting = None
                self.instance_failed(instance)
                attempt.connect_failed(instance, repr(exc))
            return
        if attempt.done or attempt.connecting is None:  # answered, timed out or abandoned meanwhile
            instance.give_back(conn)
            return
        attempt.connecting = None
        attempt.conn = conn
        conn.send(owner, request)
