"""Gateway process: the TLS and plain data-plane listeners plus the admin API, one loop.

Nothing happens at import time: ``serve(settings)`` starts everything and runs until
cancelled; ``run(settings)`` is the blocking entry point (uvloop, SIGTERM/SIGINT).

Each listener has its own address: HTTPS on ``TIDEGATE_GATEWAY_HTTPS_BIND``, plain HTTP on
``TIDEGATE_GATEWAY_HTTP_BIND`` only while ``settings.http_data_plane`` (by default, while
the data plane stays on loopback), and the admin API on ``TIDEGATE_GATEWAY_ADMIN_BIND``,
always behind the control credential, and over TLS (``TIDEGATE_CONTROL_TLS_CERT``/``_KEY``)
once beyond loopback: without them there, the gateway refuses to start
(``ControlAccessError``, before it listens anywhere).

``TIDEGATE_GATEWAY_WORKERS=N`` (``settings.gateway_workers``) runs N processes on the
same ports with SO_REUSEPORT; see ``gateway.workers`` for how they share the route table
and windows. ``TIDEGATE_GATEWAY_DISABLE=limits,windows,accesslog,mirror`` turns features off
for the benchmark that prices each one; never set it in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
import uvloop
from aiohttp import web

from config.security import control_server_ssl, ensure_control_token
from config.settings import Settings
from config.telemetry import tracer_provider
from gateway.accesslog import AccessLog
from gateway.admin import DrainResult, TablePersister, create_app
from gateway.client import protocol_factory
from gateway.gateway import FEATURES, ClientLimits, Gateway
from gateway.metrics import LocalStats, StatsSource, take_snapshot
from gateway.table import RouteTable, load_table
from gateway.tls import TlsMaterial, ensure_tls, given_context, given_material, server_context
from gateway.workers import (
    MergedStats,
    ProcessSupervisor,
    TableWatcher,
    create_peer_app,
    socket_path,
    start_peer_site,
    worker_index,
)

if TYPE_CHECKING:
    from gateway.tracing import RequestTracer

log = structlog.get_logger("gateway.server")

ROUTES_FILE = "routes.json"
ACCESS_LOG_FILE = "access.log"
BACKLOG = 2048
DISABLE_ENV = "TIDEGATE_GATEWAY_DISABLE"
ADMIN_BIND_ENV = "TIDEGATE_GATEWAY_ADMIN_BIND"


def enabled_features(environ: dict[str, str] | os._Environ[str] = os.environ) -> frozenset[str]:
    off = {name.strip() for name in environ.get(DISABLE_ENV, "").split(",") if name.strip()}
    unknown = off - FEATURES
    if unknown:
        raise ValueError(f"{DISABLE_ENV}: unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
    return FEATURES - off


def client_limits(settings: Settings) -> ClientLimits:
    return ClientLimits(
        header_timeout_s=settings.gateway_header_timeout_seconds,
        min_body_rate=settings.gateway_min_body_bytes_per_second,
        body_grace_s=settings.gateway_body_grace_seconds,
        max_connections=settings.gateway_max_connections,
        idle_timeout_s=settings.gateway_idle_timeout_seconds,
    )


def raise_open_files_limit() -> tuple[int, int, int]:
    """Every client connection is a descriptor (and often one upstream): take the soft limit
    up to the hard one. Returns (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("gateway.open_files_limit_unchanged", soft=soft, hard=hard, error=str(exc))
            return soft, soft, hard
        return soft, wanted, hard
    return soft, soft, hard


@dataclass
class RunningGateway:
    """A started gateway. ``close()`` stops listening, lets requests in flight finish (for
    a bounded time), closes every connection and flushes the access log."""

    settings: Settings
    control_token: str
    table: RouteTable
    gateway: Gateway
    tls: TlsMaterial
    access_log: AccessLog
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    admin: web.AppRunner | None = None
    index: int = 0
    supervisor: ProcessSupervisor | None = None
    watcher: TableWatcher | None = None
    merged: MergedStats | None = None
    tracer: RequestTracer | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.watcher is not None:
            await self.watcher.stop()
        stopping = [self.gateway.stop()]
        if self.supervisor is not None:
            stopping.append(self.supervisor.stop())
        await asyncio.gather(*stopping)
        if self.merged is not None:
            await self.merged.close()
        if self.admin is not None:
            await self.admin.cleanup()
        for server in self.servers:
            await server.wait_closed()
        await asyncio.to_thread(self.access_log.close)
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # the spans still queued
        log.info("gateway.stopped", index=self.index)


async def create_server(settings: Settings) -> RunningGateway:
    """Load the persisted table, then listen on the HTTPS, HTTP and admin ports (process 0)
    or the HTTPS and HTTP ports and a Unix socket for process 0 (processes 1..N-1)."""
    loop = asyncio.get_running_loop()
    workers = settings.gateway_workers
    index = worker_index()
    features = enabled_features()
    # Refuse a control listener beyond loopback without TLS before anything listens.
    admin_ssl = (
        control_server_ssl(settings, bind=settings.gateway_admin_bind, setting=ADMIN_BIND_ENV)
        if index == 0
        else None
    )
    token = ensure_control_token(settings)
    soft_before, soft, hard = raise_open_files_limit()
    log.info("gateway.open_files_limit", soft_before=soft_before, soft=soft, hard=hard)
    if soft < 2 * settings.gateway_max_connections:
        log.warning(
            "gateway.open_files_limit_low",
            soft=soft,
            max_connections=settings.gateway_max_connections,
            hint="each client connection may take a second descriptor upstream",
        )
    gateway_dir = settings.gateway_dir
    gateway_dir.mkdir(parents=True, exist_ok=True)
    table = await asyncio.to_thread(load_table, gateway_dir / ROUTES_FILE)
    table.processes = workers
    given = given_material(settings)
    material = given if given is not None else await asyncio.to_thread(ensure_tls, settings)
    access_log = AccessLog(
        gateway_dir / ACCESS_LOG_FILE,
        max_bytes=settings.gateway_access_log_max_bytes,
        backups=settings.gateway_access_log_backups,
        echo=settings.gateway_access_log_echo,
    )
    access_log.start()
    gateway = Gateway(
        table,
        settings.domain.lower(),
        access_log,
        upstream_ssl=ssl.create_default_context(),
        features=features,
        client_limits=client_limits(settings),
    )
    running = RunningGateway(settings, token, table, gateway, material, access_log, index=index)
    try:
        gateway.start()
        tls_context = (
            given_context(material)
            if given is not None
            else server_context(material, serves=lambda label: label in table.live)
        )
        listeners: list[tuple[str, int, ssl.SSLContext | None]] = [
            (settings.gateway_https_bind, settings.gateway_https_port, tls_context)
        ]
        if settings.http_data_plane:
            listeners.append((settings.gateway_http_bind, settings.gateway_http_port, None))
        client_protocol = protocol_factory(gateway)
        if settings.otlp_endpoint:
            # Only then: the traced protocol is a subclass; off, nothing of it runs per request.
            from gateway.tracing import PresetIds, RequestTracer, traced_protocol_factory

            ids = PresetIds()
            provider = tracer_provider(settings, "tidegate-gateway", id_generator=ids)
            assert provider is not None
            running.tracer = RequestTracer(provider, ids, gateway)
            client_protocol = traced_protocol_factory(gateway, running.tracer)
        for bind, port, context in listeners:
            running.servers.append(
                await loop.create_server(
                    client_protocol,
                    bind,
                    port,
                    ssl=context,
                    # A handshake holds a descriptor before the connection counts: bound it too.
                    ssl_handshake_timeout=settings.gateway_header_timeout_seconds if context else None,
                    backlog=BACKLOG,
                    reuse_address=True,
                    reuse_port=workers > 1,
                )
            )
        if index == 0:
            await _serve_admin(running, workers, admin_ssl)
        else:
            peer = create_peer_app(gateway.window_data, lambda: take_snapshot(gateway), gateway.drain)
            running.admin = await start_peer_site(peer, socket_path(gateway_dir, index))
            running.watcher = TableWatcher(table, gateway_dir / ROUTES_FILE, running.stopped.set)
            running.watcher.start()
    except BaseException:
        await running.close()
        raise
    log.info(
        "gateway.started",
        index=index,
        processes=workers,
        https=f"{settings.gateway_https_bind}:{settings.gateway_https_port}",
        http=(
            f"{settings.gateway_http_bind}:{settings.gateway_http_port}" if settings.http_data_plane else None
        ),
        admin=f"{settings.gateway_admin_bind}:{settings.gateway_admin_port}" if index == 0 else None,
        admin_tls=admin_ssl is not None if index == 0 else None,
        endpoints=len(table.routes),
        ca=str(material.ca_cert),
        disabled=sorted(FEATURES - features) or None,
        tracing=running.tracer is not None,
    )
    return running


async def _serve_admin(running: RunningGateway, workers: int, admin_ssl: ssl.SSLContext | None) -> None:
    settings, gateway = running.settings, running.gateway
    stats: StatsSource = LocalStats(gateway)
    if workers > 1:
        sockets = [socket_path(settings.gateway_dir, i) for i in range(1, workers)]
        running.merged = MergedStats(gateway.window_data, lambda: take_snapshot(gateway), sockets)
        stats = running.merged
    persister = TablePersister(running.table, settings.gateway_dir / ROUTES_FILE)
    merged = running.merged

    async def drain(close_idle_after: float | None) -> DrainResult:
        started = gateway.drain(close_idle_after)
        peers = await merged.drain_peers(close_idle_after) if merged is not None else 0
        return DrainResult(draining=True, started=started, processes=1 + peers)

    app = create_app(
        running.table,
        persister.save,
        control_token=running.control_token,
        stats=stats,
        access_log=(settings.gateway_dir / ACCESS_LOG_FILE, settings.gateway_access_log_backups),
        failure_keys=tuple(settings.availability_failure_statuses),
        drain=drain,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    running.admin = runner
    await web.TCPSite(
        runner, settings.gateway_admin_bind, settings.gateway_admin_port, ssl_context=admin_ssl
    ).start()
    if workers > 1:
        running.supervisor = ProcessSupervisor(workers)
        await running.supervisor.start()


async def serve(settings: Settings) -> None:
    """Run the gateway until cancelled."""
    running = await create_server(settings)
    # Everything made so far lives as long as the process: keep the collector off it.
    gc.freeze()
    try:
        await running.stopped.wait()  # set when process 0 is gone (processes 1..N-1)
    finally:
        await running.close()


async def _serve_until_signalled(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(serve(settings))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not serving.done():
        log.info("gateway.stopping")
        serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving  # re-raises what made serve() fail, e.g. a port in use


def run(settings: Settings) -> None:
    """Blocking entry point: uvloop, serve, and a clean exit on SIGTERM or SIGINT."""
    uvloop.run(_serve_until_signalled(settings))
