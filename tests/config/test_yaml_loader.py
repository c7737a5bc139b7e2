"""Loading Azure ML CLI v2 YAML: Azure's samples load with Azure's defaults, and every bad
field is reported with its file, line and dotted path, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.specs import (
    DefaultScaleSettings,
    DeploymentSpec,
    EndpointSpec,
    EnvironmentSpec,
    ModelSpec,
)
from config.yaml_loader import (
    SpecError,
    SpecIssue,
    load_deployment_dict,
    load_deployment_file,
    load_endpoint_dict,
    load_endpoint_file,
    read_yaml,
)
from tests.config.conftest import BLUE_YML, ENDPOINT_YML, AzureSample


@pytest.fixture
def in_sample(azure_sample: AzureSample, monkeypatch: pytest.MonkeyPatch) -> AzureSample:
    """Run from the sample folder, as `az ml ... -f blue-deployment.yml` would be."""
    monkeypatch.chdir(azure_sample.sample)
    return azure_sample


def errors_of(call) -> list[str]:
    with pytest.raises(SpecError) as info:
        call()
    return str(info.value).splitlines()


# ---------------------------------------------------------------------------------------
# Azure's samples
# ---------------------------------------------------------------------------------------


def test_sample_endpoint_loads_with_azure_defaults(azure_sample: AzureSample) -> None:
    spec = load_endpoint_file(azure_sample.endpoint)

    assert spec == EndpointSpec(
        schema_="https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
        name="my-endpoint",
    )
    assert spec.auth_mode == "key"
    assert spec.public_network_access == "enabled"
    assert spec.traffic == {} and spec.mirror_traffic == {}


@pytest.mark.parametrize(
    ("sample", "name", "model_dir"),
    [
        pytest.param("blue", "blue", "model-1", id="blue_deployment"),
        pytest.param("green", "green", "model-2", id="green_deployment"),
    ],
)
def test_sample_deployment_loads_with_azure_defaults_and_absolute_paths(
    azure_sample: AzureSample, sample: str, name: str, model_dir: str
) -> None:
    spec = load_deployment_file(getattr(azure_sample, sample))
    root = azure_sample.online / model_dir

    assert spec.name == name and spec.endpoint_name == "my-endpoint"
    assert spec.model == ModelSpec(path=str(root / "model"))
    assert spec.code_configuration is not None
    assert spec.code_configuration.code == str(root / "onlinescoring")
    assert spec.code_configuration.scoring_script == "score.py"
    assert spec.environment == EnvironmentSpec(
        conda_file=str(root / "environment" / "conda.yaml"),
        image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest",
    )
    assert spec.instance_type == "Standard_DS3_v2"
    assert spec.instance_count == 1
    # Azure's defaults for everything the sample leaves out
    assert spec.app_insights_enabled is False
    assert spec.scale_settings == DefaultScaleSettings()
    assert spec.request_settings.model_dump() == {
        "request_timeout_ms": 5000,
        "max_concurrent_requests_per_instance": 1,
        "max_queue_wait_ms": 500,
    }
    probe = {
        "initial_delay": 10,
        "period": 10,
        "timeout": 2,
        "success_threshold": 1,
        "failure_threshold": 30,
    }
    assert spec.liveness_probe.model_dump() == probe
    assert spec.readiness_probe.model_dump() == probe
    assert spec.egress_public_network_access == "enabled"
    assert spec.type == "managed"
    assert spec.environment_variables == {} and spec.tags == {}


def test_relative_paths_resolve_against_the_yaml_folder_not_the_cwd(
    azure_sample: AzureSample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_deployment_file(azure_sample.blue.relative_to(tmp_path))

    assert isinstance(spec.model, ModelSpec)
    assert spec.model.path == str(azure_sample.online / "model-1" / "model")


def test_user_assigned_identity_is_refused_naming_the_field(azure_sample: AzureSample) -> None:
    path = azure_sample.write(
        "1-uai-create-endpoint.yml",
        """\
        $schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
        name: my-uai-endpoint
        auth_mode: key
        identity:
          type: user_assigned
          user_assigned_identities:
            - resource_id: /subscriptions/0/resourceGroups/rg/providers/x/uai
        """,
    )
    errors = errors_of(lambda: load_endpoint_file(path))

    assert errors == [
        f"{path}:4 identity: a user_assigned managed identity cannot be given to a local endpoint; "
        "remove identity"
    ]


def test_registered_assets_are_kept_as_references_and_not_checked_on_disk(
    azure_sample: AzureSample,
) -> None:
    path = azure_sample.write(
        "blue-registered.yml",
        """\
        name: blue
        endpoint_name: my-endpoint
        model: azureml:my-model:1
        code_configuration:
          code: ../../model-1/onlinescoring/
          scoring_script: score.py
        environment: azureml:my-env@latest
        instance_type: Standard_DS3_v2
        instance_count: 2
        """,
    )
    spec = load_deployment_file(path)

    assert spec.model == "azureml:my-model:1"
    assert spec.environment == "azureml:my-env@latest"
    assert spec.instance_count == 2


def test_remote_model_paths_are_left_alone(azure_sample: AzureSample) -> None:
    path = azure_sample.write(
        "remote-model.yml",
        BLUE_YML.replace(
            "path: ../../model-1/model/",
            "path: azureml://datastores/workspaceblobstore/paths/models/m1",
        ),
    )
    spec = load_deployment_file(path)

    assert isinstance(spec.model, ModelSpec)
    assert spec.model.path == "azureml://datastores/workspaceblobstore/paths/models/m1"


# ---------------------------------------------------------------------------------------
# One bad field: reported with file, line and path
# ---------------------------------------------------------------------------------------

DEPLOYMENT_CASES = [
    pytest.param(
        [("instance_count: 1", "instance_count: 0")],
        "blue-deployment.yml:13 instance_count: must be ≥ 1 (got 0)",
        id="instance_count_zero_is_named_with_its_line",
    ),
    pytest.param(
        [("instance_count: 1", 'instance_count: "2"')],
        "blue-deployment.yml:13 instance_count: must be an integer (got '2')",
        id="instance_count_quoted_is_not_an_integer",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\ninstance_cout: 2\n")],
        "blue-deployment.yml:14 instance_cout: unknown field",
        id="unknown_top_level_field",
    ),
    pytest.param(
        [("  scoring_script: score.py\n", "  scoring_script: score.py\n  entry: main\n")],
        "blue-deployment.yml:9 code_configuration.entry: unknown field",
        id="unknown_nested_field",
    ),
    pytest.param(
        [("name: blue", "name: blue_1")],
        "blue-deployment.yml:2 name: invalid deployment name 'blue_1': "
        "may contain only letters, digits and '-'",
        id="deployment_name_with_underscore",
    ),
    pytest.param(
        [("name: blue", "name: blue-")],
        "blue-deployment.yml:2 name: invalid deployment name 'blue-': must end with a letter or digit",
        id="deployment_name_with_trailing_hyphen",
    ),
    pytest.param(
        [("endpoint_name: my-endpoint", "endpoint_name: ep")],
        "blue-deployment.yml:3 endpoint_name: invalid endpoint name 'ep': "
        "must be 3-32 characters long (it has 2)",
        id="endpoint_name_too_short",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\nrequest_settings:\n  request_timeout_ms: 5s\n")],
        "blue-deployment.yml:15 request_settings.request_timeout_ms: must be an integer (got '5s')",
        id="request_timeout_ms_not_an_integer",
    ),
    pytest.param(
        [
            (
                "instance_count: 1\n",
                "instance_count: 1\nrequest_settings:\n  request_timeout_ms: 180001\n",
            )
        ],
        "blue-deployment.yml:15 request_settings.request_timeout_ms: must be ≤ 180000 (got 180001)",
        id="request_timeout_ms_above_azure_maximum",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\nreadiness_probe:\n  timeout: 0\n")],
        "blue-deployment.yml:15 readiness_probe.timeout: must be ≥ 1 (got 0)",
        id="probe_timeout_zero",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\nliveness_probe:\n  success_threshold: 2\n")],
        "blue-deployment.yml:15 liveness_probe.success_threshold: "
        "is fixed at 1 for a liveness probe, as in Azure (got 2)",
        id="liveness_success_threshold_is_fixed",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\nscale_settings:\n  type: manual\n")],
        "blue-deployment.yml:14 scale_settings: must be a mapping with type default or target_utilization",
        id="unknown_scale_type",
    ),
    pytest.param(
        [
            (
                "instance_count: 1\n",
                "instance_count: 1\nscale_settings:\n  type: target_utilization\n  min_instances: 0\n",
            )
        ],
        "blue-deployment.yml:16 scale_settings.min_instances: must be ≥ 1 (got 0)",
        id="autoscale_min_instances_zero_path_has_no_union_tag",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\nenvironment_variables:\n  OPTS: [a, b]\n")],
        "blue-deployment.yml:15 environment_variables.OPTS: must be a string (got a list)",
        id="environment_variable_not_a_scalar",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\napp_insights_enabled: yes\n")],
        "blue-deployment.yml:14 app_insights_enabled: must be true or false (got 'yes')",
        id="yaml_1_2_yes_is_not_a_boolean",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\ntype: kubernetes\n")],
        "blue-deployment.yml:14 type: kubernetes deployments are not supported by Tidegate; use managed",
        id="kubernetes_deployment_type",
    ),
    pytest.param(
        [("model:\n  path: ../../model-1/model/\n", "model: my-model:1\n")],
        "blue-deployment.yml:4 model: must be azureml:<name>:<version> or azureml:<name>@latest, "
        "or an inline model mapping (got 'my-model:1')",
        id="model_reference_without_azureml_prefix",
    ),
    pytest.param(
        [("instance_type: Standard_DS3_v2\n", "")],
        "blue-deployment.yml:1 instance_type: required",
        id="missing_top_level_field_gets_the_top_line",
    ),
    pytest.param(
        [("  scoring_script: score.py\n", "")],
        "blue-deployment.yml:6 code_configuration.scoring_script: required",
        id="missing_nested_field_gets_its_parent_line",
    ),
    pytest.param(
        [("  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest\n", "")],
        "blue-deployment.yml:9 environment: conda_file needs image "
        "(Azure builds the conda env on that image)",
        id="conda_file_without_image",
    ),
    pytest.param(
        [("  scoring_script: score.py", "  scoring_script: ../../../secrets/run.py")],
        "blue-deployment.yml:8 code_configuration.scoring_script: '../../../secrets/run.py' must be a "
        "relative path inside the code folder",
        id="scoring_script_outside_the_code_folder",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\negress_public_network_access: disabled\n")],
        "blue-deployment.yml:14 egress_public_network_access: disabled is not supported: local instances "
        "are not network-isolated; remove it or set enabled",
        id="egress_disabled_is_refused_not_ignored",
    ),
    pytest.param(
        [("instance_count: 1\n", "instance_count: 1\ndata_collector:\n  collections: {}\n")],
        "blue-deployment.yml:14 data_collector: model data collection is not supported by Tidegate yet; "
        "remove data_collector",
        id="data_collector_is_refused_not_ignored",
    ),
    pytest.param(
        [("model:\n  path: ../../model-1/model/", "model: azureml:x:..")],
        "blue-deployment.yml:4 model: must be azureml:<name>:<version> or azureml:<name>@latest, "
        "or an inline model mapping (got 'azureml:x:..')",
        id="model_reference_cannot_leave_the_registry",
    ),
    pytest.param(
        [
            (
                "instance_count: 1\n",
                "instance_count: 1\nenvironment_variables:\n  GUNICORN_CMD_ARGS: --bind 0.0.0.0:9000\n",
            )
        ],
        "blue-deployment.yml:14 environment_variables: GUNICORN_CMD_ARGS: set by Tidegate for the "
        "inference server (where it listens, what it runs); remove it",
        id="a_deployment_cannot_steer_where_the_inference_server_listens",
    ),
]


def test_tidegate_variables_in_a_deployment_are_stripped(in_sample: AzureSample) -> None:
    in_sample.write(
        "blue-deployment.yml",
        BLUE_YML + "environment_variables:\n  TIDEGATE_INSTANCE_BIND: 0.0.0.0\n  tidegate_home: /\n  A: b\n",
    )

    spec = load_deployment_file(Path("blue-deployment.yml"))

    assert spec.environment_variables == {"A": "b"}


@pytest.mark.parametrize(("edits", "expected"), DEPLOYMENT_CASES)
def test_bad_deployment_field_is_named_with_its_line(
    in_sample: AzureSample, edits: list[tuple[str, str]], expected: str
) -> None:
    text = BLUE_YML
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    in_sample.write("blue-deployment.yml", text)

    assert errors_of(lambda: load_deployment_file(Path("blue-deployment.yml"))) == [expected]


MISSING_PATH_CASES = [
    pytest.param(
        "code: ../../model-1/onlinescoring/",
        "code: ../../model-1/nowhere/",
        "blue-deployment.yml:7 code_configuration.code: {online}/model-1/nowhere does not exist",
        id="missing_code_folder",
    ),
    pytest.param(
        "path: ../../model-1/model/",
        "path: ../../model-9/model/",
        "blue-deployment.yml:5 model.path: {online}/model-9/model does not exist",
        id="missing_model_path",
    ),
    pytest.param(
        "conda_file: ../../model-1/environment/conda.yaml",
        "conda_file: ../../model-1/environment/conda.yml",
        "blue-deployment.yml:10 environment.conda_file: "
        "{online}/model-1/environment/conda.yml does not exist",
        id="missing_conda_file",
    ),
    pytest.param(
        "scoring_script: score.py",
        "scoring_script: scoring.py",
        "blue-deployment.yml:8 code_configuration.scoring_script: "
        "scoring.py not found in {online}/model-1/onlinescoring",
        id="scoring_script_not_in_code_folder",
    ),
    pytest.param(
        "code: ../../model-1/onlinescoring/",
        "code: ../../model-1/onlinescoring/score.py",
        "blue-deployment.yml:7 code_configuration.code: "
        "{online}/model-1/onlinescoring/score.py is not a folder",
        id="code_is_a_file",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), MISSING_PATH_CASES)
def test_local_path_that_does_not_exist_is_named_with_field_and_line(
    in_sample: AzureSample, old: str, new: str, expected: str
) -> None:
    in_sample.write("blue-deployment.yml", BLUE_YML.replace(old, new))

    errors = errors_of(lambda: load_deployment_file(Path("blue-deployment.yml")))

    assert errors == [expected.format(online=in_sample.online)]


ENDPOINT_CASES = [
    pytest.param(
        [("auth_mode: key", "auth_mode: token")],
        "endpoint.yml:3 auth_mode: must be one of key, aml_token (got 'token')",
        id="unknown_auth_mode",
    ),
    pytest.param(
        [("auth_mode: key", "auth_mode: aad_token")],
        "endpoint.yml:3 auth_mode: aad_token (Microsoft Entra ID) is not supported by Tidegate; "
        "use key or aml_token",
        id="aad_token_is_not_supported",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\npublic_network_access: disabled\n")],
        "endpoint.yml:4 public_network_access: disabled is not supported: the gateway's bind decides "
        "who reaches it (TIDEGATE_GATEWAY_*_BIND); remove it or set enabled",
        id="public_network_access_disabled_is_refused_not_ignored",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nidentity:\n  type: system_assigned\n")],
        "endpoint.yml:4 identity: a system_assigned managed identity cannot be given to a local endpoint; "
        "remove identity",
        id="system_assigned_identity_is_refused_not_ignored",
    ),
    pytest.param(
        [("name: my-endpoint", "name: 1-endpoint")],
        "endpoint.yml:2 name: invalid endpoint name '1-endpoint': must start with a letter",
        id="endpoint_name_starting_with_digit",
    ),
    pytest.param(
        [("name: my-endpoint", "name: " + "e" * 33)],
        f"endpoint.yml:2 name: invalid endpoint name '{'e' * 33}': must be 3-32 characters long (it has 33)",
        id="endpoint_name_too_long",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\ntraffic:\n  blue: 101\n")],
        "endpoint.yml:5 traffic.blue: must be ≤ 100 (got 101)",
        id="traffic_above_100",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\ntraffic:\n  blue: 60\n  green: 30\n")],
        "endpoint.yml:4 traffic: percentages must sum to 100 or all be 0 (they sum to 90)",
        id="traffic_not_summing_to_100",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nmirror_traffic:\n  green: 160\n")],
        "endpoint.yml:5 mirror_traffic.green: must be ≤ 100 (got 160)",
        id="mirror_traffic_above_100",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nmirror_traffic:\n  green: 10\n  red: 10\n")],
        "endpoint.yml:4 mirror_traffic: at most one deployment can receive mirrored traffic (2)",
        id="mirror_traffic_to_two_deployments",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\npublic_network_access: off\n")],
        "endpoint.yml:4 public_network_access: must be one of enabled, disabled (got 'off')",
        id="public_network_access_off",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\ncompute: azureml:k8s-compute\n")],
        "endpoint.yml:4 compute: compute is for Azure Arc Kubernetes endpoints; "
        "Tidegate endpoints are managed (remove it)",
        id="kubernetes_compute",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nidentity:\n  type: user_assigned\n")],
        "endpoint.yml:4 identity: type user_assigned needs user_assigned_identities",
        id="user_assigned_identity_without_ids",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\ntraffc:\n  blue: 100\n")],
        "endpoint.yml:4 traffc: unknown field",
        id="misspelt_traffic",
    ),
    pytest.param(
        [
            (
                "auth_mode: key\n",
                "auth_mode: key\nproperties:\n  team: ml\n  tidegate/max_requests_per_second: -5\n",
            )
        ],
        "endpoint.yml:6 properties.tidegate/max_requests_per_second: must be a number ≥ 0; 0 is no limit "
        "(got '-5')",
        id="negative_request_rate",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nproperties:\n  tidegate/max_request_bytes: 1MB\n")],
        "endpoint.yml:5 properties.tidegate/max_request_bytes: must be an integer > 0, in bytes (got '1MB')",
        id="payload_limit_not_in_bytes",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nproperties:\n  tidegate/retry_dropped_requests: maybe\n")],
        "endpoint.yml:5 properties.tidegate/retry_dropped_requests: must be true or false (got 'maybe')",
        id="retry_not_a_boolean",
    ),
    pytest.param(
        [("auth_mode: key\n", "auth_mode: key\nproperties:\n  tidegate/max_request_rate: 5\n")],
        "endpoint.yml:5 properties.tidegate/max_request_rate: unknown Tidegate property; known: "
        "tidegate/max_request_bytes, tidegate/max_requests_per_second, tidegate/retry_dropped_requests",
        id="misspelt_tidegate_property",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), ENDPOINT_CASES)
def test_bad_endpoint_field_is_named_with_its_line(
    in_sample: AzureSample, edits: list[tuple[str, str]], expected: str
) -> None:
    text = ENDPOINT_YML
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    in_sample.write("endpoint.yml", text)

    assert errors_of(lambda: load_endpoint_file(Path("endpoint.yml"))) == [expected]


def test_every_error_is_reported_together_in_line_order(in_sample: AzureSample) -> None:
    in_sample.write(
        "blue-deployment.yml",
        BLUE_YML.replace("name: blue", "name: b")
        .replace("path: ../../model-1/model/", "path: ../../model-9/model/")
        .replace("instance_count: 1", "instance_count: 0")
        + "request_settings:\n  request_timeout_ms: soon\n  max_concurrent_requests: 4\n",
    )

    with pytest.raises(SpecError) as info:
        load_deployment_file(Path("blue-deployment.yml"))

    assert str(info.value).splitlines() == [
        "blue-deployment.yml:2 name: invalid deployment name 'b': must be 3-32 characters long (it has 1)",
        f"blue-deployment.yml:5 model.path: {in_sample.online}/model-9/model does not exist",
        "blue-deployment.yml:13 instance_count: must be ≥ 1 (got 0)",
        "blue-deployment.yml:15 request_settings.request_timeout_ms: must be an integer (got 'soon')",
        "blue-deployment.yml:16 request_settings.max_concurrent_requests: unknown field",
    ]
    assert isinstance(info.value, ValueError)
    assert info.value.issues[0] == SpecIssue(
        file="blue-deployment.yml",
        line=2,
        path="name",
        message="invalid deployment name 'b': must be 3-32 characters long (it has 1)",
    )


# ---------------------------------------------------------------------------------------
# Overrides: a name given on the command line wins, as in az ml
# ---------------------------------------------------------------------------------------


def test_every_bad_tidegate_property_is_named_on_its_own_line(in_sample: AzureSample) -> None:
    in_sample.write(
        "endpoint.yml",
        ENDPOINT_YML
        + "properties:\n"
        + "  tidegate/max_request_bytes: 0\n"
        + "  owner: ana\n"
        + "  tidegate/max_requests_per_second: fast\n",
    )

    assert errors_of(lambda: load_endpoint_file(Path("endpoint.yml"))) == [
        "endpoint.yml:5 properties.tidegate/max_request_bytes: must be an integer > 0, in bytes (got '0')",
        "endpoint.yml:7 properties.tidegate/max_requests_per_second: must be a number ≥ 0; 0 is no limit "
        "(got 'fast')",
    ]


def test_tidegate_properties_load_as_strings_beside_the_users_own(in_sample: AzureSample) -> None:
    in_sample.write(
        "endpoint.yml",
        ENDPOINT_YML
        + "properties:\n"
        + "  tidegate/max_request_bytes: 1048576\n"
        + "  tidegate/max_requests_per_second: 2.5\n"
        + "  tidegate/retry_dropped_requests: true\n"
        + "  owner/team: ml\n",
    )

    spec = load_endpoint_file(Path("endpoint.yml"))

    assert spec.properties == {
        "tidegate/max_request_bytes": "1048576",
        "tidegate/max_requests_per_second": "2.5",
        "tidegate/retry_dropped_requests": "true",
        "owner/team": "ml",
    }


def test_endpoint_name_override_wins_over_the_yaml(azure_sample: AzureSample) -> None:
    spec = load_endpoint_file(azure_sample.endpoint, overrides={"name": "endpt-123"})

    assert spec.name == "endpt-123"


def test_deployment_overrides_win_over_the_yaml(azure_sample: AzureSample) -> None:
    spec = load_deployment_file(azure_sample.blue, overrides={"name": "blue-2", "endpoint_name": "my-ep"})

    assert (spec.name, spec.endpoint_name) == ("blue-2", "my-ep")


def test_endpoint_name_from_the_command_line_fills_a_yaml_without_one(
    azure_sample: AzureSample,
) -> None:
    path = azure_sample.write("2-sai-deployment.yml", BLUE_YML.replace("endpoint_name: my-endpoint\n", ""))

    assert load_deployment_file(path, overrides={"endpoint_name": "my-ep"}).endpoint_name == ("my-ep")
    assert errors_of(lambda: load_deployment_file(path)) == [f"{path}:1 endpoint_name: required"]


def test_none_override_means_not_given(azure_sample: AzureSample) -> None:
    spec = load_deployment_file(azure_sample.blue, overrides={"name": None})

    assert spec.name == "blue"


def test_dotted_overrides_set_nested_fields(azure_sample: AzureSample) -> None:
    spec = load_deployment_file(
        azure_sample.blue,
        overrides={"request_settings.request_timeout_ms": 3000, "tags.team": "ml"},
    )

    assert spec.request_settings.request_timeout_ms == 3000
    assert spec.request_settings.max_queue_wait_ms == 500
    assert spec.tags == {"team": "ml"}


def test_bad_override_is_reported_as_an_override(in_sample: AzureSample) -> None:
    errors = errors_of(
        lambda: load_deployment_file(
            Path("blue-deployment.yml"), overrides={"name": "x", "instance_count": 0}
        )
    )

    assert errors == [
        "blue-deployment.yml: name: invalid deployment name 'x': "
        "must be 3-32 characters long (it has 1) (from overrides)",
        "blue-deployment.yml: instance_count: must be ≥ 1 (got 0) (from overrides)",
    ]


# ---------------------------------------------------------------------------------------
# Files that cannot be read
# ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"

    assert errors_of(lambda: load_deployment_file(path)) == [f"{path}: file not found"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "name: blue\nendpoint_name: [my-endpoint\ninstance_type: x\n",
            "bad.yml:3 invalid YAML: ",
            id="unclosed_flow_sequence",
        ),
        pytest.param(
            "name: blue\nname: green\n",
            "bad.yml:2 invalid YAML: found duplicate key",
            id="duplicate_key",
        ),
        pytest.param(
            "- name: blue\n- name: green\n",
            "bad.yml:1 top level must be a mapping of fields (name: ..., ...), not a list",
            id="top_level_list",
        ),
        pytest.param(
            "blue\n",
            "bad.yml: top level must be a mapping of fields (name: ..., ...), not a string",
            id="top_level_scalar",
        ),
        pytest.param(
            "# nothing yet\n",
            "bad.yml: is empty; expected a mapping of fields (name: ..., ...)",
            id="empty_file",
        ),
    ],
)
def test_unusable_yaml_is_one_clear_error(in_sample: AzureSample, text: str, expected: str) -> None:
    (in_sample.sample / "bad.yml").write_text(text, encoding="utf-8")

    errors = errors_of(lambda: load_deployment_file(Path("bad.yml")))

    assert len(errors) == 1
    assert errors[0].startswith(expected)


# ---------------------------------------------------------------------------------------
# Already-parsed dicts (REST bodies)
# ---------------------------------------------------------------------------------------


def test_deployment_dict_resolves_paths_against_base_dir(azure_sample: AzureSample) -> None:
    body = {
        "name": "blue",
        "endpoint_name": "my-endpoint",
        "model": {"path": "../../model-1/model"},
        "code_configuration": {"code": "../../model-1/onlinescoring", "scoring_script": "score.py"},
        "environment": {"image": "python:3.11-slim"},
        "instance_type": "Standard_DS3_v2",
    }

    spec = load_deployment_dict(body, base_dir=azure_sample.sample, source="request")

    assert isinstance(spec, DeploymentSpec)
    assert spec.code_configuration is not None
    assert spec.code_configuration.code == str(azure_sample.online / "model-1" / "onlinescoring")
    assert body["model"] == {"path": "../../model-1/model"}  # the caller's dict is untouched


def test_dict_errors_have_no_line(azure_sample: AzureSample) -> None:
    body = {"name": "blue", "endpoint_name": "my-endpoint", "instance_count": 0}

    errors = errors_of(lambda: load_deployment_dict(body, base_dir=azure_sample.sample, source="request"))

    assert errors == [
        "request: instance_type: required",
        "request: instance_count: must be ≥ 1 (got 0)",
    ]


def test_endpoint_dict_loads_like_the_file(azure_sample: AzureSample) -> None:
    from_file = load_endpoint_file(azure_sample.endpoint)
    from_dict = load_endpoint_dict(read_yaml(azure_sample.endpoint), source="endpoint.yml")

    assert from_dict == from_file
    assert errors_of(lambda: load_endpoint_dict({"name": "my-endpoint", "x": 1}, source="api")) == [
        "api: x: unknown field"
    ]


def test_parsed_ruamel_document_keeps_its_lines(azure_sample: AzureSample) -> None:
    doc = read_yaml(azure_sample.blue)
    doc["instance_count"] = 0

    errors = errors_of(lambda: load_deployment_dict(doc, base_dir=azure_sample.sample, source="blue.yml"))

    assert errors == ["blue.yml:13 instance_count: must be ≥ 1 (got 0)"]


def test_spec_survives_a_json_round_trip(azure_sample: AzureSample) -> None:
    """Specs travel through Temporal as JSON; the strict models must read their own output."""
    spec = load_deployment_file(
        azure_sample.blue,
        overrides={
            "scale_settings": {"type": "target_utilization", "max_instances": 4},
            "tags": {"team": "ml"},
        },
    )

    assert DeploymentSpec.model_validate_json(spec.model_dump_json(by_alias=True)) == spec
    assert spec.model_dump(by_alias=True)["$schema"].endswith("managedOnlineDeployment.schema.json")


# ---------------------------------------------------------------------------------------
# Contracts with the rest of Tidegate
# ---------------------------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "samples"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="config/samples not present")
@pytest.mark.parametrize("name", ["blue-deployment.yml", "green-deployment.yml"])
def test_shipped_sample_deployments_load(name: str) -> None:
    spec = load_deployment_file(SAMPLES / name)

    assert spec.endpoint_name == "my-endpoint"
    assert spec.code_configuration is not None
    assert Path(spec.code_configuration.code).is_absolute()


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="config/samples not present")
def test_shipped_sample_endpoint_loads() -> None:
    assert load_endpoint_file(SAMPLES / "endpoint.yml").name == "my-endpoint"


def test_stored_spec_reloads_with_set_applied(azure_sample: AzureSample) -> None:
    """`online-deployment update --set` reloads the stored dump (exclude_none) through here."""
    from config.overrides import apply_set

    spec = load_deployment_file(azure_sample.blue)
    stored = spec.model_dump(mode="json", by_alias=True, exclude_none=True)

    updated = load_deployment_dict(
        apply_set(stored, ["instance_count=3"]), base_dir=Path("/"), source="my-endpoint/blue"
    )

    assert updated == spec.model_copy(update={"instance_count": 3})
