"""Which window a snapshot URL in a scale set's custom data is signed for: the same within a
half-life (a repeat PUT is no change), a new one after, and always over half a lifetime left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from decisions.snapshot_urls import CLOCK_SKEW, sas_window

DAY = timedelta(days=1)
NOON = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "start", "expiry"),
    [
        pytest.param(NOON, NOON, NOON + DAY, id="at_a_half_life_boundary_a_whole_day"),
        pytest.param(NOON + timedelta(hours=5), NOON, NOON + DAY, id="five_hours_in_the_same_window"),
        pytest.param(
            NOON + timedelta(hours=11, minutes=59, seconds=59), NOON, NOON + DAY, id="last_second_same_window"
        ),
        pytest.param(
            NOON + timedelta(hours=12), NOON + timedelta(hours=12), NOON + timedelta(hours=36), id="renewed"
        ),
    ],
)
def test_window_starts_at_the_current_half_life_and_lasts_one_ttl(
    now: datetime, start: datetime, expiry: datetime
) -> None:
    window = sas_window(now, DAY)
    assert window.start == start - CLOCK_SKEW
    assert window.expiry == expiry
    assert window.renew_at == start + DAY / 2


def test_two_puts_in_one_half_life_sign_the_same_window() -> None:
    assert sas_window(NOON + timedelta(minutes=1), DAY) == sas_window(NOON + timedelta(hours=11), DAY)
    assert sas_window(NOON + timedelta(hours=11), DAY) != sas_window(NOON + timedelta(hours=13), DAY)


@pytest.mark.parametrize("ttl_hours", [1, 6, 24, 7 * 24])
def test_a_url_signed_at_any_moment_has_more_than_half_its_life_left(ttl_hours: int) -> None:
    ttl = timedelta(hours=ttl_hours)
    for minutes in range(0, ttl_hours * 60 * 3, 7):  # three lifetimes, at odd steps
        now = NOON + timedelta(minutes=minutes, seconds=13)
        window = sas_window(now, ttl)
        assert window.start < now < window.renew_at <= window.expiry
        assert window.expiry - now > ttl / 2
        assert window.expiry - window.start == ttl + CLOCK_SKEW


def test_an_odd_ttl_signs_whole_seconds() -> None:
    window = sas_window(NOON + timedelta(microseconds=123), timedelta(seconds=3601))
    assert window.start.microsecond == window.expiry.microsecond == 0
    assert window.expiry - window.start == timedelta(seconds=3600) + CLOCK_SKEW
