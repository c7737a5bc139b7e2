"""Azurite (Microsoft's Azure Storage emulator, from npm) as a process of its own for a test.

`.ci/run` installs it under `$XDG_CACHE_HOME/tidegate/azurite` (or `TIDEGATE_AZURITE_DIR`); a
machine without node skips the tests that need it, one with node but no Azurite fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Azurite's documented development account (public, the same on every machine).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_LISTENING = re.compile(r"Blob service successfully listens on (?P<url>https?://\S+)")


def azurite_dir() -> Path:
    given = os.environ.get("TIDEGATE_AZURITE_DIR")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tidegate" / "azurite"


def azurite_blob_script() -> Path:
    return azurite_dir() / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def node() -> str | None:
    return shutil.which("node")


@dataclass(frozen=True)
class Azurite:
    url: str  # http://127.0.0.1:<port>

    @property
    def account_url(self) -> str:
        return f"{self.url}/{DEV_ACCOUNT}"


@contextmanager
def run_azurite(workdir: Path, *, tls: tuple[Path, Path] | None = None) -> Iterator[Azurite]:
    """Azurite's blob service on a port the kernel picks (read from its first lines), in memory.
    `tls`: a certificate and key (PEM) to serve HTTPS with, and OAuth bearer tokens accepted
    (`--oauth basic`: issuer, audience and lifetime checked, the signature not)."""
    script = azurite_blob_script()
    if not script.exists():
        raise RuntimeError(f"Azurite is not installed at {script} (.ci/run installs it with npm)")
    node_binary = node()
    assert node_binary is not None
    process = subprocess.Popen(
        [
            node_binary,
            str(script),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--extentMemoryLimit",
            "256",
            "--disableTelemetry",
            # The pinned azure-storage-blob sends a newer x-ms-version than Azurite knows; the
            # operations used here are the same in both.
            "--skipApiVersionCheck",
            *(["--cert", str(tls[0]), "--key", str(tls[1]), "--oauth", "basic"] if tls else []),
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen: list[str] = []
    url = None
    for line in process.stdout:  # ends when Azurite exits: a failed start cannot hang this
        seen.append(line)
        if match := _LISTENING.search(line):
            url = match["url"]
            break
    if url is None:
        process.wait()
        raise RuntimeError("Azurite did not start:\n" + "".join(seen))
    # Keep reading its output so a full pipe never blocks it.
    threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True).start()
    try:
        yield Azurite(url=url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
