"""The windows: log-bucket histograms and 1-second buckets (pure), then ``/stats`` and
``/metrics`` of the real gateway against the requests a test sent."""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable

import aiohttp
import pytest

from config.stats import LIMIT_REASONS, STATUS_KEYS, WindowStats
from gateway.metrics import Snapshot, render
from gateway.windows import (
    ALPHA,
    HORIZON_S,
    LIMIT_SLOTS,
    MINUTES_KEPT,
    MIRROR_DROPPED,
    InstanceLoad,
    Window,
    WindowData,
    bucket_of,
    parse_window,
    percentile,
)
from tests.gateway.conftest import KEY, Backend, GatewayProcess
from tests.gateway.helpers import eventually, metrics, push_route, score, stats

QUANTILES = (0.5, 0.9, 0.99)


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def recorded(values: list[float]) -> Window:
    window = Window("ep", "blue")
    for value in values:
        window.record(200, value)
    return window


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda r: r.lognormvariate(1.0, 1.5),
    "uniform_0_to_5ms": lambda r: r.uniform(0.0, 5.0),
    "bimodal_1ms_and_300ms": lambda r: r.choice((1.0, 300.0)) * r.uniform(0.9, 1.1),
    "sub_millisecond": lambda r: r.uniform(0.01, 0.9),
    "minutes": lambda r: r.uniform(30_000.0, 300_000.0),
}


@pytest.mark.parametrize("draw", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS.keys())
@pytest.mark.parametrize("count", [1, 7, 100, 5000])
def test_percentiles_are_within_2_percent_of_the_exact_sample(
    draw: Callable[[random.Random], float], count: int
) -> None:
    rng = random.Random(count)
    values = [draw(rng) for _ in range(count)]
    data = recorded(values).data(60, 0)
    for q in QUANTILES:
        found = percentile(data.latency, count, q)
        assert found is not None
        assert abs(found - exact(values, q)) <= 0.02 * exact(values, q), q
    assert ALPHA <= 0.02


def test_zero_is_its_own_bucket_and_huge_values_share_the_last() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(1e-9) == 0
    assert bucket_of(1e12) == bucket_of(1e13)


def test_status_counts_by_class_and_code() -> None:
    window = Window("ep", "blue")
    for status in (200, 201, 204, 400, 401, 408, 422, 424, 429, 499, 500, 502, 503, 302):
        window.record(status, 1.0)
    stats = window.data(60, 0).to_stats("ep", "blue", 60)
    assert stats.requests == 14
    assert stats.status == {
        "2xx": 3,
        "4xx": 7,
        "5xx": 3,
        "408": 1,
        "424": 1,
        "429": 1,
        "503": 1,
    }
    assert set(stats.status) == set(STATUS_KEYS)
    assert stats.errors == 3 + 1 + 1 + 1  # 5xx + 408 + 424 + 429, as the gates count them


def test_429s_by_reason_add_up_to_the_429s_and_survive_the_ring_merge_and_the_wire() -> None:
    window = Window("ep", "blue")
    for reason, times in (("endpoint_rate", 3), ("queue_wait", 2), ("model", 1)):
        for _ in range(times):
            window.record(429, 1.0)
            window.record_limited(LIMIT_SLOTS[reason])
    window.close(100)
    window.record(429, 1.0)
    window.record_limited(LIMIT_SLOTS["instance_concurrency"])
    data = window.data(60, 101)
    other = WindowData.from_json(data.to_json())  # another gateway process, the same counts
    data.merge(other)
    stats = data.to_stats("ep", "blue", 60)
    assert stats.limited == {"endpoint_rate": 6, "instance_concurrency": 2, "queue_wait": 4, "model": 2}
    assert sum(stats.limited.values()) == stats.status["429"] == 14
    assert list(stats.limited) == list(LIMIT_REASONS)
    assert window.cumulative()[LIMIT_SLOTS["endpoint_rate"]] == 3


def test_429s_by_reason_render_as_a_labelled_counter() -> None:
    window = Window("ep", "")
    window.record(429, 1.0)
    window.record_limited(LIMIT_SLOTS["endpoint_rate"])
    snap = Snapshot(cumulative={("ep", ""): window.cumulative()}, minute={("ep", ""): window.data(60, 0)})
    samples = parse_prometheus(render(snap, now=0.0))
    for reason in LIMIT_REASONS:
        expected = 1.0 if reason == "endpoint_rate" else 0.0
        assert sample(samples, "tidegate_throttled_requests_total", deployment="", reason=reason) == expected


