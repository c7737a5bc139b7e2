"""The agent on a scale-set VM: what its custom data hands over to (activities/azure/bootstrap.py).

One VM, one instance: fetch the artifacts onto the VM's disk, build the environment from the
conda/pip file with the local host's own code (host/environments.py), then become azmlinfsrv
(exec, so the VM's process is the scoring server) serving the user's score.py on the fixed
port, bound to the VM's private address. The Application Health extension probes it there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse, urlsplit, urlunsplit

import structlog

from config.azure_vm import VmBoot
from config.host_api import DeploymentRuntime
from config.snapshots import SnapshotFetchError, SnapshotHashMismatch, fetch_snapshot
from host.environments import Environments, EnvironmentStatus
from host.instances import LAUNCHER, instance_environment

log = structlog.get_logger("host.vm")


class BootFailed(RuntimeError):
    """The VM cannot serve this deployment; the message says why (it ends in the boot log)."""


# A snapshot blob's name says what it holds: `snapshots/<kind>/<content hash>.tar.gz`.
_SNAPSHOT_BLOB = re.compile(r"/snapshots/(?P<kind>code|models)/(?P<hash>[0-9a-f]{16})\.tar\.gz$")


@dataclass(frozen=True)
class NamedSnapshot:
    """What a snapshot URL promises: the blob's kind and content hash, and its SAS's expiry."""

    shown: str  # the URL without its query: safe to log, no signature
    kind: str
    content_hash: str
    expires: datetime | None


def is_snapshot_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def named_snapshot(url: str) -> NamedSnapshot:
    """Read a snapshot URL's blob name (the hash the content must have) and its SAS's `se`."""
    parts = urlsplit(url)
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    match = _SNAPSHOT_BLOB.search(parts.path)
    if match is None:
        raise BootFailed(f"{shown}: not a snapshot blob (snapshots/<kind>/<content hash>.tar.gz)")
    expires = None
    if se := parse_qs(parts.query).get("se"):
        try:
            expires = datetime.fromisoformat(se[0].replace("Z", "+00:00"))
        except ValueError:
            expires = None
    return NamedSnapshot(shown=shown, kind=match["kind"], content_hash=match["hash"], expires=expires)


def refusal_reason(snapshot: NamedSnapshot, status: int | None, now: datetime, detail: str = "") -> str:
    """Why a snapshot URL was not served, in words an operator can act on; `detail` is the
    fetch's own message (no query in it), for anything but a refusal."""
    if status not in (401, 403):
        return detail or (f"HTTP {status}" if status else "no answer")
    if snapshot.expires is not None and snapshot.expires <= now:
        return (
            f"HTTP {status}: its SAS expired at {snapshot.expires.isoformat()} (now "
            f"{now.isoformat(timespec='seconds')}); the scale set's next PUT signs a fresh one, so "
            "delete this VM and let Tidegate replace it"
        )
    return f"HTTP {status}: its SAS was refused before its expiry (revoked, or a key rotated)"


def fetch_blob_snapshot(url: str, root: Path, *, now: datetime | None = None) -> Path:
    """Download a snapshot (a read-only SAS URL) to `root/artifacts/<kind>/<hash>`, check that its
    content hashes to the hash its blob is named for, and return the unpacked item."""
    snapshot = named_snapshot(url)
    dest = root / "artifacts" / snapshot.kind / snapshot.content_hash
    try:
        return fetch_snapshot(url, dest, expected_hash=snapshot.content_hash)
    except SnapshotHashMismatch as error:
        raise BootFailed(f"{snapshot.kind} snapshot refused, not used: {error}") from None
    except SnapshotFetchError as error:
        detail = str(error).removeprefix(f"{snapshot.shown}: ")
        reason = refusal_reason(snapshot, error.status, now or datetime.now(UTC), detail)
        raise BootFailed(f"cannot fetch {snapshot.kind} snapshot {snapshot.shown}: {reason}") from None


def fetch_artifact(source: str, destination: Path) -> Path:
    """Bring one artifact (a folder) named by a local path or a file URL (local demos, the fake
    without storage) onto the VM's disk and return where it is."""
    parsed = urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise BootFailed(f"cannot fetch {source!r}: a snapshot URL, a local path or a file URL")
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else source)
    if not path.is_dir():
        raise BootFailed(f"artifact {source!r} is not a folder")
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(path, destination)
    return destination


async def build_environment(boot: VmBoot, root: Path) -> EnvironmentStatus:
    """The deployment's virtualenv, built as the local host builds it."""
    environments = Environments(root / "envs", allow_pip_options=boot.allow_pip_options)
    done = asyncio.Event()
    status = environments.ensure(boot.runtime.environment, retry_failed=True, on_done=done.set)
    if status.state == "building":
        await done.wait()
    if status.state != "ready":
        raise BootFailed(f"environment build failed: {status.error}")
    return status


def local_runtime(boot: VmBoot, root: Path) -> DeploymentRuntime:
    """The runtime with its artifacts fetched onto this VM."""
    runtime = boot.runtime
    if is_snapshot_url(runtime.code_dir):
        code_dir = fetch_blob_snapshot(runtime.code_dir, root)
    else:
        code_dir = fetch_artifact(runtime.code_dir, root / "code")
    model_dir: Path | None = None
    if runtime.model_dir and is_snapshot_url(runtime.model_dir):
        # AZUREML_MODEL_DIR is the folder holding the model, as the façade snapshots it.
        model_dir = fetch_blob_snapshot(runtime.model_dir, root).parent
    elif runtime.model_dir:
        model_dir = fetch_artifact(runtime.model_dir, root / "model")
    return runtime.model_copy(
        update={"code_dir": str(code_dir), "model_dir": str(model_dir) if model_dir else None}
    )


def server_command(runtime: DeploymentRuntime, env: EnvironmentStatus, port: int) -> list[str]:
    return [
        str(env.python),
        str(LAUNCHER),
        "--entry_script",
        str(Path(runtime.code_dir) / runtime.scoring_script),
        "--port",
        str(port),
    ]


async def prepare(boot: VmBoot, root: Path, address: str) -> tuple[list[str], dict[str, str], str]:
    """Everything up to the exec: the command, its environment and its working folder."""
    runtime = local_runtime(boot, root)
    env = await build_environment(boot, root)
    variables = instance_environment(runtime, env, os.environ)
    # Set after instance_environment, which keeps every TIDEGATE_ variable away from user code:
    # the launcher binds the server here, the VM's private address, not 0.0.0.0.
    variables["TIDEGATE_INSTANCE_BIND"] = address
    return server_command(runtime, env, boot.port), variables, runtime.code_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m host.vm")
    parser.add_argument("--boot", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    boot = VmBoot.model_validate_json(args.boot.read_text())
    runtime = boot.runtime
    log.info("vm.booting", endpoint=runtime.endpoint, deployment=runtime.deployment, address=args.address)
    try:
        command, variables, cwd = asyncio.run(prepare(boot, args.root, args.address))
    except BootFailed as exc:
        log.error("vm.boot_failed", endpoint=runtime.endpoint, deployment=runtime.deployment, error=str(exc))
        sys.exit(1)
    log.info("vm.serving", address=args.address, port=boot.port, spec=runtime.spec_hash)
    os.chdir(cwd)
    os.execve(command[0], command, variables)


if __name__ == "__main__":
    main()
