"""The ARM-shaped REST API on a real stack, driven with plain HTTP the way an ARM client drives
it: PUT, poll the operation, listKeys, invoke, PATCH, etags, conflicts, rollouts, DELETE."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.project import REQUEST
from tests.support.stack import LocalStack

VERSION = "2024-04-01"
WS = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.MachineLearningServices/workspaces/ws-1"
EP = "arm-ep"
ENDPOINT = f"{WS}/onlineEndpoints/{EP}"
POLLS = 1200  # a bound on polls (0.25 s apart), not a time limit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


class Api:
    def __init__(self, stack: LocalStack) -> None:
        self.base = f"http://127.0.0.1:{stack.port('api')}"
        self.auth = stack.control_headers()
        self.context: ssl.SSLContext | None = None  # set for an API served over https

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        version: str | None = VERSION,
        auth: bool = True,
    ) -> Answer:
        url = path if path.startswith("http") else f"{self.base}{path}"
        if version is not None and "api-version=" not in url:
            url += ("&" if "?" in url else "?") + f"api-version={version}"
        sent = {"Content-Type": "application/json", **(self.auth if auth else {}), **(headers or {})}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.context) as response:
                raw, status, got = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as err:
            raw, status, got = err.read(), err.code, dict(err.headers)
        return Answer(status, got, json.loads(raw) if raw else None)

    def wait(self, answer: Answer) -> dict[str, Any]:
        """Poll the operation an answer points to until it is no longer InProgress."""
        url = answer.headers["Azure-AsyncOperation"]
        assert int(answer.headers["Retry-After"]) >= 1
        for _ in range(POLLS):
            status = self.call("GET", url)
            assert status.status == 200, status.body
            if status.body["status"] != "InProgress":
                return status.body
            time.sleep(0.25)
        raise AssertionError(f"operation never finished: {status.body}")


def deployment_body(root: Path, model_folder: str, **properties: Any) -> dict[str, Any]:
    return {
        "location": "local",
        "sku": {"name": "Default", "capacity": 1},
        "properties": {
            "endpointComputeType": "Managed",
            "model": (root / model_folder / "model").as_uri(),
            "codeConfiguration": {"codeId": (root / "code").as_uri(), "scoringScript": "score.py"},
            "environmentId": (root / "environment" / "conda.yaml").as_uri(),
            "instanceType": "Standard_DS3_v2",
            "requestSettings": {"requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1},
            "readinessProbe": {"initialDelay": "PT1S", "period": "PT1S"},
            **properties,
        },
    }


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Api:
    return Api(stack)


@pytest.fixture(scope="module")
def served(api: Api, project: tuple[Path, dict]) -> Iterator[dict[str, Any]]:
    """arm-ep with blue taking all traffic, made by PUT and PATCH; what the steps answered."""
    root, answers = project
    created = api.call("PUT", ENDPOINT, {"location": "local", "properties": {"authMode": "Key"}})
    endpoint_done = api.wait(created)
    blue = api.call("PUT", f"{ENDPOINT}/deployments/blue", deployment_body(root, "model-1"))
    blue_done = api.wait(blue)
    patched = api.call("PATCH", ENDPOINT, {"properties": {"traffic": {"blue": 100}}})
    yield {
        "created": created,
        "endpoint_done": endpoint_done,
        "blue": blue,
        "blue_done": blue_done,
        "patched": patched,
        "answers": answers,
        "root": root,
    }


def test_without_the_credential_the_api_answers_401(api: Api) -> None:
    answer = api.call("GET", f"{WS}/onlineEndpoints", auth=False)
    assert answer.status == 401 and answer.body["error"]["code"] == "Unauthorized"


@pytest.mark.parametrize("version", ["2020-08-01", None], ids=["unsupported", "missing"])
def test_an_api_version_not_served_is_refused_naming_those_served(api: Api, version: str | None) -> None:
    url = f"{WS}/onlineEndpoints" + (f"?api-version={version}" if version else "")
    answer = api.call("GET", url, version=None)
    assert answer.status == 400
    assert "2024-04-01" in answer.body["error"]["message"]


def test_the_workspace_is_a_resource(api: Api) -> None:
    answer = api.call("GET", WS, version="2024-10-01-preview")
    assert answer.status == 200
    assert answer.body["id"] == WS and answer.body["name"] == "ws-1"


def test_put_creates_the_endpoint_and_its_operation_succeeds(api: Api, served: dict[str, Any]) -> None:
    created = served["created"]
    assert created.status == 201, created.body
    # The answer shows the endpoint as it is by then: usually Creating, Succeeded if it was quick.
    assert created.body["properties"]["provisioningState"] in ("Creating", "Succeeded")
    assert "/mfeOperationsStatus/" in created.headers["Azure-AsyncOperation"]
    assert "/mfeOperationResults/" in created.headers["Location"]
    assert served["endpoint_done"]["status"] == "Succeeded"
    got = api.call("GET", ENDPOINT)
    assert got.status == 200 and got.body["id"] == ENDPOINT
    assert got.body["properties"]["provisioningState"] == "Succeeded"
    assert got.body["properties"]["authMode"] == "Key"
    assert got.headers["ETag"].strip('"')


def test_a_deployment_put_serves_and_the_key_from_listkeys_scores(
    api: Api, stack: LocalStack, served: dict[str, Any]
) -> None:
    assert served["blue"].status == 201, served["blue"].body
    assert served["blue_done"]["status"] == "Succeeded", served["blue_done"]
    assert served["patched"].status == 200, served["patched"].body
    assert served["patched"].body["properties"]["traffic"] == {"blue": 100}
    blue = api.call("GET", f"{ENDPOINT}/deployments/blue").body
    assert blue["properties"]["provisioningState"] == "Succeeded"
    assert blue["properties"]["requestSettings"]["requestTimeout"] == "PT5S"
    assert blue["sku"]["capacity"] == 1
    got = api.call("GET", ENDPOINT).body
    assert "primaryKey" not in json.dumps(got)
    keys = api.call("POST", f"{ENDPOINT}/listKeys")
    assert keys.status == 200 and set(keys.body) == {"primaryKey", "secondaryKey"}
    request = urllib.request.Request(
        got["properties"]["scoringUri"],
        data=json.dumps({"data": REQUEST}).encode(),
        headers={"Authorization": f"Bearer {keys.body['primaryKey']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=stack.ssl_context()) as response:
        assert json.load(response) == pytest.approx(served["answers"]["model-1"])


def test_an_amltoken_endpoint_gives_tokens_from_token_and_no_keys(api: Api, served: dict[str, Any]) -> None:
    path = f"{WS}/onlineEndpoints/arm-token-ep"
    created = api.call("PUT", path, {"location": "local", "properties": {"authMode": "AMLToken"}})
    assert api.wait(created)["status"] == "Succeeded"
    assert api.call("GET", path).body["properties"]["authMode"] == "AMLToken"

    token = api.call("POST", f"{path}/token")
    assert token.status == 200 and token.headers["Cache-Control"] == "no-store"
    assert set(token.body) == {"accessToken", "expiryTimeUtc", "refreshAfterTimeUtc", "tokenType"}
    assert token.body["expiryTimeUtc"] - token.body["refreshAfterTimeUtc"] == 12 * 3600
    keys = api.call("POST", f"{path}/listKeys")
    assert (keys.status, keys.body["error"]["target"]) == (400, "properties.authMode")
    assert "POST .../token" in keys.body["error"]["message"]
    on_key_endpoint = api.call("POST", f"{ENDPOINT}/token")
    assert on_key_endpoint.status == 400 and "POST .../listKeys" in on_key_endpoint.body["error"]["message"]
    assert api.wait(api.call("DELETE", path))["status"] == "Succeeded"


def test_get_logs_gives_the_instances_log(api: Api, served: dict[str, Any]) -> None:
    answer = api.call("POST", f"{ENDPOINT}/deployments/blue/getLogs", {"tail": 50})
    assert answer.status == 200
    assert isinstance(answer.body["content"], str) and answer.body["content"].strip()


def test_a_stale_etag_is_refused_and_nothing_changes(api: Api, served: dict[str, Any]) -> None:
    first = api.call("GET", ENDPOINT)
    etag = first.headers["ETag"]
    changed = api.call("PATCH", ENDPOINT, {"tags": {"owner": "a"}}, headers={"If-Match": etag})
    assert changed.status == 200, changed.body
    assert changed.headers["ETag"] != etag
    stale = api.call(
        "PUT",
        ENDPOINT,
        {"location": "local", "tags": {"owner": "b"}, "properties": {"authMode": "Key"}},
        headers={"If-Match": etag},
    )
    assert stale.status == 412, stale.body
    assert stale.body["error"]["code"] == "PreconditionFailed"
    assert api.call("GET", ENDPOINT).body["tags"] == {"owner": "a"}
    exists = api.call(
        "PUT", ENDPOINT, {"location": "local", "properties": {}}, headers={"If-None-Match": "*"}
    )
    assert exists.status == 412


def test_two_writers_holding_one_etag_one_wins_the_other_412(api: Api, served: dict[str, Any]) -> None:
    etag = api.call("GET", ENDPOINT).headers["ETag"]
    bodies = [{"tags": {"writer": who}} for who in ("one", "two")]
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda body: api.call("PATCH", ENDPOINT, body, headers={"If-Match": etag}), bodies)
        )
    assert sorted(a.status for a in answers) == [200, 412], [a.body for a in answers]
    winner = next(i for i, a in enumerate(answers) if a.status == 200)
    assert api.call("GET", ENDPOINT).body["tags"] == {"writer": ("one", "two")[winner]}


def test_two_puts_at_once_one_wins_the_other_gets_409(api: Api, served: dict[str, Any]) -> None:
    root = served["root"]
    url = f"{ENDPOINT}/deployments/blue"
    bodies = [
        deployment_body(root, "model-1", environmentVariables={"RACE": value}) for value in ("one", "two")
    ]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda body: api.call("PUT", url, body), bodies))
    assert sorted(a.status for a in answers) == [200, 409], [a.body for a in answers]
    winner = next(i for i, a in enumerate(answers) if a.status == 200)
    loser = answers[1 - winner]
    assert loser.body["error"]["code"] == "Conflict"
    assert "Updating" in loser.body["error"]["message"]
    assert api.wait(answers[winner])["status"] == "Succeeded"
    shown = api.call("GET", url).body["properties"]["environmentVariables"]
    assert shown == {"RACE": ("one", "two")[winner]}


def test_a_bad_field_is_400_naming_its_path(api: Api, served: dict[str, Any]) -> None:
    answer = api.call("PATCH", ENDPOINT, {"properties": {"traffic": {"blue": 150}}})
    assert answer.status == 400
    assert answer.body["error"]["target"] == "properties.traffic.blue"
    body = deployment_body(served["root"], "model-1", requestSettings={"requestTimeout": "5 seconds"})
    answer = api.call("PUT", f"{ENDPOINT}/deployments/bad", body)
    assert answer.status == 400
    assert answer.body["error"]["target"] == "properties.requestSettings.requestTimeout"
    assert answer.body["error"]["details"][0]["target"] == "properties.requestSettings.requestTimeout"
    body = deployment_body(served["root"], "model-1", model="azureml:no-such-model:1")
    answer = api.call("PUT", f"{ENDPOINT}/deployments/bad", body)
    assert answer.status == 400 and answer.body["error"]["target"] == "properties.model"
    assert "no-such-model:1 is not registered" in answer.body["error"]["message"]


def test_a_missing_endpoint_is_404_resource_not_found(api: Api) -> None:
    answer = api.call("GET", f"{WS}/onlineEndpoints/no-such-ep")
    assert answer.status == 404 and answer.body["error"]["code"] == "ResourceNotFound"


def test_regenerating_the_secondary_key_keeps_the_primary(api: Api, served: dict[str, Any]) -> None:
    before = api.call("POST", f"{ENDPOINT}/listKeys").body
    answer = api.call("POST", f"{ENDPOINT}/regenerateKeys", {"keyType": "Secondary"})
    assert answer.status == 200
    after = api.call("POST", f"{ENDPOINT}/listKeys").body
    assert after["primaryKey"] == before["primaryKey"]
    assert after["secondaryKey"] != before["secondaryKey"]


ROLLOUT = {
    "strategy": "canary",
    "steps": [{"weight": 50, "hold": "10m"}],
    "check_interval": "1s",
    "after_success": {"keep_previous_for": "1s", "then": "keep"},
}


def wait_phase(api: Api, name: str, *phases: str, green: int | None = None) -> dict[str, Any]:
    """The rollout's status once it is in one of `phases` (and gives green `green` percent)."""
    for _ in range(POLLS):
        status = api.call("GET", f"{ENDPOINT}/rollouts/{name}").body["properties"]
        if status["phase"] in phases and green in (None, status["weights"]["green"]):
            return status
        time.sleep(0.25)
    raise AssertionError(f"rollout {name} never reached {phases}: {status}")


