"""The CLI's REST client (control/arm/client.py): specs go out as ARM bodies the API reads back to
the same specs, ARM errors come back as the façade's exceptions, and the client reaches an
https API with the control CA and the credential."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from config.contract.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PreconditionFailed,
    TidegateError,
)
from config.security import ControlAccessError
from config.settings import Settings
from config.specs import DeploymentSpec, EndpointSpec
from control.arm.client import Answer, RestTidegate, _error, _with_absolute_paths
from control.arm.resources import (
    ArmDeployment,
    ArmEndpoint,
    deployment_request,
    deployment_spec,
    endpoint_request,
    endpoint_spec,
    read_model,
)
from tests.control.conftest import start_api, stop_api


def _deployment(**fields: Any) -> DeploymentSpec:
    base: dict[str, Any] = {
        "name": "blue",
        "endpoint_name": "my-ep",
        "model": {"path": "/srv/project/model"},
        "code_configuration": {"code": "/srv/project/code", "scoring_script": "score.py"},
        "environment": {
            "conda_file": "/srv/project/conda.yaml",
            "image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest",
        },
        "instance_type": "Standard_DS3_v2",
        "instance_count": 2,
    }
    return DeploymentSpec.model_validate(base | fields)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "description": "the blue one",
            "tags": {"team": "a"},
            "environment_variables": {"MODE": "fast"},
            "request_settings": {
                "request_timeout_ms": 1500,
                "max_concurrent_requests_per_instance": 4,
                "max_queue_wait_ms": 250,
            },
            "readiness_probe": {"initial_delay": 1, "period": 2, "failure_threshold": 5},
            "liveness_probe": {"initial_delay": 3, "timeout": 4},
        },
        {
            "instance_count": 1,
            "scale_settings": {
                "type": "target_utilization",
                "min_instances": 1,
                "max_instances": 3,
                "polling_interval": 2,
                "target_utilization_percentage": 60,
            },
        },
        {"model": "azureml:diabetes:3"},
    ],
    ids=["defaults", "settings-probes-tags", "autoscale", "registered-model"],
)
def test_a_deployment_spec_sent_as_arm_reads_back_as_the_same_spec(fields: dict[str, Any]) -> None:
    spec = _deployment(**fields)
    body = deployment_request(spec)
    assert body["sku"]["capacity"] == spec.instance_count
    assert "provisioningState" not in body["properties"]
    assert deployment_spec("my-ep", "blue", read_model(ArmDeployment, body)) == spec


@pytest.mark.parametrize(
    "data",
    [
        {"name": "my-ep"},
        {"name": "my-ep", "auth_mode": "aml_token", "description": "d", "tags": {"a": "b"}},
        {"name": "my-ep", "traffic": {"blue": 100}, "mirror_traffic": {"green": 10}},
        {"name": "my-ep", "properties": {"tidegate/max_requests_per_second": "50"}},
    ],
    ids=["name-only", "token-described-tagged", "split-and-mirror", "properties"],
)
def test_an_endpoint_spec_sent_as_arm_reads_back_as_the_same_spec(data: dict[str, Any]) -> None:
    spec = EndpointSpec.model_validate(data)
    body = endpoint_request(spec)
    back = endpoint_spec("my-ep", read_model(ArmEndpoint, body), replace=True)
    assert back.model_dump() == spec.model_dump()
    assert ("traffic" in body["properties"]) == ("traffic" in data)


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            404,
            {"error": {"code": "ResourceNotFound", "message": "endpoint x does not exist"}},
            NotFound,
            None,
        ),
        (409, {"error": {"code": "Conflict", "message": "blue is Updating"}}, Conflict, None),
        (
            400,
            {
                "error": {
                    "code": "BadRequest",
                    "message": "authMode cannot change",
                    "target": "properties.authMode",
                }
            },
            BadRequest,
            "authMode cannot change",
        ),
        (412, {"error": {"code": "PreconditionFailed", "message": "has changed"}}, PreconditionFailed, None),
        (
            400,
            {"error": {"code": "ValidationError", "message": "must be ≥ 1", "target": "sku.capacity"}},
            BadRequest,
            "sku.capacity: must be ≥ 1",
        ),
        (
            400,
            {
                "error": {
                    "code": "ValidationError",
                    "message": "properties.model: bad",
                    "target": "properties.model",
                }
            },
            BadRequest,
            "properties.model: bad",
        ),
        (
            503,
            {"error": {"code": "ServiceUnavailable", "message": "cannot reach Temporal"}},
            TidegateError,
            None,
        ),
        (502, "Bad Gateway", TidegateError, "HTTP 502"),
    ],
    ids=["404", "409", "400-as-is", "412", "400-target-added", "400-target-in-message", "503", "not-arm"],
)
def test_an_arm_error_comes_back_as_the_facades_exception(
    status: int, body: Any, kind: type[TidegateError], message: str | None
) -> None:
    error = _error(Answer(status=status, headers={}, body=body))
    assert type(error) is kind
    assert str(error) == (message or body["error"]["message"])


def test_relative_paths_are_sent_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _deployment(
        model={"path": "model"},
        code_configuration={"code": "code", "scoring_script": "score.py"},
        environment={"conda_file": "env/conda.yaml", "image": "x"},
    )
    sent = _with_absolute_paths(spec)
    assert sent.code_configuration is not None and sent.code_configuration.code == str(tmp_path / "code")
    assert not isinstance(sent.model, str) and sent.model is not None
    assert sent.model.path == str(tmp_path / "model")
    assert not isinstance(sent.environment, str) and sent.environment is not None
    assert sent.environment.conda_file == str(tmp_path / "env" / "conda.yaml")


async def test_over_https_the_client_trusts_the_control_ca_and_sends_the_credential(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "api.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = {
        "TIDEGATE_CONTROL_TLS_CERT": str(tmp_path / "api.pem"),
        "TIDEGATE_CONTROL_TLS_KEY": str(tmp_path / "api.pem"),
    }
    api = start_api(tmp_path / "home", scheme="https", ca=ca, **tls)
    try:
        trusted = api.settings(control_ca_file=tmp_path / "ca.pem")
        client = await RestTidegate.connect(trusted, api.url)  # GET the workspace: TLS and bearer
        assert client.base_url == api.url

        with pytest.raises(TidegateError, match="cannot reach the API at https://"):
            await RestTidegate.connect(api.settings(), api.url)  # the home's CA is not this one

        wrong = api.settings(control_ca_file=tmp_path / "ca.pem", control_token="not-it")
        with pytest.raises(ControlAccessError, match=r"refused the control credential \(401\)") as refused:
            await RestTidegate.connect(wrong, api.url)
        assert "not-it" not in str(refused.value)
    finally:
        stop_api(api)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("/subscriptions/s/x?api-version=1", "https://api.example:8083/subscriptions/s/x?api-version=1"),
        (
            "https://api.example:8083/subscriptions/s/op?api-version=1",
            "https://api.example:8083/subscriptions/s/op?api-version=1",
        ),
        (
            "https://elsewhere.example/subscriptions/s/op?api-version=1",
            "https://api.example:8083/subscriptions/s/op?api-version=1",
        ),
        ("http://127.0.0.1:9/subscriptions/s/list", "https://api.example:8083/subscriptions/s/list"),
    ],
    ids=["path", "same-origin-link", "other-origin-link", "other-scheme-link"],
)
def test_links_the_api_gives_are_followed_on_its_own_origin_only(given: str, sent: str) -> None:
    client = RestTidegate(Settings(home=Path("/nonexistent")), "https://api.example:8083/")
    assert client._url(given) == sent


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "control.cli", *args],
        env={**environment, "TIDEGATE_HOME": str(home), **env},
        capture_output=True,
        text=True,
    )


def test_the_local_systems_commands_refuse_the_flag_but_not_the_setting(tmp_path: Path) -> None:
    """`up` passes its environment to the processes it starts: a TIDEGATE_API_URL meant for
    the CLI must not stop them; `--api` given to them is a mistake, said as one."""
    flagged = _cli(tmp_path, "--api", "http://127.0.0.1:9", "status")
    assert flagged.returncode == 2
    assert "`tidegate status` is not served by the REST API; run it without --api" in flagged.stderr
    assert _cli(tmp_path, "status", TIDEGATE_API_URL="http://127.0.0.1:9").returncode == 0
    patch = _cli(tmp_path, "host", "patch", TIDEGATE_API_URL="http://127.0.0.1:9")
    assert patch.returncode == 2 and "`tidegate host patch`" in patch.stderr
