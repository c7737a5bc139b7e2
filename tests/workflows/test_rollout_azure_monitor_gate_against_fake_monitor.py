"""A rollout gated on an Azure Monitor metric (`source: azure_monitor`): RolloutWorkflow and the real
EndpointWorkflow on a Temporal dev server, the real `read_azure_metric` activity and
azure-monitor-querymetrics SDK against the fake metrics server (tests/fakes/monitor.py). Route
pushes and the gateways' windows are the recorded ones of test_rollout_workflow."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.monitor import AzureMetricActivities
from config.settings import Settings
from tests.support.fake_monitor import FakeMonitor, StaticToken, run_fake_monitor
from tests.workflows.recorders import Recorder
from tests.workflows.test_rollout_workflow import Rig
from workflows.rollout import RolloutWorkflow

DATABASE = "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Sql/servers/s1/databases/{name}"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeMonitor]:
    with run_fake_monitor(tmp_path_factory.mktemp("fake-monitor")) as running:
        yield running


class AzureRig(Rig):
    """The rollout rig plus the real Azure Monitor activity, pointed at the fake."""

    def __init__(self, env: WorkflowEnvironment, fake: FakeMonitor, home: Path) -> None:
        super().__init__(env, Recorder(), f"tq-{uuid.uuid4()}")
        settings = Settings(home=home, azure_metrics_endpoint=fake.url, azure_ca_file=fake.ca_file)
        self.azure = AzureMetricActivities(settings, credential=StaticToken())

    def activities(self) -> list:
        return [*super().activities(), self.azure.read_azure_metric]


@pytest_asyncio.fixture
async def rig(
    temporal_dev: WorkflowEnvironment, fake: FakeMonitor, tmp_path: Path
) -> AsyncIterator[AzureRig]:
    rig = AzureRig(temporal_dev, fake, tmp_path)
    async with rig.worker():
        yield rig
    await rig.azure.close()


async def deadlocks(fake: FakeMonitor, per_minute: float, *, minutes: range) -> str:
    """A database whose `deadlock` Total is `per_minute` in each minute of `minutes` (relative to
    now); the rest of the hour has no value."""
    resource = DATABASE.format(name=f"db-{uuid.uuid4().hex[:8]}")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    points = {
        (now + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"): {"total": per_minute} for m in minutes
    }
    await fake.put_series(resource, "deadlock", points)
    return resource


def gated(resource: str, **gate: object) -> dict[str, object]:
    return {
        "steps": [{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "1s"}],
        "gates": [
            {
                "name": "no deadlocks",
                "source": "azure_monitor",
                "azure_monitor": {"resource_id": resource, "metric": "deadlock", "aggregation": "Total"},
                "op": "<=",
                "threshold": 5,
                "window": "5m",
                **gate,
            }
        ],
        "check_interval": "200ms",
        "failure_limit": 2,
        "after_success": {"keep_previous_for": "1s", "then": "keep"},
    }


async def test_a_healthy_azure_metric_lets_the_rollout_through(rig: AzureRig, fake: FakeMonitor) -> None:
    resource = await deadlocks(fake, 1.0, minutes=range(-30, 5))  # 5 in a settled 5-minute window
    endpoint = await rig.endpoint_with_blue_and_green()
    final = await (await rig.start(endpoint, **gated(resource))).result()
    assert final.phase == "Succeeded"
    assert rig.green_weights() == [0, 10, 50, 100]
    assert any(r["body"] == {"resourceids": [resource]} for r in await fake.received())


async def test_a_failing_azure_metric_rolls_back_with_its_numbers(rig: AzureRig, fake: FakeMonitor) -> None:
    resource = await deadlocks(fake, 10.0, minutes=range(-30, 5))
    endpoint = await rig.endpoint_with_blue_and_green()
    rollout = await rig.start(endpoint, **gated(resource))
    final = await rollout.result()
    assert final.phase == "RolledBack"
    assert rig.green_weights() == [0, 10, 0]
    assert "deadlock (Total) 50 > 5 (5 of 5 settled minutes)" in (final.reason or "")
    # The new path is deterministic: its history replays.
    history = await rollout.fetch_history()
    await Replayer(workflows=[RolloutWorkflow], data_converter=rig.env.client.data_converter).replay_workflow(
        history
    )


async def test_only_fresh_minutes_are_no_data_and_on_no_data_fail_rolls_back(
    rig: AzureRig, fake: FakeMonitor
) -> None:
    # Zero deadlocks, but only in minutes too fresh to trust: no data, never a pass.
    resource = await deadlocks(fake, 0.0, minutes=range(-1, 5))
    endpoint = await rig.endpoint_with_blue_and_green()
    final = await (await rig.start(endpoint, **gated(resource, on_no_data="fail"))).result()
    assert final.phase == "RolledBack"
    assert rig.green_weights() == [0, 10, 0]
    assert "deadlock (Total): no data: 0 of 5 settled minutes have a value" in (final.reason or "")


async def test_a_metric_azure_does_not_know_is_no_data_naming_azures_message(
    rig: AzureRig, fake: FakeMonitor
) -> None:
    resource = DATABASE.format(name="never-measured")
    endpoint = await rig.endpoint_with_blue_and_green()
    final = await (await rig.start(endpoint, **gated(resource, on_no_data="fail"))).result()
    assert final.phase == "RolledBack"
    assert "Azure Monitor read failed" in (final.reason or "")
    assert "Failed to find metric configuration" in (final.reason or "")
