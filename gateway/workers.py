"""Several gateway processes on one machine: ``TIDEGATE_GATEWAY_WORKERS=N``.

All N processes listen on the same HTTP and HTTPS ports with ``SO_REUSEPORT`` (the kernel
spreads connections between them), each with its own event loop, pools, limits and
windows. Process 0 is the one started by the user: it serves the admin port, persists the
route table and starts processes 1..N-1 (restarting one that dies).

- Route table: process 0 writes ``routes.json`` atomically before it answers a push; the
  others poll the file's identity (inode, mtime, size) every ``WATCH_S`` and take it in under
  the generation rules (``RouteTable.apply_document``), so an older table never replaces a
  newer one and a restarted process starts from the file. A push is live in every process
  within ``WATCH_S`` of its answer.
- Windows: processes 1..N-1 serve their raw windows (sums and histogram buckets) on a Unix
  socket in the gateway dir; process 0 adds them to its own for ``/stats`` and ``/metrics``,
  so the monitor reads one exact figure per gateway (percentiles of the merged histograms,
  not averages). A process that does not answer within ``PEER_TIMEOUT_S`` is left out of
  that answer (logged).
- Limits: each process enforces its share of ``max_concurrent_requests_per_instance``
  (``ceil(limit / N)``, at least 1: with a limit below N an instance may see up to N).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from gateway.metrics import Snapshot
from gateway.table import RouteTable
from gateway.windows import WindowData, parse_window

log = structlog.get_logger("gateway.workers")

INDEX_ENV: Final = "TIDEGATE_GATEWAY_WORKER_INDEX"  # set by process 0 for the ones it starts
WATCH_S: Final = 0.1
PEER_TIMEOUT_S: Final = 2.0
RESTART_S: Final = 1.0
STOP_S: Final = 15.0
_SOCKET_DIR: Final = "workers"


def worker_index(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    return int(environ.get(INDEX_ENV, "0") or "0")


def socket_path(gateway_dir: Path, index: int) -> str:
    """Where process ``index`` serves its windows (and takes ``POST /drain``): in the gateway
    dir, or, when that path is too long for AF_UNIX (108 bytes), in a private folder of this
    user's in the temp dir. Never an abstract socket: any local user could connect to one, and
    uvloop cannot (EINVAL)."""
    path = gateway_dir / _SOCKET_DIR / f"{index}.sock"
    if len(str(path).encode()) < 100:
        return str(path)
    digest = hashlib.sha256(str(gateway_dir).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"tidegate-{os.getuid()}-{digest}" / f"{index}.sock")


def private_socket_dir(path: str) -> None:
    """The socket's folder, made 0700; refused if it exists as someone else's or open to others
    (a folder another user made first in the temp dir)."""
    folder = Path(path).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    held = folder.lstat()
    if not stat.S_ISDIR(held.st_mode) or held.st_uid != os.getuid() or held.st_mode & 0o077:
        raise PermissionError(f"{folder} is not a private folder of this user's: refusing to serve there")


# --- processes 1..N-1 ---


def create_peer_app(
    read_window: Callable[[str, str, float, int], WindowData],
    snapshot: Callable[[], Snapshot],
    drain: Callable[[float | None], bool] | None = None,
) -> web.Application:
    """What a worker process answers process 0 on its Unix socket (``POST /drain``: process 0
    was told to drain, so does this one)."""

    async def window(request: web.Request) -> web.Response:
        seconds = parse_window(request.query.get("window"))
        minutes = int(request.query.get("minutes", "0"))
        data = read_window(request.query["endpoint"], request.query.get("deployment", ""), seconds, minutes)
        return web.json_response(data.to_json())

    async def snap(_: web.Request) -> web.Response:
        return web.json_response(snapshot().to_json())

    async def start_draining(request: web.Request) -> web.Response:
        if drain is None:
            raise web.HTTPNotFound()
        raw = request.query.get("close_idle_after")
        return web.json_response({"draining": True, "started": drain(float(raw) if raw else None)})

    app = web.Application()
    app.router.add_get("/window", window)
    app.router.add_get("/snapshot", snap)
    app.router.add_post("/drain", start_draining)
    return app


async def start_peer_site(app: web.Application, path: str) -> web.AppRunner:
    private_socket_dir(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


class TableWatcher:
    """Follows the ``routes.json`` process 0 writes; stops the process if process 0 is gone."""

    def __init__(self, table: RouteTable, path: Path, on_orphaned: Callable[[], None]) -> None:
        self._table = table
        self._path = path
        self._parent = os.getppid()
        self._on_orphaned = on_orphaned
        self._seen: tuple[int, int, int] | None = _identity(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            if os.getppid() != self._parent:
                log.warning("gateway.orphaned", parent=self._parent)
                self._on_orphaned()
                return
            seen = _identity(self._path)
            if seen is None or seen == self._seen:
                continue
            try:
                document = await asyncio.to_thread(_read_json, self._path)
            except (OSError, ValueError) as exc:  # replaced between stat and read: next round
                log.debug("routes.watch_retry", error=str(exc))
                continue
            self._seen = seen
            try:
                changes = self._table.apply_document(document)
            except (ValueError, TypeError) as exc:
                log.error("routes.watch_failed", path=str(self._path), error=str(exc))
                continue
            if changes:
                log.info("routes.followed", changes=changes)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _read_json(path: Path) -> dict[str, object]:
    return dict(json.loads(path.read_bytes()))


# --- process 0 ---


class ProcessSupervisor:
    """Starts processes 1..N-1 and keeps them running until ``stop``."""

    def __init__(self, count: int, environ: dict[str, str] | None = None) -> None:
        self._count = count
        self._environ = dict(environ if environ is not None else os.environ)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        for index in range(1, self._count):
            self._tasks.append(asyncio.get_running_loop().create_task(self._keep(index)))

    async def _keep(self, index: int) -> None:
        env = {**self._environ, INDEX_ENV: str(index)}
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", env=env)
            self._procs[index] = proc
            log.info("gateway.worker_started", index=index, pid=proc.pid)
            code = await proc.wait()
            if self._stopping:
                return
            log.error("gateway.worker_exited", index=index, pid=proc.pid, code=code, restart_in_s=RESTART_S)
            await asyncio.sleep(RESTART_S)

    async def stop(self) -> None:
        self._stopping = True
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self._procs.values():
            try:
                await asyncio.wait_for(proc.wait(), STOP_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class MergedStats:
    """``/stats`` and ``/metrics`` for all N processes: this one's windows plus the others'."""

    def __init__(
        self,
        local_window: Callable[[str, str, float, int], WindowData],
        local_snapshot: Callable[[], Snapshot],
        sockets: list[str],
    ) -> None:
        self._local_window = local_window
        self._local_snapshot = local_snapshot
        self._sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S),
            )
            for path in sockets
        ]

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()

    async def _ask(
        self, path: str, params: dict[str, str] | None = None, *, method: str = "GET"
    ) -> list[dict[str, object]]:
        async def one(session: aiohttp.ClientSession) -> dict[str, object] | None:
            try:
                async with session.request(method, f"http://gateway{path}", params=params) as response:
                    response.raise_for_status()
                    return dict(await response.json())
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("gateway.peer_unanswered", path=path, error=repr(exc))
                return None

        answers = await asyncio.gather(*(one(s) for s in self._sessions))
        return [a for a in answers if a is not None]

    async def drain_peers(self, close_idle_after: float | None) -> int:
        """Tell processes 1..N-1 to drain; how many said they do."""
        params = {"close_idle_after": str(close_idle_after)} if close_idle_after is not None else None
        return len(await self._ask("/drain", params, method="POST"))

    async def window(self, endpoint: str, deployment: str, seconds: float, minutes: int = 0) -> WindowData:
        data = self._local_window(endpoint, deployment, seconds, minutes)
        params = {
            "endpoint": endpoint,
            "deployment": deployment,
            "window": repr(seconds),
            "minutes": str(minutes),
        }
        for raw in await self._ask("/window", params):
            data.merge(WindowData.from_json(raw))
        return data

    async def snapshot(self) -> Snapshot:
        snap = self._local_snapshot()
        for raw in await self._ask("/snapshot"):
            snap.merge(Snapshot.from_json(raw))
        return snap
