"""From a deployment spec to its target: code and environment named as registered assets
(`azureml:name:version`) resolve to the registry's copies, with the same checks as inline ones;
and which measure its autoscale reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from activities.artifacts import RegisteredAsset
from activities.local.artifacts import LocalArtifactStore
from config.contract.errors import BadRequest, NotFound
from config.settings import Settings
from config.specs import DeploymentSpec
from control.targets import build_target, cpu_source

CONDA = "name: e\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - joblib\n"


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    registry = LocalArtifactStore(Settings(home=tmp_path / "home"))
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text("def init(): ...\ndef run(raw): return raw\n")
    registry.register_asset("codes", RegisteredAsset(name="score", version="1"), code)
    registry.register_asset("environments", RegisteredAsset(name="env", version="1", conda_file=CONDA), None)
    loose = CONDA.replace("- joblib", "- --extra-index-url https://example.com/simple\n      - joblib")
    registry.register_asset(
        "environments", RegisteredAsset(name="loose", version="1", conda_file=loose), None
    )
    return registry


def spec(**fields: Any) -> DeploymentSpec:
    data: dict[str, Any] = {
        "name": "blue",
        "endpoint_name": "my-ep",
        "code_configuration": {"code": "azureml:score:1", "scoring_script": "score.py"},
        "environment": "azureml:env:1",
        "instance_type": "Standard_DS3_v2",
    }
    return DeploymentSpec.model_validate(data | fields)


def test_registered_code_and_environment_become_the_instances_runtime(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    target = build_target(spec(), Settings(home=tmp_path / "home"), store)
    assert (Path(target.runtime.code_dir) / "score.py").read_text().startswith("def init()")
    assert target.runtime.environment.conda_file == CONDA
    again = build_target(spec(), Settings(home=tmp_path / "home"), store)
    assert again.runtime.spec_hash == target.runtime.spec_hash  # the same assets, the same hash


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"environment": "azureml:loose:1"}, BadRequest, "azureml:loose:1 condaFile"),
        ({"environment": "azureml:nope:1"}, NotFound, "environment nope:1 is not registered"),
        (
            {"code_configuration": {"code": "azureml:nope:2", "scoring_script": "score.py"}},
            NotFound,
            "code nope:2 is not registered",
        ),
    ],
    ids=["environment_installing_from_elsewhere", "unknown_environment", "unknown_code"],
)
def test_a_registered_asset_that_cannot_serve_is_refused_naming_it(
    store: LocalArtifactStore, tmp_path: Path, fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build_target(spec(**fields), Settings(home=tmp_path / "home"), store)


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
