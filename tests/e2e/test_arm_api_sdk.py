"""Azure ML's own Python SDK v2 (`azure-ai-ml`'s MLClient, given a custom cloud whose resource
manager is Tidegate's API) drives Tidegate: create an endpoint and wait on its poller, read its
keys, route traffic, invoke it, delete it.

azure-ai-ml cannot share Tidegate's virtualenv (azure-ai-ml 1.35 pulls OpenTelemetry 1.45,
azureml-inference-server-http 1.5 pins 1.33), so the SDK runs in a Python of its own, named by
TIDEGATE_AZURE_AI_ML_PYTHON:

    python3 -m venv /tmp/aml && /tmp/aml/bin/pip install azure-ai-ml
    TIDEGATE_AZURE_AI_ML_PYTHON=/tmp/aml/bin/python pytest tests/e2e/test_arm_api_sdk.py

The SDK insists on HTTPS for a bearer, so the test starts a second `tidegate api` on the same
stack, serving TLS from a test CA."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.control.conftest import ApiProcess, start_api, stop_api
from tests.e2e.project import REQUEST
from tests.e2e.test_arm_api import Api, deployment_body
from tests.e2e.test_arm_api_assets import tar_gz, upload, zipped
from tests.support.stack import LocalStack

SDK_PYTHON = os.environ.get("TIDEGATE_AZURE_AI_ML_PYTHON")
CLIENT = Path(__file__).with_name("sdk_client.py")
WS = (
    "/subscriptions/sub-sdk/resourceGroups/rg-sdk/providers/Microsoft.MachineLearningServices"
    "/workspaces/ws-sdk"
)
EP = "sdk-ep"

pytestmark = pytest.mark.skipif(
    not SDK_PYTHON, reason="set TIDEGATE_AZURE_AI_ML_PYTHON to a Python with azure-ai-ml (see the docstring)"
)


@pytest.fixture(scope="module")
def tls_api(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiProcess, Path]]:
    """A second API process on the stack, over https; and a CA bundle trusting it and the gateway."""
    folder = tmp_path_factory.mktemp("sdk-tls")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "api.pem")
    )
    bundle = folder / "bundle.pem"
    bundle.write_bytes(ca.cert_pem.bytes() + (stack.home / "tls" / "ca.pem").read_bytes())
    own = {"TIDEGATE_HOME", "TIDEGATE_API_PORT", "TIDEGATE_TEMPORAL_UI_PORT"}
    env = {k: v for k, v in stack.env.items() if k.startswith("TIDEGATE_") and k not in own}
    env |= {
        "TIDEGATE_CONTROL_TLS_CERT": str(folder / "api.pem"),
        "TIDEGATE_CONTROL_TLS_KEY": str(folder / "api.pem"),
    }
    api = start_api(stack.home, scheme="https", ca=ca, **env)
    try:
        yield api, bundle
    finally:
        stop_api(api)


def sdk(tls_api: tuple[ApiProcess, Path], *args: str) -> dict[str, Any]:
    api, bundle = tls_api
    assert SDK_PYTHON is not None
    done = subprocess.run(
        [SDK_PYTHON, str(CLIENT), api.url, str(api.home / "control.token"), *args],
        env=dict(os.environ, REQUESTS_CA_BUNDLE=str(bundle), SSL_CERT_FILE=str(bundle)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    return json.loads(last[last.index("{") :])  # the SDK's poller prints dots before it


def test_mlclient_creates_routes_invokes_and_deletes_an_endpoint(
    stack: LocalStack, project: tuple[Path, dict], tls_api: tuple[ApiProcess, Path]
) -> None:
    root, answers = project
    created = sdk(tls_api, "create", EP)
    assert created["provisioning_state"].endswith("SUCCEEDED")
    assert created["has_keys"] and created["scoring_uri"].endswith(f"/endpoints/{EP}/score")

    # The deployment through REST (the SDK would upload code and environment as assets first).
    rest = Api(stack)
    rest.base = tls_api[0].url
    rest.context = ssl.create_default_context(cafile=str(tls_api[1]))
    blue = rest.call("PUT", f"{WS}/onlineEndpoints/{EP}/deployments/blue", deployment_body(root, "model-1"))
    assert blue.status == 201, blue.body
    assert rest.wait(blue)["status"] == "Succeeded"

    assert sdk(tls_api, "traffic", EP, "blue")["traffic"] == {"blue": 100}
    request = root / "sdk-request.json"
    request.write_text(json.dumps({"data": REQUEST}))
    assert sdk(tls_api, "invoke", EP, str(request))["answer"] == pytest.approx(answers["model-1"])
    assert EP not in sdk(tls_api, "delete", EP)["listed_after"]
    assert rest.call("GET", f"{WS}/onlineEndpoints/{EP}").status == 404


def test_mlclient_deploys_assets_registered_in_tidegate_by_azureml_name_version(
    stack: LocalStack, project: tuple[Path, dict], tls_api: tuple[ApiProcess, Path]
) -> None:
    """The model's files uploaded through the API and registered with `ml_client.models`; code
    and environment registered by REST PUT; then a ManagedOnlineDeployment naming all three as
    `azureml:name:version`, created, routed, invoked and deleted with MLClient."""
    root, answers = project
    rest = Api(stack)
    rest.base = tls_api[0].url
    rest.context = ssl.create_default_context(cafile=str(tls_api[1]))
    model_uri = upload(rest, tar_gz(root / "model-2" / "model", "model")).body["uri"]
    registered = sdk(tls_api, "register-model", "sdk-model", "1", model_uri)
    assert (registered["version"], registered["path"]) == ("1", model_uri)
    code_uri = upload(rest, zipped(root / "code", "code"), "application/zip").body["uri"]
    code = rest.call("PUT", f"{WS}/codes/sdk-code/versions/1", {"properties": {"codeUri": code_uri}})
    assert code.status == 201, code.body
    conda = (root / "environment" / "conda.yaml").read_text()
    env = rest.call("PUT", f"{WS}/environments/sdk-env/versions/1", {"properties": {"condaFile": conda}})
    assert env.status == 201, env.body

    seen = sdk(tls_api, "assets", "sdk-model:1", "sdk-code:1", "sdk-env:1")
    assert seen["model"]["id"] == f"{WS}/models/sdk-model/versions/1"
    assert seen["model"]["path"] == model_uri and seen["model"]["created_by"]
    assert seen["model_versions"] == ["1"]
    assert seen["code"]["path"] == code_uri
    assert seen["environment"]["conda_file"]["name"] == "test-env"  # the SDK parses the YAML
    assert seen["environment_versions"] == ["1"]

    assert sdk(tls_api, "create", "sdk-assets-ep")["provisioning_state"].endswith("SUCCEEDED")
    deployed = sdk(tls_api, "deploy", "sdk-assets-ep", "blue", "sdk-model:1", "sdk-code:1", "sdk-env:1")
    assert deployed["provisioning_state"].endswith("SUCCEEDED"), deployed
    assert deployed["model"] == f"{WS}/models/sdk-model/versions/1"
    assert deployed["code"] == f"{WS}/codes/sdk-code/versions/1"
    assert deployed["environment"] == f"{WS}/environments/sdk-env/versions/1"
    assert sdk(tls_api, "traffic", "sdk-assets-ep", "blue")["traffic"] == {"blue": 100}
    request = root / "sdk-assets-request.json"
    request.write_text(json.dumps({"data": REQUEST}))
    answer = sdk(tls_api, "invoke", "sdk-assets-ep", str(request))["answer"]
    assert answer == pytest.approx(answers["model-2"])
    assert "sdk-assets-ep" not in sdk(tls_api, "delete", "sdk-assets-ep")["listed_after"]
