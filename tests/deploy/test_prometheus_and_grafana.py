"""deploy/: the Prometheus scrape config and recording rules and the Grafana dashboard, loaded
into Debian's real Prometheus scraping a real gateway under a small mixed load. Every PromQL
expression the dashboard draws, and every recording rule, must return series; a few must
return the values the load implies."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.gateway.conftest import CONTROL_TOKEN, REPO, Backend, GatewayProcess
from tests.gateway.helpers import push_route, score
from tests.support.ports import free_port

PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "tidegate.rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tidegate.json"
GUARD_S = 120.0  # only so a broken build cannot hang CI: Prometheus scrapes every second here

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Debian's prometheus (with promtool) is not installed (.ci/run installs it)",
)

# What Grafana would put in for its own variables, and "All" for the dashboard's.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana sends it with every variable at All)."""
    values = dict(GRAFANA_VARIABLES)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]

    def substitute(expr: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            assert name in values, f"unknown variable ${name} in {expr}"
            return values[name]

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)

    return [
        (panel["title"], substitute(target["expr"]))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def config_for_test(tmp_path: Path, admin_port: int) -> Path:
    """The shipped config with the test's gateway, credential file and 1 s intervals."""
    token = tmp_path / "control.token"
    token.write_text(CONTROL_TOKEN + "\n")
    token.chmod(0o600)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    shutil.copy(RULES, tmp_path / RULES.name)
    (job,) = config["scrape_configs"]
    job["authorization"]["credentials_file"] = str(token)
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{admin_port}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def query(session: aiohttp.ClientSession, url: str, promql: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        answer = await response.json()
    assert answer["status"] == "success", f"{promql}: {answer}"
    return list(answer["data"]["result"])


async def _ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/-/ready") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def _load(client: aiohttp.ClientSession, gateway: GatewayProcess, rounds: int) -> None:
    """2xx, 424 (the model raised), 401 and mirrored copies on obs-ep; 429 for the endpoint's
    rate on obs-limited; 503 on obs-down."""
    for _ in range(rounds):
        await score(client, gateway, "obs-ep")
        await score(client, gateway, "obs-ep", headers={"azureml-model-deployment": "fail"})
    await score(client, gateway, "obs-ep", key="wrong-key")
    await asyncio.gather(*(score(client, gateway, "obs-limited") for _ in range(rounds)))
    await score(client, gateway, "obs-down")


def test_the_shipped_config_checks_with_promtool(tmp_path: Path) -> None:
    config = config_for_test(tmp_path, 8081)
    result = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


async def test_every_dashboard_query_and_rule_returns_series_from_a_real_prometheus(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await push_route(
        client,
        gateway,
        "obs-ep",
        {"blue": [backends["blue"].url], "fail": [backends["fail"].url], "green": [backends["green"].url]},
        {"blue": 100},
        mirror={"green": 50},
    )
    await push_route(
        client,
        gateway,
        "obs-limited",
        {"blue": [backends["blue"].url]},
        {"blue": 100},
        max_requests_per_second=1,
    )
    # An instance nobody listens on: held for request_timeout_ms, then 503.
    await push_route(
        client,
        gateway,
        "obs-down",
        {"gone": [f"http://127.0.0.1:{free_port()}"]},
        {"gone": 100},
        timeout_ms=100,
    )
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    rules = [
        rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    port = free_port()
    prometheus = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config_for_test(tmp_path, gateway.admin_port)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    empty: list[str] = []
    try:
        async with asyncio.timeout(GUARD_S):
            while not await _ready(client, url):
                await asyncio.sleep(0.2)
            await _load(client, gateway, 2)  # every series exists before the counted load
            series = 'tidegate_requests_total{endpoint="obs-limited", deployment=""}'
            while not await query(client, url, f"count_over_time({series}[1m]) > 1"):
                await asyncio.sleep(0.5)
            await _load(client, gateway, 10)
            # Until Prometheus has scraped the load and evaluated every rule over it.
            # (the rules of a group are evaluated together: once the first sees every deployment
            # of the load, so do the others)
            counted = 'count(endpoint_deployment:tidegate_requests:rate5m{deployment!=""} > 0) >= 5'
            scraped = 'sum(increase(tidegate_requests_total{endpoint="obs-ep", deployment=""}[1m])) > 20'
            while (
                not await query(client, url, scraped)
                or not await query(client, url, counted)
                or not all([await query(client, url, rule) for rule in rules])
            ):
                await asyncio.sleep(0.5)

            for title, expr in queries:
                if not await query(client, url, expr):
                    empty.append(f"{title}: {expr}")
            for rule in rules:
                if not await query(client, url, rule):
                    empty.append(f"rule {rule}")
            endpoints = await _label_values(client, url, "endpoint", "tidegate_requests_total")
            utilisation = await query(client, url, "tidegate_instance_utilisation")
            availability = await query(client, url, queries[0][1])
            errors = await query(client, url, "endpoint_deployment:tidegate_errors:ratio_rate5m")
            throttled = await query(client, url, "endpoint:tidegate_throttled_endpoint_rate:rate5m")
            titles = dict(queries)
            by_reason = await query(
                client, url, "endpoint_deployment_reason:tidegate_throttled_requests:rate5m"
            )
            per_deployment = await query(
                client, url, titles["Availability per deployment, last hour (the worst gateway's own count)"]
            )
            reason_panel = [expr for title, expr in queries if title == "429s/s by reason"]
            panel_by_reason = [await query(client, url, expr) for expr in reason_panel]
    finally:
        prometheus.terminate()
        prometheus.wait()

    assert not empty, "queries with no series:\n" + "\n".join(empty)
    assert {"obs-ep", "obs-limited"} <= set(endpoints)
    # The model instance keeps its id as model_instance; `instance` is the gateway scraped.
    assert {row["metric"].get("model_instance") for row in utilisation} >= {"blue-0", "fail-0"}
    assert {row["metric"]["instance"] for row in utilisation} == {f"127.0.0.1:{gateway.admin_port}"}
    by_endpoint = {row["metric"]["endpoint"]: float(row["value"][1]) for row in availability}
    # Unavailable: 5xx and 408 only (the default); a model that raised (424) or a limit (429)
    # is the model's or the client's.
    assert by_endpoint == {"obs-ep": 1.0, "obs-limited": 1.0, "obs-down": 0.0}
    ratios = {
        (row["metric"]["endpoint"], row["metric"].get("deployment", "")): float(row["value"][1])
        for row in errors
    }
    assert ratios[("obs-ep", "fail")] == 1.0
    assert ratios[("obs-ep", "blue")] == 0.0
    assert ratios[("obs-down", "gone")] == 1.0
    assert 0.0 < ratios[("obs-limited", "")] < 1.0
    rates = {row["metric"]["endpoint"]: float(row["value"][1]) for row in throttled}
    assert rates["obs-limited"] > 0.0
    assert rates["obs-ep"] == 0.0
    # 429s by reason: the endpoint's rate on obs-limited's own row, nothing on its deployment's.
    reasons = {
        (row["metric"]["endpoint"], row["metric"].get("deployment", ""), row["metric"]["reason"]): float(
            row["value"][1]
        )
        for row in by_reason
    }
    assert reasons[("obs-limited", "", "endpoint_rate")] > 0.0
    assert reasons[("obs-limited", "blue", "endpoint_rate")] == 0.0
    assert {reason for (_, _, reason) in reasons} == {
        "endpoint_rate",
        "instance_concurrency",
        "queue_wait",
        "model",
    }
    endpoint_rate, deployments = panel_by_reason
    assert {row["metric"]["reason"] for row in endpoint_rate} == {"endpoint_rate"}
    assert "obs-limited" in {row["metric"]["endpoint"] for row in endpoint_rate}
    assert {row["metric"]["deployment"] for row in deployments} >= {"blue", "fail", "gone"}
    assert "endpoint_rate" not in {row["metric"]["reason"] for row in deployments}
    # Each deployment on what it served: the 503s are gone's; fail's 424s are not failures.
    availability_by_deployment = {
        (row["metric"]["endpoint"], row["metric"]["deployment"]): float(row["value"][1])
        for row in per_deployment
    }
    assert availability_by_deployment[("obs-down", "gone")] == 0.0
    assert availability_by_deployment[("obs-ep", "blue")] == 1.0
    assert availability_by_deployment[("obs-ep", "fail")] == 1.0
    assert availability_by_deployment[("obs-limited", "blue")] == 1.0
    assert "" not in {deployment for _, deployment in availability_by_deployment}


async def _label_values(session: aiohttp.ClientSession, url: str, label: str, metric: str) -> list[str]:
    """What the dashboard's `label_values(metric, label)` variable lists."""
    async with session.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric}) as response:
        answer = await response.json()
    return list(answer["data"])
