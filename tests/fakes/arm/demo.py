"""`make demo-azure`: the `make demo` walk-through with deployments on VM scale sets, against the
fake ARM (tests/fakes/arm; Azure cannot be reached from here), plus a VM killed and replaced.

Starts the fake ARM (its own process, TLS, a static token) and Azurite (Microsoft's storage
emulator; without node or Azurite installed, the VMs read snapshots by file URL instead), then a
local stack on a throw-away home whose worker runs compute through the `azure` provider and keeps
snapshots in Azurite; runs control.demo; kills one of the green scale set's VMs and waits until a
new one serves; prints the Azure operations the provider made (by ARM operation, as the fake
counted them) and the snapshot blobs the VMs fetched; and stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from tests.fakes.arm.client import FakeArmProcess
from tests.support.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, azurite_blob_script, node, run_azurite
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
SCALE_SET = "tg-demo-ep-green"


def tidegate(*args: str, check: bool = True) -> str:
    print(f"$ tidegate {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "control.cli", *args], cwd=ROOT, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise SystemExit(f"tidegate {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip()


def vms(fake: FakeArmProcess) -> list[dict]:
    state = asyncio.run(fake.state())
    return [vm for s in state["scale_sets"] if s["name"] == SCALE_SET for vm in s["vms"]]


def storage(work: Path) -> AbstractContextManager[Azurite | None]:
    if node() is None or not azurite_blob_script().exists():
        print("Azurite is not installed (.ci/run installs it): VMs read snapshots by file URL", flush=True)
        return nullcontext()
    (work / "azurite").mkdir(parents=True)
    return run_azurite(work / "azurite")


def print_snapshots(azurite: Azurite) -> None:
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(azurite.account_url, credential=AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY))
    print(f"\nSnapshots in Azurite ({azurite.account_url}/demo), each uploaded once:")
    for blob in service.get_container_client("demo").list_blobs(name_starts_with="snapshots/"):
        print(f"  {blob.size:8d}  {blob.name}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="tidegate-demo-azure-"))
    with storage(work) as azurite:
        run(work, azurite)


def run(work: Path, azurite: Azurite | None) -> None:
    fake = FakeArmProcess.prepare(work / "fake-arm", free_port())
    fake.start()
    asyncio.run(fake.wait_up())
    os.environ.update(TIDEGATE_HOME=str(work / "home"), **fake.environment("tidegate-demo", watch_interval=2))
    if azurite is not None:
        os.environ.update(
            TIDEGATE_AZURE_STORAGE_ACCOUNT_URL=azurite.account_url,
            TIDEGATE_AZURE_STORAGE_ACCOUNT_KEY=DEV_KEY,
            TIDEGATE_AZURE_STORAGE_CONTAINER="demo",
        )
    try:
        tidegate("up", "--detach")
        subprocess.run([sys.executable, "-m", "control.demo"], cwd=ROOT, check=True)
        victim = vms(fake)[0]["instance_id"]
        print(f"\nKilling VM {victim} of scale set {SCALE_SET} (the fake's /_fake/kill)...", flush=True)
        killed = time.monotonic()
        asyncio.run(fake.kill(SCALE_SET, victim))
        for _ in range(600):
            ready = json.loads(
                tidegate(
                    "online-deployment",
                    "show",
                    "-n",
                    "green",
                    "-e",
                    "demo-ep",
                    "-o",
                    "json",
                    "--query",
                    "instances[?state=='ready'].id",
                )
            )
            if victim not in {vm["instance_id"] for vm in vms(fake)} and ready:
                print(f"replaced: {ready} ready {time.monotonic() - killed:.1f} s after the kill", flush=True)
                break
            time.sleep(0.5)
        else:
            raise SystemExit("the killed VM was never replaced")
        state = asyncio.run(fake.state())
        print("\nAzure operations the provider made (ARM requests, as the fake counted them):")
        for operation, count in sorted(state["requests"].items()):
            if not operation.startswith("_fake"):
                print(f"  {count:6d}  {operation}")
        if azurite is not None:
            print_snapshots(azurite)
    finally:
        tidegate("down", check=False)
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
