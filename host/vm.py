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
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import structlog

from config.azure_vm import VmBoot
from config.host_api import DeploymentRuntime
from host.environments import Environments, EnvironmentStatus
from host.instances import LAUNCHER, instance_environment

log = structlog.get_logger("host.vm")


class BootFailed(RuntimeError):
    """The VM cannot serve this deployment; the message says why (it ends in the boot log)."""


def fetch_artifact(source: str, destination: Path) -> Path:
    """Bring one artifact (a folder) onto the VM's disk and return where it is.

    For now `source` is a local path or a file URL; Blob storage replaces this one function."""
    parsed = urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise BootFailed(f"cannot fetch {source!r}: only local paths and file URLs for now")
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
    code_dir = fetch_artifact(runtime.code_dir, root / "code")
    model_dir = fetch_artifact(runtime.model_dir, root / "model") if runtime.model_dir else None
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
