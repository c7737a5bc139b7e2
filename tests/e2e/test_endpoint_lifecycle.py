"""A user's walk through one endpoint, end to end on real processes (CLI, HTTP, azmlinfsrv)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from control.stack import alive
from tests.e2e.project import CONDA, REQUEST
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import TEST_APP_INSIGHTS_KEY, LocalStack

EP = "e2e-ep"
BODY = json.dumps({"data": REQUEST}).encode()


@pytest.fixture(scope="module")
def served(stack: LocalStack, project: tuple[Path, dict[str, list[float]]]) -> dict[str, list[float]]:
    """An endpoint with blue (model-1) taking all traffic and green (model-2) at 0 %."""
    root, answers = project
    stack.ok("online-endpoint", "create", "--name", EP, "-f", "endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment",
        "create",
        "--name",
        "blue",
        "--endpoint",
        EP,
        "-f",
        "blue.yml",
        "--all-traffic",
        cwd=root,
    )
    stack.ok("online-deployment", "create", "--name", "green", "--endpoint", EP, "-f", "green.yml", cwd=root)
    return answers


async def post(
    stack: LocalStack, key: str | None, *, deployment: str | None = None, https: bool = False
) -> tuple[int, dict, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if deployment:
        headers["azureml-model-deployment"] = deployment
    base = stack.https_base if https else stack.http_base
    ssl_context = stack.ssl_context() if https else None
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/endpoints/{EP}/score", data=BODY, headers=headers, ssl=ssl_context
        ) as response:
            return response.status, json.loads(await response.read()), dict(response.headers)


async def who_answers(stack: LocalStack, key: str, n: int) -> Counter[str]:
    """Send n requests, 8 at a time; count which deployment answered (all must be 200)."""
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = f"{stack.http_base}/endpoints/{EP}/score"
    async with aiohttp.ClientSession() as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1
                    counts[response.headers.get("azureml-model-deployment", "?")] += 1

        await asyncio.gather(*(worker(n // 8) for _ in range(8)))
    assert statuses == Counter({200: n})
    return counts


def test_invoke_with_the_cli_answers_with_blues_model(
    stack: LocalStack, served: dict, project: tuple[Path, dict]
) -> None:
    root, _ = project
    out = stack.ok("online-endpoint", "invoke", "--name", EP, "--request-file", "request.json", cwd=root)
    assert json.loads(out) == pytest.approx(served["model-1"])


def test_https_with_the_key_and_the_local_ca_answers(stack: LocalStack, served: dict) -> None:
    status, body, headers = asyncio.run(post(stack, stack.key(EP), https=True))
    assert status == 200
    assert body == pytest.approx(served["model-1"])
    assert headers["azureml-model-deployment"] == "blue"


@pytest.mark.parametrize("key", [None, "not-the-key"], ids=["no-key", "wrong-key"])
def test_a_request_without_a_valid_key_is_refused_with_401(
    stack: LocalStack, served: dict, key: str | None
) -> None:
    status, body, _ = asyncio.run(post(stack, key))
    assert status == 401
    assert "error" in body


def test_green_at_zero_percent_gets_nothing_unless_targeted(stack: LocalStack, served: dict) -> None:
    key = stack.key(EP)
    assert asyncio.run(who_answers(stack, key, 200)) == Counter({"blue": 200})
    status, body, headers = asyncio.run(post(stack, key, deployment="green"))
    assert (status, headers["azureml-model-deployment"]) == (200, "green")
    assert body == pytest.approx(served["model-2"])


def test_a_90_10_split_sends_about_a_tenth_to_green(stack: LocalStack, served: dict) -> None:
    stack.ok("online-endpoint", "update", "--name", EP, "--traffic", "blue=90 green=10")
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic") == {"blue": 90, "green": 10}
    counts = asyncio.run(who_answers(stack, stack.key(EP), 2000))
    assert 140 <= counts["green"] <= 260, counts
    stack.ok("online-endpoint", "update", "--name", EP, "--traffic", "blue=100 green=0")


@pytest.mark.parametrize(
    ("traffic", "named"),
    [("blue=90 green=5", "sums to 95"), ("blue=abc", "'blue=abc'"), ("blue=90 ghost=10", "'ghost'")],
    ids=["not-100", "not-a-number", "unknown-deployment"],
)
def test_bad_traffic_fails_naming_it_and_changes_nothing(
    stack: LocalStack, served: dict, traffic: str, named: str
) -> None:
    done = stack.tidegate("online-endpoint", "update", "--name", EP, "--traffic", traffic)
    assert done.returncode != 0
    assert named in done.stderr
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic") == {"blue": 100, "green": 0}


def test_show_prints_the_endpoint_as_azure_does(stack: LocalStack, served: dict) -> None:
    shown = stack.json("online-endpoint", "show", "-n", EP)
    assert shown["name"] == EP
    assert shown["provisioning_state"] == "Succeeded"
    assert shown["auth_mode"] == "key"
    assert shown["scoring_uri"] == f"https://localhost:{stack.port('gateway_https')}/endpoints/{EP}/score"
    uri = stack.ok("online-endpoint", "show", "-n", EP, "--query", "scoring_uri", "-o", "tsv")
    assert uri == shown["scoring_uri"]


def test_the_scoring_uri_show_prints_answers_pythons_urllib(stack: LocalStack, served: dict) -> None:
    """As Azure's "consume an endpoint" sample does it: the URI as given, the key, the CA."""
    uri = stack.ok("online-endpoint", "show", "-n", EP, "--query", "scoring_uri", "-o", "tsv")
    headers = {"Authorization": f"Bearer {stack.key(EP)}", "Content-Type": "application/json"}
    request = urllib.request.Request(uri, data=BODY, headers=headers)
    with urllib.request.urlopen(request, context=stack.ssl_context(), timeout=30) as response:
        assert response.status == 200
        assert response.headers["azureml-model-deployment"] == "blue"
        assert len(json.load(response)) == len(REQUEST)


