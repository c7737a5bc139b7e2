"""Driving a real host process the way the compute provider does, and the user-side
material it serves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from config.security import control_client_ssl, control_headers
from config.settings import Settings
from host.processes import is_alive, killpg

REPO_ROOT = Path(__file__).resolve().parents[2]
# Readiness probed from 1 s after start, every second: Azure's 10 s and 10 s would make every
# instance of every test wait 10 s before it may serve.
FAST_READINESS = {"initial_delay": 1, "period": 1}
# Guards against a hang only; no test asserts how long anything takes.
HANG_GUARD_SECONDS = 180.0

SCORE_PY = """\
import json
import os

import joblib

model = None


def init():
    global model
    model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.joblib"))
    print("model loaded")


def run(raw_data):
    data = json.loads(raw_data)
    if data.get("explode"):
        raise ValueError("score.py was asked to explode")
    return model.predict(data["data"]).tolist()
"""

INIT_FAILS_PY = """\
def init():
    raise RuntimeError("init could not load the model (on purpose)")


def run(raw_data):
    return None
"""

# Fails to start while the file FAIL_FLAG names exists: a new spec that goes bad part way.
FLAKY_PY = """\
import os


def init():
    if os.path.exists(os.environ["FAIL_FLAG"]):
        raise RuntimeError("flag file present: failing init (on purpose)")
    print("flaky init passed")


def run(raw_data):
    return "flaky"
"""

# init() waits for the file GO_FLAG names: until then `GET /` never answers, so every probe
# fails (it times out, or the connection is refused before gunicorn listens).
SLOW_INIT_PY = """\
import os
import time


def init():
    while not os.path.exists(os.environ["GO_FLAG"]):
        time.sleep(0.1)


def run(raw_data):
    return "finally"
"""

# scikit-learn unpinned: the host already has it, so the environment builds without downloads.
CONDA_YAML = """\
name: tidegate-test
channels:
  - conda-forge
dependencies:
  - scikit-learn
  - pip
  - pip:
      - joblib
