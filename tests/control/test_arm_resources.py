"""ARM's resource JSON ↔ Tidegate's specs (control/arm/resources.py): pure mapping, milliseconds."""

from __future__ import annotations

from typing import Any

import pytest

from config.contract.state import DeploymentEntry, DeploymentTarget, EndpointRecord
from config.host_api import DeploymentRuntime
from config.specs import DeploymentSpec
from control.arm.resources import (
    ArmDeployment,
    ArmEndpoint,
    ArmValidationError,
    Workspace,
    deployment_request,
    deployment_resource,
    deployment_spec,
    endpoint_resource,
    endpoint_spec,
    iso_duration,
    parse_iso_duration,
    read_model,
)

WS = Workspace("sub-1", "rg-1", "ws-1")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT5S", 5.0),
        ("PT0.5S", 0.5),
        ("PT1M30S", 90.0),
        ("PT2H", 7200.0),
        ("P1DT1S", 86401.0),
        ("PT5M", 300.0),
    ],
    ids=["seconds", "fraction", "minutes-and-seconds", "hours", "days", "minutes"],
)
def test_iso_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_iso_duration(text) == seconds


@pytest.mark.parametrize("text", ["5s", "PT", "P", "PT5", "P1Y", "", "PT-5S", 5], ids=repr)
def test_iso_durations_refuse_what_is_not_one(text: object) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_iso_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "PT5S"), (0.5, "PT0.5S"), (90, "PT1M30S"), (3600, "PT1H"), (0, "PT0S"), (90.25, "PT1M30.25S")],
)
def test_seconds_format_as_the_shortest_iso_duration(seconds: float, text: str) -> None:
    assert iso_duration(seconds) == text
    assert parse_iso_duration(text) == seconds


