"""Table-driven tests of the gateway's pure routing core."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import pytest

from config.routes import DeploymentRoute, EndpointRoute
from gateway.routing import (
    FULL,
    SCORE,
    SWAGGER,
    RequestIds,
    RequestTarget,
    RoutingError,
    bearer_token,
    choose_deployment,
    fresh_request_id,
    host_endpoint,
    key_matches,
    parse_target,
    pick_instance,
    plan_traffic,
    request_id,
)


def route(traffic: dict[str, int], deployments: list[str]) -> EndpointRoute:
    return EndpointRoute(
        name="my-ep",
        generation=1,
        traffic=traffic,
        deployments={name: DeploymentRoute(name=name) for name in deployments},
    )


BLUE_GREEN_90_10 = route({"blue": 90, "green": 10}, ["blue", "green"])
ALL_ZERO = route({"blue": 0, "green": 0}, ["blue", "green"])


@pytest.mark.parametrize(
    ("endpoint_route", "target", "draw", "expected"),
    [
        (BLUE_GREEN_90_10, None, 0.0, "blue"),
        (BLUE_GREEN_90_10, None, 0.899999, "blue"),
        (BLUE_GREEN_90_10, None, 0.9, "green"),
        (BLUE_GREEN_90_10, None, 0.999999, "green"),
        (BLUE_GREEN_90_10, "green", 0.0, "green"),
        (route({"blue": 100, "green": 0}, ["blue", "green"]), "green", 0.5, "green"),
        (route({"blue": 100, "green": 0}, ["blue", "green"]), None, 0.999, "blue"),
        (route({"blue": 1, "green": 1, "red": 2}, ["blue", "green", "red"]), None, 0.3, "green"),
        (route({"blue": 1, "green": 1, "red": 2}, ["blue", "green", "red"]), None, 0.6, "red"),
        (ALL_ZERO, "blue", 0.5, "blue"),
        (
            BLUE_GREEN_90_10,
            "purple",
            0.1,
            RoutingError(404, "DeploymentNotFound", "no deployment named 'purple'"),
        ),
        (ALL_ZERO, None, 0.5, "NoValidDeployments"),
        (route({}, []), None, 0.5, "NoValidDeployments"),
        (route({}, ["blue"]), None, 0.1, "NoValidDeployments"),
    ],
    ids=[
        "draw_0_goes_to_the_first_deployment",
        "draw_just_below_90pct_stays_on_blue",
        "draw_at_90pct_moves_to_green",
        "draw_near_1_goes_to_the_last_deployment",
        "header_targets_a_deployment",
        "header_targets_a_deployment_at_0pct",
        "zero_weight_deployment_gets_no_draws",
        "three_way_split_middle",
        "three_way_split_last",
        "header_works_when_all_traffic_is_0",
        "header_naming_unknown_deployment_is_404",
        "all_traffic_0_without_header_is_no_valid_deployments",
        "empty_route_is_no_valid_deployments",
        "deployment_without_traffic_entry_gets_nothing",
    ],
)
def test_choose_deployment(
    endpoint_route: EndpointRoute, target: str | None, draw: float, expected: object
) -> None:
    chosen = choose_deployment(endpoint_route, target, draw)
    if expected == "NoValidDeployments":
        assert isinstance(chosen, RoutingError)
        assert (chosen.status, chosen.code) == (404, "NoValidDeployments")
    else:
        assert chosen == expected


def test_traffic_to_a_deployment_not_yet_in_the_route_keeps_its_share() -> None:
    plan = plan_traffic({"blue": 50, "green": 50}, ["blue"])
    assert choose_deployment(plan, None, 0.75) == "green"
    assert choose_deployment(plan, "green", 0.1) == "green"


def test_plan_and_route_give_the_same_answers() -> None:
    plan = plan_traffic(BLUE_GREEN_90_10.traffic, BLUE_GREEN_90_10.deployments)
    for step in range(100):
        draw = step / 100
        assert choose_deployment(plan, None, draw) == choose_deployment(BLUE_GREEN_90_10, None, draw)


def test_weights_are_relative() -> None:
    plan = plan_traffic({"a": 3, "b": 1}, ["a", "b"])
    assert plan.cumulative == (0.75, 1.0)


@pytest.mark.parametrize(
    ("host", "domain", "expected"),
    [
        ("my-ep.localhost", "localhost", "my-ep"),
        ("my-ep.localhost:8443", "localhost", "my-ep"),
        ("MY-EP.LOCALHOST:8443", "localhost", "my-ep"),
        ("my-ep.localhost.", "localhost", "my-ep"),
        ("my-ep.ml.example.com", "ml.example.com", "my-ep"),
        ("localhost:8443", "localhost", None),
        ("a.b.localhost", "localhost", None),
        (".localhost", "localhost", None),
        ("my-ep.example.com", "localhost", None),
        ("127.0.0.1:8080", "localhost", None),
        ("[::1]:8080", "localhost", None),
    ],
    ids=[
        "endpoint_subdomain",
        "port_is_stripped",
        "case_is_folded",
        "trailing_dot",
        "multi_label_domain",
        "bare_domain_names_no_endpoint",
        "nested_subdomain_names_no_endpoint",
        "empty_label",
        "other_domain",
        "ip_address",
        "ipv6_literal",
    ],
)
def test_host_endpoint(host: str, domain: str, expected: str | None) -> None:
    assert host_endpoint(host, domain) == expected


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        ("/score", "my-ep.localhost:8443", RequestTarget("my-ep", SCORE)),
        ("/swagger.json", "my-ep.localhost", RequestTarget("my-ep", SWAGGER)),
        ("/endpoints/my-ep/score", "127.0.0.1:8080", RequestTarget("my-ep", SCORE)),
        ("/endpoints/My-Ep/score", None, RequestTarget("my-ep", SCORE)),
        ("/endpoints/my-ep/swagger.json", "other.localhost", RequestTarget("my-ep", SWAGGER)),
        ("/score", "127.0.0.1:8080", 404),
        ("/score", None, 404),
        ("/", "my-ep.localhost", 404),
        ("/endpoints/my-ep/other", "my-ep.localhost", 404),
        ("/endpoints//score", None, 404),
        ("/endpoints/my-ep", None, 404),
    ],
    ids=[
        "host_form",
        "host_form_swagger",
        "path_form_any_host",
        "path_form_folds_case",
        "path_form_beats_host",
        "score_on_a_host_naming_no_endpoint",
        "score_without_host",
        "root_path",
        "unknown_resource",
        "empty_endpoint",
        "missing_resource",
    ],
)
def test_parse_target(path: str, host: str | None, expected: RequestTarget | int) -> None:
    found = parse_target(path, host, "localhost")
    if isinstance(expected, int):
        assert isinstance(found, RoutingError)
        assert found.status == expected
    else:
        assert found == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


PRIMARY = "primary-key"
SECONDARY = "secondary-key"
HASHES = [hashlib.sha256(k.encode()).hexdigest() for k in (PRIMARY, SECONDARY)]


@pytest.mark.parametrize(
    ("key", "hashes", "expected"),
    [
        (PRIMARY, HASHES, True),
        (SECONDARY, HASHES, True),
        ("wrong", HASHES, False),
        (HASHES[0], HASHES, False),
        (None, HASHES, False),
        ("", HASHES, False),
        (PRIMARY, [], False),
    ],
    ids=[
        "primary_key",
        "secondary_key",
        "wrong_key",
        "the_hash_itself_is_not_a_key",
        "no_key",
        "empty_key",
        "endpoint_without_keys",
    ],
)
def test_key_matches(key: str | None, hashes: list[str], expected: bool) -> None:
    assert key_matches(key, hashes) is expected


@dataclass
class Load:
    outstanding: int
    ejected_until: float = 0.0


@pytest.mark.parametrize(
    ("loads", "start", "now", "expected"),
    [
        ([], 0, 0.0, None),
        ([Load(0)], 5, 0.0, 0),
        ([Load(3), Load(1), Load(2)], 0, 0.0, 1),
        ([Load(1), Load(1), Load(1)], 0, 0.0, 0),
        ([Load(1), Load(1), Load(1)], 1, 0.0, 1),
        ([Load(1), Load(1), Load(1)], 5, 0.0, 2),
        ([Load(0, ejected_until=10.0), Load(4)], 0, 5.0, 1),
        ([Load(0, ejected_until=10.0), Load(4)], 0, 11.0, 0),
        ([Load(2, ejected_until=10.0), Load(1, ejected_until=10.0)], 0, 5.0, None),
    ],
    ids=[
        "no_instances",
        "single_instance",
        "fewest_outstanding_wins",
        "tie_goes_to_start",
        "tie_rotates_with_start",
        "start_wraps_around",
        "ejected_instance_avoided",
        "ejection_expires",
        "all_ejected_is_none_healthy",
    ],
)
def test_pick_instance(loads: list[Load], start: int, now: float, expected: int | None) -> None:
    assert pick_instance(loads, start, now) == expected


A, B, C = Load(2), Load(0), Load(1)


@pytest.mark.parametrize(
    ("loads", "limit", "exclude", "expected"),
    [
        ([Load(1), Load(0)], 1, (), 1),
        ([Load(1), Load(1)], 1, (), FULL),
        ([Load(3), Load(2)], 4, (), 1),
        ([Load(1, ejected_until=10.0), Load(1)], 1, (), FULL),
        ([Load(0, ejected_until=10.0), Load(1)], 1, (), FULL),
        ([Load(0, ejected_until=10.0)], 1, (), None),
        ([A, B, C], 0, (B,), 2),
        ([A, B, C], 0, (A, B, C), None),
        ([A, B, C], 2, (B, C), FULL),
        ([], 1, (), None),
    ],
    ids=[
        "below_the_limit_is_chosen",
        "every_instance_at_the_limit_is_full",
        "least_outstanding_below_the_limit",
        "ejected_instance_never_counts_as_room",
        "ejected_idle_instance_is_not_used",
        "only_ejected_is_none_healthy",
        "excluded_instance_is_skipped",
        "every_instance_excluded_is_none",
        "excluded_and_full_is_full",
        "no_instances_is_none",
    ],
)
def test_pick_instance_with_limits(
    loads: list[Load], limit: int, exclude: tuple[Load, ...], expected: int | None
) -> None:
    assert pick_instance(loads, 0, 5.0, limit, exclude) == expected


@pytest.mark.parametrize(
    ("x_request_id", "client_request_id", "expected"),
    [
        ("abc", None, "abc"),
        (None, "client-1", "client-1"),
        ("abc", "client-1", "abc"),
        (None, None, "fresh"),
        ("", "", "fresh"),
        ("x" * 100, None, "x" * 100),
        ("x" * 101, None, 431),
    ],
    ids=[
        "echoes_x_request_id",
        "falls_back_to_client_request_id",
        "x_request_id_wins",
        "makes_one_when_absent",
        "empty_headers_count_as_absent",
        "100_chars_accepted",
        "over_100_chars_is_431",
    ],
)
def test_request_id(x_request_id: str | None, client_request_id: str | None, expected: str | int) -> None:
    found = request_id(x_request_id, client_request_id, "fresh")
    if isinstance(expected, int):
        assert isinstance(found, RoutingError)
        assert found.status == expected
    else:
        assert found == expected


@pytest.mark.parametrize("bits", [0, 2**128 - 1, 0x0123456789ABCDEF0123456789ABCDEF, None])
def test_fresh_request_id_is_a_version_4_uuid(bits: int | None) -> None:
    made = fresh_request_id(bits)
    parsed = uuid.UUID(made)
    assert str(parsed) == made
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122


def test_hot_path_request_ids_are_unique_version_4_uuids() -> None:
    ids = RequestIds()
    made = [ids() for _ in range(1000)]
    assert len(set(made)) == 1000
    for value in made[::100]:
        parsed = uuid.UUID(value)
        assert (str(parsed), parsed.version, parsed.variant) == (value, 4, uuid.RFC_4122)
