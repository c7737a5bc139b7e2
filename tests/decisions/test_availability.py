"""Availability over sliding windows and an SLO's error budget, as the dashboard shows them."""

from __future__ import annotations

import pytest

from decisions.availability import (
    DAY_S,
    HOUR_S,
    Availability,
    CountBucket,
    availability,
    by_deployment,
    failures_in,
    hour_and_day,
    parse_slo,
    slo_report,
)

NOW = 1_800_000_000.0


def minute(ago: int, requests: int, **status: int) -> CountBucket:
    """The minute that began ``ago`` minutes before NOW."""
    return CountBucket(start=NOW - 60 * ago, seconds=60, requests=requests, status=status)


@pytest.mark.parametrize(
    ("status", "keys", "failed"),
    [
        ({"2xx": 90, "5xx": 10}, ("5xx", "408"), 10),
        ({"2xx": 90, "4xx": 10, "408": 4}, ("5xx", "408"), 4),
        ({"4xx": 10, "429": 10}, ("5xx", "408"), 0),
        ({"5xx": 10, "503": 6}, ("5xx", "503"), 10),
        ({"5xx": 10, "503": 6}, ("503",), 6),
        ({"4xx": 10, "429": 7}, ("5xx", "408", "429"), 7),
        ({}, ("5xx",), 0),
    ],
    ids=[
        "5xx-fails",
        "408-fails-other-4xx-do-not",
        "429-is-not-a-failure-by-default",
        "a-code-inside-a-failing-class-counts-once",
        "a-code-alone",
        "429-when-the-setting-says-so",
        "no-counts",
    ],
)
def test_failures_count_the_keys_the_setting_names(
    status: dict[str, int], keys: tuple[str, ...], failed: int
) -> None:
    assert failures_in(status, keys) == failed


@pytest.mark.parametrize(
    ("buckets", "window", "requests", "failures", "ratio"),
    [
        ([minute(1, 1000, **{"2xx": 999, "5xx": 1})], HOUR_S, 1000, 1, 0.999),
        ([minute(1, 100, **{"2xx": 100}), minute(61, 100, **{"5xx": 100})], HOUR_S, 100, 0, 1.0),
        ([minute(1, 100, **{"2xx": 100}), minute(61, 100, **{"5xx": 100})], DAY_S, 200, 100, 0.5),
        ([minute(60, 10, **{"5xx": 10})], HOUR_S, 10, 10, 0.0),
        ([minute(1441, 10, **{"5xx": 10})], DAY_S, 0, 0, None),
        ([], HOUR_S, 0, 0, None),
        ([minute(-1, 10, **{"5xx": 10})], HOUR_S, 0, 0, None),
    ],
    ids=[
        "one-failure-in-a-thousand",
        "an-hour-forgets-older-minutes",
        "a-day-keeps-them",
        "the-window-edge-is-inside",
        "older-than-a-day-is-gone",
        "no-data-is-not-100-percent",
        "a-bucket-from-the-future-is-ignored",
    ],
)
def test_availability_over_a_sliding_window(
    buckets: list[CountBucket], window: float, requests: int, failures: int, ratio: float | None
) -> None:
    measured = availability(buckets, now=NOW, window_seconds=window)
    assert (measured.requests, measured.failures) == (requests, failures)
    assert measured.ratio == (pytest.approx(ratio) if ratio is not None else None)


def test_per_second_buckets_add_up_like_minutes() -> None:
    seconds = [
        CountBucket(
            start=NOW - s, seconds=1, requests=2, status={"2xx": 1, "408": 1} if s % 2 else {"2xx": 2}
        )
        for s in range(120)
    ]
    measured = availability(seconds, now=NOW, window_seconds=60)
    assert (measured.requests, measured.failures) == (122, 30)


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        availability([], now=NOW, window_seconds=0)


@pytest.mark.parametrize(
    ("requests", "failures", "target", "budget_left", "burn"),
    [
        (100_000, 0, 99.9, 1.0, 0.0),
        (100_000, 50, 99.9, 0.5, 0.5),
        (100_000, 100, 99.9, 0.0, 1.0),
        (100_000, 400, 99.9, -3.0, 4.0),
        (1_000, 10, 99.0, 0.0, 1.0),
        (1_000, 1, 99.0, 0.9, 0.1),
    ],
    ids=[
        "no-failures-keeps-the-whole-budget",
        "half-the-budget-spent",
        "exactly-spent-burns-at-one",
        "overspent-goes-negative",
        "a-looser-target",
        "one-failure-of-ten-allowed",
    ],
)
def test_error_budget_and_burn_rate(
    requests: int, failures: int, target: float, budget_left: float, burn: float
) -> None:
    report = slo_report(Availability(window_seconds=HOUR_S, requests=requests, failures=failures), target)
    assert report.budget_remaining == pytest.approx(budget_left)
    assert report.burn_rate == pytest.approx(burn)
    assert report.allowed_failures == pytest.approx(requests * (1 - target / 100))


