"""Pooled keep-alive HTTP/1.1 connections from the gateway to model instances.

One ``InstanceState`` per instance holds its live load (outstanding requests, ejection) and
its idle connections. An ``UpstreamConnection`` carries one exchange at a time and reports
back to its ``Exchange`` owner by plain method calls: no futures or tasks on the hot path.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

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


class Exchange(Protocol):
    """The side waiting for an upstream answer (the client connection)."""

    def upstream_response(self, status: int, headers: bytes, body: bytes) -> None: ...

    def upstream_failed(self, conn: UpstreamConnection, replay_safe: bool) -> None: ...


class InstanceState:
    """Live state of one instance: its address, load and idle connection pool."""

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
        "idle",
        "retired",
        "log_id",
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
        self.ejected_until = 0.0
        self.idle: list[UpstreamConnection] = []
        self.retired = False

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
        "_received",
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
        self._received = False
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
        self._received = True
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
        owner.upstream_failed(self, self.reused and not self._received)

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self._framed = True
        if lower not in _DROPPED_RESPONSE_HEADERS:
            self._headers.append(b"%s: %s\r\n" % (name, value))

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
