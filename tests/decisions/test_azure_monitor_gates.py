"""A gate on an Azure Monitor metric: its absolute threshold, or no data — never a pass without one."""

from __future__ import annotations

import pytest

from config.contract.activities import ReadAzureMetricResult
from config.rollout import Gate
from decisions.gates import judge_azure_monitor_gate

RESOURCE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/green"


def gate(op: str, threshold: float, aggregation: str = "Average") -> Gate:
    return Gate.model_validate(
        {
            "source": "azure_monitor",
            "azure_monitor": {
                "resource_id": RESOURCE,
                "metric": "Percentage CPU",
                "aggregation": aggregation,
            },
            "op": op,
            "threshold": threshold,
            "window": "5m",
        }
    )


def reading(value: float | None, counted: int = 5) -> ReadAzureMetricResult:
    reason = (
        "Average 1 over 5 of 5 settled minutes" if value is not None else "no data: 1 of 5 settled minutes"
    )
    return ReadAzureMetricResult(value=value, counted=counted, expected=5, reason=reason)


@pytest.mark.parametrize(
    ("op", "threshold", "value", "outcome", "message"),
    [
        ("<=", 80, 42.0, "pass", "Percentage CPU (Average) 42 <= 80 (5 of 5 settled minutes)"),
        ("<=", 80, 80.0, "pass", "Percentage CPU (Average) 80 <= 80 (5 of 5 settled minutes)"),
        ("<=", 80, 93.5, "fail", "Percentage CPU (Average) 93.5 > 80 (5 of 5 settled minutes)"),
        ("<", 80, 80.0, "fail", "Percentage CPU (Average) 80 >= 80 (5 of 5 settled minutes)"),
        (">=", 0.99, 0.5, "fail", "Percentage CPU (Average) 0.5 < 0.99 (5 of 5 settled minutes)"),
        (">", 10, 11.0, "pass", "Percentage CPU (Average) 11 > 10 (5 of 5 settled minutes)"),
        ("<=", 80, None, "no_data", "Percentage CPU (Average): no data: 1 of 5 settled minutes"),
        (">=", 0, None, "no_data", "Percentage CPU (Average): no data: 1 of 5 settled minutes"),
    ],
    ids=[
        "under_the_bound_passes",
        "on_an_inclusive_bound_passes",
        "over_the_bound_fails",
        "on_an_exclusive_bound_fails",
        "a_lower_bound_fails_below",
        "a_lower_bound_passes_above",
        "no_value_is_no_data",
        "no_value_is_no_data_even_where_any_number_would_pass",
    ],
)
def test_judge_azure_monitor_gate(
    op: str, threshold: float, value: float | None, outcome: str, message: str
) -> None:
    verdict = judge_azure_monitor_gate(gate(op, threshold), reading(value))
    assert (verdict.outcome, verdict.message) == (outcome, message)
    assert verdict.value == value
    assert verdict.gate == f"Percentage CPU (Average) {op} {threshold:g}"
