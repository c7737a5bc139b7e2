"""Which of Azure Monitor's one-minute buckets count. Pure, `now` passed in.

Azure Monitor publishes a minute some time after it ends, and its newest buckets can be absent,
zero or partial and revised minutes later. So a window is judged on *settled* minutes only: the
window ends `settle` before `now`; minutes after that are too fresh and never looked at, whatever
they hold; a settled minute with no value is missing. Too few settled minutes with a value is no
data — never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel

from config.azure_metrics import Aggregation, MetricSeries

DEFAULT_GRAIN = timedelta(minutes=1)
DEFAULT_SETTLE = timedelta(minutes=3)


class BucketSelection(BaseModel):
    """The minutes a window is judged on, what they add up to, and why."""

    window_start: datetime
    window_end: datetime
    expected: int  # settled minutes the window holds
    counted: int  # of those, minutes with a value
    missing: int  # settled minutes without one
    fresh: int  # minutes after window_end that the answer held (ignored)
    value: float | None  # None: no data
    reason: str

    @property
    def has_data(self) -> bool:
        return self.value is not None


def _floor(moment: datetime, grain: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return moment - (moment - epoch) % grain


def _combine(aggregation: Aggregation, values: Sequence[float]) -> float:
    """Minutes (and series) into one figure: counts and totals add, extremes stay extreme,
    averages average."""
    if aggregation in ("Total", "Count"):
        return float(sum(values))
    if aggregation == "Maximum":
        return max(values)
    if aggregation == "Minimum":
        return min(values)
    return sum(values) / len(values)


def settled_window(
    now: datetime, window: timedelta, *, grain: timedelta = DEFAULT_GRAIN, settle: timedelta = DEFAULT_SETTLE
) -> tuple[datetime, datetime]:
    """[start, end) of the minutes a window looks at: `window` long, ending `settle` before `now`,
    on minute boundaries."""
    end = _floor(now - settle, grain)
    slots = max(1, int(window / grain))
    return end - slots * grain, end


def select_buckets(
    series: Sequence[MetricSeries],
    *,
    aggregation: Aggregation,
    window: timedelta,
    now: datetime,
    grain: timedelta = DEFAULT_GRAIN,
    settle: timedelta = DEFAULT_SETTLE,
    min_coverage: float = 0.5,
) -> BucketSelection:
    """The window's value from settled minutes only; no data when fewer than `min_coverage` of
    them have a value. Several series (dimension values) are combined minute by minute first."""
    start, end = settled_window(now, window, grain=grain, settle=settle)
    expected = int((end - start) / grain)
    by_minute: dict[datetime, list[float]] = {}
    fresh_minutes: set[datetime] = set()
    for one in series:
        for point in one.points:
            minute = _floor(point.start, grain)
            if minute >= end:
                fresh_minutes.add(minute)
            elif minute >= start and point.value is not None:
                by_minute.setdefault(minute, []).append(point.value)
    counted = len(by_minute)
    missing = expected - counted
    numbers = f"{counted} of {expected} settled minutes"
    ignored = f", {len(fresh_minutes)} newer ignored" if fresh_minutes else ""
    value: float | None = None
    if counted == 0 or counted < min_coverage * expected:
        reason = f"no data: {numbers} have a value (need {min_coverage:.0%}){ignored}"
    else:
        per_minute = [_combine(aggregation, values) for _, values in sorted(by_minute.items())]
        value = _combine(aggregation, per_minute)
        reason = f"{aggregation} {value:.4g} over {numbers}{ignored}"
    return BucketSelection(
        window_start=start,
        window_end=end,
        expected=expected,
        counted=counted,
        missing=missing,
        fresh=len(fresh_minutes),
        value=value,
        reason=reason,
    )
