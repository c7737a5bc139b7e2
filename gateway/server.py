"""Gateway process: the TLS and plain data-plane listeners plus the admin API, one loop.

Nothing happens at import time: ``serve(settings)`` starts everything and runs until
cancelled; ``run(settings)`` is the blocking entry point (uvloop, SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
from dataclasses import dataclass, field

import structlog
import uvloop
from aiohttp import web

from config.settings import Settings
from gateway.accesslog import AccessLog
from gateway.admin import TablePersister, create_app
from gateway.proxy import Gateway
from gateway.table import RouteTable, load_table
from gateway.tls import TlsMaterial, ensure_tls, server_context

log = structlog.get_logger("gateway.server")

ROUTES_FILE = "routes.json"
ACCESS_LOG_FILE = "access.log"
BACKLOG = 2048


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

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        await self.gateway.stop()
        if self.admin is not None:
            await self.admin.cleanup()
        for server in self.servers:
            await server.wait_closed()
        await asyncio.to_thread(self.access_log.close)
        log.info("gateway.stopped")


async def create_server(settings: Settings) -> RunningGateway:
    """Load the persisted table, then listen on the HTTPS, HTTP and admin ports."""
    loop = asyncio.get_running_loop()
    gateway_dir = settings.gateway_dir
    gateway_dir.mkdir(parents=True, exist_ok=True)
    table = await asyncio.to_thread(load_table, gateway_dir / ROUTES_FILE)
    material = await asyncio.to_thread(ensure_tls, settings)
    access_log = AccessLog(gateway_dir / ACCESS_LOG_FILE)
    access_log.start()
    gateway = Gateway(table, settings.domain.lower(), access_log, upstream_ssl=ssl.create_default_context())
    running = RunningGateway(settings, table, gateway, material, access_log)
    try:
        gateway.start()
        tls_context = server_context(material, serves=lambda label: label in table.live)
        running.servers.append(
            await loop.create_server(
                gateway.protocol_factory,
                settings.bind_host,
                settings.gateway_https_port,
                ssl=tls_context,
                backlog=BACKLOG,
                reuse_address=True,
            )
        )
        running.servers.append(
            await loop.create_server(
                gateway.protocol_factory,
                settings.bind_host,
                settings.gateway_http_port,
                backlog=BACKLOG,
                reuse_address=True,
            )
        )
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        persister = TablePersister(table, gateway_dir / ROUTES_FILE)
        runner = web.AppRunner(create_app(table, persister.save, admin_token=token))
        await runner.setup()
        running.admin = runner
        await web.TCPSite(runner, settings.bind_host, settings.gateway_admin_port).start()
    except BaseException:
        await running.close()
        raise
    log.info(
        "gateway.started",
        bind_host=settings.bind_host,
        https_port=settings.gateway_https_port,
        http_port=settings.gateway_http_port,
        admin_port=settings.gateway_admin_port,
        endpoints=len(table.routes),
        ca=str(material.ca_cert),
    )
    return running


async def serve(settings: Settings) -> None:
    """Run the gateway until cancelled."""
    running = await create_server(settings)
    # Everything made so far lives as long as the process: keep the collector off it.
    gc.freeze()
    try:
        await asyncio.Event().wait()
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
