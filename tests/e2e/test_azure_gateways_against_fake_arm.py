"""Azure compute and network end to end against the fake ARM: a whole local stack (Temporal,
worker, gateway, api) whose worker runs deployments as VM scale sets and endpoints behind the
gateway scale set, whose VMs are real `tidegate gateway` processes booted from its custom data.

A client's request goes through a gateway VM at its private address (standing in for the load
balancer, which the fake does not forward through) over HTTPS for the endpoint's public name,
and is answered by a deployment's VM. A killed gateway VM is replaced and the endpoint's own
periodic re-push hands the new one the route table. `tidegate host patch` rolls the deployment's
VMs and then the gateway VMs onto the gallery image's newest version, under steady load through
the gateway VMs, each old one drained first (its health path says 503, so the stand-in
balancer's probe takes it out), with no failed request. Deleting the endpoint leaves the shared
gateway scale set, with no route for it."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.routes import HEALTH_PATH
from tests.e2e.project import REQUEST
from tests.fakes.arm.client import FakeArmProcess
from tests.support.polling import until
from tests.support.stack import LocalStack

EP = "gw-ep"
GATEWAYS = "tg-gateways"
FQDN = f"e2e-{EP}.westeurope.cloudapp.azure.com"
BODY = json.dumps({"data": REQUEST}).encode()
RESOURCE_GROUP = "tidegate-e2e-gateways"
GALLERY_IMAGE = (
    f"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/{RESOURCE_GROUP}"
    "/providers/Microsoft.Compute/galleries/tidegate/images/tidegate-host"
)


@pytest.fixture(scope="module")
def fake_arm(fake_arm: FakeArmProcess) -> FakeArmProcess:
    """The module's fake ARM (tests/e2e/conftest.py) with the instances' subnet and the hosts'
    gallery image."""
    asyncio.run(make_instances_subnet(fake_arm))
    asyncio.run(fake_arm.publish_image_version(GALLERY_IMAGE, "1.0.0"))
    return fake_arm


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
        # The hosts' image, gateways' included: a gallery image, whose newest version a host
        # patch moves every VM onto.
        TIDEGATE_AZURE_IMAGE=GALLERY_IMAGE,
        TIDEGATE_AZURE_DRAIN_SECONDS="4",
        # The test's stand-in balancer probes every second, two probes: 2 s, and a margin.
        TIDEGATE_AZURE_GATEWAY_DRAIN_SECONDS="5",
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


class LoadThroughGatewayVms:
    """Steady load through the gateway VMs, standing in for the load balancer (which the fake
    does not forward through): clients call the VMs' private addresses in turn, on keep-alive
    connections. The rotation is the balancer's HTTPS probe, faster: every VM of the scale set
    is asked for the gateway's health path every PROBE_EVERY seconds; it joins the rotation
    after two 200s in a row and leaves it after two other answers (or none) in a row.

    Counted: answers by status, every one a client sees (0: no answer, a broken connection);
    a failure is also counted as `on a deleted VM` when that VM was gone from the scale set by
    the time it is looked at."""

    PROBE_EVERY = 1.0
    PROBES = 2

    def __init__(self, stack: LocalStack, fake: FakeArmProcess, key: str, clients: int = 4) -> None:
        self.stack, self.fake, self.key, self.clients = stack, fake, key, clients
        self.seen: Counter[int] = Counter()  # status (0: no answer) -> count
        self.on_deleted_vm: Counter[int] = Counter()
        self.failures: list[str] = []
        self.by_vm: Counter[str] = Counter()
        self.left_rotation: list[str] = []  # addresses, in the order the probe took them out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._rotation: list[str] = []
        self._probes: dict[str, list[bool]] = {}  # address -> its probes' outcomes, newest last
        self._in: set[str] = set()

    def __enter__(self) -> LoadThroughGatewayVms:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    async def _addresses(self) -> set[str]:
        [gateways] = [s for s in (await self.fake.state())["scale_sets"] if s["name"] == GATEWAYS]
        return {vm["address"] for vm in gateways["vms"]}

    async def _probe(self, session: aiohttp.ClientSession, address: str) -> bool:
        """Up on a 200 from the health path over HTTPS (the balancer checks no certificate)."""
        url = f"https://{address}:{self.stack.port('gateway_https')}{HEALTH_PATH}"
        try:
            async with session.get(url, ssl=False, timeout=aiohttp.ClientTimeout(total=2)) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _balancer(self) -> None:
        """The pool and the probe: who is in the rotation."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            while not self._stop.is_set():
                started = time.monotonic()
                present = await self._addresses()
                for address in list(self._probes):
                    if address not in present:
                        del self._probes[address]
                found = await asyncio.gather(*(self._probe(session, a) for a in sorted(present)))
                for address, up in zip(sorted(present), found, strict=True):
                    last = [*self._probes.get(address, []), up][-self.PROBES :]
                    self._probes[address] = last
                    if len(last) == self.PROBES and all(last):
                        self._in.add(address)
                    elif len(last) == self.PROBES and not any(last) and address in self._in:
                        self._in.discard(address)
                        self.left_rotation.append(address)
                self._in &= present  # a VM gone from the pool takes no new connection either
                self._rotation = sorted(self._in)
                await asyncio.sleep(max(0.0, self.PROBE_EVERY - (time.monotonic() - started)))

    async def _client(self, session: aiohttp.ClientSession, offset: int) -> None:
        turn = offset
        while not self._stop.is_set():
            rotation = self._rotation
            if not rotation:
                await asyncio.sleep(0.1)
                continue
            address = rotation[turn % len(rotation)]
            turn += 1
            url = f"https://{address}:{self.stack.port('gateway_https')}/endpoints/{EP}/score"
            try:
                async with session.post(
                    url,
                    data=BODY,
                    headers={
                        "Host": FQDN,
                        "Authorization": f"Bearer {self.key}",
                        "Content-Type": "application/json",
                    },
                    ssl=gateways_ca(self.stack),
                    server_hostname=FQDN,
                ) as reply:
                    await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.seen[status] += 1
            self.by_vm[address] += 1
            if status != 200:
                self.failures.append(f"{address}: {status}")
                if address not in await self._addresses():
                    self.on_deleted_vm[status] += 1
            await asyncio.sleep(0.005)

    async def _run(self) -> None:
        balancer = asyncio.create_task(self._balancer())
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))
        await balancer


