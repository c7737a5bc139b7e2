"""The azure compute provider with its snapshots in Blob storage: the fake ARM's VMs (real
processes running the provider's custom data) fetch code and model from Azurite with the SAS URLs
the provider signed, and serve a score.py that reads its model file. A repeat PUT within a
half-life is no change; a scale-out past it signs fresh URLs, so the new VM never boots with an
expired one; a VM given an expired URL fails its boot and its console says why.

The tests run in order and share one fake and one Azurite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient

from activities.azure.artifacts import BlobArtifactStore
from activities.azure.compute import AzureComputeProvider
from activities.azure.credentials import GivenTokenCredential
from activities.azure.scale_sets import scale_set_name
from activities.azure.snapshot_sas import SnapshotSigner
from config.contract.activities import DeleteInstancesInput, GetInstancesInput, RequestInstancesInput
from config.host_api import DeploymentRuntime, ProbeSpec
from decisions.snapshot_urls import sas_window
from tests.activities.azure.conftest import azure_settings
from tests.fakes.arm.client import FakeArmProcess
from tests.support.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, node, run_azurite
from tests.support.polling import eventually

pytestmark = pytest.mark.skipif(node() is None, reason="node is not installed, so Azurite cannot run")

TTL = timedelta(days=1)
INSTANCE_ROOT = "/var/lib/tidegate/artifacts"
CONTAINER = "tidegate"
PUT = "virtualMachineScaleSets.createOrUpdate"
# A score.py that reads its model file (no package beyond the image's: the VM builds no conda env).
SCORE = """\
import json, os

scale = None

def init():
    global scale
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.txt")) as f:
        scale = float(f.read())

def run(raw_data):
    return [scale * x for x in json.loads(raw_data)["data"]]
"""


@dataclass
class Clock:
    """What `now` is when the provider signs: the tests move it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with run_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="module")
def snapshots(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> DeploymentRuntime:
    """Code and model uploaded as the façade uploads them; the runtime names their VM paths."""
    root = tmp_path_factory.mktemp("project")
    (root / "code").mkdir()
    (root / "code" / "score.py").write_text(SCORE)
    (root / "model" / "model").mkdir(parents=True)
    (root / "model" / "model" / "weights.txt").write_text("2.5")
    service = BlobServiceClient(azurite.account_url, credential=AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY))
    store = BlobArtifactStore(service, CONTAINER, instance_root=INSTANCE_ROOT)
    code = store.snapshot(root / "code", "code")
    model = store.snapshot(root / "model" / "model", "models")
    return DeploymentRuntime(
        endpoint="ep2",
        deployment="blob",
        code_dir=str(code.path),
        model_dir=str(model.path.parent),
        spec_hash="blob-1",
        readiness_probe=ProbeSpec(initial_delay=1, period=1),
        liveness_probe=ProbeSpec(initial_delay=1, period=1),
    )


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock(datetime.now(UTC))


@pytest_asyncio.fixture(scope="module")
async def provider(
    fake_arm: FakeArmProcess, azurite: Azurite, clock: Clock, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AzureComputeProvider]:
    settings = azure_settings(fake_arm, tmp_path_factory.mktemp("azure-home"))
    signer = SnapshotSigner(
        azurite.account_url, CONTAINER, ttl=TTL, instance_root=INSTANCE_ROOT, account_key=DEV_KEY
    )
    provider = AzureComputeProvider(
        settings, credential=GivenTokenCredential(fake_arm.token), signer=signer, clock=clock
    )
    try:
        yield provider
    finally:
        await provider.close()


def request(runtime: DeploymentRuntime, count: int) -> RequestInstancesInput:
    return RequestInstancesInput(runtime=runtime, instance_count=count, instance_type="Standard_D2s_v5")


def vm_dir(fake: FakeArmProcess, runtime: DeploymentRuntime, instance_id: str) -> Path:
    return fake.state_dir / scale_set_name(runtime.endpoint, runtime.deployment) / instance_id


def booted_with(fake: FakeArmProcess, runtime: DeploymentRuntime, instance_id: str) -> dict[str, str]:
    """The artifact URLs a VM's custom data handed it (the boot description on its disk)."""
    boot = json.loads((vm_dir(fake, runtime, instance_id) / "disk" / "boot.json").read_text())
    return {"code": boot["runtime"]["code_dir"], "model": boot["runtime"]["model_dir"]}


def expiry_of(url: str) -> datetime:
    return datetime.fromisoformat(parse_qs(urlsplit(url).query)["se"][0].replace("Z", "+00:00"))


async def states(provider: AzureComputeProvider, runtime: DeploymentRuntime) -> list[str]:
    status = await provider.get_instances(
        GetInstancesInput(endpoint=runtime.endpoint, deployment=runtime.deployment)
    )
    return sorted(i.state for i in status.instances)


