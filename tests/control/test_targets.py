"""What a deployment's YAML becomes for its workflow: here, which measure its autoscale reads."""

from __future__ import annotations

import pytest

from config.contract.errors import BadRequest
from config.settings import Settings
from config.specs import DeploymentSpec
from control.targets import cpu_source

CPU_SCALED = {
    "name": "blue",
    "endpoint_name": "my-endpoint",
    "instance_type": "Standard_DS3_v2",
    "scale_settings": {"type": "target_utilization", "max_instances": 3, "metric": "cpu"},
}


def test_a_cpu_rule_on_azure_reads_the_deployments_scale_set_percentage_cpu() -> None:
    settings = Settings(compute_provider="azure", azure_subscription_id="sub-1", azure_resource_group="rg-1")

    source = cpu_source(DeploymentSpec.model_validate(CPU_SCALED), settings)

    assert source.resource_id == (
        "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/"
        "virtualMachineScaleSets/tg-my-endpoint-blue"
    )
    assert (source.metric, source.aggregation) == ("Percentage CPU", "Average")


def test_a_cpu_rule_on_local_compute_is_refused_naming_the_field() -> None:
    with pytest.raises(BadRequest, match=r"scale_settings.metric: cpu .* TIDEGATE_COMPUTE_PROVIDER=azure"):
        cpu_source(DeploymentSpec.model_validate(CPU_SCALED), Settings(compute_provider="local"))


def test_a_cpu_rule_without_the_azure_subscription_is_refused_naming_the_setting() -> None:
    settings = Settings(compute_provider="azure", azure_resource_group="rg-1")

    with pytest.raises(BadRequest, match="TIDEGATE_AZURE_SUBSCRIPTION_ID"):
        cpu_source(DeploymentSpec.model_validate(CPU_SCALED), settings)


def test_an_unknown_autoscale_metric_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="scale_settings.*metric"):
        DeploymentSpec.model_validate(
            {**CPU_SCALED, "scale_settings": {"type": "target_utilization", "metric": "gpu"}}
        )
