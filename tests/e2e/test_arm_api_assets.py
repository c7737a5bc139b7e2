"""Versioned assets through the ARM-shaped REST API on a real stack: a model and a code folder
uploaded as archives and registered as versions, an environment registered with its conda file
inline, a deployment PUT naming all three by ARM id that serves, and the CLI's registry and the
API's being one (`tidegate model create` ↔ GET .../models/<name>/versions/<v>)."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.project import REQUEST
from tests.e2e.test_arm_api import WS, Answer, Api
from tests.support.stack import LocalStack

EP = "assets-ep"
ENDPOINT = f"{WS}/onlineEndpoints/{EP}"


def tar_gz(folder: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=name)
    return buffer.getvalue()


def zipped(folder: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                archive.write(item, f"{name}/{item.relative_to(folder)}")
    return buffer.getvalue()


def upload(api: Api, data: bytes, content_type: str = "application/gzip") -> Answer:
    url = f"{api.base}{WS}/uploads?api-version=2024-04-01"
    headers = {**api.auth, "Content-Type": content_type}
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60, context=api.context) as response:
            return Answer(response.status, dict(response.headers), json.load(response))
    except urllib.error.HTTPError as err:
        return Answer(err.code, dict(err.headers), json.loads(err.read()))


def version_body(**properties: Any) -> dict[str, Any]:
    return {"properties": properties}


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Api:
    return Api(stack)


@pytest.fixture(scope="module")
def registered(api: Api, project: tuple[Path, dict]) -> dict[str, Any]:
    """model-1 uploaded as tar.gz and code as zip, each registered as version 1; the project's
    conda file registered as environment version 1. What each step answered."""
    root, answers = project
    model_upload = upload(api, tar_gz(root / "model-1" / "model", "model"))
    code_upload = upload(api, zipped(root / "code", "code"), "application/zip")
    model = api.call(
        "PUT",
        f"{WS}/models/assets-model/versions/1",
        version_body(modelUri=model_upload.body["uri"], description="linear, slope 1"),
    )
    code = api.call(
        "PUT", f"{WS}/codes/assets-code/versions/1", version_body(codeUri=code_upload.body["uri"])
    )
    conda = (root / "environment" / "conda.yaml").read_text()
    environment = api.call(
        "PUT",
        f"{WS}/environments/assets-env/versions/1",
        version_body(condaFile=conda, image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest"),
    )
    return {
        "root": root,
        "answers": answers,
        "conda": conda,
        "model_upload": model_upload,
        "code_upload": code_upload,
        "model": model,
        "code": code,
        "environment": environment,
    }


def test_an_upload_answers_a_content_hashed_uri_naming_its_folder(
    api: Api, registered: dict[str, Any]
) -> None:
    first = registered["model_upload"]
    assert first.status == 201, first.body
    assert first.body["uri"] == f"tidegate://uploads/{first.body['contentHash']}/model"
    assert first.body["entries"] == ["model"] and first.body["files"] >= 1
    again = upload(api, tar_gz(registered["root"] / "model-1" / "model", "model"))
    assert again.body["uri"] == first.body["uri"]
    other = upload(api, tar_gz(registered["root"] / "model-2" / "model", "model"))
    assert other.body["contentHash"] != first.body["contentHash"]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../outside.py", b"x = 1")], "'../outside.py': '..' would leave"),
        ([("/tmp/evil.py", b"x = 1")], "'/tmp/evil.py': an absolute path"),
    ],
    ids=["dot_dot", "absolute"],
)
def test_an_archive_escaping_its_folder_is_a_400_naming_the_member(
    api: Api, members: list[tuple[str, bytes]], message: str
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    answer = upload(api, buffer.getvalue())
    assert answer.status == 400, answer.body
    assert answer.body["error"]["target"] == "body" and message in answer.body["error"]["message"]


def test_a_body_that_is_no_archive_is_a_400(api: Api) -> None:
    answer = upload(api, b"{}", "application/json")
    assert answer.status == 400 and "not a tar, tar.gz or zip archive" in answer.body["error"]["message"]


def test_a_model_version_is_an_arm_resource_with_system_data(api: Api, registered: dict[str, Any]) -> None:
    created = registered["model"]
    assert created.status == 201, created.body
    body = api.call("GET", f"{WS}/models/assets-model/versions/1").body
    assert body["id"] == f"{WS}/models/assets-model/versions/1"
    assert (
        body["name"] == "1" and body["type"] == "Microsoft.MachineLearningServices/workspaces/models/versions"
    )
    assert body["properties"]["modelUri"] == registered["model_upload"].body["uri"]
    assert body["properties"]["description"] == "linear, slope 1"
    assert body["systemData"]["createdAt"] and body["systemData"]["createdBy"]
    assert body["systemData"]["lastModifiedAt"] == body["systemData"]["createdAt"]
    container = api.call("GET", f"{WS}/models/assets-model").body
    assert container["properties"]["latestVersion"] == "1"
    assert container["properties"]["nextVersion"] == "2"


def test_a_version_does_not_change_the_same_put_again_is_200_another_is_409(
    api: Api, registered: dict[str, Any]
) -> None:
    uri = registered["model_upload"].body["uri"]
    path = f"{WS}/models/assets-model/versions/1"
    same = api.call("PUT", path, version_body(modelUri=uri, description="linear, slope 1"))
    assert same.status == 200, same.body
    assert same.body == api.call("GET", path).body
    changed = api.call("PUT", path, version_body(modelUri=uri, description="something else"))
    assert changed.status == 409, changed.body
    assert changed.body["error"]["code"] == "Conflict" and "description" in changed.body["error"]["message"]
    other = upload(api, tar_gz(registered["root"] / "model-2" / "model", "model")).body["uri"]
    refiled = api.call("PUT", path, version_body(modelUri=other, description="linear, slope 1"))
    assert refiled.status == 409 and "uri, content" in refiled.body["error"]["message"]
    assert api.call("GET", path).body["properties"]["description"] == "linear, slope 1"


def test_versions_list_newest_first_with_a_next_link(api: Api, registered: dict[str, Any]) -> None:
    code_uri = registered["code_upload"].body["uri"]
    for version in ("2", "10"):
        put = api.call("PUT", f"{WS}/codes/assets-code/versions/{version}", version_body(codeUri=code_uri))
        assert put.status == 201, put.body
    first = api.call("GET", f"{WS}/codes/assets-code/versions?$top=2").body
    assert [v["name"] for v in first["value"]] == ["10", "2"]
    rest = api.call("GET", first["nextLink"]).body
    assert [v["name"] for v in rest["value"]] == ["1"] and "nextLink" not in rest
    names = [c["name"] for c in api.call("GET", f"{WS}/codes").body["value"]]
    assert "assets-code" in names
    assert api.call("GET", f"{WS}/codes/assets-code").body["properties"]["latestVersion"] == "10"


def test_an_environment_carries_its_conda_file_inline(api: Api, registered: dict[str, Any]) -> None:
    assert registered["environment"].status == 201, registered["environment"].body
    body = api.call("GET", f"{WS}/environments/assets-env/versions/1").body
    assert body["properties"]["condaFile"] == registered["conda"]
    assert body["properties"]["image"].startswith("mcr.microsoft.com/azureml/")
    empty = api.call("PUT", f"{WS}/environments/assets-env/versions/2", version_body(description="none"))
    assert empty.status == 400 and empty.body["error"]["target"] == "properties.condaFile"
    not_yaml = api.call("PUT", f"{WS}/environments/assets-env/versions/2", version_body(condaFile="- a\n- b"))
    assert not_yaml.status == 400 and "YAML mapping" in not_yaml.body["error"]["message"]
    elsewhere = registered["conda"].replace(
        "- joblib", "- --index-url https://example.com/simple\n      - joblib"
    )
    refused = api.call("PUT", f"{WS}/environments/assets-env/versions/2", version_body(condaFile=elsewhere))
    assert refused.status == 400 and refused.body["error"]["target"] == "properties.condaFile"
    assert "--index-url" in refused.body["error"]["message"]
    assert api.call("GET", f"{WS}/environments/assets-env/versions/2").status == 404


@pytest.mark.parametrize(
    ("path", "body", "target"),
    [
        ("models/m/versions/1", {"properties": {}}, "properties.modelUri"),
        (
            "codes/c/versions/1",
            {"properties": {"codeUri": "tidegate://uploads/0123456789abcdef"}},
            "properties.codeUri",
        ),
        (
            "codes/c/versions/1",
            {"properties": {"codeUri": "https://example.com/code.zip"}},
            "properties.codeUri",
        ),
        (
            "models/m/versions/1",
            {"properties": {"modelUri": "file:///no/such/folder"}},
            "properties.modelUri",
        ),
        ("models/..bad/versions/1", {"properties": {"modelUri": "file:///tmp"}}, "name"),
        ("models/m/versions/1", {"properties": {"modelUri": "file://{home}/secrets"}}, "properties.modelUri"),
        (
            "codes/c/versions/1",
            {"properties": {"codeUri": "{home}/tls/../control.token"}},
            "properties.codeUri",
        ),
    ],
    ids=["no_uri", "unknown_upload", "https_not_fetched", "missing_path", "bad_name", "secrets", "token"],
)
def test_a_version_naming_nothing_registrable_is_a_400_at_its_field(
    api: Api, stack: LocalStack, path: str, body: dict[str, Any], target: str
) -> None:
    body = json.loads(json.dumps(body).replace("{home}", str(stack.home)))
    answer = api.call("PUT", f"{WS}/{path}", body)
    assert answer.status == 400, answer.body
    assert answer.body["error"]["target"] == target
    assert api.call("GET", f"{WS}/{path}").status in (400, 404)


@pytest.mark.parametrize(
    ("path", "field", "uri"),
    [
        ("models/m/versions/1", "modelUri", "file://{home}/tls"),
        ("codes/c/versions/1", "codeUri", "{home}/models/../control.token"),
    ],
    ids=["tls_material", "the_control_credential"],
)
def test_tidegates_own_files_are_never_an_asset(
    api: Api, stack: LocalStack, path: str, field: str, uri: str
) -> None:
    answer = api.call("PUT", f"{WS}/{path}", {"properties": {field: uri.format(home=stack.home)}})
    assert answer.status == 400, answer.body
    assert answer.body["error"]["target"] == f"properties.{field}"
    assert "state dir" in answer.body["error"]["message"]


def test_the_cli_registry_and_the_api_are_one(
    api: Api, stack: LocalStack, registered: dict[str, Any]
) -> None:
    root = registered["root"]
    stack.ok("model", "create", "-n", "assets-cli-model", "-v", "3", "-p", str(root / "model-2" / "model"))
    through_api = api.call("GET", f"{WS}/models/assets-cli-model/versions/3")
    assert through_api.status == 200, through_api.body
    assert through_api.body["properties"]["modelUri"].startswith("file:///")
    assert through_api.body["systemData"]["createdByType"] == "User"
    shown = stack.json("model", "show", "-n", "assets-model", "-v", "1")
    assert isinstance(shown, dict) and shown["description"] == "linear, slope 1"


def deployment(model: str, code: str, environment: str) -> dict[str, Any]:
    return {
        "location": "local",
        "sku": {"name": "Default", "capacity": 1},
        "properties": {
            "endpointComputeType": "Managed",
            "model": model,
            "codeConfiguration": {"codeId": code, "scoringScript": "score.py"},
            "environmentId": environment,
            "instanceType": "Standard_DS3_v2",
            "readinessProbe": {"initialDelay": "PT1S", "period": "PT1S"},
        },
    }


def test_a_deployment_naming_registered_assets_by_arm_id_serves(
    api: Api, stack: LocalStack, registered: dict[str, Any]
) -> None:
    created = api.call("PUT", ENDPOINT, {"location": "local", "properties": {"authMode": "Key"}})
    assert api.wait(created)["status"] == "Succeeded"
    ids = (
        f"{WS}/models/assets-model/versions/1",
        f"{WS}/codes/assets-code/versions/1",
        f"{WS}/environments/assets-env/versions/1",
    )
    blue = api.call("PUT", f"{ENDPOINT}/deployments/blue", deployment(*ids))
    assert blue.status == 201, blue.body
    assert api.wait(blue)["status"] == "Succeeded"
    resource = api.call("GET", f"{ENDPOINT}/deployments/blue").body
    shown = resource["properties"]
    assert (shown["model"], shown["codeConfiguration"]["codeId"], shown["environmentId"]) == ids
    created = resource["systemData"]["createdAt"]
    assert resource["systemData"]["lastModifiedAt"] == created
    scaled = api.call("PATCH", f"{ENDPOINT}/deployments/blue", {"sku": {"capacity": 1}, "tags": {"t": "1"}})
    assert api.wait(scaled)["status"] == "Succeeded"
    after = api.call("GET", f"{ENDPOINT}/deployments/blue").body["systemData"]
    assert after["createdAt"] == created and after["lastModifiedAt"] > created
    assert api.call("PATCH", ENDPOINT, {"properties": {"traffic": {"blue": 100}}}).status == 200
    key = api.call("POST", f"{ENDPOINT}/listKeys").body["primaryKey"]
    scoring = api.call("GET", ENDPOINT).body["properties"]["scoringUri"]
    request = urllib.request.Request(
        scoring,
        data=json.dumps({"data": REQUEST}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=stack.ssl_context()) as response:
        assert json.load(response) == pytest.approx(registered["answers"]["model-1"])


@pytest.mark.parametrize("way", ["direct", "rest"])
def test_the_cli_deploys_the_same_assets_as_azureml_name_version(
    api: Api, stack: LocalStack, registered: dict[str, Any], tmp_path: Path, way: str
) -> None:
    """YAML naming the assets as `azureml:name:version`, straight to Temporal and through --api."""
    name = {"direct": "green", "rest": "red"}[way]
    (tmp_path / "deployment.yml").write_text(
        f"name: {name}\nendpoint_name: {EP}\nmodel: azureml:assets-cli-model:3\n"
        "code_configuration:\n  code: azureml:assets-code:1\n  scoring_script: score.py\n"
        "environment: azureml:assets-env:1\ninstance_type: Standard_DS3_v2\ninstance_count: 1\n"
        "readiness_probe:\n  initial_delay: 1\n  period: 1\n"
    )
    through = ("--api", api.base) if way == "rest" else ()
    stack.ok(*through, "online-deployment", "create", "-f", "deployment.yml", cwd=tmp_path)
    shown = api.call("GET", f"{ENDPOINT}/deployments/{name}").body["properties"]
    assert shown["codeConfiguration"]["codeId"] == f"{WS}/codes/assets-code/versions/1"
    assert shown["environmentId"] == f"{WS}/environments/assets-env/versions/1"
    request = str(registered["root"] / "request.json")
    answer = stack.ok(
        *through, "online-endpoint", "invoke", "-n", EP, "--deployment-name", name, "-r", request
    )
    assert json.loads(answer) == pytest.approx(registered["answers"]["model-2"])


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("properties.model", {"model": f"{WS}/models/assets-model/versions/99"}),
        ("properties.codeConfiguration.codeId", {"code": f"{WS}/codes/no-such-code/versions/1"}),
        ("properties.environmentId", {"environment": "azureml:no-such-env:1"}),
        ("properties.codeConfiguration.codeId", {"code": f"{WS}/environments/assets-env/versions/1"}),
    ],
    ids=["unknown_model_version", "unknown_code", "unknown_environment", "an_environment_as_code"],
)
def test_a_deployment_naming_an_unknown_asset_is_a_400_at_its_field_and_nothing_is_stored(
    api: Api, registered: dict[str, Any], field: str, overrides: dict[str, str]
) -> None:
    ids = {
        "model": f"{WS}/models/assets-model/versions/1",
        "code": f"{WS}/codes/assets-code/versions/1",
        "environment": f"{WS}/environments/assets-env/versions/1",
    } | overrides
    answer = api.call(
        "PUT", f"{ENDPOINT}/deployments/nothing", deployment(ids["model"], ids["code"], ids["environment"])
    )
    assert answer.status == 400, answer.body
    assert answer.body["error"]["target"] == field
    assert api.call("GET", f"{ENDPOINT}/deployments/nothing").status == 404


def test_a_deleted_version_is_gone_and_its_deployment_keeps_serving(
    api: Api, stack: LocalStack, registered: dict[str, Any]
) -> None:
    path = f"{WS}/codes/assets-code/versions/2"
    assert api.call("DELETE", path).status == 200
    assert api.call("GET", path).status == 404
    assert api.call("DELETE", path).status == 204
    assert (
        api.call("GET", f"{ENDPOINT}/deployments/blue").body["properties"]["provisioningState"] == "Succeeded"
    )
    assert api.wait(api.call("DELETE", ENDPOINT))["status"] == "Succeeded"


def test_openapi_describes_the_asset_routes_and_the_upload(api: Api) -> None:
    with urllib.request.urlopen(f"{api.base}/openapi.json", timeout=10) as response:
        paths = json.load(response)["paths"]
    version = f"{WS}/{{kind}}/{{name}}/versions/{{version}}".replace("sub-1", "{subscription}")
    version = version.replace("rg-1", "{resource_group}").replace("ws-1", "{workspace}")
    assert {"get", "put", "delete"} <= set(paths[version])
    kind = next(p for p in paths[version]["put"]["parameters"] if p["name"] == "kind")
    assert kind["schema"]["enum"] == ["models", "codes", "environments"]
    uploads = version.split("/{kind}")[0] + "/uploads"
    assert "application/zip" in paths[uploads]["post"]["requestBody"]["content"]
