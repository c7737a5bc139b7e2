"""One way to reach Temporal, for the CLI and the worker: the same address, TLS and encrypting
data converter in both."""

from __future__ import annotations

import os
import socket

from temporalio.client import Client, TLSConfig

from config.contract.codec import data_converter
from config.settings import Settings


def identity(pid: int | None = None) -> str:
    """How a process names itself to Temporal (the SDK's default, made ours): `tidegate up`
    knows the worker it started by it among a task queue's pollers."""
    return f"{pid if pid is not None else os.getpid()}@{socket.gethostname()}"


async def connect(settings: Settings) -> Client:
    """A client whose payloads are encrypted (config.contract.codec): what it sends, Temporal keeps
    only as ciphertext, and it reads back what it and the worker wrote."""
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
    )
