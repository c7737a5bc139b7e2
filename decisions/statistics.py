"""Statistical tests the gates may ask for. Pure; checked against known values in the tests."""

from __future__ import annotations

import math
from dataclasses import dataclass


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class ProportionTest:
    z: float
    p_value: float  # one-sided: canary's rate greater than the baseline's
    canary_rate: float
    baseline_rate: float


def two_proportion_z_test(
    canary_errors: int, canary_total: int, baseline_errors: int, baseline_total: int
) -> ProportionTest:
    """Pooled two-proportion z-test of H1: canary error rate > baseline error rate."""
    if canary_total <= 0 or baseline_total <= 0:
        raise ValueError("both samples need at least one request")
    p1 = canary_errors / canary_total
    p2 = baseline_errors / baseline_total
    pooled = (canary_errors + baseline_errors) / (canary_total + baseline_total)
    variance = pooled * (1.0 - pooled) * (1.0 / canary_total + 1.0 / baseline_total)
    if variance == 0.0:
        # Both rates are 0 (or both 1): no evidence either way.
        return ProportionTest(z=0.0, p_value=0.5 if p1 == p2 else 0.0, canary_rate=p1, baseline_rate=p2)
    z = (p1 - p2) / math.sqrt(variance)
    return ProportionTest(z=z, p_value=1.0 - normal_cdf(z), canary_rate=p1, baseline_rate=p2)
