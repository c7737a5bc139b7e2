"""Slow and hostile clients against the real gateway process: requests sent too slowly are
408 and closed while others are served, connections past the cap are closed at once, and an
unauthenticated flood cannot grow the logs without bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.gateway.conftest import KEY, Backend, GatewayProcess
from tests.gateway.helpers import GUARD_S, metrics, push_route, score, until

# Small values so the tests are quick; the defaults are 10 s, 1024 bytes/s after 5 s.
HEADER_TIMEOUT_S = 2
MIN_BODY_RATE = 1000
BODY_GRACE_S = 1


@pytest_asyncio.fixture(scope="module")
async def strict(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess.create(
        tmp_path_factory.mktemp("strict"),
        TIDEGATE_GATEWAY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_S),
        TIDEGATE_GATEWAY_MIN_BODY_BYTES_PER_SECOND=str(MIN_BODY_RATE),
        TIDEGATE_GATEWAY_BODY_GRACE_SECONDS=str(BODY_GRACE_S),
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def trickle(port: int, sent_at_once: bytes, then: bytes, every_s: float) -> bytes:
    """Send ``sent_at_once``, then ``then`` one byte every ``every_s``, until the gateway
    closes the connection; everything it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with contextlib.suppress(OSError):  # the gateway hangs up mid-trickle
            writer.write(sent_at_once)
            for byte in then:
                await asyncio.sleep(every_s)
                writer.write(bytes([byte]))
                await writer.drain()

    sending = asyncio.create_task(send())
    try:
        async with asyncio.timeout(GUARD_S):  # a gateway that never cuts it off fails here
            return await reader.read()  # until the gateway closes
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        writer.close()


async def keep_scoring(
    client: aiohttp.ClientSession, gw: GatewayProcess, endpoint: str, done: asyncio.Event
) -> list[int]:
    """Another client's requests, one after another, until ``done``."""
    statuses: list[int] = []
    while not done.is_set():
        statuses.append((await score(client, gw, endpoint, path_form=True)).status)
        await asyncio.sleep(0.05)
    return statuses


