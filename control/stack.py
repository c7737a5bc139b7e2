"""`tidegate up/down/status`: the whole local system as child processes of one command."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from temporalio.service import RPCError

from config.binaries import find_binary
from config.contract.temporal_client import connect, identity
from config.files import write_atomically
from config.security import control_session, ensure_control_token, ensure_home
from config.settings import Settings
from control.api_server import api_url, codec_endpoint
from host.processes import create_time, is_alive
from workflows import search

ORDER = ("temporal", "host", "gateway", "api", "worker")
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]


def process_specs(settings: Settings) -> list[ProcessSpec]:
    me = [sys.executable, "-m", "control.cli"]
    temporal = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--db-filename",
        str(settings.home / "temporal.db"),
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.temporal_port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        # The UI decodes Tidegate's encrypted payloads through `tidegate api` (a signed-in browser).
        "--ui-codec-endpoint",
        codec_endpoint(settings),
        *search.dev_server_flags(),
    ]
    return [
        ProcessSpec("temporal", temporal),
        ProcessSpec("host", [*me, "host"]),
        ProcessSpec("gateway", [*me, "gateway"]),
        ProcessSpec("api", [*me, "api"]),
        ProcessSpec("worker", [*me, "worker"]),
    ]


def _pid_file(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


@dataclass(frozen=True)
class Started:
    """A process `up` started: its pid, and what makes that pid ours (its start time since
    boot, and the boot): after a reboot, or once it exits, the pid may be another program's."""

    pid: int
    start_time: int | None
    boot_id: str | None

    @classmethod
    def of(cls, pid: int) -> Started:
        return cls(pid=pid, start_time=create_time(pid), boot_id=boot_id())

    def is_ours(self) -> bool:
        if self.boot_id is not None and self.boot_id != boot_id():
            return False
        return is_alive(self.pid, self.start_time)


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def read_started(settings: Settings) -> dict[str, Started]:
    path = _pid_file(settings)
    if not path.exists():
        return {}
    started = {}
    for name, value in json.loads(path.read_text()).items():
        if isinstance(value, int):  # written before start times were kept: trust nothing
            started[name] = Started(pid=value, start_time=-1, boot_id=None)
        else:
            started[name] = Started(**value)
    return started


def _write_started(settings: Settings, started: dict[str, Started]) -> None:
    document = {name: dataclasses.asdict(s) for name, s in started.items()}
    write_atomically(_pid_file(settings), json.dumps(document).encode())


def read_pids(settings: Settings) -> dict[str, int]:
    return {name: s.pid for name, s in read_started(settings).items()}


def running(settings: Settings) -> dict[str, int]:
    return {name: s.pid for name, s in read_started(settings).items() if s.is_ours()}


def alive(pid: int) -> bool:
    """Does this pid run (whatever program it is now)?"""
    return is_alive(pid, None)


def start(settings: Settings) -> dict[str, int]:
    """Start every process not yet running; return all their pids."""
    ensure_home(settings)
    ensure_control_token(settings)  # made once, before any process could race to make it
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    started = {name: s for name, s in read_started(settings).items() if s.is_ours()}
    env = dict(os.environ, TIDEGATE_HOME=str(settings.home.resolve()))
    for spec in process_specs(settings):
        if spec.name in started:
            continue
        log = open(settings.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - child owns it
        process = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=settings.home,
            start_new_session=True,
        )
        log.close()
        started[spec.name] = Started.of(process.pid)
        _write_started(settings, started)
        if spec.name == "temporal":
            asyncio.run(_wait_ready(settings, "temporal", started))
    asyncio.run(_wait_all_ready(settings, started))
    return {name: s.pid for name, s in started.items()}


def stop(settings: Settings) -> list[str]:
    """Stop in reverse order of start. A pid is signalled only while it is still the process
    `up` started (same start time, same boot): a reused pid is never killed."""
    started = read_started(settings)
    stopped = []
    for name in reversed(ORDER):
        process = started.get(name)
        if process is None or not process.is_ours():
            continue
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while process.is_ours() and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.is_ours():
            os.kill(process.pid, signal.SIGKILL)
        stopped.append(name)
    _pid_file(settings).unlink(missing_ok=True)
    return stopped


class StartFailed(RuntimeError):
    pass


async def _wait_all_ready(settings: Settings, started: dict[str, Started]) -> None:
    await asyncio.gather(*(_wait_ready(settings, name, started) for name in ORDER))


async def _wait_ready(settings: Settings, name: str, started: dict[str, Started]) -> None:
    """Poll until the process answers; fail fast, with its log's tail, if it died."""
    while True:
        if not started[name].is_ours():
            tail = _tail(settings.log_dir / f"{name}.log")
            raise StartFailed(f"{name} exited while starting; last lines of its log:\n{tail}")
        if await _answers(settings, name, started[name].pid):
            return
        await asyncio.sleep(0.2)


async def _answers(settings: Settings, name: str, pid: int) -> bool:
    try:
        if name == "temporal":
            return _tcp_open(settings.temporal_port) and _tcp_open(settings.temporal_ui_port)
        if name == "host":
            return await _http_ok(settings, f"{settings.host_target}/healthz")
        if name == "gateway":
            return _tcp_open(settings.gateway_admin_port, settings.gateway_admin_bind) and _tcp_open(
                settings.gateway_https_port, settings.gateway_https_bind
            )
        if name == "api":
            return await _http_ok(settings, f"{api_url(settings)}/healthz")
        if name == "worker":
            return await _worker_polling(settings, pid)
    except (TimeoutError, OSError, aiohttp.ClientError, RuntimeError, RPCError):
        return False
    return False


def _tcp_open(port: int, bind: str = "127.0.0.1") -> bool:
    """Does a listener bound to `bind` take a connection from this machine?"""
    address = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind.strip("[]")
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _http_ok(settings: Settings, url: str) -> bool:
    async with control_session(settings, timeout=aiohttp.ClientTimeout(total=2)) as session:
        async with session.get(url) as response:
            return response.status == 200


async def _worker_polling(settings: Settings, pid: int) -> bool:
    """Is the worker with this pid polling? Any poller will not do: Temporal lists a killed
    worker among the pollers for minutes, and `up` would not wait for its replacement."""
    return identity(pid) in await pollers(settings)


async def pollers(settings: Settings) -> list[str]:
    """The identities Temporal lists as polling the task queue for workflow tasks."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    client = await connect(settings)
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return [poller.identity for poller in response.pollers]


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def describe(settings: Settings) -> dict[str, object]:
    started = read_started(settings)
    return {
        "home": str(settings.home),
        "processes": {
            name: {
                "pid": started[name].pid if name in started else None,
                "running": name in started and started[name].is_ours(),
            }
            for name in ORDER
        },
        "gateway_https": f"https://localhost:{settings.gateway_https_port}",
        "gateway_http": (
            f"http://localhost:{settings.gateway_http_port}" if settings.http_data_plane else None
        ),
        "gateway_admin": f"http://127.0.0.1:{settings.gateway_admin_port}",
        "host": settings.host_target,
        "api": api_url(settings),
        "temporal": settings.temporal_target,
        "temporal_ui": settings.temporal_ui_url,
        "ca_certificate": str(settings.tls_dir / "ca.pem"),
    }
