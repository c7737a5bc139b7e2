"""The ARM routes of a real `tidegate api` process with no Temporal behind it: what it answers
before it needs Temporal (credential, api-version, OpenAPI), and that an unreachable Temporal is
a 503 in ARM's shape, not a 500."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.control.conftest import ApiProcess

WS = "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w"


def call(api: ApiProcess, path: str, *, method: str = "GET", auth: bool = True) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {api.token}"} if auth else {}
    request = urllib.request.Request(f"{api.url}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_arm_routes_need_the_credential(api: ApiProcess) -> None:
    status, body = call(api, f"{WS}/onlineEndpoints?api-version=2024-04-01", auth=False)
    assert status == 401 and body["error"]["code"] == "Unauthorized"


def test_an_unknown_api_version_is_named_with_those_served(api: ApiProcess) -> None:
    status, body = call(api, f"{WS}/onlineEndpoints?api-version=2019-01-01")
    assert status == 400
    assert body["error"]["code"] == "InvalidApiVersionParameter"
    assert body["error"]["target"] == "api-version"
    assert "2024-04-01" in body["error"]["message"] and "2019-01-01" in body["error"]["message"]


def test_the_workspace_answers_without_temporal(api: ApiProcess) -> None:
    status, body = call(api, f"{WS}?api-version=2024-10-01-preview")
    assert status == 200 and body["id"] == WS and body["properties"]["provisioningState"] == "Succeeded"


def test_an_unreachable_temporal_is_503_in_arm_shape(api: ApiProcess) -> None:
    status, body = call(api, f"{WS}/onlineEndpoints/my-ep?api-version=2024-04-01")
    assert status == 503
    assert body["error"]["code"] == "ServiceUnavailable"
    assert "Temporal" in body["error"]["message"] and set(body["error"]) == {
        "code",
        "message",
        "target",
        "details",
    }
    assert api.token not in json.dumps(body)


def test_openapi_and_docs_are_open(api: ApiProcess) -> None:
    with urllib.request.urlopen(f"{api.url}/openapi.json", timeout=10) as response:
        document = json.load(response)
    assert any(path.endswith("/listKeys") for path in document["paths"])
    with urllib.request.urlopen(f"{api.url}/docs", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/html")