def answer_of(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


async def cut_off_while_another_client_is_served(
    gw: GatewayProcess, client: aiohttp.ClientSession, endpoint: str, sent_at_once: bytes, then: bytes
) -> tuple[bytes, list[int]]:
    done = asyncio.Event()
    other = asyncio.create_task(keep_scoring(client, gw, endpoint, done))
    try:
        raw = await trickle(gw.http_port, sent_at_once, then, every_s=0.5)
    finally:
        done.set()
    return raw, await other


async def test_a_request_head_trickled_a_byte_at_a_time_is_408_and_closed_while_others_are_served(
    strict: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, strict, "h-slow-head", {"blue": [backends["blue"].url]}, {"blue": 100})
    raw, others = await cut_off_while_another_client_is_served(
        strict,
        client,
        "h-slow-head",
        b"POST /endpoints/h-slow-head/score HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"x-padding: " + b"p" * 200,  # a byte every 0.5 s: it never stops, never ends
    )
    status, headers, body = answer_of(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert body == {
        "error": {
            "code": "RequestTimeout",
            "message": f"the request line and headers did not arrive within {HEADER_TIMEOUT_S} s",
        }
    }
    assert others and set(others) == {200}


async def test_a_request_body_slower_than_the_minimum_rate_is_408_and_closed_while_others_are_served(
    strict: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, strict, "h-slow-body", {"blue": [backends["blue"].url]}, {"blue": 100})
    head = (
        b"POST /endpoints/h-slow-body/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    raw, others = await cut_off_while_another_client_is_served(
        strict, client, "h-slow-body", head, b"[" + b"1," * 500
    )
    status, headers, body = answer_of(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert "azureml-model-deployment" not in headers  # the client's delay, not the deployment's
    assert body == {
        "error": {
            "code": "RequestTimeout",
            "message": f"the request body arrived slower than {MIN_BODY_RATE} bytes/s",
        }
    }
    assert others and set(others) == {200}


async def test_a_body_sent_in_pieces_above_the_minimum_rate_is_served(
    strict: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    """Over the grace, but at twice the minimum rate: nothing to cut off."""
    await push_route(client, strict, "h-steady", {"blue": [backends["blue"].url]}, {"blue": 100})
    body = b"[" + b"1," * 1999 + b"1]"  # 4000 bytes
    piece = 2 * MIN_BODY_RATE // 10  # every 0.1 s

    async def steady() -> AsyncIterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]
            await asyncio.sleep(0.1)

    headers = {"Authorization": f"Bearer {KEY}", "Content-Length": str(len(body))}
    async with client.post(
        f"{strict.http}/endpoints/h-steady/score", data=steady(), headers=headers
    ) as response:
        assert response.status == 200
        assert (await response.json())["bytes"] == len(body)


# --- the connection cap ---


async def score_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: str) -> int:
    """One more request on an open keep-alive connection; its status."""
    writer.write(
        f"POST /endpoints/{endpoint}/score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Length: 2\r\n\r\n{}".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def connect_and_score(
    gw: GatewayProcess, endpoint: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection that has been served once (so the gateway counts it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    assert await score_on(reader, writer, endpoint) == 200
    return reader, writer


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


async def connections_active_are(client: aiohttp.ClientSession, gw: GatewayProcess, count: int) -> bool:
    return metric(await metrics(client, gw), "ConnectionsActive") == count


async def test_past_max_connections_a_new_connection_is_closed_at_once_and_counted(
    tmp_path: Path, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    process = GatewayProcess.create(tmp_path / "home", TIDEGATE_GATEWAY_MAX_CONNECTIONS="3")
    await process.start()
    held: list[asyncio.StreamWriter] = []
    try:
        await push_route(client, process, "h-cap", {"blue": [backends["blue"].url]}, {"blue": 100})
        await until(lambda: connections_active_are(client, process, 0))  # the start-up probes are gone
        for _ in range(3):
            held.append((await connect_and_score(process, "h-cap"))[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", process.http_port)
        writer.write(b"GET /endpoints/h-cap/score HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(GUARD_S):
                assert await reader.read() == b""  # closed, not answered
        writer.close()
        text = await metrics(client, process)
        assert metric(text, "tidegate_connections_refused_total") == 1
        assert metric(text, "ConnectionsActive") == 3
        # One goes, and there is room again.
        held.pop().close()
        await until(lambda: connections_active_are(client, process, 2))
        held.append((await connect_and_score(process, "h-cap"))[1])
    finally:
        for conn in held:
            conn.close()
        await process.stop()
    log = [json.loads(line) for line in process.stderr_path.read_text().splitlines() if line.startswith("{")]
    (limit,) = [e for e in log if e["event"] == "gateway.open_files_limit"]
    assert limit["soft"] == limit["hard"] >= limit["soft_before"]


async def test_a_connection_idle_between_requests_is_closed_and_a_busy_one_is_not(
    tmp_path: Path, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    process = GatewayProcess.create(tmp_path / "home", TIDEGATE_GATEWAY_IDLE_TIMEOUT_SECONDS="1")
    await process.start()
    try:
        await push_route(client, process, "h-idle", {"blue": [backends["blue"].url]}, {"blue": 100})
        idle_reader, idle = await connect_and_score(process, "h-idle")
        busy_reader, busy = await connect_and_score(process, "h-idle")
        statuses = []
        async with asyncio.timeout(GUARD_S):
            closing = asyncio.create_task(idle_reader.read())  # b"" once the gateway closes it
            while not closing.done():  # the busy one asks every 0.2 s meanwhile
                statuses.append(await score_on(busy_reader, busy, "h-idle"))
                await asyncio.sleep(0.2)
        assert closing.result() == b""
        assert statuses and set(statuses) == {200}
        assert await score_on(busy_reader, busy, "h-idle") == 200  # still open
        idle.close()
        busy.close()
    finally:
        await process.stop()


# --- an unauthenticated flood and the logs ---

FLOOD_REQUESTS = 10_000
FLOOD_CONNECTIONS = 4
PIPELINE = 16
MAX_BYTES = 200_000
BACKUPS = 2
# The process's own log holds start-up and shutdown lines, never a line per request.
PROCESS_LOG_ALLOWANCE = 32 * 1024
FLOOD_PATH = f"/endpoints/{'p' * 4096}/score"
LOGGED_PATH = FLOOD_PATH[:256] + f"...[{len(FLOOD_PATH) - 256} more bytes]"


def flood_request(index: int) -> bytes:
    """A request with a 4 KiB path, a wrong key and a 100-character request id."""
    rid = f"flood-{index:05d}-".ljust(100, "r")
    return (
        f"GET {FLOOD_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer wrong-key\r\nx-request-id: {rid}\r\n\r\n"
    ).encode()


async def flood(port: int, indices: range) -> Counter[int]:
    """Send these requests over one keep-alive connection, PIPELINE at a time."""
    statuses: Counter[int] = Counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for start in range(indices.start, indices.stop, PIPELINE):
            batch = range(start, min(start + PIPELINE, indices.stop))
            writer.write(b"".join(flood_request(i) for i in batch))
            for _ in batch:
                head = await reader.readuntil(b"\r\n\r\n")
                statuses[int(head.split(b" ", 2)[1])] += 1
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
    finally:
        writer.close()
    return statuses


async def test_an_unauthenticated_flood_with_long_paths_keeps_every_log_within_its_bound(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """As `tidegate up` runs it (INFO, stdout and stderr to one file), 10,000 bad-key
    requests with 4 KiB paths: the access logs stay within max_bytes x (backups + 1), the
    process log does not grow with them, and each request is logged once."""
    process = GatewayProcess.create(
        tmp_path / "home",
        TIDEGATE_LOG_LEVEL="info",
        TIDEGATE_GATEWAY_ACCESS_LOG_MAX_BYTES=str(MAX_BYTES),
        TIDEGATE_GATEWAY_ACCESS_LOG_BACKUPS=str(BACKUPS),
    )
    await process.start()
    try:
        share = FLOOD_REQUESTS // FLOOD_CONNECTIONS
        counts = await asyncio.gather(
            *(flood(process.http_port, range(i * share, (i + 1) * share)) for i in range(FLOOD_CONNECTIONS))
        )
        assert sum(counts, Counter()) == Counter({404: FLOOD_REQUESTS})
        last = await score(client, process, "no-such-endpoint", headers={"x-request-id": "flood-last"})
        assert last.status == 404
    finally:
        assert await process.stop() == 0

    gateway_dir = process.home / "gateway"
    access_logs = sorted(gateway_dir.glob("access.log*"))
    assert [p.name for p in access_logs] == ["access.log"] + [
        f"access.log.{n}" for n in range(1, BACKUPS + 1)
    ]
    assert all(p.stat().st_size <= MAX_BYTES for p in access_logs)
    assert sum(p.stat().st_size for p in access_logs) <= MAX_BYTES * (BACKUPS + 1)
    process_log = process.stderr_path.read_text()
    assert len(process_log.encode()) < PROCESS_LOG_ALLOWANCE
    assert "flood-" not in process_log

    entries = [json.loads(line) for p in access_logs for line in p.read_text().splitlines()]
    ids = Counter(entry["request_id"] for entry in entries)
    assert ids["flood-last"] == 1
    assert max(ids.values()) == 1  # each request logged once
    assert len(ids) > MAX_BYTES // 1000  # a file's worth of lines, not a few
    assert {entry["path"] for entry in entries if entry["request_id"] != "flood-last"} == {LOGGED_PATH}