def test_seconds_roll_into_the_ring_and_out_of_the_window() -> None:
    window = Window("ep", "blue")
    for second in range(100, 130):
        for _ in range(second - 99):  # second 100 has 1 request, 129 has 30
            window.record(200, 2.0)
        window.close(second)
    window.record(200, 2.0)  # the current second, 130
    assert window.data(1, 130).counts[0] == 1
    assert window.data(2, 130).counts[0] == 1 + 30
    assert window.data(10, 130).counts[0] == 1 + sum(range(22, 31))
    assert window.data(600, 130).counts[0] == 1 + sum(range(1, 31))
    # Seconds older than the ring are never read back, even where their slot is reused.
    assert window.data(600, 130 + HORIZON_S).counts[0] == 1


def test_seconds_fold_into_minutes_kept_for_a_day() -> None:
    window = Window("ep", "blue")
    start = 1_800_000_000 - 1_800_000_000 % 60  # a minute boundary
    for second in range(start, start + 150):  # two and a half minutes, one request a second
        window.record(500 if second % 10 == 0 else 200, 1.0)
        window.close(second)
    window.record(200, 1.0)  # the current second, not closed yet
    now = start + 150
    minutes = window.minute_counts(MINUTES_KEPT, now)
    first = start // 60
    assert sorted(minutes) == [first, first + 1, first + 2]
    assert [minutes[m][0] for m in sorted(minutes)] == [60, 60, 31]
    data = WindowData.empty()
    data.minutes = minutes
    stats = data.to_stats("ep", "blue", 60)
    assert [(m.start, m.requests, m.status["5xx"]) for m in stats.minutes] == [
        (start, 60, 6),
        (start + 60, 60, 6),
        (start + 120, 31, 3),
    ]
    assert list(window.minute_counts(2, now)) == [first + 1, first + 2]
    assert window.minute_counts(0, now) == {}
    # A day later the slots are reused: nothing older than MINUTES_KEPT minutes is read back.
    later = now + MINUTES_KEPT * 60
    assert window.minute_counts(MINUTES_KEPT, later) == {later // 60: [1, 1, 0, 0, 0, 0, 0, 0]}


def test_minutes_of_several_processes_add_up() -> None:
    parts = []
    for statuses in ([200, 200, 503], [200, 408]):
        window = Window("ep", "blue")
        for status in statuses:
            window.record(status, 1.0)
        window.close(6_000)
        data = window.data(60, 6_001)
        data.minutes = window.minute_counts(60, 6_001)
        parts.append(WindowData.from_json(data.to_json()))
    merged = WindowData.empty()
    for part in parts:
        merged.merge(part)
    (only,) = merged.to_stats("ep", "blue", 60).minutes
    assert (only.start, only.requests) == (6_000, 5)
    assert (only.status["2xx"], only.status["5xx"], only.status["503"], only.status["408"]) == (3, 1, 1, 1)


def test_a_second_with_no_data_is_not_kept() -> None:
    window = Window("ep", "blue")
    window.close(5)
    assert window.ring[5 % HORIZON_S] is None
    assert window.last_data == -1


def test_windows_of_several_processes_merge_exactly() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(2.0, 1.0) for _ in range(3000)]
    parts = [values[:1000], values[1000:2500], values[2500:]]
    merged = WindowData.empty()
    for part in parts:
        merged.merge(WindowData.from_json(recorded(part).data(60, 0).to_json()))
    whole = recorded(values).data(60, 0)
    assert merged.counts == whole.counts or all(
        math.isclose(a, b) for a, b in zip(merged.counts, whole.counts, strict=True)
    )
    assert merged.latency == whole.latency


def test_mirror_comparisons_and_signed_latency_difference() -> None:
    window = Window("ep", "green")
    for diff in (-5.0, -1.0, 2.0, 3.0, 40.0):
        window.record_comparison(diff > 0, diff)
    window.record_mirror(MIRROR_DROPPED)
    mirror = window.data(60, 0).to_stats("ep", "green", 60).mirror
    assert (mirror.compared, mirror.matches, mirror.dropped) == (5, 3, 1)
    assert mirror.latency_diff_ms_p50 == pytest.approx(2.0, rel=0.02)


def test_utilisation_is_busy_slot_time_over_capacity() -> None:
    assert InstanceLoad(busy_s=15.0, covered_s=30.0, limit=1).utilisation == 0.5
    assert InstanceLoad(busy_s=15.0, covered_s=30.0, limit=2).utilisation == 0.25
    assert InstanceLoad(busy_s=0.0, covered_s=0.0, limit=1).utilisation == 0.0


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("90", 90.0), ("2.5", 2.5), (None, 60.0), ("10M", 600.0)],
)
def test_window_parameter(raw: str | None, seconds: float) -> None:
    assert parse_window(raw) == seconds


