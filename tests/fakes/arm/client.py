"""Starting the fake ARM for a test, and its control route."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class FakeArmProcess:
    port: int
    token: str
    ca_file: Path
    state_dir: Path
    subnet_prefix: str
    process: subprocess.Popen[bytes] | None = None
    retry_after: int = 1  # the Retry-After of its operation statuses: how long pollers wait

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @classmethod
    def prepare(cls, root: Path, port: int) -> FakeArmProcess:
        """A CA, a certificate for localhost, a token and a /24 of loopback of its own."""
        root.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.private_key_and_cert_chain_pem.write_to_path(str(root / "cert.pem"))
        prefix = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}"
        return cls(
            port=port,
            token=secrets.token_urlsafe(24),
            ca_file=root / "ca.pem",
            state_dir=root / "vms",
            subnet_prefix=prefix,
        )

    def start(self) -> None:
        root = self.ca_file.parent
        args = [
            sys.executable,
            "-m",
            "tests.fakes.arm",
            "--port",
            str(self.port),
            "--cert",
            str(root / "cert.pem"),
            "--key",
            str(root / "key.pem"),
            "--state-dir",
            str(self.state_dir),
            "--subnet-prefix",
            self.subnet_prefix,
            "--retry-after",
            str(self.retry_after),
        ]
        with open(root / "fake-arm.log", "ab") as out:
            self.process = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env={**os.environ, "FAKE_ARM_TOKEN": self.token},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # the fake stops its VMs on the way out
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def azure_settings(self, resource_group: str, watch_interval: float) -> dict[str, str]:
        """The azure_* settings (as Settings fields) that point the azure providers at this fake:
        placeholder subscription, network and key, a free instance port, and its URL and CA."""
        return {
            "azure_subscription_id": "00000000-0000-0000-0000-000000000001",
            "azure_resource_group": resource_group,
            "azure_location": "westeurope",
            "azure_vnet": "tidegate-vnet",
            "azure_subnet": "instances",
            "azure_ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheFakeArmOnly tidegate",
            "azure_instance_port": str(free_port()),
            "azure_watch_interval_seconds": str(watch_interval),
            "azure_arm_url": self.url,
            "azure_ca_file": str(self.ca_file),
        }

    def environment(self, resource_group: str, watch_interval: float) -> dict[str, str]:
        """The same as TIDEGATE_ variables for a stack whose compute is the azure provider, with
        this fake's token as the ARM bearer token."""
        settings = self.azure_settings(resource_group, watch_interval)
        return {
            "TIDEGATE_COMPUTE_PROVIDER": "azure",
            "TIDEGATE_AZURE_ACCESS_TOKEN": self.token,
            **{f"TIDEGATE_{name.upper()}": value for name, value in settings.items()},
        }

    def session(self) -> aiohttp.ClientSession:
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_file))
        return aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"},
            connector=aiohttp.TCPConnector(ssl=context),
        )

    async def wait_up(self) -> None:
        async with self.session() as session:
            for _ in range(400):
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"the fake ARM exited: {self.process.returncode}")
                try:
                    async with session.get(f"{self.url}/_fake/state") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("the fake ARM never answered")

    async def state(self) -> dict[str, Any]:
        async with self.session() as session:
            async with session.get(f"{self.url}/_fake/state") as response:
                response.raise_for_status()
                result: dict[str, Any] = await response.json()
                return result

    async def fault(self, **body: Any) -> None:
        async with self.session() as session:
            async with session.post(f"{self.url}/_fake/faults", json=body) as response:
                response.raise_for_status()

    async def kill(self, scale_set: str, instance_id: str) -> None:
        async with self.session() as session:
            body = {"scale_set": scale_set, "instance_id": instance_id}
            async with session.post(f"{self.url}/_fake/kill", json=body) as response:
                response.raise_for_status()

    async def publish_image_version(self, image: str, version: str) -> None:
        """A new version of a Compute Gallery image definition (made if need be)."""
        async with self.session() as session:
            body = {"image": image, "version": version}
            async with session.post(f"{self.url}/_fake/image-versions", json=body) as response:
                response.raise_for_status()