def _endpoint(body: dict[str, Any], *, replace: bool = True):
    return endpoint_spec("my-ep", read_model(ArmEndpoint, body), replace=replace)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"location": "x", "properties": {"authMode": "Key"}},
            {"auth_mode": "key", "tags": {}, "properties": {}},
        ),
        ({"properties": {"authMode": "key"}}, {"auth_mode": "key"}),
        (
            {"tags": {"team": "a"}, "properties": {"description": "d"}},
            {"tags": {"team": "a"}, "description": "d"},
        ),
        ({"properties": {"traffic": {"blue": 100}}}, {"traffic": {"blue": 100}}),
        ({"properties": {"mirrorTraffic": {"green": 10}}}, {"mirror_traffic": {"green": 10}}),
        (
            {"properties": {"properties": {"tidegate/max_request_bytes": "10"}}},
            {"properties": {"tidegate/max_request_bytes": "10"}},
        ),
    ],
    ids=["auth-key", "auth-case-insensitive", "tags-and-description", "traffic", "mirror", "properties"],
)
def test_an_endpoint_body_becomes_its_spec(body: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = _endpoint(body)
    assert spec.name == "my-ep"
    for field, value in expected.items():
        assert getattr(spec, field) == value


def test_a_put_without_traffic_leaves_the_split_unset() -> None:
    spec = _endpoint({"properties": {}})
    assert "traffic" not in spec.model_fields_set and {"tags", "properties"} <= spec.model_fields_set


@pytest.mark.parametrize(
    ("body", "target", "message"),
    [
        ({"properties": {"traffic": {"blue": 150}}}, "properties.traffic.blue", "less than or equal to 100"),
        ({"properties": {"traffic": {"blue": 50}}}, "properties.traffic", "sum to 100"),
        ({"properties": {"authMode": "AADToken"}}, "properties.authMode", "not supported"),
        ({"properties": {"authMode": "Password"}}, "properties.authMode", "Key"),
        ({"properties": {"traffic": {"blue": "x"}}}, "properties.traffic.blue", "integer"),
        (
            {"properties": {"properties": {"tidegate/nope": "1"}}},
            "properties.properties.tidegate/nope",
            "unknown",
        ),
        ({"properties": {"publicNetworkAccess": "Disabled"}}, "properties.publicNetworkAccess", "disabled"),
        ({"tags": ["a"]}, "tags", "dictionary"),
    ],
    ids=[
        "traffic-over-100",
        "traffic-sum",
        "aad-token",
        "unknown-auth",
        "traffic-not-int",
        "tidegate-property",
        "network-disabled",
        "tags-not-a-map",
    ],
)
def test_a_bad_endpoint_field_is_named_at_its_arm_path(
    body: dict[str, Any], target: str, message: str
) -> None:
    with pytest.raises(ArmValidationError) as caught:
        _endpoint(body)
    problem = caught.value.problems[0]
    assert problem.target == target
    assert message in problem.message


def test_an_endpoint_record_is_shown_in_arm_shape() -> None:
    record = EndpointRecord(
        name="my-ep",
        description="d",
        tags={"t": "1"},
        traffic={"blue": 100},
        provisioning_state="Succeeded",
        created_at="2026-01-01T00:00:00+00:00",
        key_sha256=["secret-hash"],
    )
    view = endpoint_resource(record, WS, scoring_uri="https://s/score", swagger_uri="https://s/swagger.json")
    assert view["id"] == (
        "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.MachineLearningServices"
        "/workspaces/ws-1/onlineEndpoints/my-ep"
    )
    assert view["type"] == "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    assert view["properties"]["authMode"] == "Key"
    assert view["properties"]["traffic"] == {"blue": 100}
    assert view["properties"]["scoringUri"] == "https://s/score"
    assert view["properties"]["provisioningState"] == "Succeeded"
    assert "secret-hash" not in repr(view)


DEPLOYMENT = {
    "location": "local",
    "tags": {"v": "2"},
    "sku": {"name": "Default", "capacity": 2},
    "properties": {
        "endpointComputeType": "Managed",
        "description": "blue",
        "model": (
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices"
            "/workspaces/w/models/diabetes/versions/3"
        ),
        "codeConfiguration": {"codeId": "file:///srv/code", "scoringScript": "score.py"},
        "environmentId": "file:///srv/env/conda.yaml",
        "environmentVariables": {"A": "1"},
        "instanceType": "Standard_DS3_v2",
        "requestSettings": {
            "requestTimeout": "PT5S",
            "maxConcurrentRequestsPerInstance": 2,
            "maxQueueWait": "PT0.5S",
        },
        "livenessProbe": {"initialDelay": "PT1S", "period": "PT2S", "timeout": "PT3S", "failureThreshold": 4},
        "readinessProbe": {"initialDelay": "PT1S", "period": "PT1S", "successThreshold": 2},
        "scaleSettings": {"scaleType": "Default"},
    },
}


def test_a_deployment_body_becomes_its_spec() -> None:
    spec = deployment_spec("my-ep", "blue", read_model(ArmDeployment, DEPLOYMENT))
    assert spec.model == "azureml:diabetes:3"
    assert spec.code_configuration is not None and spec.code_configuration.code == "/srv/code"
    assert not isinstance(spec.environment, str) and spec.environment is not None
    assert spec.environment.conda_file == "/srv/env/conda.yaml"
    assert spec.instance_count == 2 and spec.tags == {"v": "2"} and spec.description == "blue"
    assert spec.request_settings.request_timeout_ms == 5000
    assert spec.request_settings.max_queue_wait_ms == 500
    assert spec.request_settings.max_concurrent_requests_per_instance == 2
    assert (spec.liveness_probe.initial_delay, spec.liveness_probe.period, spec.liveness_probe.timeout) == (
        1,
        2,
        3,
    )
    assert spec.liveness_probe.failure_threshold == 4 and spec.readiness_probe.success_threshold == 2


def _with(path: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**DEPLOYMENT, "properties": dict(DEPLOYMENT["properties"])}
    node = body
    keys = path.split(".")
    for key in keys[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[keys[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "target", "message"),
    [
        (
            _with("properties.requestSettings.requestTimeout", "5s"),
            "properties.requestSettings.requestTimeout",
            "ISO 8601",
        ),
        (
            _with("properties.requestSettings.requestTimeout", "PT10M"),
            "properties.requestSettings.requestTimeout",
            "180000",
        ),
        (_with("sku.capacity", 0), "sku.capacity", "greater than or equal to 1"),
        (_with("properties.model", "relative/model"), "properties.model", "absolute path"),
        (
            _with("properties.codeConfiguration.codeId", "azureml://registries/shared/codes/c/versions/1"),
            "properties.codeConfiguration.codeId",
            "not the id of a codes version in a workspace",
        ),
        (
            _with("properties.livenessProbe.successThreshold", 2),
            "properties.livenessProbe.successThreshold",
            "fixed at 1",
        ),
        (
            _with("properties.endpointComputeType", "Kubernetes"),
            "properties.endpointComputeType",
            "not supported",
        ),
        (_with("properties.instanceType", None), "properties.instanceType", "required"),
    ],
    ids=[
        "duration-not-iso",
        "timeout-over-azure-max",
        "capacity-zero",
        "relative-model",
        "code-in-a-registry",
        "liveness-success",
        "kubernetes",
        "instance-type-missing",
    ],
)
def test_a_bad_deployment_field_is_named_at_its_arm_path(
    body: dict[str, Any], target: str, message: str
) -> None:
    with pytest.raises(ArmValidationError) as caught:
        deployment_spec("my-ep", "blue", read_model(ArmDeployment, body))
    problem = caught.value.problems[0]
    assert problem.target == target
    assert message in problem.message


def test_a_deployment_shows_back_as_it_was_put() -> None:
    spec = deployment_spec("my-ep", "blue", read_model(ArmDeployment, DEPLOYMENT))
    target = DeploymentTarget(
        name="blue",
        endpoint="my-ep",
        runtime=DeploymentRuntime(endpoint="my-ep", deployment="blue", code_dir="/snap", spec_hash="h"),
        instance_count=spec.instance_count,
        instance_type=spec.instance_type,
        request_settings={
            "request_timeout_ms": 5000,
            "max_concurrent_requests_per_instance": 2,
            "max_queue_wait_ms": 500,
        },
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    )
    entry = DeploymentEntry(name="blue", provisioning_state="Creating", target=target)
    view = deployment_resource("my-ep", entry, WS)
    props = view["properties"]
    assert view["id"].endswith("/onlineEndpoints/my-ep/deployments/blue")
    assert view["sku"]["capacity"] == 2 and view["tags"] == {"v": "2"}
    assert props["model"] == f"{WS.id}/models/diabetes/versions/3"  # Azure answers with the ARM id
    assert props["codeConfiguration"] == {"codeId": "file:///srv/code", "scoringScript": "score.py"}
    assert props["environmentId"] == "file:///srv/env/conda.yaml"
    assert props["requestSettings"] == {
        "requestTimeout": "PT5S",
        "maxConcurrentRequestsPerInstance": 2,
        "maxQueueWait": "PT0.5S",
    }
    assert props["livenessProbe"]["period"] == "PT2S" and props["readinessProbe"]["successThreshold"] == 2
    assert props["provisioningState"] == "Creating"
    # What GET answers is a body PUT accepts, to the same spec.
    again = deployment_spec("my-ep", "blue", read_model(ArmDeployment, view))
    assert again.model_dump() == spec.model_dump()


@pytest.mark.parametrize(
    ("field", "given", "spec_path", "expected"),
    [
        ("properties.model", f"{WS.id}/models/m/versions/2", ("model",), "azureml:m:2"),
        ("properties.model", f"azureml:{WS.id}/models/m/versions/2", ("model",), "azureml:m:2"),
        (
            "properties.codeConfiguration.codeId",
            f"{WS.id}/codes/score/versions/1",
            ("code_configuration", "code"),
            "azureml:score:1",
        ),
        (
            "properties.codeConfiguration.codeId",
            "azureml:score:1",
            ("code_configuration", "code"),
            "azureml:score:1",
        ),
        (
            "properties.environmentId",
            f"{WS.id}/environments/env/versions/3",
            ("environment",),
            "azureml:env:3",
        ),
        ("properties.environmentId", "azureml:env@latest", ("environment",), "azureml:env@latest"),
    ],
    ids=[
        "model-arm-id",
        "model-prefixed-arm-id",
        "code-arm-id",
        "code-short",
        "environment-arm-id",
        "env-latest",
    ],
)
def test_a_registered_asset_is_read_as_its_azureml_reference(
    field: str, given: str, spec_path: tuple[str, ...], expected: str
) -> None:
    spec = deployment_spec("my-ep", "blue", read_model(ArmDeployment, _with(field, given)))
    value: Any = spec
    for part in spec_path:
        value = getattr(value, part)
    assert value == expected


@pytest.mark.parametrize(
    ("field", "given"),
    [
        ("properties.model", f"{WS.id}/codes/m/versions/2"),
        ("properties.codeConfiguration.codeId", f"{WS.id}/models/score/versions/1"),
        ("properties.environmentId", "/subscriptions/s/resourceGroups/r/providers/Other/envs/e"),
    ],
    ids=["code-id-as-model", "model-id-as-code", "foreign-id-as-environment"],
)
def test_an_asset_id_of_another_kind_is_refused_at_its_field(field: str, given: str) -> None:
    with pytest.raises(ArmValidationError) as caught:
        deployment_spec("my-ep", "blue", read_model(ArmDeployment, _with(field, given)))
    assert caught.value.problems[0].target == field


def test_a_deployment_reports_when_it_was_created_and_last_changed() -> None:
    spec = deployment_spec("my-ep", "blue", read_model(ArmDeployment, DEPLOYMENT))
    target = DeploymentTarget(
        name="blue",
        endpoint="my-ep",
        runtime=DeploymentRuntime(endpoint="my-ep", deployment="blue", code_dir="/snap", spec_hash="h"),
        instance_count=1,
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    )
    entry = DeploymentEntry(
        name="blue",
        provisioning_state="Succeeded",
        target=target,
        created_at="2026-11-29T10:00:00+00:00",
        modified_at="2026-11-29T11:00:00+00:00",
    )
    view = deployment_resource("my-ep", entry, WS)
    assert view["systemData"] == {
        "createdAt": "2026-11-29T10:00:00+00:00",
        "lastModifiedAt": "2026-11-29T11:00:00+00:00",
    }
    older = entry.model_copy(update={"created_at": None, "modified_at": None})  # recorded before
    assert "systemData" not in deployment_resource("my-ep", older, WS)


def test_an_autoscale_metric_goes_through_the_rest_api_and_back() -> None:
    spec = DeploymentSpec.model_validate(
        {
            "name": "blue",
            "endpoint_name": "my-ep",
            "instance_type": "Standard_DS3_v2",
            "scale_settings": {"type": "target_utilization", "max_instances": 3, "metric": "cpu"},
        }
    )

    body = deployment_request(spec)
    again = deployment_spec("my-ep", "blue", read_model(ArmDeployment, body))

    assert body["properties"]["scaleSettings"]["metric"] == "cpu"
    assert again.scale_settings.model_dump() == spec.scale_settings.model_dump()