def test_no_requests_report_no_budget_figures() -> None:
    report = slo_report(Availability(window_seconds=HOUR_S, requests=0, failures=0), 99.9)
    assert (report.availability_percent, report.budget_remaining, report.burn_rate) == (None, None, None)


@pytest.mark.parametrize(
    ("text", "value"), [("99.9", 99.9), ("99.95%", 99.95), (" 90 ", 90.0)], ids=["plain", "percent", "padded"]
)
def test_an_slo_tag_parses(text: str, value: float) -> None:
    assert parse_slo(text) == value


@pytest.mark.parametrize(
    "text", ["100", "0", "-1", "abc", "nan", ""], ids=lambda t: f"refuses-{t or 'empty'}"
)
def test_a_bad_slo_tag_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="SLO"):
        parse_slo(text)


def test_hour_and_day_without_an_objective_report_no_budget() -> None:
    both = hour_and_day([minute(1, 10, **{"2xx": 9, "5xx": 1}), minute(120, 10, **{"408": 10})], now=NOW)
    assert (both.hour.requests, both.hour.failures, both.hour.ratio) == (10, 1, 0.9)
    assert (both.day.requests, both.day.failures, both.day.ratio) == (20, 11, 0.45)
    assert both.slo_hour is None and both.slo_day is None


def test_hour_and_day_against_an_objective_spend_the_budget_of_each_window() -> None:
    both = hour_and_day(
        [minute(1, 1000, **{"2xx": 999, "5xx": 1}), minute(120, 1000, **{"5xx": 3})],
        now=NOW,
        target_percent=99.9,
    )
    assert both.slo_hour is not None and both.slo_day is not None
    assert both.slo_hour.budget_remaining == pytest.approx(0.0)  # 1 failure of 1 allowed
    assert both.slo_hour.burn_rate == pytest.approx(1.0)
    assert both.slo_day.failures == 4 and both.slo_day.allowed_failures == pytest.approx(2.0)
    assert both.slo_day.budget_remaining == pytest.approx(-1.0)  # twice the budget spent
    assert both.slo_day.burn_rate == pytest.approx(2.0)


def test_each_deployment_is_judged_on_what_it_served() -> None:
    """blue served 90 good; green 10, 4 of them 5xx and 2 timed out (408), 4 the model's 424."""
    per = by_deployment(
        {
            "green": [minute(2, 10, **{"2xx": 0, "4xx": 6, "5xx": 4, "408": 2, "424": 4})],
            "blue": [minute(2, 90, **{"2xx": 90})],
        },
        now=NOW,
        target_percent=99.0,
    )
    assert list(per) == ["blue", "green"]
    assert (per["blue"].hour.requests, per["blue"].hour.failures, per["blue"].hour.ratio) == (90, 0, 1.0)
    assert (per["green"].hour.requests, per["green"].hour.failures, per["green"].hour.ratio) == (10, 6, 0.4)
    green_slo = per["green"].slo_hour
    assert green_slo is not None and green_slo.burn_rate == pytest.approx(60.0)  # 60 % failing, 1 % allowed
    # The endpoint's own figure from the same answers (plus 5 refused before a deployment was
    # chosen, 4xx) lies between its deployments'.
    endpoint = hour_and_day([minute(2, 105, **{"2xx": 90, "4xx": 11, "5xx": 4, "408": 2})], now=NOW)
    assert endpoint.hour.failures == sum(d.hour.failures for d in per.values())
    assert per["green"].hour.ratio < (endpoint.hour.ratio or 0) < per["blue"].hour.ratio  # type: ignore[operator]


def test_a_deployment_with_no_requests_has_no_figure_not_100_percent() -> None:
    per = by_deployment({"idle": [], "blue": [minute(1, 5, **{"2xx": 5})]}, now=NOW, target_percent=99.9)
    assert per["idle"].hour.ratio is None and per["idle"].slo_hour is not None
    assert per["idle"].slo_hour.budget_remaining is None and per["idle"].slo_hour.burn_rate is None
    assert per["blue"].hour.ratio == 1.0
