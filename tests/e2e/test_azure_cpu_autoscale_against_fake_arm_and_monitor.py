"""A CPU autoscale rule on the `azure` provider, end to end against the fake ARM and the fake
Azure Monitor: a whole local stack whose worker runs the deployment as a VM scale set (real
azure-mgmt-compute over TLS) and reads the scale set's `Percentage CPU` through the real
azure-monitor-querymetrics client. The CPU figures are set on the fake monitor by the test;
the scale-out is the workflow's, through the SDK, onto a new real VM process."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from activities.azure.monitor import AzureMonitorReader
from config.azure_metrics import MetricQuery
from decisions.metric_buckets import DEFAULT_SETTLE
from tests.e2e.project import deployment_yaml
from tests.fakes.arm.client import FakeArmProcess
from tests.support.fake_monitor import FakeMonitor, run_fake_monitor
from tests.support.polling import until
from tests.support.stack import LocalStack

EP = "cpu-ep"
SCALE_SET = "tg-cpu-ep-blue"
RESOURCE_GROUP = "tidegate-cpu"
CPU_RULE = """\
scale_settings:
  type: target_utilization
  metric: cpu
  min_instances: 1
  max_instances: 2
  target_utilization_percentage: 50
"""


@pytest.fixture(scope="module")
def monitor(fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeMonitor]:
    with run_fake_monitor(
        tmp_path_factory.mktemp("fake-monitor"), token=fake_arm.token, measuring=fake_arm
    ) as fake:
        yield fake


@pytest.fixture(scope="module")
def azure_stack(
    fake_arm: FakeArmProcess, monitor: FakeMonitor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    home = tmp_path_factory.mktemp("azure-cpu-home")
    # One CA file for the worker's Azure clients: the fake ARM's and the fake monitor's.
    bundle = home.parent / "azure-cas.pem"
    bundle.write_text(Path(fake_arm.ca_file).read_text() + monitor.ca_file.read_text())
    stack = LocalStack.create(home)
    stack.env.update(fake_arm.environment(RESOURCE_GROUP, watch_interval=1))
    stack.env.update({"TIDEGATE_AZURE_METRICS_ENDPOINT": monitor.url, "TIDEGATE_AZURE_CA_FILE": str(bundle)})
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def scale_set_id(fake_arm: FakeArmProcess) -> str:
    subscription = fake_arm.azure_settings(RESOURCE_GROUP, 1)["azure_subscription_id"]
    return (
        f"/subscriptions/{subscription}/resourceGroups/{RESOURCE_GROUP}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{SCALE_SET}"
    )


def busy_cpu_minutes(percent: float) -> dict[str, dict[str, float]]:
    """The last ten minutes at `percent` average CPU, as Azure Monitor lists settled minutes."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return {
        (now - timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"): {"average": percent}
        for m in range(1, 11)
    }


def vms(fake_arm: FakeArmProcess) -> list[dict[str, Any]]:
    found = [s for s in asyncio.run(fake_arm.state())["scale_sets"] if s["name"] == SCALE_SET]
    return list(found[0]["vms"]) if found else []


def test_a_cpu_rule_adds_a_vm_when_the_scale_sets_cpu_is_over_target_on_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, monitor: FakeMonitor, project: tuple[Path, dict]
) -> None:
    root, _ = project
    asyncio.run(
        monitor.put_series(scale_set_id(fake_arm), "Percentage CPU", busy_cpu_minutes(90.0), unit="Percent")
    )
    (root / "cpu-endpoint.yml").write_text(f"name: {EP}\nauth_mode: key\n")
    (root / "cpu-blue.yml").write_text(deployment_yaml("blue", "model-1", "code") + CPU_RULE)
    azure_stack.ok("online-endpoint", "create", "-f", "cpu-endpoint.yml", cwd=root)

    azure_stack.ok("online-deployment", "create", "-n", "blue", "-e", EP, "-f", "cpu-blue.yml", cwd=root)

    def shown_count() -> object:
        shown = azure_stack.json("online-deployment", "show", "-n", "blue", "-e", EP)
        return shown.get("instance_count") if isinstance(shown, dict) else None

    until(lambda: shown_count() == 2, what="show saying 2 instances")
    assert len(vms(fake_arm)) == 2
    asked = [r for r in asyncio.run(monitor.received()) if "Percentage CPU" in r["query"]["metricnames"]]
    assert asked and scale_set_id(fake_arm).lower() in str(asked[0]["body"]).lower()


