"""Fixtures for gateway integration tests: the real gateway process and small backends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from tests.support.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
KEY = "test-primary-key-0123456789"
SECONDARY_KEY = "test-secondary-key-9876543210"
CONTROL_TOKEN = "test-control-credential-0123456789"  # what every admin call sends
MODEL_TRACEBACK = "Traceback (most recent call last): SECRET-MODEL-INTERNALS"
STARTUP_LIMIT_S = 30.0  # only guards against a gateway that never comes up


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Backend:
    """A stand-in model instance: ``behaviour`` decides what /score does.

    ``echo`` answers ``{"y": <the JSON body>}`` after sleeping the body's ``sleep_ms`` (if
    any) with the body's ``status`` (if any); ``active`` and ``peak`` count requests in its
    handler now and at most.
    """

    name: str
    behaviour: str = "ok"  # ok | fail | slow | reject | empty | hold | echo
    port: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    headers: list[CIMultiDict[str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    active: int = 0
    peak: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def score(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._score(request)
        finally:
            self.active -= 1

    async def _score(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen["score"] += 1
        self.headers.append(request.headers.copy())
        if self.behaviour == "echo":
            document = json.loads(body)
            if isinstance(document, dict) and document.get("sleep_ms"):
                await asyncio.sleep(document["sleep_ms"] / 1000)
            status = document.get("status", 200) if isinstance(document, dict) else 200
            return web.json_response({"y": document}, status=status)
        if self.behaviour == "fail":
            return web.Response(status=500, text=MODEL_TRACEBACK)
        if self.behaviour == "slow":  # past any timeout a test sets; released at teardown
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 5)
        if self.behaviour == "empty":
            return web.Response(status=204)
        if self.behaviour == "reject":
            return web.json_response({"detail": "bad input"}, status=422)
        if self.behaviour == "hold":
            await self.release.wait()
        return web.json_response({"backend": self.name, "bytes": len(body)})

    async def swagger(self, _: web.Request) -> web.Response:
        return web.json_response({"swagger": "2.0", "backend": self.name})

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/score", self.score)
        app.router.add_get("/swagger.json", self.swagger)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop as a host stops an instance: no new connections, idle ones closed, the
        requests in its handler answered."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()


@dataclass
class GatewayProcess:
    """``python -m gateway`` on its own home and ports.

    ``control_token`` is given as ``TIDEGATE_CONTROL_TOKEN``; None: the gateway makes
    ``$TIDEGATE_HOME/control.token`` and ``admin_headers`` reads it from there.
    ``plain_http``: whether the plain-HTTP data plane is expected to listen.
    """

    home: Path
    env: dict[str, str]
    https_port: int
    http_port: int
    admin_port: int
    proc: subprocess.Popen[bytes] | None = None
    control_token: str | None = CONTROL_TOKEN
    plain_http: bool = True

    @classmethod
    def create(
        cls,
        home: Path,
        *,
        control_token: str | None = CONTROL_TOKEN,
        plain_http: bool = True,
        **extra_env: str,
    ) -> GatewayProcess:
        https_port, http_port, admin_port = free_ports(3)
        env = dict(
            os.environ,
            TIDEGATE_HOME=str(home),
            TIDEGATE_GATEWAY_HTTPS_PORT=str(https_port),
            TIDEGATE_GATEWAY_HTTP_PORT=str(http_port),
            TIDEGATE_GATEWAY_ADMIN_PORT=str(admin_port),
            PYTHONPATH=str(REPO),
        )
        env.pop("TIDEGATE_CONTROL_TOKEN", None)
        if control_token is not None:
            env["TIDEGATE_CONTROL_TOKEN"] = control_token
        env.update(extra_env)
        return cls(
            home, env, https_port, http_port, admin_port, control_token=control_token, plain_http=plain_http
        )

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """What every admin call sends: the control credential."""
        token = self.control_token or (self.home / "control.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stderr_path(self) -> Path:
        return self.home / "gateway-stderr.log"

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                env=self.env,
                cwd=REPO,
                stdout=err,
                stderr=err,
            )
        await self.wait_listening()

    async def wait_listening(self) -> None:
        """Until the data-plane ports accept connections (the table is loaded before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_LIMIT_S
        ports = (self.http_port,) if self.plain_http else ()
        for port in (*ports, self.https_port, self.admin_port):
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"gateway exited with {self.proc.returncode}:\n" + self.stderr_path.read_text()
                    )
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if loop.time() > deadline:
                        raise RuntimeError("gateway did not start listening") from None
                    await asyncio.sleep(0.05)

    async def stop(self) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.wait)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def route_body(
    name: str,
    generation: int,
    deployments: dict[str, list[str]],
    traffic: dict[str, int],
    *,
    keys: list[str] | None = None,
    timeout_ms: int = 5000,
    max_request_bytes: int = 1024 * 1024,
    max_concurrent: int = 16,
    max_queue_wait_ms: int = 500,
    mirror: dict[str, int] | None = None,
    max_requests_per_second: float = 0,
    retry_dropped_requests: bool = False,
) -> dict[str, Any]:
    """A route as an endpoint pushes it. Limits default roomy: tests of limits set them."""
    return {
        "name": name,
        "generation": generation,
        "auth_mode": "key",
        "key_sha256": [key_hash(k) for k in (keys if keys is not None else [KEY])],
        "traffic": traffic,
        "deployments": {
            dep: {
                "name": dep,
                "instances": [{"id": f"{dep}-{i}", "url": url} for i, url in enumerate(urls)],
                "request_timeout_ms": timeout_ms,
                "max_concurrent_requests_per_instance": max_concurrent,
                "max_queue_wait_ms": max_queue_wait_ms,
            }
            for dep, urls in deployments.items()
        },
        "mirror_traffic": mirror or {},
        "max_request_bytes": max_request_bytes,
        "max_requests_per_second": max_requests_per_second,
        "retry_dropped_requests": retry_dropped_requests,
    }


@pytest.fixture(scope="module")
def gateway_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-home")


@pytest_asyncio.fixture(scope="module")
async def gateway(gateway_home: Path) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess.create(gateway_home)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture(scope="module")
async def backends() -> AsyncIterator[dict[str, Backend]]:
    made = {
        name: Backend(name, behaviour)
        for name, behaviour in [
            ("blue", "ok"),
            ("green", "ok"),
            ("fail", "fail"),
            ("slow", "slow"),
            ("reject", "reject"),
            ("empty", "empty"),
            ("hold-a", "hold"),
            ("hold-b", "hold"),
            ("hold-drain", "hold"),
        ]
    }
    for backend in made.values():
        await backend.start()
    try:
        yield made
    finally:
        for backend in made.values():
            backend.release.set()
            await backend.stop()


@pytest_asyncio.fixture(scope="module")
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        yield session
