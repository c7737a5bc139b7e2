"""Rolling updates and host patches on the `azure` compute provider, end to end against the fake
ARM: a whole local stack (Temporal, worker, gateway, api) whose deployments are VM scale sets
(upgrade policy Manual), clients calling the endpoint all along.

- A new model version rolls VM by VM (surge one) with no client error; every VM ends on it.
- `tidegate host patch` moves every VM onto the gallery image's newest version, no client error.
- A new version whose score.py fails at init halts the update; the deployment ends back on the
  old version (and the patched image), still serving, `show` saying why.

The tests run in order on one deployment, `azure-roll/blue`, of two VMs."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.project import REQUEST, deployment_yaml
from tests.fakes.arm.client import FakeArmProcess
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

EP = "azure-roll"
SCALE_SET = f"tg-{EP}-blue"
BODY = json.dumps({"data": REQUEST}).encode()
TWO = ("--set", "instance_count=2")  # the YAML says 1, as Azure ML's default
GROUP = "tidegate-e2e-roll"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
GALLERY_IMAGE = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute"
    "/galleries/tidegate/images/tidegate-host"
)


@pytest.fixture(scope="module")
def fake_arm(fake_arm: FakeArmProcess) -> FakeArmProcess:
    """The module's fake ARM (tests/e2e/conftest.py) with the hosts' gallery image published."""
    asyncio.run(fake_arm.publish_image_version(GALLERY_IMAGE, "1.0.0"))
    return fake_arm


@pytest.fixture(scope="module")
def azure_stack(fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack.create(tmp_path_factory.mktemp("azure-home"))
    stack.env.update(fake_arm.environment(GROUP, watch_interval=1))
    # The hosts' image is a gallery image: each scale set takes its newest version.
    stack.env["TIDEGATE_AZURE_IMAGE"] = GALLERY_IMAGE
    # Out of the routes a few seconds before a leaving VM is deleted: a watch round, the push.
    stack.env["TIDEGATE_AZURE_DRAIN_SECONDS"] = "4"
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def served(azure_stack: LocalStack, project: tuple[Path, dict]) -> str:
    root, _ = project
    (root / "azure-roll-endpoint.yml").write_text(f"name: {EP}\nauth_mode: key\n")
    (root / "azure-roll-v1.yml").write_text(deployment_yaml("blue", "model-1", "code", endpoint=EP))
    (root / "azure-roll-v2.yml").write_text(deployment_yaml("blue", "model-2", "code", endpoint=EP))
    (root / "azure-roll-v3.yml").write_text(
        deployment_yaml("blue", "model-1", "code-init-raises", endpoint=EP)
    )
    azure_stack.ok("online-endpoint", "create", "-f", "azure-roll-endpoint.yml", cwd=root)
    azure_stack.ok(
        "online-deployment",
        "create",
        "-f",
        "azure-roll-v1.yml",
        "--all-traffic",
        "--set",
        "instance_count=2",
        cwd=root,
    )
    return azure_stack.key(EP)


def vms(fake: FakeArmProcess) -> list[dict[str, Any]]:
    [blue] = [s for s in asyncio.run(fake.state())["scale_sets"] if s["name"] == SCALE_SET]
    return list(blue["vms"])


def spec_of(vm: dict[str, Any]) -> str:
    return str(json.loads(base64.b64decode(vm["user_data"]))["tidegate-spec-hash"])


def shown(stack: LocalStack) -> dict[str, Any]:
    found = stack.json("online-deployment", "show", "-n", "blue", "-e", EP)
    assert isinstance(found, dict)
    return found


def answer(stack: LocalStack, root: Path) -> list[float]:
    out = stack.ok("online-endpoint", "invoke", "-n", EP, "--request-file", "request.json", cwd=root)
    return list(json.loads(out))


def client_errors(load: SteadyLoad) -> int:
    return sum(n for (_, status), n in load.seen.items() if status != 200)


def test_a_rolling_update_moves_every_vm_to_the_new_model_with_no_client_error_against_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, served: str, project: tuple[Path, dict]
) -> None:
    root, answers = project
    before = vms(fake_arm)
    assert len(before) == 2 and all(vm["image"]["id"].endswith("/versions/1.0.0") for vm in before)
    old_spec = spec_of(before[0])
    most = 0
    done: list[subprocess.CompletedProcess[str]] = []
    update = threading.Thread(
        target=lambda: done.append(
            azure_stack.tidegate("online-deployment", "update", "-f", "azure-roll-v2.yml", *TWO, cwd=root)
        )
    )
    with SteadyLoad(f"{azure_stack.http_base}/endpoints/{EP}/score", served, BODY) as load:
        started = time.monotonic()
        update.start()
        while update.is_alive():
            most = max(most, len(vms(fake_arm)))
            update.join(0.5)
        took = time.monotonic() - started
    assert done[0].returncode == 0, done[0].stderr
    after = vms(fake_arm)
    print(f"2 VMs rolled in {took:.1f} s, at most {most} VMs at once; clients saw {dict(load.seen)}")
    assert len(after) == 2 and {vm["instance_id"] for vm in before}.isdisjoint(
        vm["instance_id"] for vm in after
    )
    assert len({spec_of(vm) for vm in after}) == 1 and spec_of(after[0]) != old_spec
    assert most <= 3  # instance_count + a surge of one
    assert client_errors(load) == 0 and load.answered_by("blue") > 0, load.seen
    state = shown(azure_stack)
    assert state["provisioning_state"] == "Succeeded"
    assert sorted(i["state"] for i in state["instances"]) == ["ready", "ready"]
    assert answer(azure_stack, root) == pytest.approx(answers["model-2"])


def test_host_patch_moves_every_vm_to_the_newest_image_version_with_no_client_error_against_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, served: str, project: tuple[Path, dict]
) -> None:
    root, answers = project
    before = vms(fake_arm)
    asyncio.run(fake_arm.publish_image_version(GALLERY_IMAGE, "1.0.1"))
    with SteadyLoad(f"{azure_stack.http_base}/endpoints/{EP}/score", served, BODY) as load:
        started = time.monotonic()
        result = azure_stack.json("host", "patch", "--endpoint", EP)
        took = time.monotonic() - started
    print(f"host patch of 2 VMs onto image 1.0.1 in {took:.1f} s; clients saw {dict(load.seen)}")
    assert isinstance(result, dict)
    assert [r["outcome"] for r in result["results"]] == ["Succeeded"], result
    after = vms(fake_arm)
    assert len(after) == 2 and {vm["instance_id"] for vm in before}.isdisjoint(
        vm["instance_id"] for vm in after
    )
    assert all(vm["image"]["id"] == f"{GALLERY_IMAGE}/versions/1.0.1" for vm in after), after
    assert client_errors(load) == 0 and load.answered_by("blue") > 0, load.seen
    assert shown(azure_stack)["provisioning_state"] == "Succeeded"
    assert answer(azure_stack, root) == pytest.approx(answers["model-2"])


def test_a_version_whose_init_fails_halts_and_the_old_version_keeps_serving_against_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess, served: str, project: tuple[Path, dict]
) -> None:
    root, answers = project
    before = vms(fake_arm)
    with SteadyLoad(f"{azure_stack.http_base}/endpoints/{EP}/score", served, BODY) as load:
        azure_stack.tidegate("online-deployment", "update", "-f", "azure-roll-v3.yml", *TWO, cwd=root)
        # Not the command's exit code: `--wait` can return during the rollback's own Succeeded
        # report, just before the deployment says Failed (the workflow's, whatever the provider).
        until(lambda: shown(azure_stack)["provisioning_state"] == "Failed", what="the update failed")
        until(lambda: len(vms(fake_arm)) == 2, what="the failed VM deleted")
    print(f"a failing version halted and put back; clients saw {dict(load.seen)}")
    state = shown(azure_stack)
    assert state["provisioning_state"] == "Failed"
    assert "update failed, rolled back" in state["error"] and "PowerState/stopped" in state["error"], state
    assert "tidegate-init-marker" in state["error"], state["error"]  # the VM's serial console says why
    after = vms(fake_arm)
    # The same two VMs on the old version: nothing old was replaced, the new VM is gone.
    assert sorted(vm["instance_id"] for vm in after) == sorted(vm["instance_id"] for vm in before)
    assert sorted(i["state"] for i in state["instances"]) == ["ready", "ready"]
    assert client_errors(load) == 0 and load.answered_by("blue") > 0, load.seen
    assert all(vm["image"]["id"].endswith("/versions/1.0.1") for vm in after), after
    assert answer(azure_stack, root) == pytest.approx(answers["model-2"])


def test_deleting_the_endpoint_leaves_no_scale_set_against_the_fake_arm(
    azure_stack: LocalStack, fake_arm: FakeArmProcess
) -> None:
    azure_stack.ok("online-endpoint", "delete", "-n", EP, "--yes")
    assert asyncio.run(fake_arm.state())["scale_sets"] == []
