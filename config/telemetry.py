"""OpenTelemetry set-up shared by the gateway and the worker: a tracer provider exporting over
OTLP/HTTP to ``TIDEGATE_OTLP_ENDPOINT``, or nothing at all when it is unset.

Spans are batched and exported by the SDK's own thread (``BatchSpanProcessor``), never on
the event loop; a receiver that is down costs dropped spans, not slower requests. Sampling,
export headers and batch sizes are OpenTelemetry's standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from config.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator

TRACES_PATH = "/v1/traces"
_made: list[TracerProvider] = []  # flushed by shutdown_tracing()


def traces_url(otlp_endpoint: str) -> str:
    """``<base>/v1/traces``, as OpenTelemetry's OTEL_EXPORTER_OTLP_ENDPOINT is read; a URL that
    already ends in it is kept."""
    base = otlp_endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def tracer_provider(
    settings: Settings, service: str, *, id_generator: IdGenerator | None = None
) -> TracerProvider | None:
    """A provider for ``service`` (e.g. ``tidegate-gateway``) exporting to the OTLP endpoint,
    or None when tracing is off. Not installed globally: the caller hands it where it is used."""
    if not settings.otlp_endpoint:
        return None
    # Imported here: a process without tracing never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "tidegate",
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    provider = TracerProvider(resource=resource, id_generator=id_generator)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint)))
    )
    _made.append(provider)
    return provider


def shutdown_tracing() -> None:
    """Export the spans still queued by every provider made here (blocking). A process that
    leaves with ``os._exit`` (the worker) calls it first: the SDK's atexit hook never runs."""
    while _made:
        _made.pop().shutdown()
