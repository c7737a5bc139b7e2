"""The spec models on their own: Azure's name rule, defaults and cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from config.specs import (
    DeploymentSpec,
    EndpointLimits,
    EndpointSpec,
    EnvironmentSpec,
    TargetUtilizationScaleSettings,
    endpoint_limits,
    is_asset_ref,
    property_problems,
    validate_deployment_name,
    validate_endpoint_name,
)

MINIMAL_DEPLOYMENT: dict[str, Any] = {
    "name": "blue",
    "endpoint_name": "my-endpoint",
    "instance_type": "Standard_DS3_v2",
}


def deployment(**fields: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate({**MINIMAL_DEPLOYMENT, **fields})


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("abc", id="three_letters"),
        pytest.param("my-endpoint", id="with_hyphen"),
        pytest.param("Blue2", id="upper_case_and_digit"),
        pytest.param("e" * 32, id="thirty_two_characters"),
        pytest.param("a--b", id="double_hyphen_as_azure_cli_allows"),
    ],
)
def test_valid_names_pass_both_rules(name: str) -> None:
    assert validate_endpoint_name(name) == name.lower()
    assert validate_deployment_name(name) == name


def test_endpoint_names_are_case_insensitive_as_in_azure() -> None:
    assert validate_endpoint_name("My-Ep") == validate_endpoint_name("my-ep") == "my-ep"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("ab", "must be 3-32 characters long (it has 2)", id="too_short"),
        pytest.param("e" * 33, "must be 3-32 characters long (it has 33)", id="too_long"),
        pytest.param("", "must be 3-32 characters long (it has 0)", id="empty"),
        pytest.param("1st-endpoint", "must start with a letter", id="starts_with_digit"),
        pytest.param("-endpoint", "must start with a letter", id="starts_with_hyphen"),
        pytest.param("endpoint-", "must end with a letter or digit", id="ends_with_hyphen"),
        pytest.param("my_endpoint", "may contain only letters, digits and '-'", id="underscore"),
        pytest.param("my.endpoint", "may contain only letters, digits and '-'", id="dot"),
        pytest.param("endpöint", "may contain only letters, digits and '-'", id="non_ascii"),
    ],
)
def test_invalid_names_say_which_part_of_the_rule_fails(name: str, reason: str) -> None:
    with pytest.raises(ValueError) as endpoint_error:
        validate_endpoint_name(name)
    with pytest.raises(ValueError) as deployment_error:
        validate_deployment_name(name)

    assert str(endpoint_error.value) == f"invalid endpoint name {name!r}: {reason}"
    assert str(deployment_error.value) == f"invalid deployment name {name!r}: {reason}"


def test_minimal_deployment_gets_azure_defaults() -> None:
    spec = deployment()

    assert spec.instance_count == 1
    assert spec.scale_settings.type == "default"
    assert spec.request_settings.request_timeout_ms == 5000
    assert spec.request_settings.max_concurrent_requests_per_instance == 1
    assert spec.request_settings.max_queue_wait_ms == 500
    assert (spec.readiness_probe.initial_delay, spec.readiness_probe.period) == (10, 10)
    assert (spec.readiness_probe.timeout, spec.readiness_probe.failure_threshold) == (2, 30)
    assert spec.liveness_probe.success_threshold == 1
    assert spec.model is None and spec.environment is None and spec.code_configuration is None


def test_target_utilization_gets_azure_defaults() -> None:
    spec = deployment(scale_settings={"type": "target_utilization"})

    assert spec.scale_settings == TargetUtilizationScaleSettings(
        type="target_utilization",
        min_instances=1,
        max_instances=1,
        polling_interval=1,
        target_utilization_percentage=70,
    )


@pytest.mark.parametrize(
    ("scale_settings", "instance_count", "expected"),
    [
        pytest.param(
            {"type": "target_utilization", "min_instances": 3, "max_instances": 5},
            None,
            3,
            id="autoscale_starts_at_min_instances",
        ),
        pytest.param(
            {"type": "target_utilization", "min_instances": 3, "max_instances": 5},
            4,
            4,
            id="explicit_instance_count_is_kept",
        ),
        pytest.param({"type": "default"}, None, 1, id="default_scale_starts_at_one"),
    ],
)
def test_instance_count_default(
    scale_settings: dict[str, Any], instance_count: int | None, expected: int
) -> None:
    fields: dict[str, Any] = {"scale_settings": scale_settings}
    if instance_count is not None:
        fields["instance_count"] = instance_count

    assert deployment(**fields).instance_count == expected


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        pytest.param("TargetUtilization", "target_utilization", id="camel_case"),
        pytest.param("target_utilization", "target_utilization", id="snake_case"),
        pytest.param("Default", "default", id="capitalised_default"),
    ],
)
def test_scale_type_accepts_azure_spellings(spelling: str, expected: str) -> None:
    assert deployment(scale_settings={"type": spelling}).scale_settings.type == expected


def test_tags_and_environment_variables_take_scalars_as_strings() -> None:
    spec = deployment(
        tags={"version": 2, "prod": True},
        environment_variables={"WORKER_COUNT": 4, "RATIO": 0.5, "DEBUG": False},
    )

    assert spec.tags == {"version": "2", "prod": "true"}
    assert spec.environment_variables == {"WORKER_COUNT": "4", "RATIO": "0.5", "DEBUG": "false"}


@pytest.mark.parametrize(
    ("reference", "ok"),
    [
        pytest.param("azureml:my-model:1", True, id="name_and_version"),
        pytest.param("azureml:my-model@latest", True, id="name_and_label"),
        pytest.param("azureml:my_model", True, id="name_only"),
        pytest.param("azureml://registries/azureml/models/phi/versions/3", True, id="registry_id"),
        pytest.param(
            "azureml:/subscriptions/0/resourceGroups/rg/providers/"
            "Microsoft.MachineLearningServices/workspaces/ws/models/m/versions/1",
            True,
            id="arm_id",
        ),
        pytest.param("my-model:1", False, id="missing_prefix"),
        pytest.param("azureml:", False, id="prefix_only"),
        pytest.param("azureml:m:1:2", False, id="two_versions"),
    ],
)
def test_asset_reference_forms(reference: str, ok: bool) -> None:
    assert is_asset_ref(reference) is ok


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        pytest.param(
            {"image": "python:3.11", "build": {"path": "ctx"}},
            "image and build are mutually exclusive",
            id="image_and_build",
        ),
        pytest.param({"conda_file": "conda.yml"}, "conda_file needs image", id="conda_alone"),
        pytest.param({}, "one of image or build is required", id="neither"),
    ],
)
def test_environment_needs_image_or_build(environment: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EnvironmentSpec.model_validate(environment)


def test_inline_conda_and_build_context_defaults() -> None:
    env = EnvironmentSpec.model_validate(
        {"image": "python:3.11", "conda_file": {"dependencies": ["python=3.11"]}, "version": 2}
    )
    built = EnvironmentSpec.model_validate({"build": {"path": "ctx"}})

    assert env.conda_file == {"dependencies": ["python=3.11"]}
    assert env.version == "2"
    assert env.os_type == "linux"
    assert built.build is not None and built.build.dockerfile_path == "Dockerfile"


def test_code_configuration_needs_an_environment() -> None:
    with pytest.raises(ValidationError) as info:
        deployment(code_configuration={"code": "/src", "scoring_script": "score.py"})

    (error,) = info.value.errors()
    assert error["loc"] == ("environment",)
    assert "required when code_configuration is given" in error["msg"]


@pytest.mark.parametrize(
    ("traffic", "ok"),
    [
        pytest.param({"blue": 100}, True, id="all_to_one"),
        pytest.param({"blue": 90, "green": 10}, True, id="split"),
        pytest.param({"blue": 0, "green": 0}, True, id="all_zero"),
        pytest.param({}, True, id="none"),
        pytest.param({"blue": 90}, False, id="sums_to_90"),
        pytest.param({"blue": 60, "green": 60}, False, id="sums_to_120"),
        pytest.param({"blue_1": 100}, False, id="bad_deployment_name"),
    ],
)
def test_traffic_sums_to_100_or_all_zero(traffic: dict[str, int], ok: bool) -> None:
    data = {"name": "my-endpoint", "traffic": traffic}
    if ok:
        assert EndpointSpec.model_validate(data).traffic == traffic
    else:
        with pytest.raises(ValidationError):
            EndpointSpec.model_validate(data)


def test_endpoint_accepts_show_output_fields() -> None:
    spec = EndpointSpec.model_validate(
        {
            "name": "my-endpoint",
            "kind": "Managed",
            "provisioning_state": "Succeeded",
            "scoring_uri": "https://my-endpoint.localhost/score",
            "identity": {"type": "none", "principal_id": "p", "tenant_id": "t"},
        }
    )

    assert spec.kind == "Managed"
    assert spec.identity is not None and spec.identity.type == "none"


def test_python_construction_by_field_name() -> None:
    spec = DeploymentSpec(
        schema_="https://example/schema.json",
        name="blue",
        endpoint_name="my-endpoint",
        instance_type="Standard_DS3_v2",
    )

    assert spec.model_dump(by_alias=True)["$schema"] == "https://example/schema.json"


@pytest.mark.parametrize(
    ("properties", "problems"),
    [
        pytest.param({}, {}, id="none"),
        pytest.param({"owner": "ana", "azureml/x": "y"}, {}, id="other_keys_are_free"),
        pytest.param(
            {"tidegate/max_request_bytes": "1048576", "tidegate/max_requests_per_second": "0.5"},
            {},
            id="both_limits",
        ),
        pytest.param({"tidegate/max_requests_per_second": "0"}, {}, id="rate_0_is_no_limit"),
        pytest.param({"tidegate/retry_dropped_requests": "True"}, {}, id="retry_in_any_case"),
        pytest.param(
            {"tidegate/retry_dropped_requests": "yes"},
            {"tidegate/retry_dropped_requests": "must be true or false (got 'yes')"},
            id="retry_not_a_boolean",
        ),
        pytest.param(
            {"tidegate/max_request_bytes": "0"},
            {"tidegate/max_request_bytes": "must be an integer > 0, in bytes (got '0')"},
            id="payload_limit_0",
        ),
        pytest.param(
            {"tidegate/max_request_bytes": "2.5"},
            {"tidegate/max_request_bytes": "must be an integer > 0, in bytes (got '2.5')"},
            id="payload_limit_not_whole",
        ),
        pytest.param(
            {"tidegate/max_requests_per_second": "-1"},
            {"tidegate/max_requests_per_second": "must be a number ≥ 0; 0 is no limit (got '-1')"},
            id="negative_rate",
        ),
        pytest.param(
            {"tidegate/max_requests_per_second": "inf"},
            {"tidegate/max_requests_per_second": "must be a number ≥ 0; 0 is no limit (got 'inf')"},
            id="infinite_rate",
        ),
        pytest.param(
            {"Tidegate/max_rps": "5"},
            {
                "Tidegate/max_rps": "unknown Tidegate property; known: tidegate/max_request_bytes, "
                "tidegate/max_requests_per_second, tidegate/retry_dropped_requests"
            },
            id="misspelt_key_in_any_case",
        ),
    ],
)
def test_tidegate_properties_are_checked_and_others_left_alone(
    properties: dict[str, str], problems: dict[str, str]
) -> None:
    assert property_problems(properties) == problems


def test_a_bad_property_is_located_at_its_key() -> None:
    with pytest.raises(ValidationError) as info:
        EndpointSpec.model_validate(
            {"name": "my-endpoint", "properties": {"tidegate/max_requests_per_second": "many"}}
        )

    (error,) = info.value.errors()
    assert error["loc"] == ("properties", "tidegate/max_requests_per_second")
    assert error["msg"] == "must be a number ≥ 0; 0 is no limit (got 'many')"


@pytest.mark.parametrize(
    ("properties", "limits"),
    [
        pytest.param({}, EndpointLimits(max_request_bytes=4096, max_requests_per_second=0), id="defaults"),
        pytest.param(
            {"tidegate/max_request_bytes": "1024", "tidegate/max_requests_per_second": "50"},
            EndpointLimits(max_request_bytes=1024, max_requests_per_second=50),
            id="set",
        ),
        pytest.param(
            {"tidegate/retry_dropped_requests": "TRUE"},
            EndpointLimits(max_request_bytes=4096, retry_dropped_requests=True),
            id="retry_dropped",
        ),
    ],
)
def test_endpoint_limits_take_the_default_where_properties_set_none(
    properties: dict[str, str], limits: EndpointLimits
) -> None:
    assert endpoint_limits(properties, default_max_request_bytes=4096) == limits


def test_endpoint_limits_refuse_a_bad_property() -> None:
    with pytest.raises(ValueError, match="properties.tidegate/max_request_bytes: must be an integer"):
        endpoint_limits({"tidegate/max_request_bytes": "-1"}, default_max_request_bytes=4096)
