"""Probe counting and timing on hand-made result sequences and clocks."""

from __future__ import annotations

import pytest

from config.host_api import ProbeSpec
from decisions.probes import ProbeCount, count_probe, next_probe_at, startup_budget_seconds

PROBE = ProbeSpec(initial_delay=10, period=5, timeout=2, success_threshold=2, failure_threshold=3)


def verdicts(start: ProbeCount, results: str, probe: ProbeSpec = PROBE) -> str:
    """Feed results ('+' passed, '-' failed); return the verdict after each ('P' or '.')."""
    out, count = [], start
    for result in results:
        count = count_probe(probe, count, ok=result == "+")
        out.append("P" if count.passing else ".")
    return "".join(out)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        pytest.param("++", ".P", id="ready_after_success_threshold_passes"),
        pytest.param("+-+", "...", id="a_failure_between_passes_starts_the_run_again"),
        pytest.param("--------++", ".........P", id="failures_before_the_first_pass_change_nothing"),
        pytest.param("++--", ".PPP", id="fewer_failures_than_the_threshold_keep_it_ready"),
        pytest.param("++---", ".PPP.", id="unready_after_failure_threshold_failures"),
        pytest.param("++--+--", ".PPPPPP", id="a_pass_between_failures_starts_the_run_again"),
        pytest.param("++---+", ".PPP..", id="one_pass_is_not_enough_to_come_back"),
        pytest.param("++---++", ".PPP..P", id="ready_again_after_success_threshold_passes"),
    ],
)
def test_readiness(results: str, expected: str) -> None:
    assert verdicts(ProbeCount.readiness(), results) == expected


def test_an_adopted_ready_instance_stays_ready_until_it_fails_the_threshold() -> None:
    assert verdicts(ProbeCount.readiness(ready=True), "--+---") == "PPPPP."


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        pytest.param("+++", "PPP", id="live_from_the_start"),
        pytest.param("--+--", "PPPPP", id="failures_short_of_the_threshold_keep_it_live"),
        pytest.param("+---", "PPP.", id="failure_threshold_failures_in_a_row_fail_it"),
    ],
)
def test_liveness(results: str, expected: str) -> None:
    assert verdicts(ProbeCount.liveness(), results) == expected


def test_the_run_lengths_carry_the_numbers_a_log_line_needs() -> None:
    count = ProbeCount.liveness()
    for ok in (True, False, False):
        count = count_probe(PROBE, count, ok=ok)
    assert (count.passing, count.successes, count.failures) == (True, 0, 2)


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        pytest.param(None, 110.0, id="the_first_probe_waits_initial_delay"),
        pytest.param(110.0, 115.0, id="then_one_every_period_from_the_previous_start"),
        pytest.param(113.5, 118.5, id="a_late_probe_moves_the_next_one_along"),
        pytest.param(102.0, 110.0, id="never_before_initial_delay_even_after_a_change_of_settings"),
    ],
)
def test_next_probe_at(previous: float | None, expected: float) -> None:
    assert next_probe_at(PROBE, started=100.0, previous=previous) == expected


def test_startup_budget_is_initial_delay_plus_period_times_failure_threshold() -> None:
    assert startup_budget_seconds(ProbeSpec()) == 310.0  # Azure's defaults: 10 + 10 x 30
    assert startup_budget_seconds(PROBE) == 25.0
