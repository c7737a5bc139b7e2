"""Traffic strings and splits, as `online-endpoint update --traffic` sees them."""

from __future__ import annotations

import pytest

from decisions.traffic import TrafficError, check_mirror, check_traffic, merge_traffic, parse_traffic


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("blue=90 green=10", {"blue": 90, "green": 10}),
        ("blue=90,green=10", {"blue": 90, "green": 10}),
        ("  blue=100  ", {"blue": 100}),
        ("blue=0 green=0", {"blue": 0, "green": 0}),
    ],
    ids=["spaces", "commas", "padded", "all-zero"],
)
def test_traffic_strings_parse_as_azure_writes_them(text: str, parsed: dict[str, int]) -> None:
    assert parse_traffic(text) == parsed


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("blue=abc", "'blue=abc'"),
        ("blue", "'blue' is not of the form name=percent"),
        ("blue=101", "'blue=101'"),
        ("blue=-5", "'blue=-5'"),
        ("blue=50 blue=50", "'blue' given twice"),
        ("", "empty"),
    ],
    ids=["not-a-number", "no-percent", "over-100", "negative", "twice", "empty"],
)
def test_a_bad_traffic_string_names_the_part_at_fault(text: str, named: str) -> None:
    with pytest.raises(TrafficError, match=named):
        parse_traffic(text)


@pytest.mark.parametrize(
    ("traffic", "named"),
    [
        ({"blue": 90, "green": 5}, "sums to 95"),
        ({"blue": 90, "ghost": 10}, "'ghost' does not exist"),
    ],
    ids=["not-100", "unknown"],
)
def test_a_split_must_sum_to_100_over_known_deployments(traffic: dict[str, int], named: str) -> None:
    with pytest.raises(TrafficError, match=named):
        check_traffic(traffic, ["blue", "green"])


def test_an_all_zero_split_is_allowed() -> None:
    check_traffic({"blue": 0, "green": 0}, ["blue", "green"])


def test_naming_only_some_deployments_keeps_the_others_shares() -> None:
    assert merge_traffic({"blue": 100, "green": 0}, {"green": 10, "blue": 90}) == {"blue": 90, "green": 10}
    assert merge_traffic({"blue": 90, "green": 10}, {"green": 0}) == {"blue": 90, "green": 0}


@pytest.mark.parametrize(
    ("mirror", "named"),
    [
        ({"green": 101}, "at most 100"),
        ({"green": 10, "red": 10}, "only one deployment"),
        ({"blue": 10}, "takes live traffic"),
    ],
    ids=["over-100", "two-shadows", "live-deployment"],
)
def test_mirror_traffic_follows_azures_rules(mirror: dict[str, int], named: str) -> None:
    with pytest.raises(TrafficError, match=named):
        check_mirror(mirror, {"blue": 100, "green": 0}, ["blue", "green", "red"])
