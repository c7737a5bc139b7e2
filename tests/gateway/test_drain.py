"""A gateway leaving the load balancer's rotation: ``POST /drain`` on its admin API turns the
data plane's health path to 503 and closes each connection after its next answer, while
requests are still served. The real gateway process over real HTTP on 127.0.0.1; raw sockets
where the test must see one connection's bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio

from config.routes import HEALTH_PATH
from tests.gateway.conftest import KEY, Backend, GatewayProcess, route_body
from tests.gateway.helpers import push, until


@pytest_asyncio.fixture
async def fresh_gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """Draining cannot be undone: each test its own gateway."""
    process = GatewayProcess.create(tmp_path / "home")
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


class RawConnection:
    """One keep-alive HTTP/1.1 connection, each answer read whole (content-length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, *, host: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                found[name.strip().lower()] = value.strip()
        answer = await self.reader.readexactly(int(found.get("content-length", "0")))
        return int(status_line.split()[1]), found, answer

    async def closed_by_peer(self) -> bool:
        """Whether the gateway closed this connection (EOF within a few seconds)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()


async def score_on(conn: RawConnection, endpoint: str) -> tuple[int, dict[str, str], bytes]:
    return await conn.request(
        "POST",
        f"/endpoints/{endpoint}/score",
        host="127.0.0.1",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        body=b'{"data": [1]}',
    )


async def health(client: aiohttp.ClientSession, gw: GatewayProcess) -> int:
    async with client.get(f"{gw.http}{HEALTH_PATH}") as response:
        return response.status


async def health_codes(gw: GatewayProcess, tries: int = 24) -> set[str]:
    """The health path's answers over fresh connections, which the kernel spreads over the
    processes: their codes (`Healthy`, or the 503's reason)."""
    codes = set()
    for _ in range(tries):
        async with aiohttp.ClientSession() as one, one.get(f"{gw.http}{HEALTH_PATH}") as response:
            body = await response.json()
            codes.add(body["status"] if response.status == 200 else body["error"]["code"])
    return codes


async def test_drain_without_the_credential_is_401_and_the_gateway_stays_in_rotation(
    fresh_gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    gw = fresh_gateway
    await push(client, gw, route_body("d-guarded", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))
    for headers in ({}, {"Authorization": "Bearer not-the-control-credential"}):
        async with client.post(f"{gw.admin}/drain", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "Unauthorized"
    assert await health(client, gw) == 200
    conn = await RawConnection.open(gw.http_port)
    try:
        for _ in range(3):  # keep-alive as before: no connection header, the connection stays
            status, headers, _ = await score_on(conn, "d-guarded")
            assert status == 200
            assert "connection" not in headers
    finally:
        await conn.close()


async def test_drain_turns_health_to_503_and_closes_keep_alive_connections_after_their_answer(
    fresh_gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    gw = fresh_gateway
    await push(client, gw, route_body("d-leaving", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))
    status, headers, body = await (probe := await RawConnection.open(gw.http_port)).request(
        "GET", HEALTH_PATH, host="127.0.0.1"
    )
    await probe.close()
    assert (status, headers.get("connection")) == (200, None)
    assert b"Healthy" in body
    opened = await RawConnection.open(gw.http_port)  # a client's keep-alive connection, in use
    try:
        assert (await score_on(opened, "d-leaving"))[0] == 200
        async with client.post(f"{gw.admin}/drain", headers=gw.admin_headers) as response:
            assert response.status == 200
            assert await response.json() == {"draining": True, "started": True, "processes": 1}
        # A new request on the open connection is still served, and told to reconnect.
        status, headers, _ = await score_on(opened, "d-leaving")
        assert status == 200
        assert headers["connection"] == "close"
        assert await opened.closed_by_peer()
    finally:
        await opened.close()
    probe = await RawConnection.open(gw.http_port)
    status, headers, body = await probe.request("GET", HEALTH_PATH, host="127.0.0.1")
    await probe.close()
    assert (status, headers["connection"]) == (503, "close")
    assert b"Draining" in body
    # Idempotent: a second drain changes nothing.
    async with client.post(f"{gw.admin}/drain", headers=gw.admin_headers) as response:
        assert await response.json() == {"draining": True, "started": False, "processes": 1}
    fresh = await RawConnection.open(gw.http_port)  # a client that got here anyway is served
    try:
        status, headers, _ = await score_on(fresh, "d-leaving")
        assert (status, headers["connection"]) == (200, "close")
    finally:
        await fresh.close()


async def test_the_health_path_says_503_until_the_gateway_serves_an_endpoint(
    fresh_gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{fresh_gateway.http}{HEALTH_PATH}") as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "NoRoutes"
    await push(
        client, fresh_gateway, route_body("d-first", 1, {"blue": [backends["blue"].url]}, {"blue": 100})
    )
    assert await health(client, fresh_gateway) == 200


async def test_the_health_path_is_no_endpoints_route_and_only_answers_get(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push(client, gateway, route_body("d-any", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))
    async with client.post(f"{gateway.http}{HEALTH_PATH}") as response:
        assert response.status == 405
    async with client.get(
        f"{gateway.http}{HEALTH_PATH}", headers={"Host": "some-endpoint.localhost"}
    ) as response:
        assert response.status == 200  # whatever the host: it is the gateway's, not an endpoint's
    async with client.get(f"{gateway.http}/endpoints/x{HEALTH_PATH}") as response:
        assert response.status == 404


async def test_drain_reaches_every_process_of_a_gateway(
    tmp_path: Path, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    gw = GatewayProcess.create(tmp_path / "home", TIDEGATE_GATEWAY_WORKERS="3")
    await gw.start()
    try:
        # Served by every process (each reads the table process 0 writes), then drained.
        await push(client, gw, route_body("d-workers", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))

        async def every_process_serves() -> bool:
            return await health_codes(gw) == {"Healthy"}

        await until(every_process_serves)
        answers: list[dict[str, object]] = []

        async def all_three_drain() -> bool:
            # The other processes start after process 0 listens: asked again until they answer.
            async with client.post(f"{gw.admin}/drain", headers=gw.admin_headers) as response:
                answers.append(await response.json())
            return answers[-1]["processes"] == 3

        await until(all_three_drain)
        assert answers[0]["started"] is True
        assert all(a["started"] is False for a in answers[1:])
        # Fresh connections land on any of the processes (SO_REUSEPORT): every one says 503.
        assert await health_codes(gw) == {"Draining"}
    finally:
        await gw.stop()


async def test_drain_closes_idle_connections_after_the_time_asked_and_keeps_one_in_use_open(
    fresh_gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    gw = fresh_gateway
    await push(
        client, gw, route_body("d-idle", 1, {"hold-drain": [backends["hold-drain"].url]}, {"hold-drain": 100})
    )
    await push(client, gw, route_body("d-quick", 1, {"blue": [backends["blue"].url]}, {"blue": 100}))
    idle = await RawConnection.open(gw.http_port)
    busy = await RawConnection.open(gw.http_port)
    hold = backends["hold-drain"]
    hold.release.clear()
    try:
        assert (await score_on(idle, "d-quick"))[0] == 200  # then nothing more on it
        in_flight = asyncio.create_task(score_on(busy, "d-idle"))  # held by the instance
        await asyncio.sleep(0.3)
        async with client.post(
            f"{gw.admin}/drain", params={"close_idle_after": "0.5"}, headers=gw.admin_headers
        ) as response:
            assert (await response.json())["started"] is True
        assert await idle.closed_by_peer()  # a close the client's pool sees, before the VM goes
        assert not in_flight.done()
        hold.release.set()
        status, headers, _ = await asyncio.wait_for(in_flight, 10)
        assert (status, headers["connection"]) == (200, "close")  # answered, then closed
    finally:
        hold.release.set()
        await idle.close()
        await busy.close()


async def test_drain_refuses_a_close_idle_after_out_of_bounds_and_changes_nothing(
    fresh_gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push(
        client, fresh_gateway, route_body("d-kept", 1, {"blue": [backends["blue"].url]}, {"blue": 100})
    )
    for bad in ("-1", "3601", "soon", "nan"):
        async with client.post(
            f"{fresh_gateway.admin}/drain",
            params={"close_idle_after": bad},
            headers=fresh_gateway.admin_headers,
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"]["field"] == "close_idle_after"
    assert await health(client, fresh_gateway) == 200
