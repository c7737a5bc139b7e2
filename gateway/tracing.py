"""OpenTelemetry spans of gateway requests, when ``TIDEGATE_OTLP_ENDPOINT`` is set.

Off (the default) this module is not even imported: the listeners serve with
``gateway.client.ClientProtocol`` itself, and the only trace of tracing on the hot path is
``upstream_request`` passing a client's ``traceparent`` through to the instance (one ``if``).
On, they serve with ``TracedClientProtocol``, the same protocol with two hooks: once a
request is routed (``_route``) a SERVER span is started at the request's first byte, a child
of the client's W3C ``traceparent`` when it sent one, and the ``traceparent`` the instance
gets is replaced by one naming this span (so the instance's spans are its children); when
the request ends (``_log``, exactly once per request) the span gets the endpoint,
deployment, instance, status and request id, and ends.

A span never carries a header value, a body or a credential: only the names the access log
holds. Spans are exported by the SDK's batch thread (``config.telemetry``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.client import ClientProtocol
from gateway.gateway import Gateway
from gateway.request import Connection, Request

_perf = time.perf_counter
_propagator: Final = TraceContextTextMapPropagator()
INSTRUMENTATION: Final = "tidegate.gateway"

# Attribute names: OpenTelemetry's HTTP semantic conventions, then Tidegate's own.
METHOD: Final = "http.request.method"
STATUS: Final = "http.response.status_code"
PATH: Final = "url.path"
ERROR_TYPE: Final = "error.type"
ENDPOINT: Final = "tidegate.endpoint"
DEPLOYMENT: Final = "tidegate.deployment"
INSTANCE: Final = "tidegate.instance"
REQUEST_ID: Final = "tidegate.request_id"


class TracedRequest(Request):
    """A request with its span (None until it is routed)."""

    __slots__ = ("span",)

    def __init__(self, proto: Connection, started: float) -> None:
        super().__init__(proto, started)
        self.span: Span | None = None


class RequestTracer:
    """Starts and ends the span of each request on one gateway process."""

    def __init__(self, provider: TracerProvider, gateway: Gateway) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION)
        self.gw = gateway

    def _ns(self, perf: float) -> int:
        """A ``perf_counter`` reading as epoch nanoseconds (the gateway's tick keeps the offset)."""
        return int((perf + self.gw.wall_offset) * 1e9)

    def begin(self, req: Request) -> Span:
        """The request's span, started at its first byte; the ``traceparent`` sent upstream
        becomes this span's."""
        headers = req.headers
        parent = None
        traceparent = headers.get(b"traceparent")
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            tracestate = headers.get(b"tracestate")
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = _propagator.extract(carrier)  # malformed: an empty context, a root span
        method = req.method.decode("latin-1") or "HTTP"
        resource = req.resource_bytes.decode("latin-1")
        span = self.tracer.start_span(
            f"{method} {resource}" if resource else method,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=self._ns(req.started),
            attributes={METHOD: method},
        )
        context = span.get_span_context()
        if context.is_valid:
            headers[b"traceparent"] = b"00-%032x-%016x-%02x" % (
                context.trace_id,
                context.span_id,
                context.trace_flags,
            )
        return span

    def end(self, req: Request, span: Span, status: int, code: str | None) -> None:
        """What the access log says of the request, on its span; then the span ends."""
        if span.is_recording():
            endpoint, deployment, instance = req.endpoint, req.deployment, req.last_instance
            attributes: dict[str, Any] = {
                STATUS: status,
                PATH: req.path.decode("latin-1")[:256],
                REQUEST_ID: req.rid,
            }
            if endpoint is not None:
                attributes[ENDPOINT] = endpoint.name
            if deployment is not None:
                attributes[DEPLOYMENT] = deployment.name
            if instance is not None:
                attributes[INSTANCE] = instance.id
            if code is not None:
                attributes[ERROR_TYPE] = code
            span.set_attributes(attributes)
            # A server span is an error when the server failed: 5xx, and 424 (the model raised).
            if status >= 500 or status == 424:
                span.set_status(Status(StatusCode.ERROR, code))
        span.end(end_time=self._ns(_perf()))

    def shutdown(self) -> None:
        """Export what is still queued (blocking: call it off the event loop)."""
        self.provider.shutdown()


class TracedClientProtocol(ClientProtocol):
    """``ClientProtocol`` plus a span per request (see the module's docstring)."""

    def __init__(self, gateway: Gateway, tracer: RequestTracer) -> None:
        super().__init__(gateway)
        self.tracer = tracer

    def on_message_begin(self) -> None:
        self.req = TracedRequest(self, _perf())
        self.in_head = True

    def _route(self, req: Request) -> None:
        super()._route(req)
        if isinstance(req, TracedRequest):
            req.span = self.tracer.begin(req)

    def _log(self, req: Request, status: int, code: str | None, bytes_out: int) -> None:
        super()._log(req, status, code, bytes_out)
        # A request the parser gave up on before its headers ended was never routed.
        span = req.span if isinstance(req, TracedRequest) else None
        self.tracer.end(req, span or self.tracer.begin(req), status, code)
        if isinstance(req, TracedRequest):
            req.span = None


def traced_protocol_factory(gateway: Gateway, tracer: RequestTracer) -> Callable[[], ClientProtocol]:
    """What a listener calls for each connection it accepts, with tracing on."""
    return partial(TracedClientProtocol, gateway, tracer)
