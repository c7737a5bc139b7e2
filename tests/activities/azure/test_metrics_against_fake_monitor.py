"""`azure` metrics against a fake of Azure Monitor's metrics data plane (tests/fakes/monitor.py, its
own process, TLS from trustme, a static bearer token): the real azure-monitor-querymetrics
`MetricsClient` sends real HTTPS requests, and the series the fake serves are set per test,
including missing, zero and late minutes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.monitor.querymetrics.aio import MetricsClient
from temporalio.exceptions import ApplicationError

from activities.azure.monitor import AzureMonitorReader
from activities.monitor import AzureMetricActivities
from config.azure_metrics import MetricQuery
from config.contract.activities import ReadAzureMetricInput
from config.contract.errors import BadRequest, NotFound, OperationFailed
from config.settings import Settings
from tests.support.fake_monitor import TOKEN, FakeMonitor, StaticToken, run_fake_monitor

NOW = datetime(2026, 11, 29, 12, 10, 30, tzinfo=UTC)  # settled minutes of a 5m window: 12:02 … 12:06
Fake = FakeMonitor


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeMonitor]:
    with run_fake_monitor(tmp_path_factory.mktemp("fake-monitor")) as running:
        yield running


def scale_set() -> str:
    name = f"vmss-{uuid.uuid4().hex[:8]}"
    return (
        f"/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )


def ml_endpoint() -> str:
    name = f"ep-{uuid.uuid4().hex[:8]}"
    return (
        "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
        f"workspaces/ws/onlineEndpoints/{name}"
    )


def minute(m: int) -> str:
    return NOW.replace(minute=m, second=0).strftime("%Y-%m-%dT%H:%M:%SZ")


async def put_series(
    fake: Fake,
    resource_id: str,
    metric: str,
    points: dict[int, dict[str, float]],
    *,
    unit: str = "Percent",
    **dimensions: str,
) -> None:
    by_minute = {minute(m): values for m, values in points.items()}
    await fake.put_series(resource_id, metric, by_minute, unit=unit, dimensions=dimensions)


async def received(fake: Fake) -> list[dict[str, Any]]:
    return await fake.received()


@pytest.fixture
async def reader(fake: Fake) -> AsyncIterator[tuple[AzureMonitorReader, StaticToken]]:
    credential = StaticToken(TOKEN)
    settings = Settings(azure_metrics_endpoint=fake.url, azure_ca_file=fake.ca_file)
    built = AzureMonitorReader.from_settings(settings, credential=credential)
    yield built, credential
    await built.close()


async def test_a_scale_sets_cpu_memory_and_availability_come_from_settled_minutes(
    fake: Fake, reader: tuple[AzureMonitorReader, StaticToken]
) -> None:
    vmss = scale_set()
    cpu = {m: {"average": 10.0 * (m - 1)} for m in range(2, 7)}  # 10 … 50
    cpu.update({m: {"average": 0.0} for m in (7, 8, 9)})  # the newest minutes, published as 0
    await put_series(fake, vmss, "Percentage CPU", cpu)
    memory = {m: {"minimum": 2e9 - m * 1e8, "average": 3e9} for m in range(2, 10)}
    await put_series(fake, vmss, "Available Memory Bytes", memory, unit="Bytes")
    availability = {m: {"average": 1.0} for m in (2, 3, 5, 6)}  # 12:04 missing
    availability[4] = {}
    await put_series(fake, vmss, "VmAvailabilityMetric", availability, unit="Unspecified")

    monitor, credential = reader
    metrics = await monitor.scale_set_metrics(vmss, window_seconds=300, now=NOW)

    assert metrics.cpu_percent == 30.0  # not dragged down by the fresh zeros
    assert metrics.available_memory_bytes == 2e9 - 6 * 1e8  # 12:07 … 12:09 are too fresh
    assert metrics.availability == 1.0
    assert metrics.selections["VmAvailabilityMetric"].missing == 1
    assert metrics.selections["Percentage CPU"].fresh == 4  # 12:07 … 12:10, listed empty or 0
    assert credential.scopes == [("https://metrics.monitor.azure.com/.default",)]
    last = (await received(fake))[-1]
    assert last["path"] == "/subscriptions/sub-1/metrics:getBatch"
    assert last["body"] == {"resourceids": [vmss]}
    assert last["query"]["api-version"] == "2024-02-01"
    assert last["query"]["metricnames"] == "Percentage CPU,Available Memory Bytes,VmAvailabilityMetric"
    assert last["query"]["aggregation"] == "Average,Minimum"
    assert last["query"]["metricnamespace"] == "Microsoft.Compute/virtualMachineScaleSets"
    assert (last["query"]["interval"], "filter" in last["query"]) == ("PT1M", False)


async def test_any_metric_of_any_resource_is_read_through_a_dimension_filter(
    fake: Fake, reader: tuple[AzureMonitorReader, StaticToken]
) -> None:
    endpoint = ml_endpoint()
    green = {m: {"maximum": 100.0 + m} for m in range(2, 10)}
    blue = {m: {"maximum": 900.0} for m in range(2, 10)}
    await put_series(fake, endpoint, "RequestLatency_P99", green, unit="Milliseconds", deployment="green")
    await put_series(fake, endpoint, "RequestLatency_P99", blue, unit="Milliseconds", deployment="blue")
    query = MetricQuery(
        resource_id=endpoint,
        metric="RequestLatency_P99",
        aggregation="Maximum",
        filter="deployment eq 'green'",
        window_seconds=300,
    )
    monitor, _ = reader
    read = await monitor.read_metric(query, now=NOW)

    assert read.selection.value == 106.0  # green's worst settled minute, 12:06
    assert [s.dimensions for s in read.series] == [{"deployment": "green"}]
    assert read.unit == "Milliseconds"
    last = (await received(fake))[-1]
    assert last["query"]["filter"] == "deployment eq 'green'"
    assert last["query"]["metricnamespace"] == "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"

    everything = await monitor.read_metric(query.model_copy(update={"filter": None}), now=NOW)
    assert everything.selection.value == 900.0  # unfiltered: Azure's series over every deployment


async def test_missing_minutes_are_no_data_until_the_late_ones_arrive(
    fake: Fake, reader: tuple[AzureMonitorReader, StaticToken]
) -> None:
    endpoint = ml_endpoint()
    query = MetricQuery(
        resource_id=endpoint, metric="RequestsPerMinute", aggregation="Total", window_seconds=300
    )
    # Only 12:06 settled so far; the fresh minutes already show traffic that would pass any gate.
    await put_series(
        fake, endpoint, "RequestsPerMinute", {6: {"total": 40.0}, 8: {"total": 50.0}}, unit="Count"
    )
    monitor, _ = reader

    early = await monitor.read_metric(query, now=NOW)
    assert early.selection.value is None
    assert (
        early.selection.reason == "no data: 1 of 5 settled minutes have a value (need 50%), 4 newer ignored"
    )

    late = {m: {"total": 40.0} for m in range(2, 10)}  # Azure Monitor fills the minutes in later
    await put_series(fake, endpoint, "RequestsPerMinute", late, unit="Count")
    revised = await monitor.read_metric(query, now=NOW)
    assert (revised.selection.value, revised.selection.counted) == (200.0, 5)


async def test_an_unknown_metric_is_a_bad_request_with_azures_message(
    fake: Fake, reader: tuple[AzureMonitorReader, StaticToken]
) -> None:
    monitor, _ = reader
    query = MetricQuery(resource_id=scale_set(), metric="Percentage GPU", window_seconds=300)
    with pytest.raises(BadRequest, match="BadRequest: Failed to find metric configuration"):
        await monitor.read_metric(query, now=NOW)


async def test_the_fake_refuses_an_api_version_the_sdk_does_not_send(fake: Fake) -> None:
    client = MetricsClient(
        fake.url, StaticToken(TOKEN), api_version="2023-10-01", connection_verify=str(fake.ca_file)
    )
    async with client:
        monitor = AzureMonitorReader(client)
        query = MetricQuery(resource_id=scale_set(), metric="Percentage CPU", window_seconds=300)
        with pytest.raises(BadRequest, match="InvalidApiVersionParameter"):
            await monitor.read_metric(query, now=NOW)


async def test_a_wrong_token_is_refused_and_not_echoed(fake: Fake) -> None:
    client = MetricsClient(fake.url, StaticToken("stolen-token"), connection_verify=str(fake.ca_file))
    async with client:
        monitor = AzureMonitorReader(client)
        with pytest.raises(OperationFailed) as refused:
            await monitor.scale_set_metrics(scale_set(), now=NOW)
    assert "InvalidAuthenticationToken" in str(refused.value) and "HTTP 401" in str(refused.value)
    assert "stolen-token" not in str(refused.value)


async def test_a_metric_the_answer_lacks_is_not_found(fake: Fake) -> None:
    """The batch answer names the metrics it has; one missing from it is not read as zero."""

    class OneMetricShort(MetricsClient):
        async def query_resources(self, **kwargs: Any) -> Any:
            results = await super().query_resources(**kwargs)
            for result in results:
                result.metrics._metrics.clear()
            return results

    vmss = scale_set()
    await put_series(fake, vmss, "Percentage CPU", {6: {"average": 5.0}})
    async with OneMetricShort(fake.url, StaticToken(TOKEN), connection_verify=str(fake.ca_file)) as client:
        with pytest.raises(NotFound, match="no metric 'Percentage CPU'"):
            await AzureMonitorReader(client).read_metric(
                MetricQuery(resource_id=vmss, metric="Percentage CPU"), now=NOW
            )


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"resource_id": "/subscriptions/x/vm"}, "resource_id"),
        ({"aggregation": "Median"}, "aggregation"),
        ({"window_seconds": 10}, "window_seconds"),
        ({"metric": ""}, "metric"),
    ],
    ids=["not_a_resource_id", "unknown_aggregation", "window_under_a_minute", "empty_metric"],
)
def test_a_bad_metric_query_names_the_field(given: dict[str, Any], field: str) -> None:
    base = {"resource_id": scale_set(), "metric": "Percentage CPU"}
    with pytest.raises(ValueError) as refused:
        MetricQuery.model_validate({**base, **given})
    assert json.loads(refused.value.json())[0]["loc"] == [field]  # type: ignore[attr-defined]


async def test_the_gate_activity_without_azure_settings_names_the_missing_setting(tmp_path: Path) -> None:
    activities = AzureMetricActivities(Settings(home=tmp_path), credential=StaticToken())
    query = MetricQuery(resource_id=scale_set(), metric="Percentage CPU")
    with pytest.raises(ApplicationError) as refused:
        await activities.read_azure_metric(ReadAzureMetricInput(query=query))
    assert refused.value.non_retryable and refused.value.type == "AzureMonitorNotConfigured"
    assert "TIDEGATE_AZURE_LOCATION" in str(refused.value)


async def test_the_gate_activity_reads_settled_minutes_through_the_fake(fake: Fake, tmp_path: Path) -> None:
    vmss = scale_set()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    points = {
        (now + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"): {"average": 20.0} for m in range(-20, 3)
    }
    await fake.put_series(vmss, "Percentage CPU", points, unit="Percent")
    settings = Settings(home=tmp_path, azure_metrics_endpoint=fake.url, azure_ca_file=fake.ca_file)
    activities = AzureMetricActivities(settings, credential=StaticToken())
    try:
        read = await activities.read_azure_metric(
            ReadAzureMetricInput(query=MetricQuery(resource_id=vmss, metric="Percentage CPU"))
        )
        with pytest.raises(ApplicationError) as refused:
            await activities.read_azure_metric(
                ReadAzureMetricInput(query=MetricQuery(resource_id=vmss, metric="Percentage GPU"))
            )
    finally:
        await activities.close()
    assert (read.value, read.counted, read.expected, read.unit) == (20.0, 5, 5, "Percent")
    assert refused.value.non_retryable and refused.value.type == "BadRequest"
