"""The gateways' host patch through the real SDKs over TLS against the fake ARM, whose gateway VMs
are real `tidegate gateway` processes: the scale set rolls onto a gallery image's newest version
one VM at a time, never with fewer running VMs than wanted, each new VM holding every endpoint's
route table before an old one goes; a new VM that stops is given up and the old ones stay.

No endpoint workflow runs here (nothing re-pushes): a new VM gets its tables only from the
patch, which copies them from the old gateways. The tests run in order on one fake."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from azure.mgmt.network.models import Subnet
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError

from activities.azure.credentials import GivenTokenCredential
from activities.azure.gateway_scale_set import TAG_GATEWAY_DRAINING, TAG_GATEWAY_IMAGE, TAG_GATEWAY_PATCHING
from activities.azure.gateway_tls import GATEWAYS_HOME
from activities.azure.network import AzureNetworkProvider
from activities.local.network import LocalNetworkProvider
from config.contract.activities import ApplyRouteInput, PatchGatewaysInput
from config.routes import HEALTH_PATH, EndpointRoute
from config.settings import Settings
from tests.activities.azure.conftest import RESOURCE_GROUP, azure_settings
from tests.fakes.arm.client import FakeArmProcess
from tests.gateway.conftest import Backend, route_body
from tests.support.polling import eventually
from tests.support.ports import free_port

GATEWAYS = "tg-gateways"
FAKE_ARM_RETRY_AFTER = 0  # operations done at the first status read
TOKEN = "gateway-patch-test-control-credential-0123456789"
GALLERY_IMAGE = (
    f"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/{RESOURCE_GROUP}"
    "/providers/Microsoft.Compute/galleries/tidegate/images/tidegate-gateway"
)
NEW_IMAGE = f"{GALLERY_IMAGE}/versions/1.0.1"
# Each endpoint's route as pushed once before the patches: what every gateway must hold.
GENERATIONS = {"alpha": 1_700_000_000_001, "beta": 1_700_000_000_002}


@pytest_asyncio.fixture(scope="module")
async def fake_arm(fake_arm: FakeArmProcess) -> FakeArmProcess:
    """The module's fake ARM (conftest.py) with the hosts' gallery image published."""
    await fake_arm.publish_image_version(GALLERY_IMAGE, "1.0.0")
    return fake_arm


@pytest.fixture(scope="module")
def settings(fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = azure_settings(fake_arm, tmp_path_factory.mktemp("azure-gateway-patch-home"))
    return base.model_copy(
        update={
            "azure_image": GALLERY_IMAGE,
            "azure_dns_label_prefix": "tgpatch",
            "azure_gateway_subnet_prefix": "10.0.1.0/24",
            "azure_gateway_instances": 2,
            "azure_gateway_list_seconds": 0.0,
            "azure_gateway_drain_seconds": 2.0,
            "gateway_https_port": free_port(),
            "gateway_admin_port": free_port(),
            "control_token": SecretStr(TOKEN),
        }
    )


def new_provider(settings: Settings, fake: FakeArmProcess) -> AzureNetworkProvider:
    return AzureNetworkProvider(settings, credential=GivenTokenCredential(fake.token))


@pytest_asyncio.fixture(scope="module")
async def provider(
    settings: Settings, fake_arm: FakeArmProcess, backend: Backend
) -> AsyncIterator[AzureNetworkProvider]:
    """Two gateway VMs (made by the first push, from the gallery image's definition), each
    holding both endpoints' routes."""
    made = new_provider(settings, fake_arm)
    subnet = Subnet({"properties": {"addressPrefix": "10.0.2.0/24"}})
    await (
        await made.network.subnets.begin_create_or_update(
            RESOURCE_GROUP, str(settings.azure_vnet), str(settings.azure_subnet), subnet
        )
    ).result()

    async def every_gateway_has_both() -> bool:
        results = [
            await made.apply_route(route(name, generation, backend))
            for name, generation in GENERATIONS.items()
        ]
        return all(not r.lagging and r.gateways == 2 for r in results)

    try:
        await eventually(every_gateway_has_both, "both routes on both gateway VMs", polls=600, every=0.2)
        yield made
    finally:
        await made.close()


def route(name: str, generation: int, backend: Backend) -> ApplyRouteInput:
    body = route_body(name, generation, {"blue": [backend.url]}, {"blue": 100})
    return ApplyRouteInput(route=EndpointRoute.model_validate(body))


def gateway_set(state: dict[str, Any]) -> dict[str, Any]:
    [found] = [s for s in state["scale_sets"] if s["name"] == GATEWAYS]
    return dict(found)


def image_of(vm: dict[str, Any]) -> str:
    return str(vm["image"].get("id", ""))


async def holds_every_route(settings: Settings, address: str) -> bool:
    """The gateway's admin API holds each endpoint's route at its pushed generation."""
    context = ssl.create_default_context(cafile=str(settings.home / GATEWAYS_HOME / "tls" / "ca.pem"))
    context.check_hostname = False
    url = f"https://{address}:{settings.gateway_admin_port}/routes"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                ssl=context,
                timeout=aiohttp.ClientTimeout(total=2),
            ) as reply:
                if reply.status != 200:
                    return False
                table = await reply.json()
    except (aiohttp.ClientError, TimeoutError):
        return False
    held = {route["name"]: route["generation"] for route in table["routes"].values()}
    return all(held.get(name) == generation for name, generation in GENERATIONS.items())


