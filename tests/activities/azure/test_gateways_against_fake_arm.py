"""The azure network provider with its gateway scale set, through the real SDKs over TLS against
the fake ARM, whose gateway VMs are real `tidegate gateway` processes booted from the scale set's
custom data, each on its own loopback address.

The tests run in order and share one fake: the first push makes the gateway scale set, later
ones find it; a killed gateway VM is replaced and gets the route; removing the route leaves the
scale set."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from azure.mgmt.network.models import Subnet
from pydantic import SecretStr

from activities.azure.credentials import GivenTokenCredential
from activities.azure.gateway_monitor import AzureGatewaysMonitor
from activities.azure.gateway_tls import GATEWAYS_HOME
from activities.azure.gateways import AzureGateways
from activities.azure.network import AzureNetworkProvider
from activities.providers import provider as provider_of
from config.contract.activities import ApplyRouteInput, PushRouteResult, QueryWindowInput, RemoveRouteInput
from config.routes import EndpointRoute
from config.settings import Settings
from tests.activities.azure.conftest import RESOURCE_GROUP, azure_settings
from tests.fakes.arm.client import FakeArmProcess
from tests.gateway.conftest import KEY, Backend, route_body
from tests.support.polling import eventually
from tests.support.ports import free_port

GATEWAYS = "tg-gateways"
TOKEN = "gateway-test-control-credential-0123456789"
FQDN = "tggw-alpha.westeurope.cloudapp.azure.com"
FAKE_ARM_RETRY_AFTER = 0  # operations done at the first status read


@pytest.fixture(scope="module")
def settings(fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = azure_settings(fake_arm, tmp_path_factory.mktemp("azure-gateways-home"))
    return base.model_copy(
        update={
            "azure_dns_label_prefix": "tggw",
            "azure_gateway_subnet_prefix": "10.0.1.0/24",
            "azure_gateway_instances": 2,
            "azure_gateway_list_seconds": 0.0,  # every push lists: the test sees each change
            "gateway_https_port": free_port(),
            "gateway_admin_port": free_port(),
            "control_token": SecretStr(TOKEN),
        }
    )


def new_provider(settings: Settings, fake: FakeArmProcess) -> AzureNetworkProvider:
    return AzureNetworkProvider(settings, credential=GivenTokenCredential(fake.token))


@pytest_asyncio.fixture(scope="module")
async def provider(settings: Settings, fake_arm: FakeArmProcess) -> AsyncIterator[AzureNetworkProvider]:
    made = new_provider(settings, fake_arm)
    subnet = Subnet({"properties": {"addressPrefix": "10.0.2.0/24"}})
    await (
        await made.network.subnets.begin_create_or_update(
            RESOURCE_GROUP, str(settings.azure_vnet), str(settings.azure_subnet), subnet
        )
    ).result()
    try:
        yield made
    finally:
        await made.close()


def route(name: str, generation: int, backend: Backend) -> ApplyRouteInput:
    body = route_body(name, generation, {"blue": [backend.url]}, {"blue": 100})
    return ApplyRouteInput(route=EndpointRoute.model_validate(body))


class Pushes:
    """Generations go up with each push, as the endpoint's workflow makes them."""

    generation = 1


async def push_until_every_gateway_has_it(
    provider: AzureNetworkProvider, backend: Backend
) -> PushRouteResult:
    result: list[PushRouteResult] = []

    async def pushed() -> bool:
        Pushes.generation += 1
        result.append(await provider.apply_route(route("alpha", Pushes.generation, backend)))
        return not result[-1].lagging and result[-1].gateways > 0

    await eventually(pushed, "every gateway VM took the route", polls=600, every=0.2)
    return result[-1]


def gateway_set(state: dict[str, Any]) -> dict[str, Any]:
    [found] = [s for s in state["scale_sets"] if s["name"] == GATEWAYS]
    return dict(found)


def gateways_ca(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.home / GATEWAYS_HOME / "tls" / "ca.pem"))


async def score_through(settings: Settings, address: str) -> tuple[int, Any]:
    """A client's request as the load balancer hands it to one gateway VM: HTTPS to the VM's
    address, for the endpoint's public name (SNI and Host), checked against the gateways' CA."""
    url = f"https://{address}:{settings.gateway_https_port}/endpoints/alpha/score"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url,
            data=b'{"data": [1]}',
            headers={"Host": FQDN, "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            ssl=gateways_ca(settings),
            server_hostname=FQDN,
        ) as reply:
            return reply.status, await reply.json()


async def admin_route(settings: Settings, address: str) -> int:
    url = f"https://{address}:{settings.gateway_admin_port}/routes/alpha"
    context = gateways_ca(settings)
    context.check_hostname = False
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, ssl=context) as reply:
            return reply.status


async def test_first_push_makes_the_gateway_scale_set_in_the_pool_and_every_gateway_vm_serves(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings, backend: Backend
) -> None:
    result = await push_until_every_gateway_has_it(provider, backend)
    state = await fake_arm.state()
    gateways = gateway_set(state)
    addresses = sorted(vm["address"] for vm in gateways["vms"])
    assert (gateways["capacity"], gateways["sku"], len(addresses)) == (2, "Standard_D2s_v5", 2)
    assert result.gateways == 2
    assert state["changes"][GATEWAYS] == 1  # one PUT made it; later pushes only read
    [lb] = state["load_balancers"]
    assert lb["pool_members"] == {"gateways": addresses}
    for address in addresses:
        status, answer = await score_through(settings, address)
        assert status == 200 and answer["backend"] == "blue", answer


