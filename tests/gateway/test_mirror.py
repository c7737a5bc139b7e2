"""Mirrored traffic: answer comparison (pure), then shares, comparisons, drops and failing
shadows through the real gateway process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from gateway.mirror import answers_match
from tests.gateway.conftest import Backend, GatewayProcess
from tests.gateway.helpers import push_route, score, stats, until
from tests.support.ports import free_port


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (b'{"y": [1, 2.5]}', b'{"y": [1, 2.5]}', True),
        (b'{"a": 1, "b": [true, null]}', b'{ "b": [true, null], "a": 1 }', True),
        (b'{"y": 1.0}', b'{"y": 1}', True),
        (b'{"y": [0.3333333333]}', b'{"y": [0.33333333335]}', True),
        (b'{"y": 100.0}', b'{"y": 100.00001}', True),
        (b'{"y": 100.0}', b'{"y": 100.001}', False),
        (b'{"y": true}', b'{"y": 1}', False),
        (b'{"y": [1, 2]}', b'{"y": [1, 2, 3]}', False),
        (b'{"y": {"a": 1}}', b'{"y": {"a": 1, "b": 2}}', False),
        (b'{"y": "a"}', b'{"y": "b"}', False),
        (b"plain text", b"plain text", True),
        (b"plain text", b"other text", False),
        (b"\xff\xfe", b"{}", False),
    ],
    ids=[
        "same_bytes",
        "json_equal_reordered",
        "int_equals_float",
        "within_relative_1e-6",
        "within_relative_1e-7",
        "beyond_relative_1e-6",
        "bool_is_not_a_number",
        "list_lengths_differ",
        "keys_differ",
        "strings_differ",
        "same_text",
        "different_text",
        "not_utf8",
    ],
)
def test_answers_match(a: bytes, b: bytes, expected: bool) -> None:
    assert answers_match(200, a, 200, b) is expected


def test_different_statuses_never_match() -> None:
    assert answers_match(200, b"{}", 424, b"{}") is False


@pytest_asyncio.fixture
async def echoes() -> AsyncIterator[tuple[Backend, Backend]]:
    """A live and a shadow model that answer alike."""
    live, shadow = Backend("live", "echo"), Backend("shadow", "echo")
    await live.start()
    await shadow.start()
    yield live, shadow
    await live.stop()
    await shadow.stop()


async def load(
    client: aiohttp.ClientSession, gw: GatewayProcess, endpoint: str, count: int, **kwargs: object
) -> list[int]:
    limit = asyncio.Semaphore(16)

    async def one(i: int) -> int:
        async with limit:
            reply = await score(client, gw, endpoint, data=f'{{"x": [{i}, 0.5]}}'.encode(), **kwargs)  # type: ignore[arg-type]
            return reply.status

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_a_30_percent_mirror_copies_about_30_percent_and_compares_each_answer(
    gateway: GatewayProcess, echoes: tuple[Backend, Backend], client: aiohttp.ClientSession
) -> None:
    live, shadow = echoes
    await push_route(
        client,
        gateway,
        "m-share",
        {"blue": [live.url], "green": [shadow.url]},
        {"blue": 100},
        mirror={"green": 30},
    )
    assert await load(client, gateway, "m-share", 600) == [200] * 600
    copies = shadow.seen["score"]
    assert 180 - 60 <= copies <= 180 + 60  # binomial(600, 0.3): sd 11.2, so ±5.3 sd

    async def compared() -> bool:
        window = await stats(client, gateway, "m-share", "green")
        return bool(window["mirror"]["compared"] == copies)

    await until(compared)  # a shadow answer may land after the client's
    green = await stats(client, gateway, "m-share", "green")
    assert green["mirror"] == {
        "requests": copies,
        "compared": copies,
        "matches": copies,
        "dropped": 0,
        "latency_diff_ms_p50": green["mirror"]["latency_diff_ms_p50"],
    }
    assert green["mirror"]["latency_diff_ms_p50"] is not None
    assert (green["requests"], green["status"]["2xx"]) == (copies, copies)  # under its own name
    assert (await stats(client, gateway, "m-share", "blue"))["requests"] == 600
    assert (await stats(client, gateway, "m-share"))["requests"] == 600  # clients sent 600


async def test_a_shadows_own_429s_count_as_the_models_under_its_name(
    gateway: GatewayProcess, echoes: tuple[Backend, Backend], client: aiohttp.ClientSession
) -> None:
    live, shadow = echoes
    await push_route(
        client,
        gateway,
        "m-429",
        {"blue": [live.url], "green": [shadow.url]},
        {"blue": 100},
        mirror={"green": 100},
    )
    replies = [await score(client, gateway, "m-429", data=b'{"status": 429}') for _ in range(5)]
    assert [r.status for r in replies] == [429] * 5  # the live model's own answer, passed on

    async def compared() -> bool:
        return bool((await stats(client, gateway, "m-429", "green"))["mirror"]["compared"] == 5)

    await until(compared)
    green = await stats(client, gateway, "m-429", "green")
    assert (green["status"]["429"], green["limited"]["model"], sum(green["limited"].values())) == (5, 5, 5)
    blue = await stats(client, gateway, "m-429", "blue")
    assert (blue["limited"]["model"], sum(blue["limited"].values())) == (5, 5)


async def test_answers_that_differ_are_compared_but_do_not_match(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    # The "ok" backends answer their own name, so blue's and green's answers differ.
    await push_route(
        client,
        gateway,
        "m-differ",
        {"blue": [backends["blue"].url], "green": [backends["green"].url]},
        {"blue": 100},
        mirror={"green": 100},
    )
    assert await load(client, gateway, "m-differ", 40) == [200] * 40

    async def compared() -> bool:
        return bool((await stats(client, gateway, "m-differ", "green"))["mirror"]["compared"] == 40)

    await until(compared)
    mirror = (await stats(client, gateway, "m-differ", "green"))["mirror"]
    assert (mirror["requests"], mirror["matches"], mirror["dropped"]) == (40, 0, 0)


@pytest.mark.parametrize("failure", ["model_error", "unreachable", "timeout"])
async def test_a_failing_shadow_is_invisible_to_clients(
    gateway: GatewayProcess,
    backends: dict[str, Backend],
    echoes: tuple[Backend, Backend],
    client: aiohttp.ClientSession,
    failure: str,
) -> None:
    live, _ = echoes
    shadow = {
        "model_error": backends["fail"].url,
        "unreachable": f"http://127.0.0.1:{free_port()}",
        "timeout": backends["slow"].url,
    }[failure]
    endpoint = f"m-fail-{failure.replace('_', '-')}"
    await push_route(
        client,
        gateway,
        endpoint,
        {"blue": [live.url], "green": [shadow]},
        {"blue": 100},
        mirror={"green": 100},
        timeout_ms=300,
    )
    assert await load(client, gateway, endpoint, 30) == [200] * 30
    expected = {"model_error": "424", "unreachable": "5xx", "timeout": "408"}[failure]

    async def all_counted() -> bool:
        green = await stats(client, gateway, endpoint, "green")
        return bool(green["requests"] + green["mirror"]["dropped"] == 30 and green["in_flight"] == 0)

    await until(all_counted)
    green = await stats(client, gateway, endpoint, "green")
    sent = green["mirror"]["requests"]
    assert green["status"][expected] == sent > 0
    assert green["mirror"]["matches"] == 0
    assert green["mirror"]["compared"] == (sent if failure == "model_error" else 0)
    blue = await stats(client, gateway, endpoint, "blue")
    assert (blue["requests"], blue["status"]["2xx"]) == (30, 30)


async def test_requests_that_name_a_deployment_are_never_mirrored(
    gateway: GatewayProcess, echoes: tuple[Backend, Backend], client: aiohttp.ClientSession
) -> None:
    live, shadow = echoes
    await push_route(
        client,
        gateway,
        "m-named",
        {"blue": [live.url], "green": [shadow.url]},
        {"blue": 100},
        mirror={"green": 100},
    )
    statuses = await load(client, gateway, "m-named", 20, headers={"azureml-model-deployment": "blue"})
    assert statuses == [200] * 20
    assert shadow.seen["score"] == 0
    assert (await stats(client, gateway, "m-named", "green"))["mirror"]["requests"] == 0


async def test_a_shadow_with_every_slot_busy_drops_the_copy_and_the_live_path_goes_on(
    gateway: GatewayProcess, echoes: tuple[Backend, Backend], client: aiohttp.ClientSession
) -> None:
    live, _ = echoes
    held = Backend("held", "hold")
    await held.start()
    try:
        await push_route(
            client,
            gateway,
            "m-drop",
            {"blue": [live.url], "green": [held.url]},
            {"blue": 100},
            mirror={"green": 100},
            max_concurrent=1,
            max_queue_wait_ms=10_000,
        )
        # The shadow holds the first copy; the live answers come back while it does.
        replies = [await score(client, gateway, "m-drop") for _ in range(10)]
        assert [r.status for r in replies] == [200] * 10
        assert held.seen["score"] == 1
        mirror = (await stats(client, gateway, "m-drop", "green"))["mirror"]
        assert (mirror["requests"], mirror["dropped"], mirror["compared"]) == (1, 9, 0)
        held.release.set()

        async def compared() -> bool:
            return bool((await stats(client, gateway, "m-drop", "green"))["mirror"]["compared"] == 1)

        await until(compared)
    finally:
        held.release.set()
        await held.stop()
