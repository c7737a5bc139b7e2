"""Availability over sliding windows and an SLO's error budget, as the dashboard shows them."""

from __future__ import annotations

import pytest

from decisions.availability import (
    DAY_S,
    HOUR_S,
    Availability,
    CountBucket,
    availability,
    failures_in,
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
