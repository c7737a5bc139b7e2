"""The endpoint rate limit's token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.ratelimit import TokenBucket, retry_after_s


def passed(bucket: TokenBucket, times: list[float]) -> int:
    return sum(bucket.take(now) == 0.0 for now in times)


@pytest.mark.parametrize(
    ("rate", "times", "expected"),
    [
        pytest.param(20, [0.0] * 100, 20, id="a_burst_passes_one_seconds_worth"),
        pytest.param(0.5, [0.0] * 5, 1, id="below_1_per_second_the_burst_is_one"),
        pytest.param(
            10, [i / 100 for i in range(200)], 10 + 19, id="two_seconds_at_100_per_s_pass_10_plus_19"
        ),
        pytest.param(10, [i * 0.1 for i in range(50)], 50, id="at_the_rate_nothing_is_refused"),
        pytest.param(5, [0.0] * 5 + [10.0] * 10, 10, id="idle_time_refills_only_up_to_the_burst"),
    ],
)
def test_bucket_passes(rate: float, times: list[float], expected: int) -> None:
    assert passed(TokenBucket(rate, now=0.0), times) == expected


def test_a_refused_request_learns_when_the_next_token_comes() -> None:
    bucket = TokenBucket(4, now=0.0)
    assert passed(bucket, [0.0] * 4) == 4
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.125) == pytest.approx(0.125)
    assert bucket.take(0.25) == 0.0


@pytest.mark.parametrize(
    ("wait", "seconds"), [(0.001, 1), (0.25, 1), (1.0, 1), (1.01, 2), (9.5, 10)], ids=str
)
def test_retry_after_is_whole_seconds_at_least_1(wait: float, seconds: int) -> None:
    assert retry_after_s(wait) == seconds


def test_a_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, now=0.0)
