"""The route table's generation rules, validation, hot-path form and persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.routes import DeploymentRoute, EndpointRoute, InstanceRoute
from gateway.table import (
    MAX_GENERATION_AHEAD_MS,
    MAX_QUEUE,
    QUEUE_PER_SLOT,
    RouteTable,
    accepts_delete,
    accepts_put,
    generation_problems,
    load_table,
    process_share,
    route_problems,
    save_table,
    wall_ms,
)

NOW_MS = 1_764_072_000_000  # 2025-11-25T12:00:00Z
DAY_MS = 24 * 3600 * 1000


def route(
    generation: int,
    *,
    name: str = "my-ep",
    url: str = "http://127.0.0.1:31001",
    traffic: dict[str, int] | None = None,
) -> EndpointRoute:
    return EndpointRoute(
        name=name,
        generation=generation,
        key_sha256=["a" * 64],
        traffic={"blue": 100} if traffic is None else traffic,
        deployments={"blue": DeploymentRoute(name="blue", instances=[InstanceRoute(id="i1", url=url)])},
    )


@pytest.mark.parametrize(
    ("held", "tombstone", "incoming", "expected"),
    [
        (None, None, 0, True),
        (3, None, 4, True),
        (3, None, 3, True),
        (3, None, 2, False),
        (None, 5, 5, False),
        (None, 5, 4, False),
        (None, 5, 6, True),
    ],
    ids=[
        "first_push_applies",
        "newer_push_applies",
        "same_generation_reapplies",
        "older_push_is_ignored",
        "push_at_the_deleted_generation_cannot_revive",
        "older_push_cannot_revive",
        "newer_push_recreates_after_delete",
    ],
)
def test_accepts_put(held: int | None, tombstone: int | None, incoming: int, expected: bool) -> None:
    assert accepts_put(held, tombstone, incoming) is expected


@pytest.mark.parametrize(
    ("held", "tombstone", "incoming", "expected"),
    [
        (3, None, 3, True),
        (3, None, 4, True),
        (3, None, 2, False),
        (None, None, 1, True),
        (None, 5, 4, False),
        (None, 5, 5, True),
    ],
    ids=[
        "delete_at_held_generation",
        "newer_delete",
        "older_delete_is_ignored",
        "delete_of_unknown_endpoint_leaves_a_tombstone",
        "older_delete_after_a_delete_is_ignored",
        "repeated_delete_is_idempotent",
    ],
)
def test_accepts_delete(held: int | None, tombstone: int | None, incoming: int, expected: bool) -> None:
    assert accepts_delete(held, tombstone, incoming) is expected


def test_put_older_generation_is_not_applied_and_reports_the_held_one() -> None:
    table = RouteTable()
    assert table.put(route(5)).applied
    result = table.put(route(3, traffic={"blue": 0}))
    assert (result.applied, result.generation) == (False, 5)
    assert table.live["my-ep"].plan.names == ("blue",)


def test_delete_leaves_a_tombstone_an_older_push_cannot_pass() -> None:
    table = RouteTable()
    table.put(route(5))
    assert table.delete("my-ep", 6).applied
    assert "my-ep" not in table.live
    assert table.put(route(6)).applied is False
    assert table.put(route(7)).applied is True
    assert "my-ep" in table.live
    assert "my-ep" not in table.tombstones


def test_repush_keeps_live_instance_state_and_retires_removed_instances() -> None:
    table = RouteTable()
    table.put(route(1))
    instance = table.live["my-ep"].deployments["blue"].instances[0]
    instance.outstanding = 3
    table.put(route(2))
    assert table.live["my-ep"].deployments["blue"].instances[0] is instance
    table.put(route(3, url="http://127.0.0.1:31002"))
    replaced = table.live["my-ep"].deployments["blue"].instances[0]
    assert replaced is not instance
    assert instance.retired and not replaced.retired


def test_lookup_is_case_insensitive() -> None:
    table = RouteTable()
    table.put(route(1, name="My-Ep"))
    assert "my-ep" in table.live
    assert table.get("MY-EP") is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "other"}, "name"),
        ({"generation": -1}, "generation"),
        ({"max_request_bytes": 0}, "max_request_bytes"),
        ({"max_requests_per_second": -1}, "max_requests_per_second"),
        ({"max_requests_per_second": float("nan")}, "max_requests_per_second"),
        ({"traffic": {"blue": -5}}, "traffic.blue"),
        ({"key_sha256": ["not-a-hash"]}, "key_sha256"),
        (
            {"deployments": {"blue": {"name": "blue", "instances": [{"id": "i", "url": "ftp://x"}]}}},
            "deployments.blue.instances.0.url",
        ),
        (
            {"deployments": {"blue": {"name": "blue", "request_timeout_ms": 0}}},
            "deployments.blue.request_timeout_ms",
        ),
    ],
)
def test_route_problems_name_the_field(change: dict[str, object], field: str) -> None:
    document = route(1).model_dump() | change
    problems = route_problems(EndpointRoute.model_validate(document), path_name="my-ep")
    assert field in [p.field for p in problems]


@pytest.mark.parametrize(
    ("generation", "refused"),
    [
        (0, False),
        (7, False),
        (NOW_MS - DAY_MS, False),
        (NOW_MS, False),
        (NOW_MS + 5_000, False),
        (NOW_MS + DAY_MS, False),
        (NOW_MS + DAY_MS + 1, True),
        (NOW_MS * 1000, True),
        (2**62, True),
        (-1, True),
    ],
    ids=[
        "zero_is_plausible",
        "a_small_counter_is_plausible",
        "yesterday_is_plausible",
        "now_is_plausible",
        "a_clock_a_little_ahead_is_plausible",
        "exactly_24h_ahead_is_plausible",
        "more_than_24h_ahead_is_refused",
        "microseconds_are_refused",
        "a_huge_number_is_refused",
        "negative_is_refused",
    ],
)
def test_generation_is_refused_only_when_implausibly_far_ahead_of_now(generation: int, refused: bool) -> None:
    problems = generation_problems(generation, NOW_MS)
    assert [p.field for p in problems] == (["generation"] if refused else [])


def test_the_limit_ahead_is_24_hours() -> None:
    assert MAX_GENERATION_AHEAD_MS == DAY_MS


def test_route_problems_with_now_refuse_a_generation_far_ahead() -> None:
    far = route(NOW_MS + 2 * DAY_MS)
    assert route_problems(far) == []  # without now: no opinion on the clock
    (problem,) = route_problems(far, now_ms=NOW_MS)
    assert problem.field == "generation"
    assert "ahead of this gateway's clock" in problem.message


def test_a_persisted_route_or_tombstone_far_ahead_of_the_clock_is_skipped_on_load(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    far = wall_ms() + 2 * DAY_MS
    pinned = route(far, name="pinned").model_dump(mode="json")
    good = route(1).model_dump(mode="json")
    path.write_text(
        json.dumps({"format": 1, "routes": {"pinned": pinned, "my-ep": good}, "tombstones": {"gone": far}})
    )
    loaded = load_table(path)
    assert list(loaded.live) == ["my-ep"]
    assert loaded.tombstones == {}


def test_a_good_route_has_no_problems() -> None:
    assert route_problems(route(1), path_name="my-ep") == []


def test_traffic_to_a_deployment_not_yet_provisioned_is_accepted() -> None:
    assert route_problems(route(1, traffic={"blue": 50, "green": 50})) == []


def test_table_survives_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "routes.json"
    table = RouteTable()
    table.put(route(4))
    table.put(route(2, name="gone"))
    table.delete("gone", 3)
    save_table(path, table)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob(".*.tmp"))
    loaded = load_table(path)
    assert loaded.routes == table.routes
    assert loaded.tombstones == {"gone": 3}
    assert loaded.live["my-ep"].deployments["blue"].instances[0].url == "http://127.0.0.1:31001"
    assert loaded.put(route(3, name="gone")).applied is False


def test_missing_file_is_an_empty_table(tmp_path: Path) -> None:
    assert load_table(tmp_path / "routes.json").routes == {}


def test_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text("{not json")
    assert load_table(path).routes == {}
    assert (tmp_path / "routes.json.corrupt").read_text() == "{not json"


def test_persisted_route_that_no_longer_validates_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    bad = route(1, name="bad").model_dump(mode="json")
    bad["deployments"]["blue"]["instances"][0]["url"] = "nope"
    good = route(1).model_dump(mode="json")
    path.write_text(json.dumps({"format": 1, "routes": {"bad": bad, "my-ep": good}}))
    assert list(load_table(path).live) == ["my-ep"]


@pytest.mark.parametrize(
    ("limit", "processes", "share"),
    [(1, 1, 1), (8, 1, 8), (8, 2, 4), (5, 2, 3), (1, 4, 1), (3, 4, 1)],
)
def test_each_process_takes_a_share_of_the_instance_limit(limit: int, processes: int, share: int) -> None:
    assert process_share(limit, processes) == share


def test_deployment_limits_come_from_the_route() -> None:
    table = RouteTable(processes=2)
    body = route(1)
    body.deployments["blue"].max_concurrent_requests_per_instance = 6
    body.deployments["blue"].max_queue_wait_ms = 250
    table.put(body)
    blue = table.live["my-ep"].deployments["blue"]
    assert (blue.limit, blue.instance_limit, blue.queue_wait) == (3, 6, 0.25)
    assert blue.queue_limit == min(MAX_QUEUE, 3 * QUEUE_PER_SLOT)
    assert b'"limit": "instance_concurrency"' in blue.busy_body


def test_no_queue_wait_means_no_queue() -> None:
    table = RouteTable()
    body = route(1)
    body.deployments["blue"].max_queue_wait_ms = 0
    table.put(body)
    assert table.live["my-ep"].deployments["blue"].queue_limit == 0


def test_a_repush_keeps_the_deployment_its_queue_and_its_window() -> None:
    table = RouteTable()
    table.put(route(1))
    blue = table.live["my-ep"].deployments["blue"]
    blue.window.record(200, 1.0)
    table.put(route(2, url="http://127.0.0.1:31009"))
    again = table.live["my-ep"].deployments["blue"]
    assert again is blue and again.window.cur[0] == 1
    assert again.instances[0].url == "http://127.0.0.1:31009"


def test_an_endpoint_with_no_rate_has_no_limiter() -> None:
    table = RouteTable()
    table.put(route(1))
    assert table.live["my-ep"].limiter is None


def test_a_repush_keeps_the_rate_limiters_bucket_and_a_new_rate_makes_a_new_one() -> None:
    table = RouteTable()
    body = route(1)
    body.max_requests_per_second = 5
    table.put(body)
    bucket = table.live["my-ep"].limiter
    assert bucket is not None and bucket.rate == 5
    table.put(body.model_copy(update={"generation": 2}))
    assert table.live["my-ep"].limiter is bucket  # a periodic re-push does not refill it
    table.put(body.model_copy(update={"generation": 3, "max_requests_per_second": 50}))
    faster = table.live["my-ep"].limiter
    assert faster is not bucket and faster is not None and faster.rate == 50
    table.put(body.model_copy(update={"generation": 4, "max_requests_per_second": 0}))
    assert table.live["my-ep"].limiter is None


def test_each_process_takes_an_equal_share_of_the_endpoint_rate() -> None:
    table = RouteTable(processes=2)
    body = route(1)
    body.max_requests_per_second = 50
    table.put(body)
    bucket = table.live["my-ep"].limiter
    assert bucket is not None and (bucket.rate, bucket.burst) == (25, 25)


def test_with_several_gateways_each_process_takes_its_share_of_every_gateway_s_limits() -> None:
    table = RouteTable(processes=2)
    body = route(1)
    body.gateways = 2
    body.max_requests_per_second = 40
    body.deployments["blue"].max_concurrent_requests_per_instance = 8
    table.put(body)
    endpoint = table.live["my-ep"]
    assert endpoint.limiter is not None and endpoint.limiter.rate == 10
    assert (endpoint.deployments["blue"].limit, endpoint.deployments["blue"].instance_limit) == (2, 8)


def test_mirror_share_out_of_range_is_a_problem() -> None:
    body = route(1)
    body.mirror_traffic = {"blue": 101}
    assert [p.field for p in route_problems(body)] == ["mirror_traffic.blue"]


def test_a_table_another_process_wrote_is_taken_in_under_the_generation_rules() -> None:
    writer, follower = RouteTable(), RouteTable()
    writer.put(route(3))
    writer.put(route(1, name="other"))
    assert follower.apply_document(writer.to_document()) == 2
    assert follower.apply_document(writer.to_document()) == 0  # unchanged: nothing rebuilt
    writer.delete("other", 2)
    stale = RouteTable()
    stale.put(route(2))  # older than what the follower holds
    follower.apply_document(stale.to_document())
    assert follower.routes["my-ep"].generation == 3
    follower.apply_document(writer.to_document())
    assert "other" not in follower.live and follower.tombstones["other"] == 2
