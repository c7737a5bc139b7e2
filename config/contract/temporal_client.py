"""One way to reach Temporal, for the CLI and the worker: the same address, TLS and encrypting
data converter in both."""

from __future__ import annotations

import os
import socket

from temporalio.client import Client, Interceptor, TLSConfig

from config.contract.codec import data_converter
from config.settings import Settings
from config.telemetry import tracer_provider


def identity(pid: int | None = None) -> str:
    """How a process names itself to Temporal (the SDK's default, made ours): `tidegate up`
    knows the worker it started by it among a task queue's pollers."""
    return f"{pid if pid is not None else os.getpid()}@{socket.gethostname()}"


def tracing_interceptors(settings: Settings, service: str) -> list[Interceptor]:
    """temporalio's OpenTelemetry interceptor when TIDEGATE_OTLP_ENDPOINT is set, else none.
    On a client it traces starts, signals and updates; a worker built on that client takes it
    too and traces every workflow and activity execution (spans named RunWorkflow:<type>,
    RunActivity:<name>), started here or by anyone else (the `temporal` CLI, a schedule)."""
    provider = tracer_provider(settings, service)
    if provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(provider.get_tracer("tidegate.temporal"), always_create_workflow_spans=True)]


async def connect(settings: Settings, *, service: str = "tidegate-control") -> Client:
    """A client whose payloads are encrypted (config.contract.codec): what it sends, Temporal keeps
    only as ciphertext, and it reads back what it and the worker wrote. ``service`` names the
    process in its traces (when tracing is on)."""
    tls: TLSConfig | bool = False
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        tls = TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
            server_root_ca_cert=(settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None),
        )
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        tls=tls,
        data_converter=data_converter(settings),
        identity=identity(),
        interceptors=tracing_interceptors(settings, service),
    )
