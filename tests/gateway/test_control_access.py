"""Who may change the gateway, and where it listens: the admin API behind the control
credential, each listener on its own bind, and route generations the admin API refuses.
The real gateway process, over real HTTP(S); traffic only ever goes to 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme

from tests.gateway.conftest import KEY, Backend, GatewayProcess, route_body
from tests.gateway.helpers import push, score

DAY_MS = 24 * 3600 * 1000
WRONG = "not-the-control-credential"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def table(client: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with client.get(f"{gw.admin}/routes", headers=gw.admin_headers) as response:
        assert response.status == 200
        return dict(await response.json())


async def expect_401(response: aiohttp.ClientResponse) -> None:
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = (await response.json())["error"]
    assert error["code"] == "Unauthorized"
    assert "control credential" in error["message"]


# --- the control credential ---


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["no_credential", "wrong_credential", "empty_bearer", "basic_auth"],
)
async def test_a_push_or_delete_without_the_credential_is_401_and_changes_nothing(
    gateway: GatewayProcess,
    backends: dict[str, Backend],
    client: aiohttp.ClientSession,
    headers: dict[str, str],
) -> None:
    name = "a-guarded"
    held = route_body(name, 10, {"blue": [backends["blue"].url]}, {"blue": 100})
    await push(client, gateway, held)
    before = await table(client, gateway)
    takeover = route_body(name, 11, {"green": [backends["green"].url]}, {"green": 100})
    async with client.put(f"{gateway.admin}/routes/{name}", json=takeover, headers=headers) as response:
        await expect_401(response)
    async with client.delete(
        f"{gateway.admin}/routes/{name}", params={"generation": "12"}, headers=headers
    ) as response:
        await expect_401(response)
    assert await table(client, gateway) == before
    assert (await score(client, gateway, name)).headers["azureml-model-deployment"] == "blue"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/routes"),
        ("GET", "/routes/a-guarded"),
        ("GET", "/stats?endpoint=a-guarded&window=60s"),
        ("GET", "/metrics"),
        ("GET", "/access-log?request_id=anything"),
        ("GET", "/no-such-path"),
        ("POST", "/healthz"),
    ],
)
async def test_every_admin_path_but_the_health_check_wants_the_credential(
    gateway: GatewayProcess, client: aiohttp.ClientSession, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
        async with client.request(method, f"{gateway.admin}{path}", headers=headers) as response:
            await expect_401(response)


async def test_the_health_check_answers_without_the_credential(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{gateway.admin}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_stats_and_metrics_answer_with_the_credential(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    for path in ("/stats?endpoint=a-guarded&window=60s", "/metrics"):
        async with client.get(f"{gateway.admin}{path}", headers=gateway.admin_headers) as response:
            assert response.status == 200


# --- route generations ---


async def test_a_push_far_ahead_of_the_gateway_clock_is_400_naming_generation_and_nothing_is_stored(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    name = "a-future"
    pinned = route_body(name, now_ms() + 2 * DAY_MS, {"blue": [backends["blue"].url]}, {"blue": 100})
    async with client.put(
        f"{gateway.admin}/routes/{name}", json=pinned, headers=gateway.admin_headers
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "BadRequest"
    assert error["field"] == "generation"
    assert "ahead of this gateway's clock" in error["message"]
    assert name not in (await table(client, gateway))["routes"]
    assert name not in (gateway.home / "gateway" / "routes.json").read_text()
    # A push at the clock still applies: nothing was pinned.
    fresh = route_body(name, now_ms(), {"blue": [backends["blue"].url]}, {"blue": 100})
    assert (await push(client, gateway, fresh))["applied"] is True


async def test_a_delete_far_ahead_of_the_gateway_clock_is_400_naming_generation_and_nothing_changes(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    name = "a-future-delete"
    generation = now_ms()
    await push(client, gateway, route_body(name, generation, {"blue": [backends["blue"].url]}, {"blue": 100}))
    async with client.delete(
        f"{gateway.admin}/routes/{name}",
        params={"generation": str(now_ms() + 2 * DAY_MS)},
        headers=gateway.admin_headers,
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "generation"
    document = await table(client, gateway)
    assert document["routes"][name]["generation"] == generation
    assert name not in document["tombstones"]
    assert (await score(client, gateway, name)).status == 200


# --- listeners ---


@pytest_asyncio.fixture
async def fresh() -> AsyncIterator[list[GatewayProcess]]:
    """Gateways a test starts with its own settings; stopped at the end."""
    started: list[GatewayProcess] = []
    try:
        yield started
    finally:
        for process in started:
            await process.stop()


async def test_an_admin_bind_beyond_loopback_without_a_certificate_stops_the_gateway_saying_why(
    tmp_path: Path, fresh: list[GatewayProcess]
) -> None:
    process = GatewayProcess.create(tmp_path / "home", TIDEGATE_GATEWAY_ADMIN_BIND="0.0.0.0")
    fresh.append(process)
    with pytest.raises(RuntimeError, match="gateway exited"):
        await process.start()
    assert process.proc is not None and process.proc.returncode not in (None, 0)
    log = [json.loads(line) for line in process.stderr_path.read_text().splitlines() if line.startswith("{")]
    (refused,) = [entry for entry in log if entry.get("event") == "gateway.refused"]
    assert "TIDEGATE_GATEWAY_ADMIN_BIND=0.0.0.0" in refused["error"]
    assert "TIDEGATE_CONTROL_TLS_CERT" in refused["error"]
    # It refused before listening anywhere.
    for port in (process.https_port, process.http_port, process.admin_port):
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()


async def test_an_admin_bind_beyond_loopback_with_a_certificate_serves_https_and_wants_the_credential(
    tmp_path: Path, fresh: list[GatewayProcess], client: aiohttp.ClientSession
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "control.pem", tmp_path / "control-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    process = GatewayProcess.create(
        tmp_path / "home",
        TIDEGATE_GATEWAY_ADMIN_BIND="0.0.0.0",
        TIDEGATE_CONTROL_TLS_CERT=str(cert),
        TIDEGATE_CONTROL_TLS_KEY=str(key),
    )
    fresh.append(process)
    await process.start()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    admin = f"https://127.0.0.1:{process.admin_port}"
    async with client.get(f"{admin}/healthz", ssl=trusting) as response:
        assert response.status == 200
    async with client.get(f"{admin}/routes", ssl=trusting) as response:
        await expect_401(response)
    async with client.get(f"{admin}/routes", ssl=trusting, headers=process.admin_headers) as response:
        assert response.status == 200
    with pytest.raises(aiohttp.ClientError):  # no plain HTTP on that port
        async with client.get(f"http://127.0.0.1:{process.admin_port}/healthz") as response:
            await response.read()


async def https_score(client: aiohttp.ClientSession, gw: GatewayProcess, endpoint: str) -> int:
    context = ssl.create_default_context(cafile=str(gw.home / "tls" / "ca.pem"))
    async with client.post(
        f"https://127.0.0.1:{gw.https_port}/endpoints/{endpoint}/score",
        data=b"{}",
        headers={"Authorization": f"Bearer {KEY}"},
        ssl=context,
        server_hostname="localhost",
    ) as response:
        return response.status


async def test_with_the_https_data_plane_beyond_loopback_there_is_no_plain_http_listener(
    tmp_path: Path, fresh: list[GatewayProcess], backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    process = GatewayProcess.create(
        tmp_path / "home", plain_http=False, TIDEGATE_GATEWAY_HTTPS_BIND="0.0.0.0"
    )
    fresh.append(process)
    await process.start()
    await push(client, process, route_body("a-wide", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))
    assert await https_score(client, process, "a-wide") == 200
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", process.http_port)


async def test_plain_http_beside_an_https_data_plane_beyond_loopback_only_when_enabled(
    tmp_path: Path, fresh: list[GatewayProcess], backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    process = GatewayProcess.create(
        tmp_path / "home", TIDEGATE_GATEWAY_HTTPS_BIND="0.0.0.0", TIDEGATE_GATEWAY_HTTP_ENABLED="true"
    )
    fresh.append(process)
    await process.start()
    await push(client, process, route_body("a-both", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))
    assert await https_score(client, process, "a-both") == 200
    assert (await score(client, process, "a-both", path_form=True)).status == 200
