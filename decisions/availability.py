"""Availability and SLO arithmetic: the share of requests answered without a failure over a
sliding window, and what that leaves of an SLO's error budget.

Counts come in buckets (the gateway's per-second windows or its per-minute history), each with
its start, its length and its status counts keyed as ``config.stats.STATUS_KEYS`` spells them
("2xx", "4xx", "5xx", "408", "424", "429", "503"). Which keys are failures is a parameter:
by default a 5xx or a 408 (the deployment did not answer in time), not a 4xx the client caused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_FAILURE_KEYS: tuple[str, ...] = ("5xx", "408")
HOUR_S = 3600.0
DAY_S = 86400.0
# The tag an endpoint carries its availability objective in, e.g. "99.9".
SLO_TAG = "tidegate/slo_availability"


class CountBucket(BaseModel):
    """Requests whose answers fell in ``[start, start + seconds)`` (epoch seconds)."""

    model_config = ConfigDict(frozen=True)

    start: float
    seconds: float = Field(gt=0)
    requests: int = Field(ge=0)
    status: dict[str, int] = Field(default_factory=dict)


class Availability(BaseModel):
    """Requests and failures over one window; ``ratio`` is None without requests (no data is
    not 100 %)."""

    model_config = ConfigDict(frozen=True)

    window_seconds: float
    requests: int
    failures: int

    @property
    def ratio(self) -> float | None:
        return (self.requests - self.failures) / self.requests if self.requests else None

    @property
    def percent(self) -> float | None:
        ratio = self.ratio
        return None if ratio is None else 100.0 * ratio


class SloReport(BaseModel):
    """An availability against its objective. ``budget_remaining`` is the share of the
    window's allowed failures not yet spent (negative once overspent); ``burn_rate`` is how
    fast the budget goes (1.0 spends exactly the budget over the window)."""

    model_config = ConfigDict(frozen=True)

    target_percent: float
    availability_percent: float | None
    requests: int
    failures: int
    allowed_failures: float
    budget_remaining: float | None
    burn_rate: float | None


def failures_in(status: Mapping[str, int], failure_keys: Sequence[str] = DEFAULT_FAILURE_KEYS) -> int:
    """Failed requests among ``status`` counts. A code is a subset of its class ("503" of "5xx"),
    so a code whose class is also a failure key is not counted twice."""
    keys = set(failure_keys)
    total = 0
    for key in keys:
        if key.isdigit() and f"{key[0]}xx" in keys:
            continue
        total += status.get(key, 0)
    return total


def availability(
    buckets: Iterable[CountBucket],
    *,
    now: float,
    window_seconds: float,
    failure_keys: Sequence[str] = DEFAULT_FAILURE_KEYS,
) -> Availability:
    """Over the last ``window_seconds`` before ``now``: a bucket counts when it starts inside
    the window (a minute bucket that began before it does not, so the window is never longer
    than asked) and has begun by ``now``."""
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be positive, not {window_seconds:g}")
    since = now - window_seconds
    requests = failures = 0
    for bucket in buckets:
        if since <= bucket.start <= now:
            requests += bucket.requests
            failures += failures_in(bucket.status, failure_keys)
    return Availability(window_seconds=window_seconds, requests=requests, failures=min(failures, requests))


def parse_slo(text: str) -> float:
    """``"99.9"`` or ``"99.9%"`` -> 99.9; an objective is above 0 and below 100 (100 % leaves
    no budget to burn)."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"SLO {text!r} is not a percentage such as 99.9") from None
    if not math.isfinite(value) or not 0 < value < 100:
        raise ValueError(f"SLO {text!r} must be above 0 and below 100 (percent)")
    return value


def slo_report(measured: Availability, target_percent: float) -> SloReport:
    """Error budget left and burn rate of ``measured`` against ``target_percent``."""
    if not 0 < target_percent < 100:
        raise ValueError(f"target must be above 0 and below 100 percent, not {target_percent:g}")
    allowed_share = 1.0 - target_percent / 100.0
    allowed = allowed_share * measured.requests
    ratio = measured.ratio
    if ratio is None:
        return SloReport(
            target_percent=target_percent,
            availability_percent=None,
            requests=0,
            failures=0,
            allowed_failures=0.0,
            budget_remaining=None,
            burn_rate=None,
        )
    failure_share = 1.0 - ratio
    return SloReport(
        target_percent=target_percent,
        availability_percent=100.0 * ratio,
        requests=measured.requests,
        failures=measured.failures,
        allowed_failures=allowed,
        budget_remaining=1.0 - measured.failures / allowed,
        burn_rate=failure_share / allowed_share,
    )


class WindowedAvailability(BaseModel):
    """One scope's (an endpoint's or a deployment's) last hour and day, and each against the
    objective when there is one."""

    model_config = ConfigDict(frozen=True)

    hour: Availability
    day: Availability
    slo_hour: SloReport | None = None
    slo_day: SloReport | None = None


def hour_and_day(
    buckets: Iterable[CountBucket],
    *,
    now: float,
    failure_keys: Sequence[str] = DEFAULT_FAILURE_KEYS,
    target_percent: float | None = None,
) -> WindowedAvailability:
    """Availability over the last hour and the last day before ``now``, from one scope's
    buckets; against ``target_percent`` when given."""
    kept = list(buckets)
    hour = availability(kept, now=now, window_seconds=HOUR_S, failure_keys=failure_keys)
    day = availability(kept, now=now, window_seconds=DAY_S, failure_keys=failure_keys)
    if target_percent is None:
        return WindowedAvailability(hour=hour, day=day)
    return WindowedAvailability(
        hour=hour,
        day=day,
        slo_hour=slo_report(hour, target_percent),
        slo_day=slo_report(day, target_percent),
    )


def by_deployment(
    buckets: Mapping[str, Iterable[CountBucket]],
    *,
    now: float,
    failure_keys: Sequence[str] = DEFAULT_FAILURE_KEYS,
    target_percent: float | None = None,
) -> dict[str, WindowedAvailability]:
    """``hour_and_day`` for each deployment's own buckets (name -> buckets), in name order.
    Each deployment is judged on what it served: a request refused before a deployment was
    chosen (401, 404, the endpoint's rate) is the endpoint's alone, so the deployments'
    requests add up to at most the endpoint's."""
    return {
        name: hour_and_day(buckets[name], now=now, failure_keys=failure_keys, target_percent=target_percent)
        for name in sorted(buckets)
    }
