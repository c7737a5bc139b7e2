"""Rolling updates of a scale set (upgrade policy Manual) through the real SDKs against the fake
ARM: a new spec rolls VM by VM with a surge of one, stepped by the shared watcher's rounds (here
`changes`, called as the worker's watcher calls it); a new VM that fails halts it with the old
VMs serving; the old spec put back deletes the failed VM and keeps the old ones.

The tests run in order and share one fake and deployment `ep1/roll`."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from activities.azure.compute import AzureComputeProvider
from activities.azure.credentials import GivenTokenCredential
from activities.azure.scale_sets import scale_set_name
from config.contract.activities import DeleteInstancesInput, GetInstancesInput, RequestInstancesInput
from config.host_api import DeploymentInstances
from config.settings import Settings
from tests.activities.azure.conftest import RESOURCE_GROUP, Artifacts, runtime
from tests.fakes.arm.client import FakeArmProcess
from tests.host.helpers import INIT_FAILS_PY

ROLL = GetInstancesInput(endpoint="ep1", deployment="roll")
NAME = scale_set_name("ep1", "roll")
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
ROUNDS = 600  # watcher rounds a step may take at most (each waits up to a second for news)


@pytest_asyncio.fixture(scope="module")
async def provider(
    fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AzureComputeProvider]:
    settings = Settings(
        home=tmp_path_factory.mktemp("azure-home"),
        azure_drain_seconds=1.0,
        **fake_arm.azure_settings(RESOURCE_GROUP, watch_interval=0.5),
    )
    provider = AzureComputeProvider(settings, credential=GivenTokenCredential(fake_arm.token))
    try:
        yield provider
    finally:
        await provider.close()


def request(artifacts: Artifacts, spec: str, *, surge: int = 1) -> RequestInstancesInput:
    return RequestInstancesInput(
        runtime=runtime(artifacts, "ep1", "roll", spec_hash=spec),
        instance_count=2,
        instance_type="Standard_D2s_v5",
        max_surge=surge,
    )


@dataclass
class Watched:
    """Every status the watcher reported while following the deployment."""

    seen: list[DeploymentInstances] = field(default_factory=list)

    def most_vms(self) -> int:
        return max(len(s.instances) for s in self.seen)

    def least_ready(self) -> int:
        return min(sum(1 for i in s.instances if i.state == "ready") for s in self.seen)


async def follow(
    provider: AzureComputeProvider, until: object, watched: Watched, deployment: str = "roll"
) -> DeploymentInstances:
    """Call `changes` as the worker's watcher does (each round steps the rolling update) until
    the deployment's status satisfies `until`."""
    assert callable(until)
    since = 0
    for _ in range(ROUNDS):
        found = await provider.changes(since, 1.0)
        since = found.sequence
        for status in found.deployments:
            if status.deployment == deployment:
                watched.seen.append(status)
                if until(status):
                    return status
    raise AssertionError(f"never reached; last seen {watched.seen[-1:] if watched.seen else None}")


def all_on(spec: str, count: int = 2) -> object:
    return lambda s: (
        len(s.instances) == count and all(i.spec_hash == spec and i.state == "ready" for i in s.instances)
    )


def vm_specs(state: dict, name: str = NAME) -> dict[str, str]:
    [scale_set] = [s for s in state["scale_sets"] if s["name"] == name]
    return {
        vm["instance_id"]: json.loads(base64.b64decode(vm["user_data"]))["tidegate-spec-hash"]
        for vm in scale_set["vms"]
    }


async def test_scale_set_upgrade_policy_is_manual_and_each_vm_says_its_spec_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    await provider.request_instances(request(artifacts, "v1", surge=0))
    await follow(provider, all_on("v1"), Watched())
    state = await fake_arm.state()
    [scale_set] = [s for s in state["scale_sets"] if s["name"] == NAME]
    assert scale_set["upgrade_policy"] == "Manual"
    assert vm_specs(state) == {"0": "v1", "1": "v1"}


async def test_scale_set_new_spec_rolls_vm_by_vm_with_surge_one_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, artifacts: Artifacts
) -> None:
    before = (await fake_arm.state())["requests"]
    first = await provider.request_instances(request(artifacts, "v2"))
    # The PUT changed the model and added one VM; the old ones still run their own model.
    assert sorted(i.spec_hash for i in first.instances) == ["v1", "v1", "v2"]
    watched = Watched()
    await follow(provider, all_on("v2"), watched)
    assert watched.most_vms() <= 3, "more than instance_count + max_surge VMs"
    assert watched.least_ready() >= 2, "fewer than instance_count VMs served during the update"
    states = {i.state for s in watched.seen for i in s.instances}
    assert "draining" in states  # a leaving VM left the routes before it was deleted
    state = await fake_arm.state()
    assert vm_specs(state) == {"2": "v2", "3": "v2"}
    spent = {op: n - before.get(op, 0) for op, n in state["requests"].items() if n != before.get(op, 0)}
    print(f"ARM requests for rolling 2 VMs (surge 1): {spent}")
    assert spent["virtualMachineScaleSets.createOrUpdate"] == 1
    assert spent["virtualMachineScaleSets.deleteInstances"] == 2  # one per old VM
    assert spent["virtualMachineScaleSets.update"] >= 2  # the second new VM, the drain marks