def test_endpoint_names_are_case_insensitive(stack: LocalStack, served: dict) -> None:
    done = stack.tidegate("online-endpoint", "create", "--name", EP.upper())
    assert done.returncode != 0
    assert f"endpoint {EP} already exists" in done.stderr
    assert stack.json("online-endpoint", "show", "-n", EP.upper(), "--query", "name") == EP


def test_an_environment_that_installs_from_outside_the_index_is_refused_naming_the_line(
    stack: LocalStack, served: dict, project: tuple[Path, dict]
) -> None:
    root, _ = project
    (root / "environment" / "outside.yaml").write_text(
        CONDA.replace(
            "      - joblib\n", "      - joblib\n      - --index-url https://example.invalid/simple\n"
        )
    )
    yaml_text = (root / "blue.yml").read_text().replace("environment/conda.yaml", "environment/outside.yaml")
    (root / "outside.yml").write_text(yaml_text.replace("name: blue", "name: outside"))

    done = stack.tidegate("online-deployment", "create", "-e", EP, "-f", "outside.yml", cwd=root)

    assert done.returncode == 1
    assert 'outside.yaml:10: "--index-url https://example.invalid/simple" is a pip option' in done.stderr
    deployments = stack.json("online-endpoint", "show", "-n", EP, "--query", "properties.deployments")
    assert "outside" not in deployments


def test_run_raising_gives_424_and_the_traceback_only_in_get_logs(
    stack: LocalStack, served: dict, project: tuple[Path, dict]
) -> None:
    root, _ = project
    stack.ok(
        "online-deployment", "create", "--name", "broken", "--endpoint", EP, "-f", "run-raises.yml", cwd=root
    )
    status, body, _ = asyncio.run(post(stack, stack.key(EP), deployment="broken"))
    assert status == 424
    assert "tidegate-test-marker" not in json.dumps(body)
    logs = stack.ok("online-deployment", "get-logs", "--name", "broken", "--endpoint", EP, "--lines", "200")
    assert "tidegate-test-marker" in logs
    stack.ok("online-deployment", "delete", "--name", "broken", "--endpoint", EP, "--yes")


def test_init_raising_fails_the_deployment_with_the_reason(
    stack: LocalStack, served: dict, project: tuple[Path, dict]
) -> None:
    root, _ = project
    done = stack.tidegate(
        "online-deployment", "create", "--name", "noinit", "--endpoint", EP, "-f", "init-raises.yml", cwd=root
    )
    assert done.returncode != 0
    assert "tidegate-init-marker" in done.stderr
    shown = stack.json("online-deployment", "show", "--name", "noinit", "--endpoint", EP)
    assert shown["provisioning_state"] == "Failed"
    assert shown["instances"] == []
    stack.ok("online-deployment", "delete", "--name", "noinit", "--endpoint", EP, "--yes")


def test_deleting_a_deployment_that_takes_traffic_is_refused(stack: LocalStack, served: dict) -> None:
    done = stack.tidegate("online-deployment", "delete", "--name", "blue", "--endpoint", EP, "--yes")
    assert done.returncode != 0
    assert "takes 100% of traffic" in done.stderr
    assert (
        stack.json(
            "online-deployment", "show", "--name", "blue", "--endpoint", EP, "--query", "provisioning_state"
        )
        == "Succeeded"
    )


