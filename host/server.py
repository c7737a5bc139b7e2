"""The host process: the API on `host_bind:host_port` in front of the supervisor.

The API starts and stops processes that run code: it always asks for the control
credential, and beyond loopback it serves only HTTPS (config/security.py)."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from config.lifecycle import run_until_signalled
from config.security import ControlAccessError, control_server_ssl, ensure_control_token
from config.settings import Settings
from host.api import create_app
from host.confinement import ConfinementUnavailable
from host.errors import HostError
from host.supervisor import Supervisor

log = structlog.get_logger("host.server")


def _lock_home(host_dir: Path) -> IO[str]:
    """One host per state dir: a second one would adopt, and then stop, the first one's
    instances. The lock dies with the process (kill -9 included); instances never inherit
    it (Popen closes fds)."""
    host_dir.mkdir(parents=True, exist_ok=True)
    lock = open(host_dir / "host.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise HostError(
            409, "HostAlreadyRunning", f"another host is running with state dir {host_dir}"
        ) from None
    return lock


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or the task is cancelled), then stop every instance process
    and keep the desired state on disk for the next start."""
    # Refuse a listener beyond loopback without TLS before anything else happens.
    ssl_context = control_server_ssl(settings, bind=settings.host_bind, setting="TIDEGATE_HOST_BIND")
    token = ensure_control_token(settings)
    lock = _lock_home(settings.host_dir)
    supervisor = Supervisor(settings)
    app = create_app(supervisor, settings=settings, token=token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # Bind before touching any instance: a host that cannot serve must not adopt them.
        await web.TCPSite(runner, settings.host_bind, settings.host_port, ssl_context=ssl_context).start()
        await supervisor.start()
        scheme = "https" if ssl_context else "http"
        log.info(
            "host.started",
            url=f"{scheme}://{settings.host_bind}:{settings.host_port}",
            tls=ssl_context is not None,
            host_dir=str(settings.host_dir),
            instance_port_start=settings.instance_port_start,
        )
        await (stop or asyncio.Event()).wait()
        log.info("host.stopping")
    finally:
        # Runs on cancellation too; these awaits are the shutdown itself. Long polls are
        # answered first: the runner's cleanup waits for every open request.
        supervisor.release_waiters()
        await runner.cleanup()
        await supervisor.close()
        lock.close()
        log.info("host.stopped")


def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""

    try:
        run_until_signalled(lambda stop: serve(settings, stop=stop))
    except HostError as exc:
        log.error("host.failed", code=exc.code, error=exc.message)
        raise SystemExit(1) from None
    except ControlAccessError as exc:  # e.g. bound beyond loopback without a certificate
        log.error("host.failed", code="ControlAccess", error=str(exc))
        raise SystemExit(1) from None
    except ConfinementUnavailable as exc:  # TIDEGATE_INSTANCE_CONFINEMENT=landlock, no Landlock
        log.error("host.failed", code="ConfinementUnavailable", error=str(exc))
        raise SystemExit(1) from None
    except OSError as exc:  # typically the API port is taken
        log.error("host.failed", error=str(exc), port=settings.host_port)
        raise SystemExit(1) from None
