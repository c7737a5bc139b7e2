"""Azure compute and network end to end against the fake ARM: a whole local stack (Temporal,
worker, gateway, api) whose worker runs deployments as VM scale sets and endpoints behind the
gateway scale set, whose VMs are real `tidegate gateway` processes booted from its custom data.

A client's request goes through a gateway VM at its private address (standing in for the load
balancer, which the fake does not forward through) over HTTPS for the endpoint's public name,
and is answered by a deployment's VM. A killed gateway VM is replaced and the endpoint's own
periodic re-push hands the new one the route table. Deleting the endpoint leaves the shared
gateway scale set, with no route for it."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.project import REQUEST
from tests.fakes.arm.client import FakeArmProcess
from tests.support.polling import until
from tests.support.ports import free_port
from tests.support.stack import LocalStack

EP = "gw-ep"
GATEWAYS = "tg-gateways"
FQDN = f"e2e-{EP}.westeurope.cloudapp.azure.com"
BODY = json.dumps({"data": REQUEST}).encode()
RESOURCE_GROUP = "tidegate-e2e-gateways"


@pytest.fixture(scope="module")
def fake_arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeArmProcess]:
    fake = FakeArmProcess.prepare(tmp_path_factory.mktemp("fake-arm"), free_port())
    fake.start()
    try:
        asyncio.run(fake.wait_up())
        asyncio.run(make_instances_subnet(fake))
        yield fake
    finally:
        fake.stop()


async def make_instances_subnet(fake: FakeArmProcess) -> None:
    """The operator's virtual network: the instances' subnet exists before Tidegate runs."""
    url = (
        f"{fake.url}/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/{RESOURCE_GROUP}"
        "/providers/Microsoft.Network/virtualNetworks/tidegate-vnet/subnets/instances?api-version=2026-03-01"
    )
    async with fake.session() as session:
        async with session.put(url, json={"properties": {"addressPrefix": "10.0.2.0/24"}}) as reply:
            assert reply.status in (200, 201), await reply.text()


@pytest.fixture(scope="module")
def stack(fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    made = LocalStack.create(tmp_path_factory.mktemp("azure-gateways-home"))
    made.env.update(fake_arm.environment(RESOURCE_GROUP, watch_interval=1))
    made.env.update(
        TIDEGATE_NETWORK_PROVIDER="azure",
        TIDEGATE_AZURE_DNS_LABEL_PREFIX="e2e",
        TIDEGATE_AZURE_GATEWAY_SUBNET_PREFIX="10.0.1.0/24",
        TIDEGATE_AZURE_GATEWAY_INSTANCES="2",
    )
    made.up()
    try:
        yield made
    finally:
        made.down()


def state(fake: FakeArmProcess) -> dict[str, Any]:
    return asyncio.run(fake.state())


def gateway_vms(fake: FakeArmProcess) -> list[dict[str, Any]]:
    [gateways] = [s for s in state(fake)["scale_sets"] if s["name"] == GATEWAYS]
    return list(gateways["vms"])


def gateways_ca(stack: LocalStack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.home / "azure-gateways" / "tls" / "ca.pem"))


def score_through(stack: LocalStack, address: str, key: str) -> tuple[int, Any]:
    """HTTPS to one gateway VM's address for the endpoint's public name, as the load balancer's
    Floating IP rule hands a client's connection over; the gateways' CA checks the name."""

    async def call() -> tuple[int, Any]:
        url = f"https://{address}:{stack.port('gateway_https')}/endpoints/{EP}/score"
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(
                    url,
                    data=BODY,
                    headers={
                        "Host": FQDN,
                        "Authorization": f"Bearer {key}",
                        "Content-Type": "application/json",
                    },
                    ssl=gateways_ca(stack),
                    server_hostname=FQDN,
                ) as reply:
                    return reply.status, await reply.json()
            except aiohttp.ClientConnectionError as exc:
                return 0, str(exc)

    return asyncio.run(call())


def admin_route_status(stack: LocalStack, address: str) -> int:
    async def call() -> int:
        context = gateways_ca(stack)
        context.check_hostname = False
        url = f"https://{address}:{stack.port('gateway_admin')}/routes/{EP}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=stack.control_headers(), ssl=context) as reply:
                return reply.status

    return asyncio.run(call())


@pytest.fixture(scope="module")
def served(stack: LocalStack, project: tuple[Path, dict]) -> str:
    root, _ = project
    (root / "gw-endpoint.yml").write_text(f"name: {EP}\nauth_mode: key\n")
    stack.ok("online-endpoint", "create", "-f", "gw-endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment", "create", "-n", "blue", "-e", EP, "-f", "blue.yml", "--all-traffic", cwd=root
    )
    return stack.key(EP)


def test_a_request_through_a_gateway_vm_reaches_a_deployment_vm_and_is_answered(
    stack: LocalStack, fake_arm: FakeArmProcess, served: str, project: tuple[Path, dict]
) -> None:
    _, answers = project
    vms = gateway_vms(fake_arm)
    assert len(vms) == 2
    [lb] = state(fake_arm)["load_balancers"]
    assert lb["pool_members"]["gateways"] == sorted(vm["address"] for vm in vms)
    for vm in vms:  # every gateway VM has the route table
        until(lambda vm=vm: score_through(stack, vm["address"], served)[0] == 200, what="gateway VM serves")
        status, answer = score_through(stack, vm["address"], served)
        assert status == 200 and answer == pytest.approx(answers["model-1"])
    # The control credential and the gateways' key reached the VMs, and no log: not the worker's,
    # nor a gateway VM's console, nor the fake ARM's.
    token = (stack.home / "control.token").read_text().strip()
    key = (stack.home / "azure-gateways" / "tls" / "server-key.pem").read_text().strip().splitlines()[1]
    logs = [*stack.settings().log_dir.glob("*.log"), fake_arm.ca_file.parent / "fake-arm.log"]
    logs += [fake_arm.state_dir / GATEWAYS / vm["instance_id"] / "console.log" for vm in vms]
    for log in logs:
        text = log.read_text()
        assert token not in text and key not in text, log
    assert "azure.gateways.put" in (stack.settings().log_dir / "worker.log").read_text()
    # The scoring URI `show` prints is the public name the request was made for.
    shown = stack.json("online-endpoint", "show", "-n", EP)
    assert FQDN in shown["scoring_uri"]  # type: ignore[index]


def test_a_killed_gateway_vm_is_replaced_and_the_periodic_repush_hands_it_the_routes(
    stack: LocalStack, fake_arm: FakeArmProcess, served: str
) -> None:
    before = {vm["instance_id"] for vm in gateway_vms(fake_arm)}
    victim = sorted(before)[0]
    killed = time.monotonic()
    asyncio.run(fake_arm.kill(GATEWAYS, victim))

    def replaced_and_serving() -> bool:
        new = [vm for vm in gateway_vms(fake_arm) if vm["instance_id"] not in before]
        return bool(new) and score_through(stack, new[0]["address"], served)[0] == 200

    until(replaced_and_serving, what="a new gateway VM serving the endpoint", polls=1200, every=0.25)
    print(
        f"gateway VM {victim} killed: a new gateway VM served the endpoint "
        f"{time.monotonic() - killed:.1f} s later"
    )
    vms = gateway_vms(fake_arm)
    assert victim not in {vm["instance_id"] for vm in vms} and len(vms) == 2


def test_deleting_the_endpoint_leaves_the_gateway_scale_set_without_its_route(
    stack: LocalStack, fake_arm: FakeArmProcess, served: str
) -> None:
    stack.ok("online-endpoint", "delete", "-n", EP, "--yes")
    found = state(fake_arm)
    assert [s["name"] for s in found["scale_sets"]] == [GATEWAYS]  # the deployment's went
    vms = gateway_vms(fake_arm)
    assert len(vms) == 2
    for vm in vms:
        assert admin_route_status(stack, vm["address"]) == 404
    assert found["public_ips"] == []
    [lb] = found["load_balancers"]
    assert lb["frontends"] == {} and lb["rules"] == {} and lb["pools"] == ["gateways"]