@pytest.mark.parametrize("raw", ["0", "-5s", "11m", "soon", "5x", "nan"])
def test_bad_window_parameter(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_window(raw)


def test_recording_is_cheap() -> None:
    """Not a timing assertion: prints the cost, asserts only that nothing grows per request."""
    window = Window("ep", "blue")
    before = len(window.ring), len(window.latency)
    started = time.perf_counter()
    for i in range(100_000):
        window.record(200, 0.5 + (i % 100) * 0.1)
    cost_ns = (time.perf_counter() - started) / 100_000 * 1e9
    print(f"Window.record: {cost_ns:.0f} ns")
    assert (len(window.ring), len(window.latency)) == before


# --- Prometheus text ---

_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the text format: HELP/TYPE lines and samples, nothing else."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("gauge", "counter", "summary", "histogram"), line
            typed.add(name)
            continue
        found = _SAMPLE.match(line)
        assert found is not None, f"not a sample line: {line!r}"
        name, labels, value = found.group(1), found.group(2) or "", found.group(3)
        family = re.sub(r"_(sum|count)$", "", name)
        assert name in typed or family in typed, f"sample before its TYPE: {line!r}"
        parsed = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        samples.setdefault(name, []).append((parsed, float(value)))
    try:  # the reference parser too, where it is installed
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pass
    else:
        list(text_string_to_metric_families(text))
    return samples


def sample(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for found, v in samples[name] if all(found.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_an_empty_snapshot_renders() -> None:
    assert "ConnectionsActive 0" in render(Snapshot(), now=0.0)
    parse_prometheus(render(Snapshot(), now=0.0))


def test_availability_reads_the_hour_and_the_day_and_skips_windows_without_requests() -> None:
    now = 1_800_000_000.0
    minute = int(now) // 60

    def window(minutes: dict[int, list[int]]) -> WindowData:
        data = WindowData.empty()
        data.minutes = minutes
        return data

    def counts(requests: int, **status: int) -> list[int]:
        row = [requests] + [0] * len(STATUS_KEYS)
        for key, value in status.items():
            row[1 + STATUS_KEYS.index(key.removeprefix("s"))] = value
        return row

    snap = Snapshot(
        minute={
            # This minute: 10 requests, one 503; three hours ago: 10 more, all 500s.
            ("ep", "blue"): window({minute: counts(10, s5xx=1, s503=1), minute - 180: counts(10, s5xx=10)}),
            ("ep", "idle"): window({}),  # a window, but no request in the last day
            ("ep", "old"): window({minute - 1500: counts(4, s5xx=4)}),  # older than a day
        }
    )
    samples = parse_prometheus(render(snap, now=now))
    assert sample(samples, "tidegate_availability_ratio", deployment="blue", window="1h") == 0.9
    assert sample(samples, "tidegate_availability_ratio", deployment="blue", window="1d") == 0.45
    assert {found["deployment"] for found, _ in samples["tidegate_availability_ratio"]} == {"blue"}


# --- the real gateway ---


async def test_stats_count_exactly_what_was_sent_by_status(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    echo = Backend("echo", "echo")
    await echo.start()
    try:
        await push_route(client, gateway, "w-count", {"blue": [echo.url]}, {"blue": 100})
        sent = [200] * 30 + [422] * 5 + [500] * 4
        random.Random(3).shuffle(sent)
        replies = await asyncio.gather(
            *(score(client, gateway, "w-count", data=f'{{"status": {s}}}'.encode()) for s in sent)
        )
        assert sorted(r.status for r in replies) == sorted(424 if s == 500 else s for s in sent)
        for _ in range(3):
            assert (await score(client, gateway, "w-count", key="wrong")).status == 401
        blue = WindowStats.model_validate(await stats(client, gateway, "w-count", "blue", "30s"))
        assert blue.requests == 39
        assert blue.status == {"2xx": 30, "4xx": 9, "5xx": 0, "408": 0, "424": 4, "429": 0, "503": 0}
        assert blue.error_rate == pytest.approx(4 / 39)
        assert blue.in_flight == 0
        assert blue.window_seconds == 30
        endpoint = WindowStats.model_validate(await stats(client, gateway, "w-count", window="5m"))
        assert (endpoint.deployment, endpoint.requests, endpoint.status["4xx"]) == ("", 42, 12)
        assert endpoint.window_seconds == 300
        params = {"endpoint": "w-count", "deployment": "blue", "window": "30s", "minutes": "60"}
        async with client.get(f"{gateway.admin}/stats", params=params, headers=gateway.admin_headers) as r:
            history = WindowStats.model_validate(await r.json())
        assert sum(m.requests for m in history.minutes) == 39
        assert sum(m.status["424"] for m in history.minutes) == 4
        assert all(m.start % 60 == 0 for m in history.minutes)
    finally:
        await echo.stop()


async def test_stats_percentiles_lie_between_the_backend_time_and_the_client_time(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    """Each gateway latency is at least the backend's sleep and at most what the client
    measured, so each percentile is too, within the histogram's 1 %."""
    echo = Backend("echo", "echo")
    await echo.start()
    try:
        await push_route(client, gateway, "w-latency", {"blue": [echo.url]}, {"blue": 100})
        rng = random.Random(11)
        sleeps = [0] * 60 + [rng.choice((20, 40, 80)) for _ in range(30)] + [150] * 10
        client_ms: list[float] = []

        async def one(sleep_ms: int) -> None:
            started = time.perf_counter()
            reply = await score(client, gateway, "w-latency", data=f'{{"sleep_ms": {sleep_ms}}}'.encode())
            client_ms.append((time.perf_counter() - started) * 1000)
            assert reply.status == 200

        await asyncio.gather(*(one(s) for s in sleeps))
        window = await stats(client, gateway, "w-latency", "blue", "60s")
        assert window["requests"] == 100
        latency = window["latency_ms"]
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            assert exact([float(s) for s in sleeps], q) * 0.99 <= latency[name] <= exact(client_ms, q) * 1.01
        assert sum(sleeps) / 100 <= latency["mean"] <= sum(client_ms) / 100
    finally:
        await echo.stop()


async def test_in_flight_and_utilisation_follow_held_requests(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    held = Backend("held", "hold")
    idle = Backend("idle", "ok")
    await held.start()
    await idle.start()
    try:
        await push_route(
            client,
            gateway,
            "w-busy",
            {"blue": [held.url], "green": [idle.url]},
            {"blue": 100, "green": 0},
            max_concurrent=2,
        )
        pending = [asyncio.create_task(score(client, gateway, "w-busy")) for _ in range(2)]
        await eventually(lambda: held.seen["score"] >= 2)
        busy = await stats(client, gateway, "w-busy", "blue", "60s")
        assert busy["in_flight"] == 2
        assert 0 < busy["utilisation"]["blue-0"] <= 1.0
        quiet = await stats(client, gateway, "w-busy", "green", "60s")
        assert quiet["utilisation"] == {"green-0": 0.0}
        held.release.set()
        assert [r.status for r in await asyncio.gather(*pending)] == [200, 200]
        after = await stats(client, gateway, "w-busy", "blue", "60s")
        assert after["in_flight"] == 0 and after["requests"] == 2
    finally:
        held.release.set()
        await held.stop()
        await idle.stop()


@pytest.mark.parametrize(
    ("endpoint", "deployment"),
    [("w-nobody", "blue"), ("w-busy", "never-served")],
    ids=["endpoint", "deployment"],
)
async def test_stats_of_something_never_served_is_zero_requests_not_404(
    gateway: GatewayProcess, client: aiohttp.ClientSession, endpoint: str, deployment: str
) -> None:
    window = WindowStats.model_validate(await stats(client, gateway, endpoint, deployment, "30s"))
    assert (window.endpoint, window.deployment, window.requests) == (endpoint, deployment, 0)
    assert window.latency_ms.p50 is None and window.error_rate is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"window": "30s"}, "endpoint"),
        ({"endpoint": "e", "window": "soon"}, "window"),
        ({"endpoint": "e", "minutes": "1441"}, "minutes"),
        ({"endpoint": "e", "minutes": "-1"}, "minutes"),
    ],
    ids=["no_endpoint", "bad_window", "more_than_a_day_of_minutes", "negative_minutes"],
)
async def test_bad_stats_query_is_400(
    gateway: GatewayProcess, client: aiohttp.ClientSession, query: dict[str, str], field: str
) -> None:
    async with client.get(f"{gateway.admin}/stats", params=query, headers=gateway.admin_headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == field


async def test_metrics_parse_and_count_what_was_sent(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "w-prom",
        {"blue": [backends["blue"].url], "broken": [backends["fail"].url]},
        {"blue": 100, "broken": 0},
    )
    for _ in range(7):
        assert (await score(client, gateway, "w-prom")).status == 200
    for _ in range(2):
        reply = await score(client, gateway, "w-prom", headers={"azureml-model-deployment": "broken"})
        assert reply.status == 424
    samples = parse_prometheus(await metrics(client, gateway))
    assert sample(samples, "RequestsPerMinute", endpoint="w-prom", deployment="blue", status_class="2xx") == 7
    assert sample(samples, "RequestsPerMinute", endpoint="w-prom", deployment="", status_class="2xx") == 7
    assert sample(samples, "RequestsPerMinute", endpoint="w-prom", deployment="", status_class="4xx") == 2
    assert (
        sample(samples, "tidegate_responses_total", endpoint="w-prom", deployment="broken", code="424") == 2
    )
    assert sample(samples, "RequestLatency_count", endpoint="w-prom", deployment="blue") == 7
    p99 = sample(samples, "RequestLatency_P99", endpoint="w-prom", deployment="blue")
    assert p99 == sample(samples, "RequestLatency", endpoint="w-prom", deployment="blue", quantile="0.99") > 0
    assert (
        sample(samples, "tidegate_instance_ejected", endpoint="w-prom", deployment="blue", instance="blue-0")
        == 0
    )
    assert sample(samples, "ConnectionsActive") >= 1
    assert KEY not in await metrics(client, gateway)


# A known mix on one deployment (blue: 200s, 424s from the model's 500s, 408s past the
# request timeout) and 503s on a deployment with no instance.
AVAILABILITY_MIX = {200: 12, 424: 3, 408: 2}
NO_INSTANCE_503 = 2


async def send_availability_mix(client: aiohttp.ClientSession, gw: GatewayProcess, endpoint: str) -> None:
    echo = Backend("echo", "echo")
    await echo.start()
    try:
        await push_route(
            client,
            gw,
            endpoint,
            {"blue": [echo.url], "empty": []},
            {"blue": 100, "empty": 0},
            timeout_ms=400,
        )
        bodies = [b'{"status": 200}'] * AVAILABILITY_MIX[200] + [b'{"status": 500}'] * AVAILABILITY_MIX[424]
        bodies += [b'{"sleep_ms": 1500}'] * AVAILABILITY_MIX[408]
        replies = await asyncio.gather(*(score(client, gw, endpoint, data=body) for body in bodies))
        replies += await asyncio.gather(
            *(
                score(client, gw, endpoint, headers={"azureml-model-deployment": "empty"})
                for _ in range(NO_INSTANCE_503)
            )
        )
        seen: dict[int, int] = {}
        for reply in replies:
            seen[reply.status] = seen.get(reply.status, 0) + 1
        assert seen == {**AVAILABILITY_MIX, 503: NO_INSTANCE_503}
    finally:
        await echo.stop()


def availability_of(
    samples: dict[str, list[tuple[dict[str, str], float]]], endpoint: str
) -> dict[str, float]:
    found = {}
    for labels, value in samples.get("tidegate_availability_ratio", []):
        if labels["endpoint"] == endpoint:
            found[f"{labels['deployment'] or '-'} {labels['window']}"] = value
    return found


async def test_metrics_availability_counts_5xx_and_408_as_failures_by_default(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    await send_availability_mix(client, gateway, "w-avail")
    shown = availability_of(parse_prometheus(await metrics(client, gateway)), "w-avail")
    blue, endpoint = 15 / 17, 15 / 19  # 424 is the model's failure, not the endpoint's
    assert shown == pytest.approx(
        {
            "blue 1h": blue,
            "blue 1d": blue,
            "empty 1h": 0.0,
            "empty 1d": 0.0,
            "- 1h": endpoint,
            "- 1d": endpoint,
        }
    )


async def test_metrics_availability_follows_the_failure_statuses_setting(
    client: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gw = GatewayProcess.create(
        tmp_path_factory.mktemp("gateway-424"),
        TIDEGATE_AVAILABILITY_FAILURE_STATUSES='["5xx", "408", "424"]',
    )
    await gw.start()
    try:
        await send_availability_mix(client, gw, "w-avail-424")
        text = await metrics(client, gw)
    finally:
        await gw.stop()
    shown = availability_of(parse_prometheus(text), "w-avail-424")
    assert shown == pytest.approx(
        {
            "blue 1h": 12 / 17,
            "blue 1d": 12 / 17,
            "empty 1h": 0.0,
            "empty 1d": 0.0,
            "- 1h": 12 / 19,
            "- 1d": 12 / 19,
        }
    )
    assert "(5xx, 408, 424)" in text
