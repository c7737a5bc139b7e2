"""The fake's "hypervisor": a VM is a local process running the scale set's custom data on its
own loopback address (Linux routes all of 127/8 to loopback); its Application Health extension
is a real HTTP probe of that address."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

HEALTHY = "HealthState/healthy"
UNHEALTHY = "HealthState/unhealthy"
INITIALIZING = "HealthState/initializing"


@dataclass(frozen=True)
class Image:
    """What every fake VM boots with: Tidegate's interpreter and where its package is."""

    python: str
    package_root: str


@dataclass
class HealthProbe:
    """The Application Health extension's settings (ApplicationHealthLinux, v2)."""

    protocol: str = "http"
    port: int = 80
    request_path: str = "/"
    interval_seconds: float = 5.0
    number_of_probes: int = 1


@dataclass
class Vm:
    instance_id: str
    name: str
    address: str
    root: Path
    model_version: int
    # What the VM was made from (its own model: Manual upgrade policy keeps it for life).
    user_data: str | None = None
    image: dict[str, str] = field(default_factory=dict)
    vm_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    process: subprocess.Popen[bytes] | None = None
    health: str = INITIALIZING
    health_time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    ever_healthy: bool = False
    failures: int = 0
    killed: bool = False

    def boot(self, custom_data: str, image: Image) -> None:
        """Run the custom data as cloud-init would: once, as a script, in a session of its own."""
        self.root.mkdir(parents=True, exist_ok=True)
        script = self.root / "custom-data"
        script.write_bytes(base64.b64decode(custom_data))
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "PYTHONPATH": image.package_root,
            "TIDEGATE_PYTHON": image.python,
            "TIDEGATE_VM_ROOT": str(self.root / "disk"),
            "TIDEGATE_VM_ADDRESS": self.address,
        }
        with open(self.root / "console.log", "ab") as console:
            self.process = subprocess.Popen(
                ["/bin/sh", str(script)],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Pull the plug: the whole process group, at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def set_health(self, code: str) -> None:
        if code != self.health:
            self.health = code
            self.health_time = datetime.now(UTC).isoformat()

    async def probe(self, session: aiohttp.ClientSession, settings: HealthProbe) -> None:
        """One probe, as the extension makes it; a VM whose process is gone is unhealthy."""
        if not self.running:
            self.set_health(UNHEALTHY)
            return
        url = f"{settings.protocol}://{self.address}:{settings.port}{settings.request_path}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self.failures, self.ever_healthy = 0, True
            self.set_health(HEALTHY)
            return
        self.failures += 1
        if self.ever_healthy and self.failures >= settings.number_of_probes:
            self.set_health(UNHEALTHY)
