"""``TIDEGATE_GATEWAY_WORKERS=2``: two processes on the same ports with SO_REUSEPORT;
pushes reach both, process 0 answers for both, a dead process is restarted."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from gateway.workers import private_socket_dir, socket_path
from tests.gateway.conftest import Backend, GatewayProcess
from tests.gateway.helpers import metrics, push_route, score, stats, until


@pytest_asyncio.fixture(scope="module")
async def two(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("two")
    process = GatewayProcess.create(home, TIDEGATE_GATEWAY_WORKERS="2")
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture
async def fresh_connections() -> AsyncIterator[aiohttp.ClientSession]:
    """A new connection per request, so the kernel spreads them over both processes."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16)) as session:
        yield session


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


async def processes(client: aiohttp.ClientSession, gw: GatewayProcess) -> int:
    found = re.search(r"^tidegate_processes (\d+)$", await metrics(client, gw), re.M)
    assert found is not None
    return int(found.group(1))


async def deployments_seen(
    client: aiohttp.ClientSession, gw: GatewayProcess, endpoint: str, n: int
) -> Counter[str]:
    replies = await asyncio.gather(*(score(client, gw, endpoint) for _ in range(n)))
    return Counter(r.headers.get("azureml-model-deployment", str(r.status)) for r in replies)


async def test_two_processes_follow_pushes_and_count_as_one(
    two: GatewayProcess, backends: dict[str, Backend], fresh_connections: aiohttp.ClientSession
) -> None:
    client = fresh_connections
    deployments = {"blue": [backends["blue"].url], "green": [backends["green"].url]}
    await push_route(client, two, "p-two", deployments, {"blue": 100})

    async def all_blue() -> bool:
        return await deployments_seen(client, two, "p-two", 40) == Counter(blue=40)

    await until(all_blue)  # the second process took the table in from routes.json

    async def both_answer() -> bool:
        return await processes(client, two) == 2

    await until(both_answer)
    before = (await stats(client, two, "p-two", "blue"))["requests"]
    assert await deployments_seen(client, two, "p-two", 200) == Counter(blue=200)
    # 200 fresh connections land on both processes; process 0 counts them all, exactly.
    assert (await stats(client, two, "p-two", "blue"))["requests"] == before + 200
    await push_route(client, two, "p-two", deployments, {"green": 100}, generation=2)

    async def all_green() -> bool:
        return await deployments_seen(client, two, "p-two", 40) == Counter(green=40)

    await until(all_green)


async def test_two_processes_keep_to_the_endpoints_rate_together(
    two: GatewayProcess, backends: dict[str, Backend], fresh_connections: aiohttp.ClientSession
) -> None:
    client = fresh_connections
    rate = 20
    await push_route(
        client, two, "p-rate", {"blue": [backends["blue"].url]}, {"blue": 100}, max_requests_per_second=rate
    )

    async def both_know_it() -> bool:
        replies = await asyncio.gather(*(score(client, two, "p-rate") for _ in range(20)))
        return all(r.status in (200, 429) for r in replies)  # not 404: the route reached both

    await until(both_know_it)
    await asyncio.sleep(1.1)  # the buckets fill up again (a burst is one second's worth)
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(*(score(client, two, "p-rate") for _ in range(100)))
    elapsed = loop.time() - started
    assert {r.status for r in replies} == {200, 429}
    served = sum(r.status == 200 for r in replies)
    print(f"rate {rate}/s over 2 processes, 100 requests in {elapsed:.3f} s: {served} served")
    # Each process holds half the endpoint's rate; alone, each would have let a whole burst in.
    assert 1 <= served <= rate + rate * elapsed + 2
    refused = next(r for r in replies if r.status == 429)
    assert refused.json()["error"]["message"] == f"endpoint p-rate allows {rate} requests/s"


async def test_a_killed_process_is_restarted_and_the_other_keeps_serving(
    two: GatewayProcess, backends: dict[str, Backend], fresh_connections: aiohttp.ClientSession
) -> None:
    client = fresh_connections
    await push_route(client, two, "p-kill", {"blue": [backends["blue"].url]}, {"blue": 100})
    assert two.proc is not None

    async def settled() -> bool:
        return len(children(two.proc.pid)) == 1 and await deployments_seen(
            client, two, "p-kill", 20
        ) == Counter(blue=20)

    await until(settled)
    (worker,) = children(two.proc.pid)
    os.kill(worker, signal.SIGKILL)

    async def restarted() -> bool:
        now = children(two.proc.pid)  # type: ignore[union-attr]
        return len(now) == 1 and now[0] != worker and await processes(client, two) == 2

    await until(restarted)
    assert await deployments_seen(client, two, "p-kill", 40) == Counter(blue=40)


async def test_stopping_process_0_stops_the_others(
    tmp_path: Path, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    process = GatewayProcess.create(tmp_path / "home", TIDEGATE_GATEWAY_WORKERS="3")
    await process.start()
    assert process.proc is not None
    pid = process.proc.pid

    async def all_up() -> bool:
        return len(children(pid)) == 2

    await until(all_up)
    workers = children(pid)
    assert await process.stop() == 0
    for worker in workers:
        assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text()


def test_a_long_gateway_dir_puts_the_process_sockets_in_a_private_temp_folder_not_an_abstract_one(
    tmp_path: Path,
) -> None:
    """uvloop cannot connect to abstract sockets (EINVAL), and anyone on the machine can."""
    long_dir = tmp_path / ("d" * 90) / "gateway"

    path = socket_path(long_dir, 1)
    private_socket_dir(path)

    assert not path.startswith("\0") and len(path.encode()) < 100
    assert stat.S_IMODE(Path(path).parent.stat().st_mode) == 0o700
    assert socket_path(long_dir, 1) == path != socket_path(long_dir, 2)


def test_a_socket_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)

    with pytest.raises(PermissionError, match="not a private folder"):
        private_socket_dir(str(folder / "1.sock"))