def test_a_rollout_started_by_post_is_steered_to_succeeded(api: Api, served: dict[str, Any]) -> None:
    green = api.call("PUT", f"{ENDPOINT}/deployments/green", deployment_body(served["root"], "model-2"))
    assert green.status == 201, green.body
    assert api.wait(green)["status"] == "Succeeded"
    listed = api.call("GET", f"{ENDPOINT}/deployments?$top=1")
    assert [d["name"] for d in listed.body["value"]] == ["blue"]
    rest = api.call("GET", listed.body["nextLink"])
    assert [d["name"] for d in rest.body["value"]] == ["green"] and "nextLink" not in rest.body

    plan = api.call("POST", f"{ENDPOINT}/rollouts?dryRun=true", {"to": "green", "spec": ROLLOUT})
    assert plan.status == 200, plan.body
    assert [s["weight"] for s in plan.body["plan"]["steps"]] == [50, 100]
    assert plan.body["plan"]["baseline"] == "blue"

    started = api.call("POST", f"{ENDPOINT}/rollouts", {"to": "green", "spec": ROLLOUT})
    assert started.status == 201, started.body
    name = started.body["name"]
    assert wait_phase(api, name, "Progressing", green=50)["weights"] == {"blue": 50, "green": 50}
    refused = api.call("PATCH", ENDPOINT, {"properties": {"traffic": {"blue": 100, "green": 0}}})
    assert refused.status == 409 and "under rollout" in refused.body["error"]["message"]

    paused = api.call("POST", f"{ENDPOINT}/rollouts/{name}/pause", {"reason": "look first"})
    assert paused.status == 200, paused.body
    assert wait_phase(api, name, "Paused")["reason"] == "look first"
    assert api.call("POST", f"{ENDPOINT}/rollouts/{name}/resume").status == 200
    wait_phase(api, name, "Progressing")
    assert api.call("POST", f"{ENDPOINT}/rollouts/{name}/promote", {"reason": "ship it"}).status == 200
    assert wait_phase(api, name, "Succeeded", "RolledBack")["phase"] == "Succeeded"

    assert api.call("GET", ENDPOINT).body["properties"]["traffic"] == {"blue": 0, "green": 100}
    listed_rollouts = api.call("GET", f"{ENDPOINT}/rollouts").body["value"]
    assert name in [r["name"] for r in listed_rollouts]
    ended = api.call("POST", f"{ENDPOINT}/rollouts/{name}/pause", {"reason": "too late"})
    assert ended.status == 400 and "nothing to pause" in ended.body["error"]["message"]


