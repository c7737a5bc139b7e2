"""Several gateways behind one load balancer (``TIDEGATE_GATEWAY_ADMIN_URLS``): the local
network provider pushes each route to every gateway with their count, and together they
keep to the endpoint's rate and to each instance's concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from activities.local.network import LocalNetworkProvider
from config.contract.activities import ApplyRouteInput
from config.routes import EndpointRoute
from config.settings import Settings
from tests.gateway.conftest import CONTROL_TOKEN, Backend, GatewayProcess, route_body
from tests.gateway.helpers import score


@pytest_asyncio.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[GatewayProcess]]:
    gateways = [GatewayProcess.create(tmp_path_factory.mktemp(f"gateway-{i}")) for i in range(2)]
    for gateway in gateways:
        await gateway.start()
    try:
        yield gateways
    finally:
        for gateway in gateways:
            await gateway.stop()


async def push_to_all(gateways: list[GatewayProcess], home: Path, body: dict[str, Any]) -> None:
    """As the endpoint's apply_route activity does, with both gateways' admin URLs set."""
    settings = Settings(
        home=home, gateway_admin_urls=[g.admin for g in gateways], control_token=SecretStr(CONTROL_TOKEN)
    )
    provider = LocalNetworkProvider(settings)
    await provider.apply_route(ApplyRouteInput(route=EndpointRoute.model_validate(body)))


async def shown(client: aiohttp.ClientSession, gateway: GatewayProcess, endpoint: str) -> dict[str, Any]:
    async with client.get(f"{gateway.admin}/routes/{endpoint}", headers=gateway.admin_headers) as response:
        assert response.status == 200
        return dict(await response.json())


async def test_each_gateway_is_told_how_many_share_the_route(
    pair: list[GatewayProcess], backends: dict[str, Backend], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await push_to_all(
        pair, tmp_path, route_body("s-count", 1, {"blue": [backends["blue"].url]}, {"blue": 100})
    )
    assert [(await shown(client, gateway, "s-count"))["gateways"] for gateway in pair] == [2, 2]


async def test_two_gateways_keep_to_the_endpoints_rate_together(
    pair: list[GatewayProcess], backends: dict[str, Backend], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rate = 20
    body = route_body(
        "s-rate", 1, {"blue": [backends["blue"].url]}, {"blue": 100}, max_requests_per_second=rate
    )
    await push_to_all(pair, tmp_path, body)
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(*(score(client, gateway, "s-rate") for gateway in pair for _ in range(50)))
    elapsed = loop.time() - started
    served = sum(r.status == 200 for r in replies)
    print(f"rate {rate}/s over 2 gateways, 100 requests in {elapsed:.3f} s: {served} served")
    # Each gateway holds half the rate; alone, each would have let a whole second's burst in.
    assert {r.status for r in replies} == {200, 429}
    assert 1 <= served <= rate + rate * elapsed + 2
    refused = next(r for r in replies if r.status == 429)
    assert refused.json()["error"]["message"] == f"endpoint s-rate allows {rate} requests/s"
