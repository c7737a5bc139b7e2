"""`tidegate up/down/status`: the whole local system as child processes of one command."""

from __future__ import annotations

import asyncio
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
from config.settings import Settings
from control.temporal import connect, identity
from workflows import search

ORDER = ("temporal", "host", "gateway", "worker")
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
        *search.dev_server_flags(),
    ]
    return [
        ProcessSpec("temporal", temporal),
        ProcessSpec("host", [*me, "host"]),
        ProcessSpec("gateway", [*me, "gateway"]),
        ProcessSpec("worker", [*me, "worker"]),
    ]


def _pid_file(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


def read_pids(settings: Settings) -> dict[str, int]:
    path = _pid_file(settings)
    if not path.exists():
        return {}
    return {k: int(v) for k, v in json.loads(path.read_text()).items()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def running(settings: Settings) -> dict[str, int]:
    return {name: pid for name, pid in read_pids(settings).items() if alive(pid)}


def start(settings: Settings) -> dict[str, int]:
    """Start every process not yet running; return all their pids."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    pids = running(settings)
    env = dict(os.environ, TIDEGATE_HOME=str(settings.home.resolve()))
    for spec in process_specs(settings):
        if spec.name in pids:
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
        pids[spec.name] = process.pid
        _pid_file(settings).write_text(json.dumps(pids))
        if spec.name == "temporal":
            asyncio.run(_wait_ready(settings, "temporal", pids))
    asyncio.run(_wait_all_ready(settings, pids))
    return pids


def stop(settings: Settings) -> list[str]:
    """Stop in reverse order of start: worker, gateway, host, Temporal."""
    pids = read_pids(settings)
    stopped = []
    for name in reversed(ORDER):
        pid = pids.get(name)
        if pid is None or not alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    _pid_file(settings).unlink(missing_ok=True)
    return stopped


class StartFailed(RuntimeError):
    pass


async def _wait_all_ready(settings: Settings, pids: dict[str, int]) -> None:
    await asyncio.gather(*(_wait_ready(settings, name, pids) for name in ORDER))


async def _wait_ready(settings: Settings, name: str, pids: dict[str, int]) -> None:
    """Poll until the process answers; fail fast, with its log's tail, if it died."""
    while True:
        if not alive(pids[name]):
            tail = _tail(settings.log_dir / f"{name}.log")
            raise StartFailed(f"{name} exited while starting; last lines of its log:\n{tail}")
        if await _answers(settings, name, pids[name]):
            return
        await asyncio.sleep(0.2)


async def _answers(settings: Settings, name: str, pid: int) -> bool:
    try:
        if name == "temporal":
            return _tcp_open(settings.temporal_port) and _tcp_open(settings.temporal_ui_port)
        if name == "host":
            return await _http_ok(f"{settings.host_target}/healthz")
        if name == "gateway":
            admin = f"http://127.0.0.1:{settings.gateway_admin_port}/healthz"
            return await _http_ok(admin) and _tcp_open(settings.gateway_https_port)
        if name == "worker":
            return await _worker_polling(settings, pid)
    except (TimeoutError, OSError, aiohttp.ClientError, RuntimeError, RPCError):
        return False
    return False


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _http_ok(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
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
    pids = read_pids(settings)
    return {
        "home": str(settings.home),
        "processes": {
            name: {"pid": pids.get(name), "running": bool(pids.get(name)) and alive(pids[name])}
            for name in ORDER
        },
        "gateway_https": f"https://localhost:{settings.gateway_https_port}",
        "gateway_http": f"http://localhost:{settings.gateway_http_port}",
        "gateway_admin": f"http://127.0.0.1:{settings.gateway_admin_port}",
        "host": settings.host_target,
        "temporal": settings.temporal_target,
        "temporal_ui": settings.temporal_ui_url,
        "ca_certificate": str(settings.tls_dir / "ca.pem"),
    }
