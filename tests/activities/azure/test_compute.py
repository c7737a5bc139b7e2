"""The azure compute provider through the real azure-mgmt-compute/-network SDKs, over TLS,
against the fake ARM (tests/fakes/arm), whose VMs are real processes running the provider's
own custom data: a venv built as the host builds it, and azmlinfsrv serving score.py.

The tests run in order and share one fake: deployment `ep1/blue` is created by the first and
deleted by the last."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

import aiohttp
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.azure.arm import ResumeToken
from activities.azure.compute import AzureComputeProvider
from activities.azure.scale_sets import scale_set_name
from activities.compute import ComputeActivities
from config.contract.activities import (
    DeleteInstancesInput,
    GetInstancesInput,
    RequestInstancesInput,
    WatchInstancesInput,
)
from config.host_api import DeploymentInstances
from tests.activities.azure.conftest import RESOURCE_GROUP, Artifacts, runtime
from tests.fakes.arm.client import FakeArmProcess
from tests.support.polling import eventually

PUT = "virtualMachineScaleSets.createOrUpdate"
BLUE = GetInstancesInput(endpoint="ep1", deployment="blue")


def blue_request(artifacts: Artifacts) -> RequestInstancesInput:
    return RequestInstancesInput(
        runtime=runtime(artifacts, "ep1", "blue"), instance_count=2, instance_type="Standard_D2s_v5"
    )


async def ready_count(provider: AzureComputeProvider) -> int:
    status = await provider.get_instances(BLUE)
    return sum(1 for i in status.instances if i.state == "ready")


async def test_scale_set_of_two_serves_score_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    status = await provider.request_instances(blue_request(artifacts))
    assert len(status.instances) == 2
    await eventually(lambda: _all_ready(provider, 2), "two healthy VMs", polls=1200, every=0.25)

    status = await provider.get_instances(BLUE)
    urls = sorted(i.url for i in status.instances)
    hosts = {u.split("//")[1].split(":")[0] for u in urls}
    assert len(hosts) == 2 and all(h.startswith(fake_arm.subnet_prefix + ".") for h in hosts)
    rows = [[1.5], [4.0]]
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.post(f"{url}/score", json={"data": rows}) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == pytest.approx(artifacts.expected(rows))
    state = await fake_arm.state()
    [scale_set] = [s for s in state["scale_sets"] if s["name"] == scale_set_name("ep1", "blue")]
    assert scale_set["sku"] == "Standard_D2s_v5" and scale_set["capacity"] == 2
    for vm in scale_set["vms"]:  # each VM built the conda file's environment on its own disk
        [build_log] = (fake_arm.state_dir / scale_set["name"] / vm["instance_id"] / "disk" / "envs").glob(
            "*.build.log"
        )
        assert "scikit-learn" in build_log.read_text() and "joblib" in build_log.read_text()


async def _all_ready(provider: AzureComputeProvider, n: int) -> bool:
    return await ready_count(provider) == n


async def test_scale_set_same_request_twice_is_one_change_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    before = await fake_arm.state()
    await provider.request_instances(blue_request(artifacts))
    after = await fake_arm.state()
    name = scale_set_name("ep1", "blue")
    assert after["requests"][PUT] == before["requests"][PUT] + 1  # the PUT was made...
    assert after["changes"][name] == before["changes"][name] == 1  # ...and changed nothing
    pids = lambda s: [vm["pid"] for x in s["scale_sets"] if x["name"] == name for vm in x["vms"]]  # noqa: E731
    assert pids(after) == pids(before)


async def test_scale_set_killed_vm_reported_by_changes_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    first = await provider.changes(0, 5.0)
    [blue] = [d for d in first.deployments if d.deployment == "blue"]
    assert [i.state for i in blue.instances] == ["ready", "ready"]

    await fake_arm.kill(scale_set_name("ep1", "blue"), "0")
    changed = await provider.changes(first.sequence, 30.0)
    [blue] = [d for d in changed.deployments if d.deployment == "blue"]
    states = {i.id: i.state for i in blue.instances}
    assert states[f"{scale_set_name('ep1', 'blue')}_0"] == "failed"
    assert states[f"{scale_set_name('ep1', 'blue')}_1"] == "ready"
    assert changed.sequence > first.sequence
    status = await provider.get_instances(BLUE)
    assert sorted(i.state for i in status.instances) == ["failed", "ready"]
    [dead] = [i for i in status.instances if i.state == "failed"]
    assert dead.error is not None and "PowerState/stopped" in dead.error


async def test_scale_set_watch_returns_when_a_vm_dies_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    now = await provider.changes(0, 5.0)
    [blue] = [d for d in now.deployments if d.deployment == "blue"]
    watching = asyncio.create_task(
        provider.watch_instances(WatchInstancesInput(**BLUE.model_dump(), since_version=blue.version))
    )
    await fake_arm.kill(scale_set_name("ep1", "blue"), "1")
    seen = await watching
    assert seen.version > blue.version
    assert [i.state for i in seen.instances] == ["failed", "failed"]


async def test_scale_set_throttled_reads_complete_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    before = await fake_arm.state()
    await fake_arm.fault(throttle={"count": 3, "retry_after": 1})
    status = await provider.get_instances(BLUE)
    assert len(status.instances) == 2
    after = await fake_arm.state()
    throttled = sum(after["throttled"].values()) - sum(before["throttled"].values())
    assert throttled == 3  # the SDK tried again, three times...
    waits = after["throttle_waits"][len(before["throttle_waits"]) :]
    assert len(waits) == 3 and all(wait >= 0.9 for wait in waits)  # ...each after the Retry-After


async def test_scale_set_transient_5xx_is_retried_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    await fake_arm.fault(errors={"count": 2, "status": 503})
    status = await provider.get_instances(BLUE)
    assert len(status.instances) == 2
    assert sum((await fake_arm.state())["faulted"].values()) == 2


async def test_scale_set_quota_exceeded_fails_non_retryable_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    message = (
        "Operation could not be completed as it results in exceeding approved standardDSv5Family Cores quota."
    )
    await fake_arm.fault(operation={"polls": 2, "error": {"code": "QuotaExceeded", "message": message}})
    request = RequestInstancesInput(runtime=runtime(artifacts, "ep1", "big"), instance_count=40)
    with pytest.raises(ApplicationError) as caught:
        await provider.request_instances(request)
    assert caught.value.non_retryable
    assert caught.value.type == "QuotaExceeded"
    assert "QuotaExceeded" in str(caught.value) and "standardDSv5Family" in str(caught.value)
    state = await fake_arm.state()
    [big] = [s for s in state["scale_sets"] if s["name"] == scale_set_name("ep1", "big")]
    assert big["provisioning_state"] == "Failed" and big["vms"] == []
    await provider.delete_instances(DeleteInstancesInput(endpoint="ep1", deployment="big"))


async def test_scale_set_retried_create_resumes_the_same_operation_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    """The worker dies mid-create: the next attempt resumes the operation from the heartbeat."""
    activities = ComputeActivities(provider)
    request = RequestInstancesInput(runtime=runtime(artifacts, "ep1", "green"), instance_count=0)
    before = (await fake_arm.state())["requests"][PUT]
    await fake_arm.fault(operation={"polls": 3})  # stays InProgress for three status reads

    first = ActivityEnvironment()
    beats: list[object] = []
    first.on_heartbeat = lambda *details: (beats.extend(details), first.cancel())
    with pytest.raises(asyncio.CancelledError):
        await first.run(activities.request_instances, request)
    assert beats, "the first attempt heartbeat its continuation token"
    saved = ResumeToken.model_validate(beats[-1])
    assert saved.operation == "createOrUpdate" and saved.resource == scale_set_name("ep1", "green")

    assert fake_arm.token not in json.dumps(beats)  # the token never reaches workflow history

    second = ActivityEnvironment()
    second.info = dataclasses.replace(
        ActivityEnvironment.default_info(), attempt=2, heartbeat_details=[beats[-1]]
    )
    status = await second.run(activities.request_instances, request)
    assert isinstance(status, DeploymentInstances) and status.deployment == "green"
    state = await fake_arm.state()
    assert state["requests"][PUT] == before + 1  # one PUT: the second attempt only polled
    [green] = [s for s in state["scale_sets"] if s["name"] == scale_set_name("ep1", "green")]
    assert green["provisioning_state"] == "Succeeded"
    await provider.delete_instances(DeleteInstancesInput(endpoint="ep1", deployment="green"))


async def test_fake_arm_deletes_one_instance_through_the_sdk(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    """The fake's delete-instances (a replace-one step to come): the SDK's poller completes,
    capacity drops by one and that VM's process is gone."""
    name = scale_set_name("ep1", "blue")
    [before] = [s for s in (await fake_arm.state())["scale_sets"] if s["name"] == name]
    poller = await provider.compute.virtual_machine_scale_sets.begin_delete_instances(
        RESOURCE_GROUP, name, {"instanceIds": ["1"]}
    )
    await poller.result()
    [after] = [s for s in (await fake_arm.state())["scale_sets"] if s["name"] == name]
    assert (before["capacity"], after["capacity"]) == (2, 1)
    assert [vm["instance_id"] for vm in after["vms"]] == ["0"]
    status = await provider.get_instances(BLUE)
    assert [i.id for i in status.instances] == [f"{name}_0"]


