"""Calls the gateway tests make: push a route, score, read stats and metrics, wait."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from tests.gateway.conftest import KEY, GatewayProcess, route_body

GUARD_S = 20.0  # bounds a wait that would otherwise hang on a broken gateway; not a timing test


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return str(self.json()["error"]["code"])


async def push(
    client: aiohttp.ClientSession, gw: GatewayProcess, body: dict[str, Any], **headers: str
) -> dict[str, Any]:
    """PUT the route with the control credential (``headers`` may replace it)."""
    sent = {**gw.admin_headers, **headers}
    async with client.put(f"{gw.admin}/routes/{body['name']}", json=body, headers=sent) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def push_route(
    client: aiohttp.ClientSession,
    gw: GatewayProcess,
    name: str,
    deployments: dict[str, list[str]],
    traffic: dict[str, int],
    *,
    generation: int = 1,
    **limits: Any,
) -> dict[str, Any]:
    """Push the route ``route_body`` builds; ``limits`` are its keyword arguments."""
    return await push(client, gw, route_body(name, generation, deployments, traffic, **limits))


async def delete(
    client: aiohttp.ClientSession, gw: GatewayProcess, name: str, generation: int
) -> dict[str, Any]:
    async with client.delete(
        f"{gw.admin}/routes/{name}", params={"generation": str(generation)}, headers=gw.admin_headers
    ) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def score(
    client: aiohttp.ClientSession,
    gw: GatewayProcess,
    endpoint: str,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    data: Any = b'{"data": [1, 2, 3]}',
    path_form: bool = False,
    method: str = "POST",
    resource: str = "/score",
    **kwargs: Any,
) -> Reply:
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if path_form:
        url = f"{gw.http}/endpoints/{endpoint}{resource}"
    else:
        url = f"{gw.http}{resource}"
        sent["Host"] = f"{endpoint}.localhost:{gw.http_port}"
    sent.update(headers or {})
    async with client.request(method, url, data=data, headers=sent, **kwargs) as response:
        return Reply(response.status, response.headers, await response.read())


async def eventually(condition: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_S
    while not condition():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def stats(
    client: aiohttp.ClientSession,
    gw: GatewayProcess,
    endpoint: str,
    deployment: str = "",
    window: str = "60s",
) -> dict[str, Any]:
    params = {"endpoint": endpoint, "window": window}
    if deployment:
        params["deployment"] = deployment
    async with client.get(f"{gw.admin}/stats", params=params, headers=gw.admin_headers) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def metrics(client: aiohttp.ClientSession, gw: GatewayProcess) -> str:
    async with client.get(f"{gw.admin}/metrics", headers=gw.admin_headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def until(check: Any) -> None:
    """Until the async ``check()`` is true (bounded by GUARD_S; not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_S
    while not await check():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)
