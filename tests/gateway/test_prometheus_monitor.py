"""The `prometheus` monitor provider against a real Prometheus (Debian's) scraping the real
gateway: it must read the same window as the gateway's own `/stats`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from activities.prometheus.monitor import PrometheusMonitorProvider
from config.contract.activities import QueryWindowInput
from config.stats import WindowStats
from tests.gateway.conftest import CONTROL_TOKEN, KEY, Backend, GatewayProcess
from tests.gateway.helpers import push_route
from tests.support.ports import free_port

PROMETHEUS_GUARD_S = 180.0

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Debian's prometheus is not installed (.ci/run installs it)"
)


async def _series_value(session: aiohttp.ClientSession, url: str, promql: str) -> float | None:
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        rows = (await response.json())["data"]["result"]
    return float(rows[0]["value"][1]) if rows else None


async def _ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/-/ready") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def _send(session: aiohttp.ClientSession, gateway: GatewayProcess, n: int, deployment: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "azureml-model-deployment": deployment}
    for _ in range(n):
        async with session.post(
            f"{gateway.http}/endpoints/prom-ep/score", json={"x": 1}, headers=headers
        ) as r:
            await r.read()


async def test_the_prometheus_provider_reads_the_same_window_as_stats(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await push_route(
        client,
        gateway,
        "prom-ep",
        {"blue": [backends["blue"].url], "fail": [backends["fail"].url]},
        {"blue": 100},
    )
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: tidegate\n    static_configs: [{{targets: ['127.0.0.1:{gateway.admin_port}']}}]\n"
        f"    authorization: {{type: Bearer, credentials: {CONTROL_TOKEN}}}\n"
    )
    prometheus = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    series = 'tidegate_requests_total{endpoint="prom-ep",deployment="blue"}'
    total = f"sum({series})"
    try:
        # Bounded only so a broken build cannot hang CI (Prometheus starts and scrapes each second).
        async with asyncio.timeout(PROMETHEUS_GUARD_S):
            while not await _ready(client, url):
                await asyncio.sleep(0.2)
            await _send(client, gateway, 1, "blue")  # the series exists before the counted traffic
            while await _series_value(client, url, f"count_over_time({series}[1m])") is None:
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.5)
            await _send(client, gateway, 59, "blue")
            await _send(client, gateway, 20, "fail")
            while (await _series_value(client, url, total) or 0) < 60:
                await asyncio.sleep(0.5)
        await asyncio.sleep(2.5)  # a couple more scrapes of the final values

        provider = PrometheusMonitorProvider(url)
        seen = await provider.query_window(
            QueryWindowInput(endpoint="prom-ep", deployment="blue", window_seconds=60)
        )
        failing = await provider.query_window(
            QueryWindowInput(endpoint="prom-ep", deployment="fail", window_seconds=60)
        )
        async with client.get(
            f"{gateway.admin}/stats",
            params={"endpoint": "prom-ep", "deployment": "blue", "window": "60s"},
            headers=gateway.admin_headers,
        ) as response:
            stats = WindowStats.model_validate(await response.json())
    finally:
        prometheus.terminate()
        prometheus.wait()

    assert stats.requests == 60
    # increase() extrapolates at the window's edges: within 20 % of the exact count.
    assert seen.requests == pytest.approx(stats.requests, rel=0.2)
    assert seen.status.get("2xx") == pytest.approx(seen.requests, abs=1)
    assert seen.latency_ms.p99 is not None and seen.latency_ms.p99 > 0
    assert failing.error_rate == pytest.approx(1.0)