async def test_the_gateway_vms_nics_name_an_nsg_that_lets_clients_reach_their_https_port(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings, backend: Backend
) -> None:
    """A Standard Load Balancer passes only what an NSG allows: without this, no client of any
    endpoint would reach a gateway on Azure (the fake refuses a NIC naming a missing NSG)."""
    await push_until_every_gateway_has_it(provider, backend)

    state = await fake_arm.state()

    [nsg] = [n for n in state["network_security_groups"] if n["name"] == settings.azure_gateways_nsg]
    rule = nsg["rules"]["tidegate-allow-clients"]
    assert (rule["access"], rule["sourceAddressPrefix"]) == ("Allow", "Internet")
    assert rule["destinationPortRange"] == str(settings.gateway_https_port)


async def test_the_local_monitor_reads_every_gateway_vms_stats_on_azure(
    fake_arm: FakeArmProcess, settings: Settings
) -> None:
    """Gates and the autoscaler read the gateway VMs, found as the pushes find them."""
    on_azure = settings.model_copy(update={"network_provider": "azure"})
    assert isinstance(provider_of("monitor", on_azure), AzureGatewaysMonitor)  # the worker's pick
    monitor = AzureGatewaysMonitor(on_azure, credential=GivenTokenCredential(fake_arm.token))
    try:
        window = await monitor.query_window(
            QueryWindowInput(endpoint="alpha", deployment="blue", window_seconds=60)
        )
    finally:
        await monitor.close()
    # The first test scored once through each of the two gateway VMs: the sum has both.
    assert window.requests == 2 and window.status.get("2xx") == 2, window


async def test_pushing_again_writes_nothing_and_a_fresh_worker_only_reads(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings, backend: Backend
) -> None:
    before = await fake_arm.state()
    await push_until_every_gateway_has_it(provider, backend)
    fresh = new_provider(settings, fake_arm)
    try:
        Pushes.generation += 1
        result = await fresh.apply_route(route("alpha", Pushes.generation, backend))
    finally:
        await fresh.close()
    after = await fake_arm.state()
    assert result.lagging == {} and result.gateways == 2
    assert after["changes"][GATEWAYS] == before["changes"][GATEWAYS]
    puts = "virtualMachineScaleSets.createOrUpdate"
    assert after["requests"].get(puts, 0) == before["requests"].get(puts, 0)
    # The fresh worker read the scale set once; each push listed its VMs once.
    assert (
        after["requests"]["virtualMachineScaleSets.get"]
        == before["requests"].get("virtualMachineScaleSets.get", 0) + 1
    )


async def test_gateway_secrets_stay_out_of_arm_reads_consoles_and_the_workers_logs(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings
) -> None:
    read = await provider._gateways.compute.virtual_machine_scale_sets.get(  # type: ignore[attr-defined]
        RESOURCE_GROUP, GATEWAYS
    )
    assert read.properties.virtual_machine_profile.os_profile.custom_data is None  # ARM never returns it
    for vm in gateway_set(await fake_arm.state())["vms"]:
        root = fake_arm.state_dir / GATEWAYS / vm["instance_id"]
        console = (root / "console.log").read_text()
        assert "gateway.started" in console and TOKEN not in console and "PRIVATE KEY" not in console
        boot = root / "disk" / "gateway-boot.json"
        assert boot.stat().st_mode & 0o077 == 0
        assert (root / "disk" / "gateway" / "control.token").stat().st_mode & 0o077 == 0
    assert TOKEN not in (fake_arm.ca_file.parent / "fake-arm.log").read_text()


async def test_a_killed_gateway_vm_is_replaced_and_the_new_one_gets_the_route(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings, backend: Backend
) -> None:
    before = gateway_set(await fake_arm.state())["vms"]
    victim = before[0]
    killed = time.monotonic()
    await fake_arm.kill(GATEWAYS, victim["instance_id"])
    result = await push_until_every_gateway_has_it(provider, backend)
    served = time.monotonic()
    vms = gateway_set(await fake_arm.state())["vms"]
    assert victim["instance_id"] not in {vm["instance_id"] for vm in vms}
    assert len(vms) == 2 and result.gateways == 2 and all(vm["running"] for vm in vms)
    [new] = [vm for vm in vms if vm["instance_id"] not in {old["instance_id"] for old in before}]
    status, answer = await score_through(settings, new["address"])
    assert status == 200 and answer["backend"] == "blue"
    print(f"gateway VM killed: its replacement took the route {served - killed:.1f} s later")


async def test_removing_the_route_leaves_the_gateway_scale_set_without_it(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, settings: Settings
) -> None:
    Pushes.generation += 1
    result = await provider.remove_route(RemoveRouteInput(endpoint="alpha", generation=Pushes.generation))
    assert result.lagging == {} and result.gateways == 2
    state = await fake_arm.state()
    vms = gateway_set(state)["vms"]
    assert len(vms) == 2
    for vm in vms:
        assert await admin_route(settings, vm["address"]) == 404
    assert [ip for ip in state["public_ips"] if ip["name"] == "tg-alpha"] == []


async def test_removing_a_route_with_no_gateway_scale_set_makes_none_and_reaches_no_gateway(
    settings: Settings, fake_arm: FakeArmProcess
) -> None:
    other = settings.model_copy(update={"azure_gateway_scale_set": "tg-gateways-elsewhere"})
    gateways = AzureGateways(other, credential=lambda: GivenTokenCredential(fake_arm.token))
    try:
        Pushes.generation += 1
        result = await gateways.remove_route(RemoveRouteInput(endpoint="beta", generation=Pushes.generation))
    finally:
        await gateways.close()
    assert (result.gateways, result.lagging) == (0, {})
    names = {s["name"] for s in (await fake_arm.state())["scale_sets"]}
    assert "tg-gateways-elsewhere" not in names