async def health_status(settings: Settings, address: str) -> int:
    """What the balancer's probe sees: the data plane's health path over HTTPS (0: no answer)."""
    url = f"https://{address}:{settings.gateway_https_port}{HEALTH_PATH}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=False, timeout=aiohttp.ClientTimeout(total=2)) as reply:
                return reply.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


@dataclass
class Watcher:
    """Samples the gateway VMs (the fake's state, the new VMs' admin APIs) while a patch runs."""

    fake: FakeArmProcess
    settings: Settings
    fewest_running: int = 99
    most_vms: int = 0
    old_deleted: list[str] = field(default_factory=list)
    new_seen: list[str] = field(default_factory=list)
    # An old VM went while a new VM present did not (yet) hold every route.
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    # Each old VM's health path as last seen before it went (503: it was draining).
    last_health: dict[str, int] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        # The old VMs' health apart, so the deletions are seen as soon as before (the test
        # cancels the first run on the first one).
        health = asyncio.create_task(self._health(stop))
        try:
            await self._vms(stop)
        finally:
            await health

    async def _health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            vms = gateway_set(await self.fake.state())["vms"]
            for vm in vms:
                if image_of(vm) != NEW_IMAGE:
                    self.last_health[vm["instance_id"]] = await health_status(self.settings, vm["address"])
            await asyncio.sleep(0.05)

    async def _vms(self, stop: asyncio.Event) -> None:
        previous_old: set[str] | None = None
        held: dict[str, bool] = {}
        while True:
            last = stop.is_set()  # one more sample after the patch returned, then done
            vms = gateway_set(await self.fake.state())["vms"]
            self.samples += 1
            self.fewest_running = min(self.fewest_running, sum(1 for vm in vms if vm["running"]))
            self.most_vms = max(self.most_vms, len(vms))
            old = {vm["instance_id"] for vm in vms if image_of(vm) != NEW_IMAGE}
            new = [vm for vm in vms if image_of(vm) == NEW_IMAGE]
            self.new_seen += [vm["instance_id"] for vm in new if vm["instance_id"] not in self.new_seen]
            if previous_old is not None and previous_old - old:
                self.old_deleted += sorted(previous_old - old)
                for vm in new:
                    if vm["instance_id"] in held and not held[vm["instance_id"]]:
                        self.violations.append(
                            f"old VM(s) {sorted(previous_old - old)} went before "
                            f"new VM {vm['instance_id']} held every route"
                        )
            held = {
                vm["instance_id"]: vm["running"] and await holds_every_route(self.settings, vm["address"])
                for vm in new
            }

            previous_old = old
            if last:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(fake: FakeArmProcess, settings: Settings) -> AsyncIterator[Watcher]:
    watcher = Watcher(fake, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        yield watcher
    finally:
        stop.set()
        await task


async def test_a_new_gateway_vm_that_stops_is_given_up_and_the_old_ones_stay_against_the_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings
) -> None:
    before = gateway_set(await fake_arm.state())
    await fake_arm.publish_image_version(GALLERY_IMAGE, "1.0.1")
    patch = asyncio.create_task(provider.patch_gateways(PatchGatewaysInput()))

    async def new_vm() -> list[dict[str, Any]]:
        return [vm for vm in gateway_set(await fake_arm.state())["vms"] if image_of(vm) == NEW_IMAGE]

    await eventually(new_vm, "a gateway VM on the new image", polls=600, every=0.1)
    [victim] = await new_vm()
    await fake_arm.kill(GATEWAYS, victim["instance_id"])
    with pytest.raises(ApplicationError) as failed:
        await patch
    assert failed.value.type == "GatewayNotReady" and failed.value.non_retryable
    assert f"gateway VM {victim['instance_id']} on {NEW_IMAGE} stopped" in str(failed.value)
    after = gateway_set(await fake_arm.state())
    # The same two VMs, serving; the model names the image from before; no patch rolling.
    assert sorted(vm["instance_id"] for vm in after["vms"]) == sorted(
        vm["instance_id"] for vm in before["vms"]
    )
    assert all(vm["running"] for vm in after["vms"]) and after["capacity"] == 2
    assert TAG_GATEWAY_IMAGE not in after["tags"] and TAG_GATEWAY_PATCHING not in after["tags"]
    for vm in after["vms"]:
        assert await holds_every_route(settings, vm["address"])


