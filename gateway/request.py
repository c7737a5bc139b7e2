"""One client request from its first byte to its answer: the state the client connection,
admission, the upstream sender and the gateway's sweeps share.

Plain slots, no behaviour beyond handing two events back to the request's connection: its
deadline passed (``expire``), or the connect to its instance was refused (``connect_failed``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.mirror import MirrorCopy
from gateway.routing import RoutingError
from gateway.table import DeploymentState, EndpointState
from gateway.upstream import Exchange, InstanceState, UpstreamConnection


class Connection(Exchange, Protocol):
    """What others ask of a request's client connection (``gateway.client.ClientProtocol``)."""

    def request_timed_out(self, req: Request) -> None:
        """``req`` was on an instance for its request_timeout_ms: 408, the slot handed on."""
        ...

    def connect_failed(self, req: Request, instance: InstanceState, reason: str) -> None:
        """Nothing reached ``instance`` (already counted towards its ejection): send ``req``
        elsewhere."""
        ...

    def fail(self, req: Request, status: int, code: str, message: str) -> None:
        """Answer ``req`` with an error (JSON body), in its turn."""
        ...

    def finish(self, req: Request, status: int, headers: bytes, body: bytes, code: str | None) -> None:
        """Answer ``req``, log it, and go on to the connection's next request."""
        ...


class Request:
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
        "limited",
    )

    def __init__(self, proto: Connection, started: float) -> None:
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
        self.limited = 0  # a 429's reason: its windows' slot (gateway.windows.LIMIT_SLOTS); 0 none

    def expire(self) -> None:
        self.deadline = 0.0
        self.proto.request_timed_out(self)

    def connect_failed(self, instance: InstanceState, reason: str) -> None:
        self.proto.connect_failed(self, instance, reason)