"""


@dataclass
class UserFiles:
    model_dir: Path
    code_dir: Path
    init_fails_dir: Path
    flaky_dir: Path
    slow_init_dir: Path
    expected: Callable[[list[list[float]]], list[float]]


def runtime(
    endpoint: str,
    deployment: str,
    code_dir: Path,
    *,
    model_dir: Path | None,
    spec_hash: str = "spec-1",
    conda_file: str | None = CONDA_YAML,
    pip_requirements: list[str] | None = None,
    patch: int = 0,
    environment_variables: dict[str, str] | None = None,
    liveness_probe: dict[str, int] | None = None,
    readiness_probe: dict[str, int] | None = None,
) -> dict[str, Any]:
    rt: dict[str, Any] = {
        "endpoint": endpoint,
        "deployment": deployment,
        "code_dir": str(code_dir),
        "scoring_script": "score.py",
        "model_dir": str(model_dir) if model_dir else None,
        "environment": {
            "conda_file": conda_file,
            "pip_requirements": pip_requirements or [],
            "patch": patch,
        },
        "environment_variables": {"TIDEGATE_TEST_VAR": "1", **(environment_variables or {})},
        "spec_hash": spec_hash,
        "readiness_probe": readiness_probe or FAST_READINESS,
    }
    if liveness_probe is not None:
        rt["liveness_probe"] = liveness_probe
    return rt


@dataclass
class HostProcess:
    """`python -m host` as a user starts it, on ports and a state dir of its own; its API
    called with the control credential the host made in that state dir, as the CLI does."""

    home: Path
    port: int
    instance_port_start: int
    # Further TIDEGATE_ settings (host_bind, control_tls_cert...); with TLS set, it is called
    # at https://localhost trusting the state dir's CA.
    env: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    session: aiohttp.ClientSession = field(init=False)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        """What a client of this host (the compute provider, the CLI) reads."""
        return Settings(
            home=self.home,
            host_port=self.port,
            host_url=self.url,
            instance_port_start=self.instance_port_start,
            control_token=None,
        )

    @property
    def auth(self) -> dict[str, str]:
        return control_headers(self.settings)

    @property
    def client_ssl(self) -> ssl.SSLContext | bool:
        return control_client_ssl(self.settings) if self.tls else True

    @property
    def state_file(self) -> Path:
        return self.home / "host" / "state.json"

    @property
    def log_file(self) -> Path:
        """The current process's log (JSON lines from structlog, and anything on stderr)."""
        return self.home / f"host-{self.starts}.log"

    def events(self, event: str) -> list[dict[str, Any]]:
        """The current process's log records of one event."""
        found = []
        for line in self.log_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "host already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
        env |= {
            "TIDEGATE_HOME": str(self.home),
            "TIDEGATE_HOST_PORT": str(self.port),
            "TIDEGATE_INSTANCE_PORT_START": str(self.instance_port_start),
            **self.env,
        }
        self.starts += 1
        with open(self.home / f"host-{self.starts}.log", "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "host"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_healthy(self) -> None:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while True:
            assert self.running(), f"host exited with {self.proc and self.proc.returncode}"
            try:
                async with self.session.get(self.url + "/healthz", ssl=self.client_ssl) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "host never answered /healthz"
            await asyncio.sleep(0.1)

    async def exited(self) -> int:
        """The exit code of a host that stops by itself."""
        assert self.proc is not None
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "host never exited"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "host never stopped"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def restart(self) -> None:
        self.start()
        await self.wait_healthy()

    # ---- the API, as the compute provider calls it ----

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """One request; `headers` None sends the credential, `{}` sends none. JSON answers are
        decoded, others returned as text."""
        sent = self.auth if headers is None else headers
        async with self.session.request(
            method, self.url + path, headers=sent, ssl=self.client_ssl, **kwargs
        ) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def put(self, rt: dict[str, Any], count: int, **options: Any) -> tuple[int, dict[str, Any]]:
        """PUT the desired instances; `options` are further request fields (max_surge, ...)."""
        path = f"/deployments/{rt['endpoint']}/{rt['deployment']}"
        return await self.call("PUT", path, json={"runtime": rt, "instance_count": count, **options})

    async def deployments(self) -> list[dict[str, Any]]:
        code, listing = await self.call("GET", "/deployments")
        assert code == 200, listing
        return listing

    async def watch(
        self, endpoint: str, deployment: str, *, after: int | str, timeout: float | str = 30
    ) -> tuple[int, Any]:
        """One long poll: the status once its version passes `after`, or after `timeout` s."""
        params = {"wait_version": str(after), "timeout": str(timeout)}
        return await self.call("GET", f"/deployments/{endpoint}/{deployment}", params=params)

    async def follow(
        self,
        endpoint: str,
        deployment: str,
        done: Callable[[dict[str, Any]], bool],
        *,
        after: int = 0,
        each: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Long-poll version after version until `done(status)`; `each` sees every answer."""
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while True:
            assert self.running(), "host process died"
            code, status = await self.watch(endpoint, deployment, after=after, timeout=10)
            assert code == 200, status
            assert status["version"] >= after, "versions never go back"
            if each is not None:
                each(status)
            if done(status):
                return status
            assert time.monotonic() < deadline, f"never reached: {json.dumps(status, indent=1)}"
            after = status["version"]

    async def get(self, endpoint: str, deployment: str) -> tuple[int, Any]:
        return await self.call("GET", f"/deployments/{endpoint}/{deployment}")

    async def delete(self, endpoint: str, deployment: str) -> tuple[int, Any]:
        return await self.call("DELETE", f"/deployments/{endpoint}/{deployment}")

    async def logs(self, endpoint: str, deployment: str, **params: str) -> tuple[int, str]:
        return await self.call("GET", f"/deployments/{endpoint}/{deployment}/logs", params=params)

    async def wait_for(
        self,
        endpoint: str,
        deployment: str,
        done: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any]:
        """Poll GET until `done(status)`; fails at once if the host process dies."""
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while True:
            assert self.running(), "host process died"
            code, status = await self.get(endpoint, deployment)
            assert code == 200, status
            if done(status):
                return status
            assert time.monotonic() < deadline, f"never reached: {json.dumps(status, indent=1)}"
            await asyncio.sleep(0.1)


def all_ready(count: int, spec_hash: str = "spec-1") -> Callable[[dict[str, Any]], bool]:
    def done(status: dict[str, Any]) -> bool:
        instances = status["instances"]
        return len(instances) == count and all(
            i["state"] == "ready" and i["spec_hash"] == spec_hash for i in instances
        )

    return done


def kill_leftovers(state_file: Path) -> None:
    """Last resort after the session: no instance process may outlive the tests."""
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        return
    for dep in state["deployments"]:
        for inst in dep["instances"]:
            if is_alive(inst.get("pid"), inst.get("create_time")):
                killpg(inst["pid"], signal.SIGKILL)


def process_alive(pid: int | None) -> bool:
    return is_alive(pid, None)


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them: 0100007F is 127.0.0.1, 00000000 is
    0.0.0.0) with a TCP socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


async def port_answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True
