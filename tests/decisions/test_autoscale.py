"""Autoscale decisions on hand-made metric series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.azure_metrics import AzureMonitorSource
from config.contract.state import AutoscaleMemory, AutoscaleSettings
from config.stats import LatencySummary, WindowStats
from decisions.autoscale import (
    check_interval_seconds,
    cpu_utilisation,
    desired_instances,
    mean_waiting,
    replacement_delay,
)

T0 = datetime(2026, 11, 25, tzinfo=UTC)
SETTINGS = AutoscaleSettings(
    min_instances=1, max_instances=5, target_utilization_percentage=50, scale_in_cooldown=60
)


def run_series(series: list[float | None], start: int, step_seconds: float = 10) -> list[int]:
    """Feed one utilisation reading per poll; return the instance count after each."""
    counts, current, memory = [], start, AutoscaleMemory()
    for i, utilisation in enumerate(series):
        decision = desired_instances(
            SETTINGS,
            current=current,
            utilisation=utilisation,
            memory=memory,
            now=T0 + timedelta(seconds=i * step_seconds),
        )
        current, memory = decision.instances, decision.memory
        counts.append(current)
    return counts


def test_load_above_target_scales_out_at_once_by_what_it_needs() -> None:
    assert run_series([0.9], start=1) == [2]
    assert run_series([1.0], start=2) == [4]


def test_scale_out_never_passes_max_instances() -> None:
    assert run_series([1.0, 1.0], start=4) == [5, 5]


def test_low_load_scales_in_one_at_a_time_after_the_cool_down() -> None:
    # 10 s polls, 60 s cool-down: low from t=0, first removal at t=60; the count of the next
    # cool-down starts at the next poll (t=70), so the second removal is at t=130.
    counts = run_series([0.1] * 14, start=3)
    assert counts[:6] == [3] * 6
    assert counts[6] == 2
    assert counts[7:13] == [2] * 6
    assert counts[13] == 1


def test_a_busy_poll_restarts_the_cool_down() -> None:
    # At 2 instances, 40 % needs both (target 50 %): the low streak restarts at t=40.
    counts = run_series([0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], start=2)
    assert counts == [2] * 10 + [1]


def test_never_below_min_instances() -> None:
    assert run_series([0.0] * 30, start=1) == [1] * 30


def test_no_measurement_changes_nothing() -> None:
    assert run_series([None, None], start=3) == [3, 3]


def test_during_a_rollout_scale_out_goes_on_and_scale_in_waits() -> None:
    def during_rollout(utilisation: float, memory: AutoscaleMemory) -> int:
        return desired_instances(
            SETTINGS, current=2, utilisation=utilisation, memory=memory, now=T0, in_rollout=True
        ).instances

    assert during_rollout(1.0, AutoscaleMemory()) == 4
    # Low for far longer than the cool-down: still held while the rollout runs.
    assert during_rollout(0.05, AutoscaleMemory(low_since=T0 - timedelta(hours=1))) == 2


@pytest.mark.parametrize(("restarts", "delay"), [(0, 0), (1, 1), (2, 2), (3, 4), (10, 300)])
def test_crash_loops_back_off_exponentially_up_to_a_cap(restarts: int, delay: float) -> None:
    assert replacement_delay(restarts) == delay


def test_a_queue_in_front_of_busy_instances_counts_as_more_load() -> None:
    # One instance busy all the time reads 100 %: alone that asks for 2 at a 50 % target; two
    # requests waiting on average (one slot each) are the work of two more instances.
    def needed(waiting: float, slots: int = 1) -> int:
        return desired_instances(
            SETTINGS,
            current=1,
            utilisation=1.0,
            memory=AutoscaleMemory(),
            now=T0,
            waiting=waiting,
            slots_per_instance=slots,
        ).instances

    assert needed(0.0) == 2
    assert needed(0.5) == 3
    assert needed(2.0) == 5  # max_instances
    assert needed(2.0, slots=4) == 3


def test_mean_waiting_is_little_s_law_over_the_window() -> None:
    stats = WindowStats(
        endpoint="ep",
        deployment="blue",
        window_seconds=10,
        requests=200,
        queue_wait_ms=LatencySummary(mean=50.0),
    )
    assert mean_waiting(stats) == pytest.approx(20 * 0.05)
    assert mean_waiting(stats.model_copy(update={"queue_wait_ms": LatencySummary()})) == 0.0


CPU_SOURCE = AzureMonitorSource(
    resource_id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/tg-ep-blue",
    metric="Percentage CPU",
)


@pytest.mark.parametrize(
    ("settings", "seconds"),
    [
        (SETTINGS, 1.0),
        (SETTINGS.model_copy(update={"polling_interval": 5}), 5.0),
        (SETTINGS.model_copy(update={"cpu_source": CPU_SOURCE}), 60.0),
        (SETTINGS.model_copy(update={"cpu_source": CPU_SOURCE, "polling_interval": 120}), 120.0),
    ],
    ids=["busy_every_second", "busy_at_its_interval", "cpu_once_a_minute", "cpu_no_more_often_than_asked"],
)
def test_a_cpu_rule_checks_no_more_often_than_azure_monitor_has_a_new_value(
    settings: AutoscaleSettings, seconds: float
) -> None:
    assert check_interval_seconds(settings) == seconds


@pytest.mark.parametrize(
    ("percent", "utilisation"), [(None, None), (85.0, 0.85), (0.0, 0.0), (-1.0, 0.0)], ids=str
)
def test_a_cpu_percentage_reads_as_a_utilisation_and_no_data_as_none(
    percent: float | None, utilisation: float | None
) -> None:
    assert cpu_utilisation(percent) == utilisation


def test_a_cpu_decision_says_it_was_the_cpu() -> None:
    decision = desired_instances(
        SETTINGS, current=1, utilisation=0.9, memory=AutoscaleMemory(), now=T0, measure="cpu"
    )

    assert decision.instances == 2
    assert decision.reason == "cpu 90% vs target 50%: out to 2"
