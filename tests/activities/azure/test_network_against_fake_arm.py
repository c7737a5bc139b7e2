"""The azure network provider through the real azure-mgmt-network SDK, over TLS, against the
fake ARM (tests/fakes/arm), pushing routes to a real gateway process over its admin API.

The tests run in order and share one fake and one gateway: endpoint `alpha` is made by the
first and removed near the end; the fake's `/_fake/state` lists what exists and counts every
request and every change."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from azure.mgmt.network.models import NetworkSecurityGroup, PublicIPAddress, Subnet
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from yarl import URL

from activities.azure.arm import ResumeToken
from activities.azure.credentials import GivenTokenCredential
from activities.azure.load_balancer import GATEWAY_PROBE
from activities.azure.network import AzureNetworkProvider
from activities.network import NetworkActivities
from config.azure_network import azure_scoring_uri
from config.contract.activities import ApplyRouteInput, RemoveRouteInput
from config.routes import EndpointRoute
from config.settings import Settings
from tests.activities.azure.conftest import RESOURCE_GROUP, azure_settings
from tests.fakes.arm.client import FakeArmProcess
from tests.gateway.conftest import CONTROL_TOKEN, KEY, Backend, GatewayProcess, route_body

GATEWAY_SUBNET = "10.0.1.0/24"
LB = "tidegate-gateways"
PUT_IP, PUT_LB, PUT_NSG = (
    "publicIPAddresses.createOrUpdate",
    "loadBalancers.createOrUpdate",
    "networkSecurityGroups.createOrUpdate",
)
GETS = {"publicIPAddresses.get", "loadBalancers.get", "networkSecurityGroups.get", "subnets.get"}
INSTANCES_SUBNET = "10.0.2.0/24"
FAKE_ARM_RETRY_AFTER = 0  # operations done at the first status read


@pytest_asyncio.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess.create(tmp_path_factory.mktemp("gateway"))
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest.fixture(scope="module")
def settings(
    fake_arm: FakeArmProcess, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    base = azure_settings(fake_arm, tmp_path_factory.mktemp("azure-network-home"))
    return base.model_copy(
        update={
            "azure_dns_label_prefix": "tgtest",
            "azure_gateway_subnet_prefix": GATEWAY_SUBNET,
            "gateway_https_port": gateway.https_port,
            "gateway_admin_urls": [gateway.admin],
            "azure_gateway_instances": 0,  # a gateway process of its own (its scale set: test_gateways_...)
            "control_token": SecretStr(CONTROL_TOKEN),
        }
    )


def new_provider(settings: Settings, fake: FakeArmProcess) -> AzureNetworkProvider:
    return AzureNetworkProvider(settings, credential=GivenTokenCredential(fake.token))


@pytest_asyncio.fixture(scope="module")
async def provider(settings: Settings, fake_arm: FakeArmProcess) -> AsyncIterator[AzureNetworkProvider]:
    made = new_provider(settings, fake_arm)
    # The instances' subnet exists before Tidegate runs (the operator made the virtual network).
    subnet = Subnet({"properties": {"addressPrefix": INSTANCES_SUBNET}})
    await (
        await made.network.subnets.begin_create_or_update(
            RESOURCE_GROUP, str(settings.azure_vnet), str(settings.azure_subnet), subnet
        )
    ).result()
    try:
        yield made
    finally:
        await made.close()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def route(name: str, generation: int, backend: Backend) -> ApplyRouteInput:
    body = route_body(name, generation, {"blue": [backend.url]}, {"blue": 100})
    return ApplyRouteInput(route=EndpointRoute.model_validate(body))


async def gateway_route(
    client: aiohttp.ClientSession, gateway: GatewayProcess, name: str
) -> dict[str, Any] | None:
    async with client.get(f"{gateway.admin}/routes/{name}", headers=gateway.admin_headers) as response:
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        return dict(await response.json())


def the_lb(state: dict[str, Any]) -> dict[str, Any]:
    [lb] = [b for b in state["load_balancers"] if b["name"] == LB]
    return lb


def public_ips_of(state: dict[str, Any], endpoint: str) -> list[dict[str, Any]]:
    return [ip for ip in state["public_ips"] if ip["tags"].get("tidegate-endpoint") == endpoint]


def spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Requests the fake served in between, by operation."""
    return {
        op: n - before["requests"].get(op, 0)
        for op, n in after["requests"].items()
        if n != before["requests"].get(op, 0)
    }