async def test_a_new_gateway_vm_not_ready_within_the_bound_is_given_up_against_the_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings
) -> None:
    """A bound no VM can meet (a hundredth of a second after its creation): the first look at
    the new VM gives it up."""
    before = gateway_set(await fake_arm.state())
    hasty = new_provider(settings.model_copy(update={"azure_gateway_ready_seconds": 0.01}), fake_arm)
    try:
        with pytest.raises(ApplicationError) as failed:
            await hasty.patch_gateways(PatchGatewaysInput())
    finally:
        await hasty.close()
    assert failed.value.type == "GatewayNotReady"
    assert "was not ready" in str(failed.value) and "(the bound is 0 s)" in str(failed.value)
    after = gateway_set(await fake_arm.state())
    assert sorted(vm["instance_id"] for vm in after["vms"]) == sorted(
        vm["instance_id"] for vm in before["vms"]
    )
    assert all(vm["running"] and image_of(vm) != NEW_IMAGE for vm in after["vms"]) and after["capacity"] == 2
    assert TAG_GATEWAY_IMAGE not in after["tags"] and TAG_GATEWAY_PATCHING not in after["tags"]


async def test_the_patch_rolls_every_gateway_vm_onto_the_newest_version_one_at_a_time_against_the_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings
) -> None:
    """Stopped after its first old VM went (a worker lost), the patch run again continues."""
    before = {vm["instance_id"] for vm in gateway_set(await fake_arm.state())["vms"]}
    started = time.monotonic()
    async with watching(fake_arm, settings) as watcher:
        first = asyncio.create_task(provider.patch_gateways(PatchGatewaysInput()))
        await eventually(
            lambda: watcher.old_deleted or first.done(), "an old VM deleted", polls=1200, every=0.1
        )
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        halfway = gateway_set(await fake_arm.state())
        # A second run, from the state in the scale set and its VMs (a fresh provider: another worker).
        again = new_provider(settings, fake_arm)
        try:
            result = await again.patch_gateways(PatchGatewaysInput())
        finally:
            await again.close()
    took = time.monotonic() - started
    after = gateway_set(await fake_arm.state())
    print(
        f"2 gateway VMs patched onto 1.0.1 in {took:.1f} s (one cancelled run, one more); at most "
        f"{watcher.most_vms} VMs, at least {watcher.fewest_running} running, {watcher.samples} samples"
    )
    assert TAG_GATEWAY_PATCHING in halfway["tags"]  # the cancelled run left its mark, and the VM it added
    assert result.outcome == "Succeeded" and result.image == NEW_IMAGE, result
    assert len(after["vms"]) == 2 and after["capacity"] == 2
    assert all(image_of(vm) == NEW_IMAGE and vm["running"] for vm in after["vms"]), after["vms"]
    assert before.isdisjoint(vm["instance_id"] for vm in after["vms"])
    assert sorted(watcher.old_deleted) == sorted(before)
    assert watcher.fewest_running >= 2 and watcher.most_vms <= 3
    assert watcher.violations == []
    # Each old VM was told to drain before it went: its health path said 503 at the last look.
    assert {i: watcher.last_health.get(i) for i in before} == dict.fromkeys(before, 503), watcher.last_health
    # Each new VM holds both tables though nothing but the patch pushed since (copied from the old).
    for vm in after["vms"]:
        assert await holds_every_route(settings, vm["address"])
    assert after["tags"][TAG_GATEWAY_IMAGE] == NEW_IMAGE and TAG_GATEWAY_PATCHING not in after["tags"]
    assert TAG_GATEWAY_DRAINING not in after["tags"]


async def test_patching_again_and_pushing_from_another_worker_write_nothing_against_the_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings, backend: Backend
) -> None:
    before = await fake_arm.state()
    result = await provider.patch_gateways(PatchGatewaysInput())
    fresh = new_provider(settings, fake_arm)
    try:
        pushed = await fresh.apply_route(route("alpha", GENERATIONS["alpha"] + 1, backend))
    finally:
        await fresh.close()
    after = await fake_arm.state()
    assert (result.outcome, result.replaced) == ("Succeeded", 0)
    assert pushed.lagging == {} and pushed.gateways == 2
    # The fresh worker's push keeps the patched image: no PUT, no VM changed.
    assert after["changes"][GATEWAYS] == before["changes"][GATEWAYS], (
        gateway_set(before)["tags"],
        gateway_set(after)["tags"],
        {
            k: v - before["requests"].get(k, 0)
            for k, v in after["requests"].items()
            if v != before["requests"].get(k, 0)
        },
    )
    assert [vm["instance_id"] for vm in gateway_set(after)["vms"]] == [
        vm["instance_id"] for vm in gateway_set(before)["vms"]
    ]


async def test_the_local_network_provider_has_no_gateways_to_patch(settings: Settings) -> None:
    result = await LocalNetworkProvider(settings).patch_gateways(PatchGatewaysInput())
    assert result.outcome == "Skipped"