def test_a_regenerated_secondary_key_replaces_the_old_one(stack: LocalStack, served: dict) -> None:
    old = stack.key(EP, "secondaryKey")
    stack.ok("online-endpoint", "regenerate-keys", "--name", EP, "--key-type", "secondary")
    new = stack.key(EP, "secondaryKey")
    assert new != old
    assert asyncio.run(post(stack, old))[0] == 401
    assert asyncio.run(post(stack, new))[0] == 200


def test_clients_on_the_secondary_key_see_no_401_while_the_primary_is_regenerated(
    stack: LocalStack, served: dict
) -> None:
    old_primary = stack.key(EP)
    with SteadyLoad(f"{stack.http_base}/endpoints/{EP}/score", stack.key(EP, "secondaryKey"), BODY) as load:
        stack.ok("online-endpoint", "regenerate-keys", "--name", EP, "--key-type", "primary")
        until(lambda: load.answered_by("blue") > 50, what="clients served after the rotation")
    assert load.failures_from("blue") == 0 and load.seen[("-", 401)] == 0, load.seen
    assert asyncio.run(post(stack, old_primary))[0] == 401
    assert asyncio.run(post(stack, stack.key(EP)))[0] == 200


def test_app_insights_enabled_turns_on_the_inference_servers_export_with_the_hosts_key(
    stack: LocalStack, served: dict, project: tuple[Path, dict[str, list[float]]]
) -> None:
    root, _ = project
    stack.ok(
        "online-deployment",
        "create",
        "-n",
        "insights",
        "-e",
        EP,
        "-f",
        "green.yml",
        "--set",
        "app_insights_enabled=true",
        cwd=root,
    )
    logs = stack.ok("online-deployment", "get-logs", "-n", "insights", "-e", EP, "--lines", "400")
    assert "Application Insights Enabled: true" in logs and "AppInsights key provided" in logs, logs
    assert TEST_APP_INSIGHTS_KEY not in logs
    stack.ok("online-deployment", "delete", "-n", "insights", "-e", EP, "--yes")


def test_scaling_blue_to_two_instances_serves_from_both(stack: LocalStack, served: dict) -> None:
    stack.ok("online-deployment", "update", "--name", "blue", "--endpoint", EP, "--set", "instance_count=2")
    shown = stack.json("online-deployment", "show", "--name", "blue", "--endpoint", EP)
    assert shown["instance_count"] == 2
    assert len(shown["instances"]) == 2
    assert asyncio.run(who_answers(stack, stack.key(EP), 40)) == Counter({"blue": 40})


def test_a_restarted_gateway_serves_at_once_with_the_same_table(stack: LocalStack, served: dict) -> None:
    gateway = stack.pids()["gateway"]
    os.kill(gateway, signal.SIGKILL)
    until(lambda: not alive(gateway), "the killed gateway is gone", every=0.05)
    stack.up()  # starts only what is missing
    status, body, _ = asyncio.run(post(stack, stack.key(EP)))
    assert status == 200
    assert body == pytest.approx(served["model-1"])


def test_deleting_the_endpoint_makes_its_uri_404(stack: LocalStack, served: dict) -> None:
    key = stack.key(EP)
    stack.ok("online-endpoint", "delete", "--name", EP, "--yes")
    assert asyncio.run(post(stack, key))[0] == 404
    assert EP not in stack.json("online-endpoint", "list", "--query", "[].name")
    done = stack.tidegate("online-endpoint", "show", "-n", EP)
    assert done.returncode != 0 and f"endpoint {EP} does not exist" in done.stderr


def test_a_registered_model_serves_as_azureml_name_version(
    stack: LocalStack, project: tuple[Path, dict[str, list[float]]]
) -> None:
    root, answers = project
    registered = stack.json(
        "model", "create", "--name", "diabetes", "--version", "3", "--path", "model-2/model", cwd=root
    )
    assert registered["name"] == "diabetes" and registered["version"] == "3"
    again = stack.tidegate(
        "model", "create", "--name", "diabetes", "--version", "3", "--path", "model-2/model", cwd=root
    )
    assert again.returncode != 0 and "diabetes:3 already exists" in again.stderr
    (root / "registered.yml").write_text(
        (root / "blue.yml")
        .read_text()
        .replace("model:\n  path: model-1/model/\n", "model: azureml:diabetes:3\n")
    )
    stack.ok("online-endpoint", "create", "--name", "reg-ep", "-f", "endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment",
        "create",
        "-n",
        "blue",
        "-e",
        "reg-ep",
        "-f",
        "registered.yml",
        "--all-traffic",
        cwd=root,
    )
    out = stack.ok(
        "online-endpoint", "invoke", "--name", "reg-ep", "--request-file", "request.json", cwd=root
    )
    assert json.loads(out) == pytest.approx(answers["model-2"])
    stack.ok("online-endpoint", "delete", "--name", "reg-ep", "--yes")