def opened(token: str) -> str:
    """A continuation token's text (azure-core: base64 JSON, the response body base64 inside)."""
    outer = base64.b64decode(token).decode()
    inner = base64.b64decode(json.loads(outer)["data"]["response"]["content"]).decode()
    assert "tg-eta" in outer + inner or LB in outer + inner  # it was opened, not misread
    return outer + inner


def lb_id(settings: Settings) -> str:
    return (
        f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{RESOURCE_GROUP}"
        f"/providers/Microsoft.Network/loadBalancers/{LB}"
    )


async def test_network_apply_makes_ip_frontend_rule_nsg_and_the_gateway_serves_it_against_fake_arm(
    provider: AzureNetworkProvider,
    fake_arm: FakeArmProcess,
    gateway: GatewayProcess,
    backend: Backend,
    settings: Settings,
    client: aiohttp.ClientSession,
) -> None:
    result = await provider.apply_route(route("alpha", 1, backend))
    assert (result.gateways, result.lagging) == (1, {})

    state = await fake_arm.state()
    [ip] = public_ips_of(state, "alpha")
    assert ip["name"] == "tg-alpha" and (ip["sku"], ip["allocation"]) == ("Standard", "Static")
    assert ip["fqdn"] == "tgtest-alpha.westeurope.cloudapp.azure.com"
    assert (
        ip["provisioning_state"] == "Succeeded"
        and ip["held_by"] == f"{lb_id(settings)}/frontendIPConfigurations/tg-alpha"
    )

    lb = the_lb(state)
    assert lb["sku"] == "Standard" and lb["pools"] == ["gateways"] and lb["probes"] == [GATEWAY_PROBE]
    assert lb["frontends"] == {"tg-alpha": ip_id(settings, "tg-alpha")}
    rule = lb["rules"]["tg-alpha"]
    assert rule["frontendIPConfiguration"]["id"] == f"{lb_id(settings)}/frontendIPConfigurations/tg-alpha"
    assert rule["backendAddressPool"]["id"] == f"{lb_id(settings)}/backendAddressPools/gateways"
    assert rule["probe"]["id"] == f"{lb_id(settings)}/probes/{GATEWAY_PROBE}"
    assert (rule["frontendPort"], rule["backendPort"], rule["protocol"]) == (443, gateway.https_port, "Tcp")
    assert rule["enableFloatingIP"] is True  # every endpoint's rule shares the gateways' port

    [nsg] = state["network_security_groups"]
    allow, deny = nsg["rules"]["tidegate-allow-gateways"], nsg["rules"]["tidegate-deny-others"]
    port = str(settings.azure_instance_port)
    assert (allow["sourceAddressPrefix"], allow["destinationPortRange"], allow["access"]) == (
        GATEWAY_SUBNET,
        port,
        "Allow",
    )
    assert (deny["sourceAddressPrefix"], deny["destinationPortRange"], deny["access"]) == ("*", port, "Deny")
    assert allow["priority"] < deny["priority"]
    [subnet] = state["subnets"]  # and it guards the instances' subnet
    nsg_id = ip_id(settings, "x").replace("publicIPAddresses/x", "networkSecurityGroups/tidegate-instances")
    assert (subnet["name"], subnet["nsg"], subnet["address_prefix"]) == (
        "instances",
        nsg_id,
        INSTANCES_SUBNET,
    )

    # The route reached the real gateway over its admin API, and it serves the endpoint.
    shown = await gateway_route(client, gateway, "alpha")
    assert shown is not None and shown["generation"] == 1
    # The URI `show` prints reaches the endpoint on that gateway (over its plain-HTTP port here).
    uri = URL(azure_scoring_uri(settings, "alpha"))
    assert uri.host == ip["fqdn"] and uri.path == "/endpoints/alpha/score"
    async with client.post(
        f"{gateway.http}{uri.path}",
        data=b'{"data": [1]}',
        headers={"Host": uri.host, "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    ) as reply:
        assert reply.status == 200, await reply.text()
        assert (await reply.json())["backend"] == "blue"


def ip_id(settings: Settings, name: str) -> str:
    return (
        f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{RESOURCE_GROUP}"
        f"/providers/Microsoft.Network/publicIPAddresses/{name}"
    )


async def test_network_apply_again_changes_nothing_and_a_fresh_worker_only_reads_against_fake_arm(
    provider: AzureNetworkProvider,
    fake_arm: FakeArmProcess,
    gateway: GatewayProcess,
    backend: Backend,
    settings: Settings,
    client: aiohttp.ClientSession,
) -> None:
    before = await fake_arm.state()
    await provider.apply_route(route("alpha", 2, backend))  # the workflow's periodic re-push
    after_repush = await fake_arm.state()
    assert spent(before, after_repush) == {}  # converged moments ago: no ARM call at all

    restarted = new_provider(settings, fake_arm)  # a new worker knows nothing: it reads
    try:
        await restarted.apply_route(route("alpha", 3, backend))
    finally:
        await restarted.close()
    after = await fake_arm.state()
    assert spent(after_repush, after) == dict.fromkeys(GETS, 1)  # three reads, no write
    for resource in (
        "publicIPAddresses/tg-alpha",
        f"loadBalancers/{LB}",
        "networkSecurityGroups/tidegate-instances",
    ):
        assert after["changes"][resource] == 1, resource  # each made once, never changed since
    assert after["changes"]["subnets/instances"] == 2  # made by the operator, given the NSG once
    assert the_lb(after)["etag"] == the_lb(before)["etag"]
    assert [ip["address"] for ip in public_ips_of(after, "alpha")] == [
        ip["address"] for ip in public_ips_of(before, "alpha")
    ]
    shown = await gateway_route(client, gateway, "alpha")
    assert shown is not None and shown["generation"] == 3  # every push still reached the gateway


async def test_network_two_endpoints_share_one_lb_and_removing_one_leaves_the_other_against_fake_arm(
    provider: AzureNetworkProvider,
    fake_arm: FakeArmProcess,
    gateway: GatewayProcess,
    backend: Backend,
    settings: Settings,
    client: aiohttp.ClientSession,
) -> None:
    before = the_lb(await fake_arm.state())
    await provider.apply_route(route("beta", 1, backend))
    both = await fake_arm.state()
    lb = the_lb(both)
    assert set(lb["frontends"]) == {"tg-alpha", "tg-beta"} and set(lb["rules"]) == {"tg-alpha", "tg-beta"}
    assert lb["rules"]["tg-alpha"] == before["rules"]["tg-alpha"]
    assert [ip["fqdn"] for ip in public_ips_of(both, "beta")] == ["tgtest-beta.westeurope.cloudapp.azure.com"]

    await provider.remove_route(RemoveRouteInput(endpoint="beta", generation=2))
    after = await fake_arm.state()
    lb = the_lb(after)
    assert lb["frontends"] == before["frontends"] and lb["rules"] == before["rules"]
    assert public_ips_of(after, "beta") == []
    assert public_ips_of(after, "alpha") == public_ips_of(both, "alpha")  # alpha's IP untouched
    assert after["changes"]["publicIPAddresses/tg-alpha"] == both["changes"]["publicIPAddresses/tg-alpha"]
    assert await gateway_route(client, gateway, "beta") is None
    assert (await gateway_route(client, gateway, "alpha")) is not None


async def test_network_two_workers_at_once_lose_no_frontend_against_fake_arm(
    settings: Settings, fake_arm: FakeArmProcess, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A reads the load balancer; worker B writes it before A does. A's PUT, conditional
    on the ETag it read, is refused (412); A reads again and keeps B's frontend."""
    first, second = new_provider(settings, fake_arm), new_provider(settings, fake_arm)
    read = first.network.load_balancers.get
    reads = 0

    async def read_then_the_other_worker_writes(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        got = await read(*args, **kwargs)
        reads += 1
        if reads == 1:
            await second.apply_route(route("delta", 1, backend))
        return got

    monkeypatch.setattr(first.network.load_balancers, "get", read_then_the_other_worker_writes)
    before = await fake_arm.state()
    try:
        await first.apply_route(route("gamma", 1, backend))
        after = await fake_arm.state()
        assert {"tg-alpha", "tg-gamma", "tg-delta"} <= set(the_lb(after)["frontends"])
        assert reads == 2  # it read again after the refusal...
        assert spent(before, after)[PUT_LB] == 3  # ...B's PUT, A's refused one, A's second
        await asyncio.gather(
            first.remove_route(RemoveRouteInput(endpoint="gamma", generation=2)),
            second.remove_route(RemoveRouteInput(endpoint="delta", generation=2)),
        )
    finally:
        await first.close()
        await second.close()
    state = await fake_arm.state()
    assert set(the_lb(state)["frontends"]) == {"tg-alpha"}
    assert public_ips_of(state, "gamma") == public_ips_of(state, "delta") == []


async def test_network_throttled_midway_still_completes_against_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, backend: Backend
) -> None:
    """ARM throttles the load balancer's PUT, after the public IP is made: the SDK waits as
    told and the apply completes."""
    before = await fake_arm.state()
    await fake_arm.fault(throttle={"count": 2, "retry_after": 1, "on": PUT_LB})
    await provider.apply_route(route("epsilon", 1, backend))
    after = await fake_arm.state()
    assert after["throttled"].get(PUT_LB, 0) - before["throttled"].get(PUT_LB, 0) == 2
    assert sum(after["throttled"].values()) - sum(before["throttled"].values()) == 2
    waits = after["throttle_waits"][len(before["throttle_waits"]) :]
    assert len(waits) == 2 and all(wait >= 0.9 for wait in waits)  # the SDK waited as told
    assert "tg-epsilon" in the_lb(after)["frontends"] and len(public_ips_of(after, "epsilon")) == 1
    await provider.remove_route(RemoveRouteInput(endpoint="epsilon", generation=2))


async def test_network_transient_5xx_is_retried_against_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess
) -> None:
    before = await fake_arm.state()
    await fake_arm.fault(errors={"count": 2, "status": 503})
    await provider.remove_route(RemoveRouteInput(endpoint="iota", generation=1))  # nothing there: reads
    after = await fake_arm.state()
    assert sum(after["faulted"].values()) - sum(before["faulted"].values()) == 2
    assert set(spent(before, after)) <= GETS


async def test_network_quota_exceeded_on_the_public_ip_fails_non_retryable_against_fake_arm(
    provider: AzureNetworkProvider,
    fake_arm: FakeArmProcess,
    gateway: GatewayProcess,
    backend: Backend,
    client: aiohttp.ClientSession,
) -> None:
    message = "Cannot create more than 10 public IP addresses for this subscription in this region."
    await fake_arm.fault(
        operation={"polls": 2, "error": {"code": "QuotaExceeded", "message": message}, "on": PUT_IP}
    )
    with pytest.raises(ApplicationError) as caught:
        await provider.apply_route(route("zeta", 1, backend))
    assert caught.value.non_retryable and caught.value.type == "QuotaExceeded"
    assert "public IP tg-zeta" in str(caught.value) and message in str(caught.value)
    state = await fake_arm.state()
    assert [ip["provisioning_state"] for ip in public_ips_of(state, "zeta")] == ["Failed"]
    assert "tg-zeta" not in the_lb(state)["frontends"]  # it stopped there
    assert await gateway_route(client, gateway, "zeta") is None  # and pushed nothing

    # The workflow pushes again at once: the refusal is given again without spending ARM's writes.
    before = await fake_arm.state()
    with pytest.raises(ApplicationError) as again:
        await provider.apply_route(route("zeta", 2, backend))
    assert again.value.non_retryable and again.value.type == "QuotaExceeded" and message in str(again.value)
    assert spent(before, await fake_arm.state()) == {}
    await provider.remove_route(RemoveRouteInput(endpoint="zeta", generation=2))
    assert public_ips_of(await fake_arm.state(), "zeta") == []


async def test_network_retried_apply_resumes_the_load_balancer_operation_against_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, backend: Backend
) -> None:
    """The worker dies while the load balancer's PUT runs: the next attempt resumes it."""
    activities = NetworkActivities(provider)
    request = route("eta", 1, backend)
    before = await fake_arm.state()
    await fake_arm.fault(operation={"polls": 3, "on": PUT_LB})  # InProgress for three reads

    first = ActivityEnvironment()
    beats: list[Any] = []

    def heard(*details: Any) -> None:
        beats.extend(details)
        if ResumeToken.model_validate(details[-1]).resource.startswith("loadBalancers/"):
            first.cancel()

    first.on_heartbeat = heard
    with pytest.raises(asyncio.CancelledError):
        await first.run(activities.apply_route, request)
    saved = ResumeToken.model_validate(beats[-1])
    assert (saved.operation, saved.resource) == ("createOrUpdate", f"loadBalancers/{LB}")
    assert fake_arm.token not in json.dumps(beats)  # no credential in workflow history,
    assert fake_arm.token not in opened(saved.token)  # not even inside the opaque token

    second = ActivityEnvironment()
    second.info = dataclasses.replace(
        ActivityEnvironment.default_info(), attempt=2, heartbeat_details=[beats[-1]]
    )
    result = await second.run(activities.apply_route, request)
    assert result.lagging == {}
    after = await fake_arm.state()
    assert spent(before, after)[PUT_LB] == 1  # one PUT: the second attempt polled it to the end
    assert the_lb(after)["provisioning_state"] == "Succeeded"
    assert "tg-eta" in the_lb(after)["frontends"]
    await provider.remove_route(RemoveRouteInput(endpoint="eta", generation=2))


async def test_network_leaves_alone_a_public_ip_that_is_not_the_endpoints_against_fake_arm(
    provider: AzureNetworkProvider, fake_arm: FakeArmProcess, backend: Backend, settings: Settings
) -> None:
    """Someone's own `tg-theta` (no tidegate tag): apply refuses to take it over, remove keeps it."""
    ips = provider.network.public_ip_addresses
    theirs = {"location": "westeurope", "tags": {"owner": "someone"}, "sku": {"name": "Standard"}}
    await (await ips.begin_create_or_update(RESOURCE_GROUP, "tg-theta", PublicIPAddress(theirs))).result()
    with pytest.raises(ApplicationError) as caught:
        await provider.apply_route(route("theta", 1, backend))
    assert caught.value.non_retryable and caught.value.type == "ResourceNotOurs"
    assert "tg-theta" in str(caught.value)
    await provider.remove_route(RemoveRouteInput(endpoint="theta", generation=2))
    state = await fake_arm.state()
    [kept] = [ip for ip in state["public_ips"] if ip["name"] == "tg-theta"]
    assert kept["tags"] == {"owner": "someone"} and state["changes"]["publicIPAddresses/tg-theta"] == 1
    await (await ips.begin_delete(RESOURCE_GROUP, "tg-theta")).result()


async def test_network_does_not_take_over_a_subnet_another_nsg_guards_against_fake_arm(
    settings: Settings, fake_arm: FakeArmProcess, backend: Backend
) -> None:
    elsewhere = settings.model_copy(update={"azure_subnet": "theirs"})
    worker = new_provider(elsewhere, fake_arm)
    try:
        network = worker.network
        theirs = NetworkSecurityGroup({"location": "westeurope", "properties": {"securityRules": []}})
        made = await (
            await network.network_security_groups.begin_create_or_update(RESOURCE_GROUP, "theirs", theirs)
        ).result()
        subnet = Subnet(
            {"properties": {"addressPrefix": "10.0.3.0/24", "networkSecurityGroup": {"id": made.id}}}
        )
        await (
            await network.subnets.begin_create_or_update(
                RESOURCE_GROUP, str(settings.azure_vnet), "theirs", subnet
            )
        ).result()
        with pytest.raises(ApplicationError) as caught:
            await worker.apply_route(route("kappa", 1, backend))
        assert caught.value.non_retryable and caught.value.type == "SubnetHasAnotherNsg"
        assert "theirs" in str(caught.value)
        [kept] = [n for n in (await fake_arm.state())["subnets"] if n["name"] == "theirs"]
        assert kept["nsg"] == made.id
        await worker.remove_route(RemoveRouteInput(endpoint="kappa", generation=2))
    finally:
        await worker.close()
    state = await fake_arm.state()
    assert public_ips_of(state, "kappa") == [] and "tg-kappa" not in the_lb(state)["frontends"]


async def test_network_remove_leaves_nothing_of_the_endpoint_and_again_is_success_against_fake_arm(
    provider: AzureNetworkProvider,
    fake_arm: FakeArmProcess,
    gateway: GatewayProcess,
    client: aiohttp.ClientSession,
) -> None:
    result = await provider.remove_route(RemoveRouteInput(endpoint="alpha", generation=10))
    assert result.lagging == {}
    state = await fake_arm.state()
    assert state["public_ips"] == []  # every endpoint's is gone: alpha was the last
    lb = the_lb(state)
    assert (lb["frontends"], lb["rules"]) == ({}, {})
    assert (lb["pools"], lb["probes"]) == (["gateways"], [GATEWAY_PROBE])  # shared: kept
    assert "tidegate-instances" in [n["name"] for n in state["network_security_groups"]]  # shared: kept
    assert await gateway_route(client, gateway, "alpha") is None

    await provider.remove_route(RemoveRouteInput(endpoint="alpha", generation=11))  # gone: success
    again = await fake_arm.state()
    assert set(spent(state, again)) <= GETS  # it only looked


async def test_fake_arm_refuses_other_network_api_versions(fake_arm: FakeArmProcess) -> None:
    path = f"{fake_arm.url}/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb"
    async with fake_arm.session() as session:
        async with session.get(path, params={"api-version": "2024-05-01"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "InvalidApiVersionParameter"


@pytest.mark.parametrize(
    ("given", "uri"),
    [
        ({}, "https://contoso-fraud-1.westeurope.cloudapp.azure.com/endpoints/fraud-1/score"),
        (
            {"azure_frontend_port": 8443},
            "https://contoso-fraud-1.westeurope.cloudapp.azure.com:8443/endpoints/fraud-1/score",
        ),
        (
            {"azure_dns_label_prefix": None, "domain": "westeurope.cloudapp.azure.com"},
            "https://fraud-1.westeurope.cloudapp.azure.com/score",
        ),
    ],
    ids=["path_names_the_endpoint", "port_only_when_not_443", "host_names_it_when_label_is_the_endpoint"],
)
def test_azure_scoring_uri(tmp_path: Path, given: dict[str, Any], uri: str) -> None:
    settings = Settings(
        home=tmp_path, **{"azure_location": "WestEurope", "azure_dns_label_prefix": "Contoso", **given}
    )
    assert azure_scoring_uri(settings, "fraud-1") == uri
    assert settings.scoring_uri("fraud-1") != uri  # the local network provider: the gateway's own
    on_azure = settings.model_copy(update={"network_provider": "azure"})
    assert on_azure.scoring_uri("fraud-1") == uri  # what `online-endpoint show` prints
    assert on_azure.scoring_uri_http("fraud-1") is None
    assert on_azure.openapi_uri("fraud-1") == uri.removesuffix("/score") + "/swagger.json"
