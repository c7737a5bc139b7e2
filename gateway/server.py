"""Gateway process: the TLS and plain data-plane listeners plus the admin API, one loop.

Nothing happens at import time: ``serve(settings)`` starts everything and runs until
cancelled; ``run(settings)`` is the blocking entry point (uvloop, SIGTERM/SIGINT).

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
import signal
import ssl
from dataclasses import dataclass, field

import structlog
import uvloop
from aiohttp import web

from config.settings import Settings
from gateway.accesslog import AccessLog
from gateway.admin import TablePersister, create_app
from gateway.metrics import LocalStats, StatsSource, take_snapshot
from gateway.proxy import FEATURES, Gateway
from gateway.table import RouteTable, load_table
from gateway.tls import TlsMaterial, ensure_tls, server_context
from gateway.workers import (
    MergedStats,
    Supervisor,
    TableWatcher,
    create_peer_app,
    socket_path,
    start_peer_site,
    worker_index,
)

log = structlog.get_logger("gateway.server")

ROUTES_FILE = "routes.json"
ACCESS_LOG_FILE = "access.log"
BACKLOG = 2048
DISABLE_ENV = "TIDEGATE_GATEWAY_DISABLE"


def enabled_features(environ: dict[str, str] | os._Environ[str] = os.environ) -> frozenset[str]:
    off = {name.strip() for name in environ.get(DISABLE_ENV, "").split(",") if name.strip()}
    unknown = off - FEATURES
    if unknown:
        raise ValueError(f"{DISABLE_ENV}: unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
    return FEATURES - off


@dataclass
class RunningGateway:
    """A started gateway. ``close()`` stops listening, lets requests in flight finish (for
    a bounded time), closes every connection and flushes the access log."""

    settings: Settings
    table: RouteTable
    gateway: Gateway
    tls: TlsMaterial
    access_log: AccessLog
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    admin: web.AppRunner | None = None
    index: int = 0
    supervisor: Supervisor | None = None
    watcher: TableWatcher | None = None
    merged: MergedStats | None = None
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
        log.info("gateway.stopped", index=self.index)


async def create_server(settings: Settings) -> RunningGateway:
    """Load the persisted table, then listen on the HTTPS, HTTP and admin ports (process 0)
    or the HTTPS and HTTP ports and a Unix socket for process 0 (processes 1..N-1)."""
    loop = asyncio.get_running_loop()
    workers = settings.gateway_workers
    index = worker_index()
    features = enabled_features()
    gateway_dir = settings.gateway_dir
    gateway_dir.mkdir(parents=True, exist_ok=True)
    table = await asyncio.to_thread(load_table, gateway_dir / ROUTES_FILE)
    table.processes = workers
    material = await asyncio.to_thread(ensure_tls, settings)
    access_log = AccessLog(gateway_dir / ACCESS_LOG_FILE)
    access_log.start()
    gateway = Gateway(
        table,
        settings.domain.lower(),
        access_log,
        upstream_ssl=ssl.create_default_context(),
        features=features,
    )
    running = RunningGateway(settings, table, gateway, material, access_log, index=index)
    try:
        gateway.start()
        tls_context = server_context(material, serves=lambda label: label in table.live)
        for port, context in ((settings.gateway_https_port, tls_context), (settings.gateway_http_port, None)):
            running.servers.append(
                await loop.create_server(
                    gateway.protocol_factory,
                    settings.bind_host,
                    port,
                    ssl=context,
                    backlog=BACKLOG,
                    reuse_address=True,
                    reuse_port=workers > 1,
                )
            )
        if index == 0:
            await _serve_admin(running, workers)
        else:
            peer = create_peer_app(gateway.window_data, lambda: take_snapshot(gateway))
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
        bind_host=settings.bind_host,
        https_port=settings.gateway_https_port,
        http_port=settings.gateway_http_port,
        admin_port=settings.gateway_admin_port if index == 0 else None,
        endpoints=len(table.routes),
        ca=str(material.ca_cert),
        disabled=sorted(FEATURES - features) or None,
    )
    return running


async def _serve_admin(running: RunningGateway, workers: int) -> None:
    settings, gateway = running.settings, running.gateway
    stats: StatsSource = LocalStats(gateway)
    if workers > 1:
        sockets = [socket_path(settings.gateway_dir, i) for i in range(1, workers)]
        running.merged = MergedStats(gateway.window_data, lambda: take_snapshot(gateway), sockets)
        stats = running.merged
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    persister = TablePersister(running.table, settings.gateway_dir / ROUTES_FILE)
    runner = web.AppRunner(create_app(running.table, persister.save, admin_token=token, stats=stats))
    await runner.setup()
    running.admin = runner
    await web.TCPSite(runner, settings.bind_host, settings.gateway_admin_port).start()
    if workers > 1:
        running.supervisor = Supervisor(workers)
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
