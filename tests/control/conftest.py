"""A real `tidegate api` process on its own home and port, for the API and codec tests."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from config.settings import Settings
from tests.support.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ApiProcess:
    home: Path
    port: int
    ui_port: int
    process: subprocess.Popen[bytes]
    log: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ui_origin(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def token(self) -> str:
        return (self.home / "control.token").read_text().strip()

    def settings(self, **values: object) -> Settings:
        """The settings the API runs with (same home, so the same credential and codec key)."""
        return Settings(home=self.home, api_port=self.port, temporal_ui_port=self.ui_port, **values)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_api(home: Path, *, scheme: str = "http", ca: trustme.CA | None = None, **env: str) -> ApiProcess:
    """`tidegate api` as `tidegate up` starts it; returns once /healthz answers (over https,
    trusting `ca`, when the environment gives it a certificate)."""
    port, ui_port = free_ports(2)
    log = home.parent / f"{home.name}-api.log"
    environment = dict(
        os.environ,
        TIDEGATE_HOME=str(home),
        TIDEGATE_API_PORT=str(port),
        TIDEGATE_TEMPORAL_UI_PORT=str(ui_port),
        **env,
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "api"],
            env=environment,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    api = ApiProcess(home=home, port=port, ui_port=ui_port, process=process, log=log, scheme=scheme)
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    for _ in range(300):  # a bound on polls, not a time limit: a broken build must not hang CI
        if process.poll() is not None:
            raise AssertionError(f"tidegate api exited with {process.returncode}:\n{api.log_text()}")
        try:
            with urllib.request.urlopen(f"{api.url}/healthz", timeout=2, context=context) as response:
                if response.status == 200:
                    return api
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    stop_api(api)
    raise AssertionError(f"tidegate api never answered /healthz:\n{api.log_text()}")


def stop_api(api: ApiProcess) -> None:
    api.process.terminate()
    try:
        api.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        api.process.kill()
        api.process.wait()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    process = start_api(tmp_path_factory.mktemp("api") / "home")
    try:
        yield process
    finally:
        stop_api(process)
