"""The fake Azure Monitor metrics server (tests/fakes/monitor.py) as a process for a test, and
what a test needs to talk to it: a static-token credential, series set through its control route."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from azure.core.credentials import AccessToken

from tests.fakes.arm.client import FakeArmProcess

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fake-monitor-token"


class StaticToken:
    """An async credential with one token; records the scopes asked for."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, 4_102_444_800)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclass(frozen=True)
class FakeMonitor:
    url: str
    ca_file: Path
    ssl: ssl.SSLContext

    async def put_series(
        self,
        resource_id: str,
        metric: str,
        points: dict[str, dict[str, float]],
        *,
        unit: str = "Count",
        dimensions: dict[str, str] | None = None,
    ) -> None:
        """Set one series: points by ISO minute (`2026-11-29T12:07:00Z`) → aggregations."""
        body = {
            "resource_id": resource_id,
            "metric": metric,
            "unit": unit,
            "dimensions": dimensions or {},
            "points": points,
        }
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{self.url}/control/series", json=body, ssl=self.ssl) as response:
                assert response.status == 200, await response.text()

    async def received(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/control/requests", ssl=self.ssl) as response:
                return list(await response.json())


@contextmanager
def run_fake_monitor(
    folder: Path, *, token: str = TOKEN, measuring: FakeArmProcess | None = None
) -> Iterator[FakeMonitor]:
    """The fake on a port the kernel picks, serving a certificate of a fresh trustme CA; it
    takes `token` as the bearer (a stack's one Azure token, when it shares the fake ARM's). With
    `measuring`, it measures that fake ARM's VMs (platform metrics from their real processes)."""
    measure: list[str] = []
    if measuring is not None:
        subscription = measuring.azure_settings("any", 1)["azure_subscription_id"]
        measure = ["--arm-url", measuring.url, "--arm-ca", str(measuring.ca_file)]
        measure += ["--arm-token", measuring.token, "--subscription", subscription]
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(folder / "server.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.monitor", "--cert", str(folder / "server.pem")]
        + ["--key", str(folder / "server.pem"), "--token", token, *measure],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # "" if the fake dies: no hang
    try:
        if not first.startswith("listening "):
            raise RuntimeError(f"the fake monitor did not start: {first!r}")
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        yield FakeMonitor(url=first.split()[1], ca_file=folder / "ca.pem", ssl=context)
    finally:
        process.terminate()
        process.wait()
