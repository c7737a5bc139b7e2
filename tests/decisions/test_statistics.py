"""The two-proportion z-test against values worked by hand."""

from __future__ import annotations

import pytest

from decisions.statistics import normal_cdf, two_proportion_z_test


@pytest.mark.parametrize(
    ("z", "cdf"), [(0.0, 0.5), (1.6449, 0.95), (1.96, 0.975), (-1.96, 0.025), (3.0902, 0.999)]
)
def test_normal_cdf_matches_the_table(z: float, cdf: float) -> None:
    assert normal_cdf(z) == pytest.approx(cdf, abs=1e-4)


def test_a_canary_failing_three_times_as_often_is_significantly_worse() -> None:
    # p1 = .15, p2 = .05, pooled .10, se = sqrt(.1 * .9 * (1/200 + 1/200)) = .03 → z = 3.333
    result = two_proportion_z_test(30, 200, 10, 200)
    assert result.z == pytest.approx(3.3333, abs=1e-3)
    assert result.p_value == pytest.approx(4.29e-4, rel=0.01)


def test_equal_rates_give_no_evidence() -> None:
    result = two_proportion_z_test(5, 100, 5, 100)
    assert result.z == 0.0
    assert result.p_value == pytest.approx(0.5)


def test_a_better_canary_has_a_negative_z() -> None:
    result = two_proportion_z_test(2, 400, 12, 400)
    assert result.z < -2.0
    assert result.p_value > 0.97


def test_no_errors_on_either_side_is_no_evidence() -> None:
    assert two_proportion_z_test(0, 50, 0, 50).p_value == 0.5


def test_an_empty_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        two_proportion_z_test(0, 0, 1, 10)
