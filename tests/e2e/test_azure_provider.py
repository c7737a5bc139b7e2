"""The same workflows on the `azure` compute provider, end to end against the fake ARM: a whole
local stack (Temporal, worker, gateway, api) whose worker runs deployments as VM scale sets
through the real azure-mgmt-compute SDK over TLS, the fake's VMs real processes serving the
model with azmlinfsrv. The snapshots live in Azurite (Microsoft's storage emulator, a real
process): the CLI uploads code and model there, the worker signs read-only SAS URLs into the
custom data, and each VM fetches and checks them. Create, invoke through the endpoint's URI, a
killed VM replaced, delete leaving no scale set behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from activities.local.artifacts import content_hash
from tests.e2e.project import REQUEST
from tests.fakes.arm.client import FakeArmProcess
from tests.support.azurite import DEV_KEY, Azurite, node, run_azurite
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

EP = "azure-ep"
SCALE_SET = "tg-azure-ep-blue"
BODY = json.dumps({"data": REQUEST}).encode()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite | None]:
    """None on a machine without node: the VMs then read the snapshots by file URL."""
    if node() is None:
        yield None
        return
    with run_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="module")
def azure_stack(
    fake_arm: FakeArmProcess, azurite: Azurite | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    stack = LocalStack.create(tmp_path_factory.mktemp("azure-home"))
    stack.env.update(fake_arm.environment("tidegate-e2e", watch_interval=1))
    if azurite is not None:
        # A storage account: the artifacts provider becomes azure, compute signs SAS URLs.
        stack.env.update(
            TIDEGATE_AZURE_STORAGE_ACCOUNT_URL=azurite.account_url,
            TIDEGATE_AZURE_STORAGE_ACCOUNT_KEY=DEV_KEY,
            TIDEGATE_AZURE_STORAGE_CONTAINER="e2e-snapshots",
        )
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def scale_sets(fake: FakeArmProcess) -> dict[str, Any]:
    return asyncio.run(fake.state())


@pytest.fixture(scope="module")
def served(azure_stack: LocalStack, project: tuple[Path, dict]) -> str:
    root, _ = project
    (root / "azure-endpoint.yml").write_text(f"name: {EP}\nauth_mode: key\n")
    azure_stack.ok("online-endpoint", "create", "-f", "azure-endpoint.yml", cwd=root)
    azure_stack.ok(
        "online-deployment",
        "create",
        "-n",
        "blue",
        "-e",
        EP,
        "-f",
        "blue.yml",
        "--all-traffic",
        "--set",
        "instance_count=2",
        cwd=root,
    )
    return azure_stack.key(EP)


def blue_vms(fake: FakeArmProcess) -> list[dict[str, Any]]:
    [blue] = [s for s in scale_sets(fake)["scale_sets"] if s["name"] == SCALE_SET]
    return list(blue["vms"])


def test_a_deployment_is_a_scale_set_whose_vms_serve_through_the_endpoint(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, served: str, project: tuple[Path, dict]
) -> None:
    root, answers = project
    [blue] = [s for s in scale_sets(fake_arm)["scale_sets"] if s["name"] == SCALE_SET]
    assert blue["capacity"] == 2 and blue["sku"] == "Standard_DS3_v2"
    out = azure_stack.ok("online-endpoint", "invoke", "-n", EP, "--request-file", "request.json", cwd=root)
    assert json.loads(out) == pytest.approx(answers["model-1"])
    shown = azure_stack.json("online-deployment", "show", "-n", "blue", "-e", EP)
    assert {i["id"] for i in shown["instances"]} == {f"{SCALE_SET}_0", f"{SCALE_SET}_1"}
    assert all(i["state"] == "ready" for i in shown["instances"]), shown["instances"]


def test_fake_arm_vms_fetched_code_and_model_from_azurite_by_sas_and_checked_them(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, azurite: Azurite | None, served: str
) -> None:
    if azurite is None:
        pytest.skip("node is not installed, so Azurite cannot run")
    for vm in blue_vms(fake_arm):
        disk = fake_arm.state_dir / SCALE_SET / vm["instance_id"] / "disk"
        runtime = json.loads((disk / "boot.json").read_text())["runtime"]
        for field, kind in (("code_dir", "code"), ("model_dir", "models")):
            url = runtime[field]
            assert url.startswith(f"{azurite.account_url}/e2e-snapshots/snapshots/{kind}/"), url
            assert "sp=r" in url and "sig=" in url
            digest = url.split("?")[0].rsplit("/", 1)[1].removesuffix(".tar.gz")
            [item] = (disk / "artifacts" / kind / digest).iterdir()
            assert content_hash(item) == digest
        custom_data = (disk.parent / "custom-data").read_text()
        assert DEV_KEY not in custom_data
    # The worker's and the CLI's logs carry no key and no signature.
    signature = runtime["code_dir"].split("sig=")[1].split("&")[0]
    logs = {log.name: log.read_text() for log in azure_stack.settings().log_dir.glob("*.log")}
    assert "azure.snapshot_url.signed" in logs["worker.log"]  # the worker that signed logged it
    for name, text in logs.items():
        assert DEV_KEY not in text and signature not in text, name


def test_a_killed_vm_is_replaced_by_a_new_one_and_clients_see_no_error(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, served: str
) -> None:
    victim = blue_vms(fake_arm)[0]["instance_id"]
    with SteadyLoad(f"{azure_stack.http_base}/endpoints/{EP}/score", served, BODY) as load:
        killed = time.monotonic()
        asyncio.run(fake_arm.kill(SCALE_SET, victim))
        until(
            lambda: (
                victim not in {vm["instance_id"] for vm in blue_vms(fake_arm)}
                and len(
                    azure_stack.json(
                        "online-deployment",
                        "show",
                        "-n",
                        "blue",
                        "-e",
                        EP,
                        "--query",
                        "instances[?state=='ready']",
                    )
                )
                == 2
            ),
            what="the killed VM replaced by a ready one",
        )
        print(
            f"VM {victim} killed: a new VM ready {time.monotonic() - killed:.1f} s later; "
            f"clients saw {dict(load.seen)}"
        )
    assert len(blue_vms(fake_arm)) == 2
    # Only requests the dying VM held could fail (502); the gateway retries refused connections.
    failed = {status for (who, status), n in load.seen.items() if status != 200}
    assert failed <= {502} and load.failures_from("blue") <= load.concurrency, load.seen


def test_deleting_the_endpoint_leaves_no_scale_set(azure_stack: LocalStack, fake_arm: FakeArmProcess) -> None:
    azure_stack.ok("online-endpoint", "delete", "-n", EP, "--yes")
    assert scale_sets(fake_arm)["scale_sets"] == []
