"""A rollout gate whose source is azure_monitor: validated by pydantic, errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from config.rollout import Gate, RolloutSpec

RESOURCE = (
    "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
    "workspaces/ws/onlineEndpoints/ep"
)
GOOD: dict[str, Any] = {
    "source": "azure_monitor",
    "azure_monitor": {
        "resource_id": RESOURCE,
        "metric": "RequestLatency_P99",
        "aggregation": "Maximum",
        "filter": "deployment eq 'green'",
    },
    "op": "<=",
    "threshold": 500,
    "window": "10m",
}


def test_an_azure_monitor_gate_reads_as_written() -> None:
    gate = RolloutSpec.model_validate({"gates": [GOOD]}).gates[0]
    assert gate.source == "azure_monitor" and gate.window == 600.0
    assert gate.azure_monitor is not None
    assert (
        gate.azure_monitor.metric_namespace == "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    )
    assert gate.label == "RequestLatency_P99 (Maximum) <= 500"
    assert not gate.relative


def test_a_gateway_gate_is_unchanged() -> None:
    gate = Gate.model_validate({"when": "error_rate <= 0.05"})
    assert (gate.source, gate.azure_monitor, gate.label) == ("gateway", None, "error_rate <= 0.05")


@pytest.mark.parametrize(
    ("change", "where", "words"),
    [
        ({"azure_monitor": None}, (), "azure_monitor: required with source: azure_monitor"),
        ({"threshold": None}, (), "threshold: required with source: azure_monitor"),
        ({"window": "30s"}, (), "window: 30s is shorter than Azure Monitor's one-minute buckets"),
        ({"metric": "error_rate"}, (), "metric: not for source azure_monitor"),
        ({"baseline_factor": 1.2, "threshold": None}, (), "baseline_factor: not for source azure_monitor"),
        ({"when": "error_rate <= 0.05"}, (), "when: not for source azure_monitor"),
        ({"source": "gateway", "metric": "error_rate"}, (), "azure_monitor: only with source: azure_monitor"),
        ({"source": "datadog"}, ("source",), "Input should be 'gateway' or 'azure_monitor'"),
        (
            {"azure_monitor": {**GOOD["azure_monitor"], "resource_id": "/subscriptions/x/vm"}},
            ("azure_monitor", "resource_id"),
            "is not a resource id",
        ),
        (
            {"azure_monitor": {**GOOD["azure_monitor"], "aggregation": "p99"}},
            ("azure_monitor", "aggregation"),
            "Input should be 'Average', 'Minimum', 'Maximum', 'Total' or 'Count'",
        ),
        (
            {"azure_monitor": {**GOOD["azure_monitor"], "dimension": "x"}},
            ("azure_monitor", "dimension"),
            "Extra inputs are not permitted",
        ),
    ],
    ids=[
        "source_without_its_block",
        "no_threshold",
        "window_under_a_minute",
        "a_gateway_metric_too",
        "relative_to_the_baseline",
        "a_when_expression_too",
        "the_block_without_the_source",
        "an_unknown_source",
        "not_a_resource_id",
        "an_unknown_aggregation",
        "an_unknown_field",
    ],
)
def test_a_bad_azure_monitor_gate_names_the_field(change: dict[str, Any], where: tuple, words: str) -> None:
    given = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ValidationError) as refused:
        RolloutSpec.model_validate({"gates": [given]})
    error = refused.value.errors()[0]
    assert error["loc"] == ("gates", 0, *where)
    assert words in error["msg"]