def test_patch_scales_a_deployment_by_sku_capacity(api: Api, served: dict[str, Any]) -> None:
    url = f"{ENDPOINT}/deployments/green"
    patched = api.call("PATCH", url, {"sku": {"capacity": 2}})
    assert patched.status == 200, patched.body
    assert api.wait(patched)["status"] == "Succeeded"
    shown = api.call("GET", url).body
    assert shown["sku"]["capacity"] == 2
    assert shown["properties"]["model"].endswith("/model-2/model")


def test_openapi_describes_the_routes_and_docs_list_them(api: Api) -> None:
    with urllib.request.urlopen(f"{api.base}/openapi.json", timeout=10) as response:
        document = json.load(response)
    assert document["openapi"].startswith("3.")
    endpoint_path = (
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
        "Microsoft.MachineLearningServices/workspaces/{workspace}/onlineEndpoints/{endpoint}"
    )
    assert {"get", "put", "patch", "delete"} <= set(document["paths"][endpoint_path])
    with urllib.request.urlopen(f"{api.base}/docs", timeout=10) as response:
        assert "/openapi.json" in response.read().decode()


def test_delete_ends_with_the_operation_succeeded_and_a_404(api: Api, served: dict[str, Any]) -> None:
    deleted = api.call("DELETE", ENDPOINT)
    assert deleted.status == 202, deleted.body
    assert api.wait(deleted)["status"] == "Succeeded"
    gone = api.call("GET", ENDPOINT)
    assert gone.status == 404 and gone.body["error"]["code"] == "ResourceNotFound"
    assert api.call("DELETE", ENDPOINT).status == 204
