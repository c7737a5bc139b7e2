"""Limits and instance health through the real gateway process: per-instance concurrency,
the bounded queue and its 429s, request timeouts, stopped and failing instances."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import pytest
import pytest_asyncio

from config.stats import LIMIT_REASONS
from tests.gateway.conftest import Backend, GatewayProcess, route_body
from tests.gateway.helpers import Reply, delete, eventually, metrics, push, push_route, score, stats, until
from tests.support.ports import free_port

QUEUE_PER_SLOT = 64  # gateway.table.QUEUE_PER_SLOT: the queue's memory bound per slot


def limited(**counts: int) -> dict[str, int]:
    """A window's 429s by reason: every reason, zero unless given."""
    return {reason: counts.get(reason, 0) for reason in LIMIT_REASONS}


@pytest_asyncio.fixture
async def wide_client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client with no connection cap, for more requests in flight than the queue holds."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest_asyncio.fixture
async def fresh() -> AsyncIterator[list[Backend]]:
    """Backends a test starts itself (``await start(...)``); all stopped at teardown."""
    made: list[Backend] = []
    yield made
    for backend in made:
        backend.release.set()
        await backend.stop()


async def start(fresh: list[Backend], name: str, behaviour: str, port: int = 0) -> Backend:
    backend = Backend(name, behaviour, port=port)
    await backend.start()
    fresh.append(backend)
    return backend


