"""OpenTelemetry spans of gateway requests, when ``TIDEGATE_OTLP_ENDPOINT`` is set.

Off (the default) this module is not even imported: the listeners serve with
``gateway.client.ClientProtocol`` itself, and the only trace of tracing on the hot path is
``upstream_request`` passing a client's ``traceparent`` through to the instance (one ``if``).
On, they serve with ``TracedClientProtocol``, the same protocol with two hooks: once a
request is routed (``_route``) its trace is decided (a child of the client's W3C
``traceparent`` when it sent one; sampled or not, by ``OTEL_TRACES_SAMPLER``) and the
``traceparent`` the instance gets is replaced by one naming the request's span (so the
instance's spans are its children); when the request ends (``_log``, exactly once per
request) the SERVER span is made, from the request's first byte to now, with the endpoint,
deployment, instance, status and request id.

A span never carries a header value, a body or a credential: only the names the access log
holds. Spans are exported by the SDK's batch thread (``config.telemetry``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final, NamedTuple

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, get_current_span
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


class Trace(NamedTuple):
    """What a request's span will be, decided when it is routed; the span itself is made when
    the request ends, with every attribute at once (half the SDK's cost of setting them on a
    live span, measured), under the ids its forwarded ``traceparent`` already named."""

    name: str
    parent: Context | None  # the client's trace context, when it sent a valid one
    trace_id: int
    span_id: int
    sampled: bool


class TracedRequest(Request):
    """A request with its trace (None until it is routed)."""

    __slots__ = ("trace",)

    def __init__(self, proto: Connection, started: float) -> None:
        super().__init__(proto, started)
        self.trace: Trace | None = None


class PresetIds(IdGenerator):
    """The provider's id generator: the ids ``RequestTracer`` set just before it makes a span
    (the ones the instance was told), else random ones. Used on the event loop only."""

    def __init__(self) -> None:
        self.random = RandomIdGenerator()
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        span_id, self.span_id = self.span_id, 0
        return span_id or self.random.generate_span_id()

    def generate_trace_id(self) -> int:
        trace_id, self.trace_id = self.trace_id, 0
        return trace_id or self.random.generate_trace_id()


class RequestTracer:
    """Decides each request's trace when it is routed, and makes its span when it ends."""

    def __init__(self, provider: TracerProvider, ids: PresetIds, gateway: Gateway) -> None:
        self.provider = provider
        self.ids = ids
        self.sampler = provider.sampler  # OTEL_TRACES_SAMPLER; default: the parent's choice, else all
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION)
        self.gw = gateway

    def _ns(self, perf: float) -> int:
        """A ``perf_counter`` reading as epoch nanoseconds (the gateway's tick keeps the offset)."""
        return int((perf + self.gw.wall_offset) * 1e9)

    def begin(self, req: Request) -> Trace:
        """The request's trace: a child of the client's ``traceparent`` (when valid), sampled
        or not; the ``traceparent`` sent upstream becomes this span's."""
        headers = req.headers
        parent = None
        trace_id = 0
        traceparent = headers.get(b"traceparent")
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            tracestate = headers.get(b"tracestate")
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            context = _propagator.extract(carrier)
            client = get_current_span(context).get_span_context()
            if client.is_valid:  # malformed: a root span of our own
                parent, trace_id = context, client.trace_id
        trace_id = trace_id or self.ids.random.generate_trace_id()
        span_id = self.ids.random.generate_span_id()
        method = req.method.decode("latin-1") or "HTTP"
        resource = req.resource_bytes.decode("latin-1")
        name = f"{method} {resource}" if resource else method
        sampled = self.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER).decision.is_sampled()
        headers[b"traceparent"] = b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")
        return Trace(name, parent, trace_id, span_id, sampled)

    def end(self, req: Request, trace: Trace, status: int, code: str | None) -> None:
        """The span, from the request's first byte to now, with what the access log says of
        it; nothing at all for a request not sampled."""
        if not trace.sampled:
            return
        endpoint, deployment, instance = req.endpoint, req.deployment, req.last_instance
        attributes: dict[str, Any] = {
            METHOD: req.method.decode("latin-1") or "HTTP",
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
        ids = self.ids
        ids.trace_id, ids.span_id = trace.trace_id, trace.span_id
        span = self.tracer.start_span(
            trace.name,
            context=trace.parent,
            kind=SpanKind.SERVER,
            start_time=self._ns(req.started),
            attributes=attributes,
        )
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
        # ClientProtocol.on_message_begin with a TracedRequest: keep the two alike.
        self.req = TracedRequest(self, _perf())
        self.in_head = True

    def _route(self, req: Request) -> None:
        super()._route(req)
        if isinstance(req, TracedRequest):
            req.trace = self.tracer.begin(req)

    def _log(self, req: Request, status: int, code: str | None, bytes_out: int) -> None:
        super()._log(req, status, code, bytes_out)
        # A request the parser gave up on before its headers ended was never routed.
        trace = req.trace if isinstance(req, TracedRequest) else None
        self.tracer.end(req, trace or self.tracer.begin(req), status, code)


def traced_protocol_factory(gateway: Gateway, tracer: RequestTracer) -> Callable[[], ClientProtocol]:
    """What a listener calls for each connection it accepts, with tracing on."""
    return partial(TracedClientProtocol, gateway, tracer)