def test_show_gives_the_scale_sets_platform_metrics_directly_and_over_rest_on_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, monitor: FakeMonitor
) -> None:
    """After the test above (90 % CPU): memory headroom and availability set too, read from the
    fake Azure Monitor when `show` asks."""
    resource = scale_set_id(fake_arm)
    memory = {m: {"minimum": 2.5e9} for m in busy_cpu_minutes(0)}
    up = {m: {"average": 1.0} for m in busy_cpu_minutes(0)}
    asyncio.run(monitor.put_series(resource, "Available Memory Bytes", memory, unit="Bytes"))
    asyncio.run(monitor.put_series(resource, "VmAvailabilityMetric", up, unit="Count"))
    api = f"http://127.0.0.1:{azure_stack.port('api')}"
    query = ("--query", "platform_metrics")

    direct = azure_stack.json("online-deployment", "show", "-n", "blue", "-e", EP, *query)
    over_rest = azure_stack.json("--api", api, "online-deployment", "show", "-n", "blue", "-e", EP, *query)

    expected = {"window": "PT5M", "cpu_percent": 90.0, "available_memory_bytes": 2.5e9, "availability": 1.0}
    assert direct == over_rest == expected


BURN_PY = """
import time

def init():
    pass

def run(raw_data):
    end = time.process_time() + 0.2  # 200 ms of CPU per request
    while time.process_time() < end:
        pass
    return "burnt"
"""


def test_the_fake_monitor_measures_a_vms_real_cpu_while_it_serves_on_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, monitor: FakeMonitor, project: tuple[Path, dict]
) -> None:
    """No series set by the test: the CPU is the VM process tree's own, read back through the
    real azure-monitor-querymetrics client the worker uses."""
    root, _ = project
    (root / "code-burn").mkdir(exist_ok=True)
    (root / "code-burn" / "score.py").write_text(BURN_PY)
    (root / "burn.yml").write_text(deployment_yaml("burn", "model-1", "code-burn"))
    azure_stack.ok("online-deployment", "create", "-n", "burn", "-e", EP, "-f", "burn.yml", cwd=root)
    key = azure_stack.key(EP)
    url = f"{azure_stack.http_base}/endpoints/{EP}/score"
    headers = {"Authorization": f"Bearer {key}", "azureml-model-deployment": "burn"}

    for _ in range(40):
        request = urllib.request.Request(url, data=b"{}", headers=headers)
        with urllib.request.urlopen(request) as response:
            assert response.status == 200

    resource = scale_set_id(fake_arm).replace(SCALE_SET, "tg-cpu-ep-burn")
    cpu = asyncio.run(current_minute(azure_stack, resource, "Percentage CPU"))
    up = asyncio.run(current_minute(azure_stack, resource, "VmAvailabilityMetric"))
    print(f"measured: {cpu:.1f} % CPU over the minute so far, availability {up}")
    assert cpu is not None and cpu > 1.0
    assert up == 1.0


async def current_minute(stack: LocalStack, resource: str, metric: str) -> float | None:
    """The metric's newest (still open) minute, which Tidegate itself never trusts: read with
    `now` moved past the settle time so that minute is the whole window."""
    reader = AzureMonitorReader.from_settings(stack.settings())  # the worker's own token and CAs
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        read = await reader.read_metric(
            MetricQuery(resource_id=resource, metric=metric, window_seconds=60),
            now=minute + DEFAULT_SETTLE + timedelta(minutes=1),
        )
    finally:
        await reader.close()
    return read.selection.value