async def test_scale_set_failing_new_vm_halts_and_the_old_spec_put_back_keeps_the_old_vms_against_fake_arm(
    provider: AzureComputeProvider,
    fake_arm: FakeArmProcess,
    artifacts: Artifacts,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    broken_code = tmp_path_factory.mktemp("broken-code")
    (broken_code / "score.py").write_text(INIT_FAILS_PY)
    bad = request(artifacts, "v3")
    bad.runtime = bad.runtime.model_copy(update={"code_dir": str(broken_code)})
    await provider.request_instances(bad)
    watched = Watched()
    halted = await follow(
        provider, lambda s: any(i.spec_hash == "v3" and i.state == "failed" for i in s.instances), watched
    )
    assert sorted((i.spec_hash, i.state) for i in halted.instances) == [
        ("v2", "ready"),
        ("v2", "ready"),
        ("v3", "failed"),
    ]
    [failed] = [i for i in halted.instances if i.state == "failed"]
    # Why, in the VM's own words: the end of its serial console (boot diagnostics).
    assert failed.error and "init could not load the model (on purpose)" in failed.error, failed.error
    # Halted: more rounds start nothing and retire nothing.
    for _ in range(4):
        await provider.changes(0, 0.6)
    assert len(vm_specs(await fake_arm.state())) == 3

    await provider.request_instances(request(artifacts, "v2"))  # what the workflow does next
    await follow(provider, all_on("v2"), watched)
    assert vm_specs(await fake_arm.state()) == {"2": "v2", "3": "v2"}  # the same old VMs serve
    assert watched.least_ready() >= 2


async def test_scale_set_rolling_deployment_deleted_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess
) -> None:
    await provider.delete_instances(DeleteInstancesInput(endpoint="ep1", deployment="roll"))
    assert [s["name"] for s in (await fake_arm.state())["scale_sets"]] == []


async def test_scale_set_takes_the_gallery_images_newest_version_and_a_host_patch_the_next_against_fake_arm(
    fake_arm: FakeArmProcess, artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gallery_image = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute"
        "/galleries/g1/images/host"
    )
    for version in ("1.0.9", "1.0.10"):
        await fake_arm.publish_image_version(gallery_image, version)
    settings = Settings(
        home=tmp_path_factory.mktemp("azure-home"),
        azure_image=gallery_image,
        azure_drain_seconds=0.5,
        **fake_arm.azure_settings(RESOURCE_GROUP, watch_interval=0.5),
    )
    gallery = AzureComputeProvider(settings, credential=GivenTokenCredential(fake_arm.token))
    try:
        first = request(artifacts, "p0", surge=0)
        first.runtime = first.runtime.model_copy(update={"deployment": "patched"})
        await gallery.request_instances(first)
        name = scale_set_name("ep1", "patched")
        images = lambda state: [  # noqa: E731
            vm["image"]["id"] for s in state["scale_sets"] if s["name"] == name for vm in s["vms"]
        ]
        await follow(gallery, all_on("p0"), Watched(), "patched")
        assert images(await fake_arm.state()) == [f"{gallery_image}/versions/1.0.10"] * 2
        await fake_arm.publish_image_version(gallery_image, "1.1.0")
        # What `tidegate host patch` asks: the next runtime patch level, a new spec.
        patched = request(artifacts, "p1")
        patched.runtime = patched.runtime.model_copy(
            update={
                "deployment": "patched",
                "environment": first.runtime.environment.model_copy(update={"patch": 1}),
            }
        )
        await gallery.request_instances(patched)
        watched = Watched()
        await follow(gallery, all_on("p1"), watched, "patched")
        assert images(await fake_arm.state()) == [f"{gallery_image}/versions/1.1.0"] * 2
        assert watched.least_ready() >= 2 and watched.most_vms() <= 3
        # The tags remember both choices: the patched image, and the one a failed patch goes back to.
        state = await fake_arm.state()
        [scale_set] = [s for s in state["scale_sets"] if s["name"] == name]
        assert scale_set["tags"]["tidegate-image"] == f"1=p1={gallery_image}/versions/1.1.0"
        assert scale_set["tags"]["tidegate-image-before"] == f"0=p0={gallery_image}/versions/1.0.10"
        await gallery.delete_instances(DeleteInstancesInput(endpoint="ep1", deployment="patched"))
    finally:
        await gallery.close()