async def scores(provider: AzureComputeProvider, runtime: DeploymentRuntime) -> list[list[float]]:
    status = await provider.get_instances(
        GetInstancesInput(endpoint=runtime.endpoint, deployment=runtime.deployment)
    )
    answers = []
    async with aiohttp.ClientSession() as session:
        for instance in sorted(status.instances, key=lambda i: i.id):
            async with session.post(f"{instance.url}/score", json={"data": [1.0, 4.0]}) as response:
                assert response.status == 200, await response.text()
                answers.append(await response.json())
    return answers


def window_base(now: datetime) -> datetime:
    return sas_window(now, TTL).renew_at - TTL / 2


async def test_vms_fetch_code_and_model_from_azurite_with_sas_and_serve_against_fake_arm(
    provider: AzureComputeProvider,
    fake_arm: FakeArmProcess,
    azurite: Azurite,
    snapshots: DeploymentRuntime,
    clock: Clock,
) -> None:
    # Signed late in the previous half-life: still valid now, with less than half its life left.
    real_now = clock.now
    clock.now = window_base(real_now) - TTL / 2 + timedelta(minutes=1)
    await provider.request_instances(request(snapshots, 1))
    await eventually(
        lambda: _states_are(provider, snapshots, ["ready"]), "a ready VM", polls=1200, every=0.25
    )

    assert await scores(provider, snapshots) == [[2.5, 10.0]]  # score.py read the model's weights.txt
    urls = booted_with(fake_arm, snapshots, "0")
    code_hash = Path(snapshots.code_dir).parent.name
    assert urls["code"].startswith(f"{azurite.account_url}/{CONTAINER}/snapshots/code/{code_hash}.tar.gz?")
    assert "sp=r" in urls["code"] and "sig=" in urls["model"]
    assert expiry_of(urls["code"]) == sas_window(clock.now, TTL).expiry
    disk = vm_dir(fake_arm, snapshots, "0") / "disk" / "artifacts"
    assert (disk / "code" / code_hash / "code" / "score.py").read_text() == SCORE
    custom_data = (vm_dir(fake_arm, snapshots, "0") / "custom-data").read_text()
    assert DEV_KEY not in custom_data  # the VM gets URLs, never the key that signed them


async def _states_are(provider: AzureComputeProvider, runtime: DeploymentRuntime, want: list[str]) -> bool:
    return await states(provider, runtime) == want


async def test_a_repeat_put_within_the_half_life_is_no_change_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, snapshots: DeploymentRuntime, clock: Clock
) -> None:
    before = await fake_arm.state()
    clock.now = window_base(clock.now) + TTL / 2 - timedelta(minutes=1)  # same half-life, later
    await provider.request_instances(request(snapshots, 1))
    after = await fake_arm.state()
    name = scale_set_name(snapshots.endpoint, snapshots.deployment)
    assert after["requests"][PUT] == before["requests"][PUT] + 1
    assert after["changes"][name] == before["changes"][name] == 1  # the same URLs: no model change


async def test_a_scale_out_past_the_half_life_boots_with_a_fresh_sas_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, snapshots: DeploymentRuntime, clock: Clock
) -> None:
    first = booted_with(fake_arm, snapshots, "0")
    clock.now = datetime.now(UTC)  # the next half-life: what the model holds has under half left
    assert clock.now - (expiry_of(first["code"]) - TTL) >= TTL / 2
    before = await fake_arm.state()
    await provider.request_instances(request(snapshots, 2))
    after = await fake_arm.state()
    name = scale_set_name(snapshots.endpoint, snapshots.deployment)
    assert after["changes"][name] == before["changes"][name] + 1  # new URLs in the model
    await eventually(
        lambda: _states_are(provider, snapshots, ["ready", "ready"]), "two ready VMs", polls=1200, every=0.25
    )

    fresh = booted_with(fake_arm, snapshots, "1")
    assert fresh["code"] != first["code"]
    assert expiry_of(fresh["code"]) == sas_window(clock.now, TTL).expiry
    assert expiry_of(fresh["code"]) - datetime.now(UTC) > TTL / 2
    assert await scores(provider, snapshots) == [[2.5, 10.0], [2.5, 10.0]]


async def test_a_vm_given_an_expired_sas_fails_its_boot_saying_so_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, snapshots: DeploymentRuntime, clock: Clock
) -> None:
    stale = snapshots.model_copy(update={"deployment": "stale"})
    clock.now = datetime.now(UTC) - 3 * TTL  # a signer whose clock is days behind
    await provider.request_instances(request(stale, 1))
    await eventually(
        lambda: _states_are(provider, stale, ["failed"]), "the VM's boot failed", polls=400, every=0.25
    )
    console = (vm_dir(fake_arm, stale, "0") / "console.log").read_text()
    assert "vm.boot_failed" in console
    assert "cannot fetch code snapshot" in console and "HTTP 403: its SAS expired at" in console
    assert "sig=" not in console


async def test_deleting_the_blob_deployments_leaves_no_scale_set_against_fake_arm(
    provider: AzureComputeProvider, fake_arm: FakeArmProcess, snapshots: DeploymentRuntime
) -> None:
    for deployment in ("blob", "stale"):
        await provider.delete_instances(DeleteInstancesInput(endpoint="ep2", deployment=deployment))
    assert (await fake_arm.state())["scale_sets"] == []