async def test_beyond_the_concurrency_limit_requests_queue_then_429_when_the_queue_is_full(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    held = await start(fresh, "held", "hold")
    await push_route(
        wide_client,
        gateway,
        "l-queue",
        {"blue": [held.url]},
        {"blue": 100},
        max_concurrent=1,
        max_queue_wait_ms=20_000,
    )
    pending = [asyncio.create_task(score(wide_client, gateway, "l-queue")) for _ in range(1 + QUEUE_PER_SLOT)]

    async def all_in() -> bool:
        return (await stats(wide_client, gateway, "l-queue", "blue"))["in_flight"] == 1 + QUEUE_PER_SLOT

    await until(all_in)  # one on the instance, the rest waiting in the gateway
    assert held.seen["score"] == 1
    refused = await score(wide_client, gateway, "l-queue")
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "TooManyRequests"
    assert refused.json()["error"]["limit"] == "instance_concurrency"
    held.release.set()
    replies = await asyncio.gather(*pending)
    assert [r.status for r in replies] == [200] * (1 + QUEUE_PER_SLOT)
    assert held.peak == 1  # never more than max_concurrent_requests_per_instance at once
    window = await stats(wide_client, gateway, "l-queue", "blue")
    assert window["requests"] == 2 + QUEUE_PER_SLOT
    assert window["status"]["429"] == 1 and window["status"]["2xx"] == 1 + QUEUE_PER_SLOT
    assert window["limited"] == limited(instance_concurrency=1)
    assert (await stats(wide_client, gateway, "l-queue"))["limited"] == limited(instance_concurrency=1)
    assert window["in_flight"] == 0
    assert window["queue_wait_ms"]["p99"] > 0


async def test_over_the_endpoint_rate_requests_are_429_endpoint_rate_with_retry_after(
    gateway: GatewayProcess, backends: dict[str, Backend], wide_client: aiohttp.ClientSession
) -> None:
    rate = 20
    await push_route(
        wide_client,
        gateway,
        "l-rate",
        {"blue": [backends["blue"].url]},
        {"blue": 100},
        max_requests_per_second=rate,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(*(score(wide_client, gateway, "l-rate") for _ in range(100)))
    elapsed = loop.time() - started
    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    print(f"rate {rate}/s, 100 requests in {elapsed:.3f} s: {len(served)} served, {len(refused)} refused")
    # The burst is one second's worth; the bucket refills at the rate while the burst lasts.
    assert rate <= len(served) <= rate + rate * elapsed + 1
    assert {(r.status, r.error_code) for r in refused} == {(429, "TooManyRequests")}
    body = refused[0].json()["error"]
    assert body["limit"] == "endpoint_rate"
    assert body["message"] == f"endpoint l-rate allows {rate} requests/s"
    assert {r.headers["Retry-After"] for r in refused} == {"1"}
    # The endpoint counts the refusals; the deployment never saw them (its gates stay fair).
    endpoint_window = await stats(wide_client, gateway, "l-rate")
    assert endpoint_window["status"]["429"] == len(refused)
    assert endpoint_window["limited"] == limited(endpoint_rate=len(refused))
    deployment_window = await stats(wide_client, gateway, "l-rate", "blue")
    assert (deployment_window["requests"], deployment_window["status"]["429"]) == (len(served), 0)
    assert deployment_window["limited"] == limited()
    text = await metrics(wide_client, gateway)
    assert (
        f'tidegate_throttled_requests_total{{endpoint="l-rate",deployment="",reason="endpoint_rate"}} '
        f"{len(refused)}\n"
    ) in text
    blue = 'tidegate_throttled_requests_total{endpoint="l-rate",deployment="blue",reason="endpoint_rate"}'
    assert f"{blue} 0\n" in text
    await asyncio.sleep(int(refused[0].headers["Retry-After"]))  # as the client is told
    assert (await score(wide_client, gateway, "l-rate")).status == 200


async def test_below_1_request_per_second_retry_after_says_how_long(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "l-rate-slow",
        {"blue": [backends["blue"].url]},
        {"blue": 100},
        max_requests_per_second=0.2,
    )
    assert (await score(client, gateway, "l-rate-slow")).status == 200
    refused = await score(client, gateway, "l-rate-slow")
    assert (refused.status, refused.json()["error"]["limit"]) == (429, "endpoint_rate")
    assert refused.headers["Retry-After"] == "5"
    assert refused.json()["error"]["message"] == "endpoint l-rate-slow allows 0.2 requests/s"


async def test_an_endpoint_without_a_rate_limit_refuses_nothing(
    gateway: GatewayProcess, backends: dict[str, Backend], wide_client: aiohttp.ClientSession
) -> None:
    await push_route(wide_client, gateway, "l-no-rate", {"blue": [backends["blue"].url]}, {"blue": 100})
    replies = await asyncio.gather(*(score(wide_client, gateway, "l-no-rate") for _ in range(100)))
    assert [r.status for r in replies] == [200] * 100


async def test_a_queued_request_is_429_queue_wait_after_max_queue_wait_ms(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    held = await start(fresh, "held", "hold")
    await push_route(
        wide_client,
        gateway,
        "l-wait",
        {"blue": [held.url]},
        {"blue": 100},
        max_concurrent=1,
        max_queue_wait_ms=200,
    )
    first = asyncio.create_task(score(wide_client, gateway, "l-wait"))
    await eventually(lambda: held.seen["score"] == 1)
    waited = await score(wide_client, gateway, "l-wait")
    assert waited.status == 429
    assert waited.headers["Retry-After"] == "1"
    assert waited.json()["error"]["limit"] == "queue_wait"
    assert "max_queue_wait_ms=200" in waited.json()["error"]["message"]
    held.release.set()
    assert (await first).status == 200
    window = await stats(wide_client, gateway, "l-wait", "blue")
    assert window["status"]["429"] == 1
    assert window["limited"] == limited(queue_wait=1)
    assert window["queue_wait_ms"]["p99"] >= 200 * 0.99  # it waited the whole max_queue_wait_ms


async def test_a_freed_slot_goes_to_the_queue_first_in_first_out(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    held = await start(fresh, "held", "hold")
    await push_route(
        wide_client,
        gateway,
        "l-fifo",
        {"blue": [held.url]},
        {"blue": 100},
        max_concurrent=1,
        max_queue_wait_ms=20_000,
    )
    order: list[int] = []

    async def one(i: int) -> None:
        reply = await score(wide_client, gateway, "l-fifo", data=f'{{"i": {i}}}'.encode())
        assert reply.status == 200
        order.append(i)

    tasks = []
    for i in range(5):  # each queued before the next is sent
        tasks.append(asyncio.create_task(one(i)))

        async def queued(n: int = i + 1) -> bool:
            return (await stats(wide_client, gateway, "l-fifo", "blue"))["in_flight"] == n

        await until(queued)
    held.release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_timeout_is_408_and_frees_the_instance_slot(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "l-408",
        {"blue": [backends["slow"].url]},
        {"blue": 100},
        timeout_ms=200,
        max_concurrent=1,
        max_queue_wait_ms=0,
    )
    first = await score(client, gateway, "l-408")
    assert (first.status, first.error_code) == (408, "RequestTimeout")
    # With no queue, a slot still held would make these 429: one gets the freed slot (and
    # times out), the other finds it taken.
    both = await asyncio.gather(score(client, gateway, "l-408"), score(client, gateway, "l-408"))
    assert sorted(r.status for r in both) == [408, 429]
    assert [r.json()["error"]["limit"] for r in both if r.status == 429] == ["instance_concurrency"]
    assert (await score(client, gateway, "l-408")).status == 408
    window = await stats(client, gateway, "l-408", "blue")
    assert (window["status"]["408"], window["status"]["429"], window["in_flight"]) == (3, 1, 0)
    assert window["limited"] == limited(instance_concurrency=1)


async def test_a_429_the_instance_answered_itself_counts_as_the_models(
    gateway: GatewayProcess, fresh: list[Backend], client: aiohttp.ClientSession
) -> None:
    echo = await start(fresh, "echo", "echo")
    await push_route(client, gateway, "l-own-429", {"blue": [echo.url]}, {"blue": 100})
    own = await score(client, gateway, "l-own-429", data=b'{"status": 429}')
    assert own.status == 429
    assert (await score(client, gateway, "l-own-429")).status == 200
    window = await stats(client, gateway, "l-own-429", "blue")
    assert (window["status"]["429"], window["limited"]) == (1, limited(model=1))
    assert (await stats(client, gateway, "l-own-429"))["limited"] == limited(model=1)


async def test_stopping_an_instance_mid_load_costs_no_client_errors(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    a = await start(fresh, "a", "ok")
    b = await start(fresh, "b", "ok")
    await push_route(wide_client, gateway, "l-kill", {"blue": [a.url, b.url]}, {"blue": 100})
    statuses: list[int] = []
    limit = asyncio.Semaphore(16)
    served_by_a: list[int] = []

    async def one() -> None:
        async with limit:
            reply = await score(wide_client, gateway, "l-kill")
            statuses.append(reply.status)
            if len(statuses) == 150:
                await a.stop()  # no new connections; idle ones closed; its requests answered
                served_by_a.append(a.seen["score"])

    await asyncio.gather(*(one() for _ in range(600)))
    assert statuses == [200] * 600
    assert a.seen["score"] == served_by_a[0]  # nothing more reached it once stopped
    assert b.seen["score"] == 600 - served_by_a[0] > 450


async def test_an_instance_failing_5_connections_in_a_row_is_ejected_then_probed_back(
    gateway: GatewayProcess, fresh: list[Backend], client: aiohttp.ClientSession
) -> None:
    good = await start(fresh, "good", "ok")
    dead_port = free_port()
    await push_route(
        client, gateway, "l-eject", {"blue": [f"http://127.0.0.1:{dead_port}", good.url]}, {"blue": 100}
    )
    # Sequential requests alternate between the two (ties rotate); each one tried on the
    # dead instance fails to connect and is retried on the good one.
    replies = [await score(client, gateway, "l-eject") for _ in range(12)]
    assert [r.status for r in replies] == [200] * 12
    ejected = r'tidegate_instance_ejected\{endpoint="l-eject",deployment="blue",instance="blue-0"\} (\d)'
    assert re.search(ejected, await metrics(client, gateway)).group(1) == "1"  # type: ignore[union-attr]
    assert "upstream.ejected" in gateway.stderr_path.read_text()
    back = await start(fresh, "back", "ok", port=dead_port)  # the instance comes back

    async def serving() -> bool:
        assert (await score(client, gateway, "l-eject")).status == 200
        return back.seen["score"] > 0

    await until(serving)
    assert re.search(ejected, await metrics(client, gateway)).group(1) == "0"  # type: ignore[union-attr]


async def test_every_instance_ejected_is_503(gateway: GatewayProcess, client: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # The refused request is held for an instance and tried again until the instance is
    # ejected (5 refusals), then held for request_timeout_ms, then 503 (the probe keeps failing).
    await push_route(client, gateway, "l-all-out", {"blue": [dead]}, {"blue": 100}, timeout_ms=500)
    first = await score(client, gateway, "l-all-out")
    assert (first.status, first.error_code) == (503, "NoHealthyInstance")
    ejected = r'tidegate_instance_ejected\{endpoint="l-all-out",deployment="blue",instance="blue-0"\} (\d)'
    assert re.search(ejected, await metrics(client, gateway)).group(1) == "1"  # type: ignore[union-attr]
    after = await score(client, gateway, "l-all-out")
    assert (after.status, after.error_code) == (503, "NoHealthyInstance")
    assert after.json()["error"]["message"] == (
        "deployment blue has no healthy instance to serve the request within request_timeout_ms=500"
    )
    window = await stats(client, gateway, "l-all-out", "blue")
    assert (window["status"]["5xx"], window["status"]["503"]) == (2, 2)


async def in_flight(client: aiohttp.ClientSession, gateway: GatewayProcess, endpoint: str, n: int) -> None:
    """Until ``n`` requests of ``endpoint``'s deployment blue are in the gateway."""

    async def there() -> bool:
        return (await stats(client, gateway, endpoint, "blue"))["in_flight"] == n

    await until(there)


async def test_with_no_instance_requests_are_held_until_a_push_brings_one(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    # The only instance was killed: the control plane pushes the deployment with none, then
    # with the replacement. Requests in that gap wait for it instead of failing.
    replacement = await start(fresh, "replacement", "ok")
    route = partial(route_body, "l-hold", timeout_ms=20_000, max_concurrent=1, max_queue_wait_ms=20_000)
    await push(wide_client, gateway, route(1, {"blue": []}, {"blue": 100}))
    pending = []
    for i in range(5):  # each held before the next is sent
        ids = {"x-ms-client-request-id": f"held-{i}"}
        pending.append(asyncio.create_task(score(wide_client, gateway, "l-hold", headers=ids)))
        await in_flight(wide_client, gateway, "l-hold", i + 1)
    done, _ = await asyncio.wait(pending, timeout=0.3)
    assert not done  # held, not answered 503
    await push(wide_client, gateway, route(2, {"blue": [replacement.url]}, {"blue": 100}))
    replies = await asyncio.gather(*pending)
    assert [r.status for r in replies] == [200] * 5
    # Through the normal slot logic (one at a time here), oldest first.
    assert [h["x-ms-client-request-id"] for h in replacement.headers] == [f"held-{i}" for i in range(5)]
    assert replacement.peak == 1
    window = await stats(wide_client, gateway, "l-hold", "blue")
    assert (window["status"]["2xx"], window["in_flight"]) == (5, 0)


async def test_with_no_instance_a_request_is_503_after_request_timeout_ms(
    gateway: GatewayProcess, wide_client: aiohttp.ClientSession
) -> None:
    # max_queue_wait_ms=0 (no overload queue) does not stop a request waiting for an instance.
    await push_route(
        wide_client, gateway, "l-hold-503", {"blue": []}, {"blue": 100}, timeout_ms=300, max_queue_wait_ms=0
    )
    reply = await score(wide_client, gateway, "l-hold-503")
    assert (reply.status, reply.error_code) == (503, "NoHealthyInstance")
    assert "no healthy instance" in reply.json()["error"]["message"]
    window = await stats(wide_client, gateway, "l-hold-503", "blue")
    assert (window["status"]["503"], window["in_flight"]) == (1, 0)
    assert window["queue_wait_ms"]["p99"] >= 300 * 0.99  # it was held the whole request_timeout_ms


async def test_held_requests_are_404_when_a_push_removes_the_deployment_or_the_endpoint(
    gateway: GatewayProcess, backends: dict[str, Backend], wide_client: aiohttp.ClientSession
) -> None:
    route = partial(route_body, "l-hold-gone", timeout_ms=20_000)
    await push(wide_client, gateway, route(1, {"blue": []}, {"blue": 100}))
    first = asyncio.create_task(score(wide_client, gateway, "l-hold-gone"))
    await in_flight(wide_client, gateway, "l-hold-gone", 1)
    await push(wide_client, gateway, route(2, {"green": [backends["green"].url]}, {"green": 100}))
    reply = await first
    assert (reply.status, reply.error_code) == (404, "DeploymentNotFound")

    await push(wide_client, gateway, route(3, {"blue": []}, {"blue": 100}))
    second = asyncio.create_task(score(wide_client, gateway, "l-hold-gone"))
    await in_flight(wide_client, gateway, "l-hold-gone", 1)
    await delete(wide_client, gateway, "l-hold-gone", 4)
    reply = await second
    assert (reply.status, reply.error_code) == (404, "EndpointNotFound")


async def test_a_request_held_while_every_instance_is_ejected_goes_to_it_once_probed_back(
    gateway: GatewayProcess, fresh: list[Backend], client: aiohttp.ClientSession
) -> None:
    dead_port = free_port()
    dead = f"http://127.0.0.1:{dead_port}"
    await push_route(client, gateway, "l-hold-eject", {"blue": [dead]}, {"blue": 100}, timeout_ms=20_000)
    # Its refusals eject the instance; the request waits for it to be probed back.
    held = asyncio.create_task(score(client, gateway, "l-hold-eject"))
    await in_flight(client, gateway, "l-hold-eject", 1)
    done, _ = await asyncio.wait([held], timeout=0.3)
    assert not done
    back = await start(fresh, "back", "ok", port=dead_port)
    reply = await held
    assert reply.status == 200
    assert back.seen["score"] == 1


@contextlib.asynccontextmanager
async def dropping_instance() -> AsyncIterator[tuple[str, list[int]]]:
    """An instance that reads each request and resets the connection, answering nothing (as
    one killed in run()); yields its URL and a one-item count of the requests it read."""
    seen = [0]

    async def read_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen[0] += 1
        writer.transport.abort()

    server = await asyncio.start_server(read_then_drop, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()


async def test_a_request_the_only_instance_read_and_dropped_is_502_and_never_sent_again(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    """An instance killed while it holds the request (it read it, answered nothing): the
    request may have reached run(), so it is not held or resent."""
    async with dropping_instance() as (url, seen):
        await push_route(client, gateway, "l-dropped", {"blue": [url]}, {"blue": 100}, timeout_ms=20_000)
        reply = await score(client, gateway, "l-dropped")
        assert (reply.status, reply.error_code) == (502, "BadGateway")
        assert seen == [1]


async def test_with_retry_dropped_requests_a_dropped_request_is_answered_by_another_instance(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    async with dropping_instance() as (dropping, seen):
        await push_route(
            client,
            gateway,
            "l-retry",
            {"blue": [dropping, backends["blue"].url]},
            {"blue": 100},
            retry_dropped_requests=True,
        )
        before = backends["blue"].seen["score"]
        replies = [await score(client, gateway, "l-retry") for _ in range(6)]
        assert [r.status for r in replies] == [200] * 6
        # Least outstanding alternates: the dropping instance read some requests, and each of
        # those reached the healthy one once more, so it answered all six.
        assert seen[0] >= 1
        assert backends["blue"].seen["score"] - before == 6


async def test_with_retry_dropped_requests_a_request_is_resent_once_only(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    async with dropping_instance() as (first, seen_first), dropping_instance() as (second, seen_second):
        await push_route(
            client,
            gateway,
            "l-retry-once",
            {"blue": [first, second]},
            {"blue": 100},
            timeout_ms=20_000,
            retry_dropped_requests=True,
        )
        reply = await score(client, gateway, "l-retry-once")
        assert (reply.status, reply.error_code) == (502, "BadGateway")
        assert (seen_first[0], seen_second[0]) == (1, 1)


async def send_held(
    client: aiohttp.ClientSession, gateway: GatewayProcess, endpoint: str, n: int
) -> list[asyncio.Task[Reply]]:
    """``n`` requests at once, each with its own client request id, once all are in the gateway."""
    pending = [
        asyncio.create_task(score(client, gateway, endpoint, headers={"x-ms-client-request-id": f"held-{i}"}))
        for i in range(n)
    ]
    await in_flight(client, gateway, endpoint, n)
    return pending


@pytest.mark.parametrize(
    ("max_concurrent", "max_queue_wait_ms"),
    [
        pytest.param(16, 500, id="room_on_the_instance"),
        # One slot (Azure's default): the others queue for it, then wait for an instance.
        pytest.param(1, 100, id="one_slot_and_a_queue_wait_shorter_than_the_gap"),
    ],
)
async def test_with_its_one_instance_stopped_requests_wait_for_the_replacement_a_push_brings(
    gateway: GatewayProcess,
    fresh: list[Backend],
    wide_client: aiohttp.ClientSession,
    max_concurrent: int,
    max_queue_wait_ms: int,
) -> None:
    # kill -9 of a deployment's only instance: connections to it are refused until the
    # control plane pushes its replacement. Requests in that gap never reached run(): they
    # wait for the replacement instead of failing.
    name = f"l-solo-{max_concurrent}"
    old = await start(fresh, "old", "ok")
    route = partial(
        route_body,
        name,
        timeout_ms=20_000,
        max_concurrent=max_concurrent,
        max_queue_wait_ms=max_queue_wait_ms,
    )
    await push(wide_client, gateway, route(1, {"blue": [old.url]}, {"blue": 100}))
    assert (await score(wide_client, gateway, name)).status == 200  # a pooled connection to it
    await old.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = await send_held(wide_client, gateway, name, 5)
    done, _ = await asyncio.wait(pending, timeout=0.5)  # past max_queue_wait_ms
    assert not done
    replacement = await start(fresh, "replacement", "ok")
    await push(wide_client, gateway, route(2, {"blue": [replacement.url]}, {"blue": 100}))
    replies = await asyncio.gather(*pending)
    print(f"{name}: 5 requests held {loop.time() - started:.2f} s, answered {[r.status for r in replies]}")
    assert [r.status for r in replies] == [200] * 5
    assert [r.json()["backend"] for r in replies] == ["replacement"] * 5
    assert sorted(h["x-ms-client-request-id"] for h in replacement.headers) == [f"held-{i}" for i in range(5)]
    assert old.seen["score"] == 1
    window = await stats(wide_client, gateway, name, "blue")
    assert (window["status"]["2xx"], window["status"]["5xx"], window["in_flight"]) == (6, 0, 0)


async def test_with_its_one_instance_stopped_and_no_replacement_requests_are_503_at_request_timeout_ms(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    old = await start(fresh, "old", "ok")
    await push_route(wide_client, gateway, "l-solo-503", {"blue": [old.url]}, {"blue": 100}, timeout_ms=300)
    assert (await score(wide_client, gateway, "l-solo-503")).status == 200
    await old.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(*(score(wide_client, gateway, "l-solo-503") for _ in range(3)))
    assert loop.time() - started >= 0.3
    assert {(r.status, r.error_code) for r in replies} == {(503, "NoHealthyInstance")}
    assert {r.json()["error"]["message"] for r in replies} == {
        "deployment blue has no healthy instance to serve the request within request_timeout_ms=300"
    }
    window = await stats(wide_client, gateway, "l-solo-503", "blue")
    assert (window["status"]["503"], window["in_flight"]) == (3, 0)


async def test_requests_held_for_a_refused_instance_are_bounded_and_the_overflow_is_503(
    gateway: GatewayProcess, fresh: list[Backend], wide_client: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    route = partial(route_body, "l-hold-bound", timeout_ms=20_000, max_concurrent=1, max_queue_wait_ms=20_000)
    await push(wide_client, gateway, route(1, {"blue": [dead]}, {"blue": 100}))
    # One slot: the gateway holds at most QUEUE_PER_SLOT; one more than that is sent.
    pending = [
        asyncio.create_task(score(wide_client, gateway, "l-hold-bound")) for _ in range(1 + QUEUE_PER_SLOT)
    ]
    await eventually(lambda: sum(task.done() for task in pending) == 1)
    (refused,) = [task.result() for task in pending if task.done()]
    assert (refused.status, refused.error_code) == (503, "NoHealthyInstance")
    assert refused.json()["error"]["message"].endswith(f"and {QUEUE_PER_SLOT} requests already wait for one")
    await in_flight(wide_client, gateway, "l-hold-bound", QUEUE_PER_SLOT)
    replacement = await start(fresh, "replacement", "ok")
    await push(wide_client, gateway, route(2, {"blue": [replacement.url]}, {"blue": 100}))
    replies = await asyncio.gather(*pending)
    assert sorted(r.status for r in replies) == [200] * QUEUE_PER_SLOT + [503]
    assert replacement.seen["score"] == QUEUE_PER_SLOT
