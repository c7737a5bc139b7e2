"""Which Azure Monitor minutes count: settled ones only; missing or too-fresh minutes are no data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.azure_metrics import Aggregation, MetricPoint, MetricSeries
from decisions.metric_buckets import select_buckets, settled_window

# now 12:10:30, a 5-minute window settled 3 minutes: the minutes 12:02 … 12:06 count.
NOW = datetime(2026, 11, 29, 12, 10, 30, tzinfo=UTC)
WINDOW = timedelta(minutes=5)


def series(values: dict[int, float | None], **dimensions: str) -> MetricSeries:
    """Points by minute of the hour 12 (a minute given as None is listed without a value)."""
    return MetricSeries(
        dimensions=dimensions,
        points=[
            MetricPoint(start=NOW.replace(minute=m, second=0), value=v) for m, v in sorted(values.items())
        ],
    )


FULL = {2: 10.0, 3: 20.0, 4: 30.0, 5: 40.0, 6: 50.0}

CASES: list[tuple[str, list[MetricSeries], Aggregation, float | None, tuple[int, int, int]]] = [
    # id, series, aggregation, value, (counted, missing, fresh)
    ("every_settled_minute_counts", [series(FULL)], "Average", 30.0, (5, 0, 0)),
    (
        "newest_zero_minutes_are_ignored_not_averaged_in",
        [series({**FULL, 7: 0.0, 8: 0.0, 9: 0.0})],
        "Average",
        30.0,
        (5, 0, 3),
    ),
    (
        "newest_missing_minutes_are_ignored",
        [series({**FULL, 7: None, 8: None, 9: None, 10: None})],
        "Maximum",
        50.0,
        (5, 0, 4),
    ),
    (
        "settled_gaps_are_missing_and_enough_coverage_still_judges",
        [series({2: 10.0, 3: None, 5: 40.0, 6: 60.0})],
        "Average",
        pytest.approx(110.0 / 3),  # type: ignore[list-item]
        (3, 2, 0),
    ),
    ("too_few_settled_minutes_is_no_data", [series({2: None, 5: 1.0, 6: 1.0})], "Total", None, (2, 3, 0)),
    ("nothing_at_all_is_no_data", [], "Average", None, (0, 5, 0)),
    (
        "an_answer_of_empty_buckets_is_no_data",
        [series(dict.fromkeys(range(0, 11)))],
        "Total",
        None,
        (0, 5, 4),
    ),
    (
        "fresh_values_alone_never_pass",
        [series({7: 99.0, 8: 99.0, 9: 99.0, 10: 99.0})],
        "Average",
        None,
        (0, 5, 4),
    ),
    ("a_settled_zero_is_a_real_zero", [series(dict.fromkeys(range(2, 7), 0.0))], "Total", 0.0, (5, 0, 0)),
    ("totals_add_up", [series(FULL)], "Total", 150.0, (5, 0, 0)),
    ("counts_add_up", [series(FULL)], "Count", 150.0, (5, 0, 0)),
    ("minimum_is_the_lowest_minute", [series(FULL)], "Minimum", 10.0, (5, 0, 0)),
    (
        "minutes_before_the_window_are_ignored",
        [series({0: 1000.0, 1: 1000.0, **FULL})],
        "Maximum",
        50.0,
        (5, 0, 0),
    ),
    (
        "series_of_several_dimension_values_add_minute_by_minute",
        [series(FULL, deployment="green"), series({2: 1.0, 3: None, 9: 5.0}, deployment="blue")],
        "Total",
        151.0,
        (5, 0, 1),
    ),
]


@pytest.mark.parametrize(
    ("given", "aggregation", "value", "numbers"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_select_buckets(
    given: list[MetricSeries], aggregation: Aggregation, value: float | None, numbers: tuple[int, int, int]
) -> None:
    chosen = select_buckets(given, aggregation=aggregation, window=WINDOW, now=NOW)
    assert chosen.value == value
    assert (chosen.counted, chosen.missing, chosen.fresh) == numbers
    assert chosen.expected == 5
    assert chosen.has_data == (value is not None)
    assert chosen.reason.startswith("no data" if value is None else aggregation)


def test_the_window_ends_settle_before_now_on_a_minute_boundary() -> None:
    start, end = settled_window(NOW, WINDOW)
    assert (start, end) == (NOW.replace(minute=2, second=0), NOW.replace(minute=7, second=0))
    assert settled_window(NOW, timedelta(seconds=20)) == (end - timedelta(minutes=1), end)


def test_a_late_minute_counts_once_it_has_settled_and_been_revised() -> None:
    early = series({**FULL, 7: 0.0})  # 12:07 published as 0 while still fresh
    revised = series({**FULL, 7: 90.0})  # a minute later Azure Monitor has revised it
    first = select_buckets([early], aggregation="Maximum", window=WINDOW, now=NOW)
    later = select_buckets([revised], aggregation="Maximum", window=WINDOW, now=NOW + timedelta(minutes=1))
    assert (first.value, first.fresh) == (50.0, 1)
    assert (later.value, later.counted, later.window_end.minute) == (90.0, 5, 8)


def test_the_reason_carries_the_numbers() -> None:
    chosen = select_buckets([series({**FULL, 8: 0.0})], aggregation="Average", window=WINDOW, now=NOW)
    assert chosen.reason == "Average 30 over 5 of 5 settled minutes, 1 newer ignored"
    none = select_buckets([series({6: 1.0})], aggregation="Average", window=WINDOW, now=NOW)
    assert none.reason == "no data: 1 of 5 settled minutes have a value (need 50%)"
