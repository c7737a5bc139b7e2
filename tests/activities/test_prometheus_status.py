"""The prometheus provider's status counts add up, however Prometheus extrapolated each counter."""

from __future__ import annotations

import pytest

from activities.prometheus.monitor import consistent_status


@pytest.mark.parametrize(
    ("classes", "codes", "expected"),
    [
        ({"4xx": 22.0}, {"424": 23.1}, {"4xx": 22, "424": 22}),
        ({"2xx": 59.4, "5xx": 3.2}, {"503": 2.9}, {"2xx": 59, "5xx": 3, "503": 3}),
        ({"4xx": 10.0}, {"424": 6.4, "429": 6.2}, {"4xx": 10, "424": 6, "429": 4}),
        ({"2xx": 5.0}, {"503": 1.2}, {"2xx": 5, "503": 0}),
    ],
    ids=["code-over-its-class", "within-bounds", "two-codes-share-one-class", "code-without-its-class"],
)
def test_a_code_never_counts_more_than_its_class(
    classes: dict[str, float], codes: dict[str, float], expected: dict[str, int]
) -> None:
    assert consistent_status(classes, codes) == expected