def test_host_patch_rolls_the_gateway_vms_onto_the_newest_image_under_load_against_the_fake_arm(
    stack: LocalStack, fake_arm: FakeArmProcess, served: str
) -> None:
    before = {vm["instance_id"] for vm in gateway_vms(fake_arm)}
    old_addresses = {vm["address"] for vm in gateway_vms(fake_arm)}
    asyncio.run(fake_arm.publish_image_version(GALLERY_IMAGE, "1.0.1"))
    with LoadThroughGatewayVms(stack, fake_arm, served) as load:
        until(lambda: load.seen[200] > 0, what="the load is answered through the gateway VMs")
        started = time.monotonic()
        result = stack.json("host", "patch")
        took = time.monotonic() - started
    print(
        f"host patch (1 deployment, then 2 gateway VMs) in {took:.1f} s ({result['gateways']['detail']}); "  # type: ignore[index]
        f"clients saw {dict(load.seen)} ({sum(load.seen.values())} requests, {len(load.failures)} failed, "
        f"{sum(load.on_deleted_vm.values())} of them on a deleted VM); by VM {dict(load.by_vm)}; "
        f"the probe took {load.left_rotation} out of the rotation"
    )
    assert isinstance(result, dict)
    assert [r["outcome"] for r in result["results"]] == ["Succeeded"], result
    gateways = result["gateways"]
    assert gateways["outcome"] == "Succeeded" and gateways["image"] == f"{GALLERY_IMAGE}/versions/1.0.1", (
        result
    )
    vms = gateway_vms(fake_arm)
    assert len(vms) == 2 and before.isdisjoint(vm["instance_id"] for vm in vms)
    assert all(vm["image"]["id"] == f"{GALLERY_IMAGE}/versions/1.0.1" and vm["running"] for vm in vms), vms
    # No client saw an error: each old VM drained (its probe failed, so it left the rotation, and
    # its keep-alive connections were closed after an answer) before it was deleted.
    assert load.failures == [], load.failures
    assert set(load.seen) == {200} and load.seen[200] > 0
    assert old_addresses <= set(load.left_rotation), (old_addresses, load.left_rotation)
    # The load reached the new VMs too (the balancer's probe admitted them), and each serves.
    assert {vm["address"] for vm in vms} & set(load.by_vm)
    for vm in vms:
        status, _ = score_through(stack, vm["address"], served)
        assert status == 200


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
