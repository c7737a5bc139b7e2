"""Driving a real host process the way the compute provider does, and the user-side
material it serves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

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
    """`python -m host` as a user starts it, on ports and a state dir of its own."""

    home: Path
    port: int
    instance_port_start: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    session: aiohttp.ClientSession = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.home / "host" / "state.json"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "host already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
        env |= {
            "TIDEGATE_HOME": str(self.home),
            "TIDEGATE_HOST_PORT": str(self.port),
            "TIDEGATE_INSTANCE_PORT_START": str(self.instance_port_start),
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
                async with self.session.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "host never answered /healthz"
            await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        while self.proc.poll() is None:
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def restart(self) -> None:
        self.start()
        await self.wait_healthy()

    # ---- the API, as the compute provider calls it ----

    async def put(self, rt: dict[str, Any], count: int, **options: Any) -> tuple[int, dict[str, Any]]:
        """PUT the desired instances; `options` are further request fields (max_surge, ...)."""
        path = f"/deployments/{rt['endpoint']}/{rt['deployment']}"
        body = {"runtime": rt, "instance_count": count, **options}
        async with self.session.put(self.url + path, json=body) as resp:
            return resp.status, await resp.json()

    async def watch(
        self, endpoint: str, deployment: str, *, after: int | str, timeout: float | str = 30
    ) -> tuple[int, Any]:
        """One long poll: the status once its version passes `after`, or after `timeout` s."""
        params = {"wait_version": str(after), "timeout": str(timeout)}
        url = f"{self.url}/deployments/{endpoint}/{deployment}"
        async with self.session.get(url, params=params) as resp:
            return resp.status, await resp.json()

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
        async with self.session.get(f"{self.url}/deployments/{endpoint}/{deployment}") as resp:
            return resp.status, await resp.json()

    async def delete(self, endpoint: str, deployment: str) -> tuple[int, Any]:
        async with self.session.delete(f"{self.url}/deployments/{endpoint}/{deployment}") as resp:
            return resp.status, await resp.json()

    async def logs(self, endpoint: str, deployment: str, **params: str) -> tuple[int, str]:
        url = f"{self.url}/deployments/{endpoint}/{deployment}/logs"
        async with self.session.get(url, params=params) as resp:
            return resp.status, await resp.text()

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


async def port_answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True