async def test_scale_set_delete_leaves_nothing_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    state = await fake_arm.state()
    pids = [vm["pid"] for s in state["scale_sets"] for vm in s["vms"] if vm["pid"]]
    before = await provider.changes(0, 5.0)
    await provider.delete_instances(DeleteInstancesInput(endpoint="ep1", deployment="blue"))
    await provider.delete_instances(DeleteInstancesInput(endpoint="ep1", deployment="blue"))  # gone: success
    assert (await fake_arm.state())["scale_sets"] == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ApplicationError, match="no scale set"):
        await provider.get_instances(BLUE)
    gone = await provider.changes(before.sequence, 30.0)  # the watcher hears of it once
    assert [(d.deployment, d.instances) for d in gone.deployments] == [("blue", [])]


async def test_fake_arm_refuses_other_api_versions_and_tokens(fake_arm: FakeArmProcess) -> None:
    group = f"{fake_arm.url}/subscriptions/s/resourceGroups/rg"
    path = f"{group}/providers/Microsoft.Compute/virtualMachineScaleSets"
    async with fake_arm.session() as session:
        async with session.get(path, params={"api-version": "2024-07-01"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "InvalidApiVersionParameter"
        async with session.get(
            path, params={"api-version": "2026-04-01"}, headers={"Authorization": "Bearer wrong"}
        ) as response:
            assert response.status == 401


async def test_scale_set_watcher_reads_one_list_per_round_and_one_per_scale_set_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    """ARM's read budget: a watch round costs 1 + N reads for N deployments, whoever asks."""
    names = [f"d{i}" for i in range(6)]
    await asyncio.gather(
        *(
            provider.request_instances(
                RequestInstancesInput(runtime=runtime(artifacts, "ep2", n), instance_count=0)
            )
            for n in names
        )
    )

    async def all_watched() -> bool:
        found = await provider.changes(0, 1.0)
        return {d.deployment for d in found.deployments if d.endpoint == "ep2"} == set(names)

    await eventually(all_watched, "the watcher knows all six", polls=100)
    since = (await provider.changes(0, 0.0)).sequence
    before = (await fake_arm.state())["requests"]
    for _ in range(3):  # nothing changes: each call waits out a round or two
        since = (await provider.changes(since, 0.6)).sequence
    after = (await fake_arm.state())["requests"]
    spent = {op: count - before.get(op, 0) for op, count in after.items() if count != before.get(op, 0)}
    rounds = spent["virtualMachineScaleSets.list"]
    assert rounds >= 3
    assert spent == {
        "virtualMachineScaleSets.list": rounds,
        "virtualMachineScaleSetVMs.list": rounds * len(names),
    }
    await asyncio.gather(
        *(provider.delete_instances(DeleteInstancesInput(endpoint="ep2", deployment=n)) for n in names)
    )
    assert (await fake_arm.state())["scale_sets"] == []
