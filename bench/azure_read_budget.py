"""ARM's read budget with many deployments: the azure compute provider's shared watcher against
the fake ARM, with N deployments of one VM each (real azmlinfsrv processes), and a VM killed.

Prints, for the watcher at its interval (the worker's InstanceWatcher calls `changes` in a
loop; so does this), the ARM reads per second it spent over a window, beside ARM's refill of
about 25 reads per second per subscription, and how long a killed VM took to be seen failed,
replaced (deleteInstances + PUT, as the deployment workflow's request does) and ready again.

    python bench/azure_read_budget.py [--deployments 50] [--interval 25] [--window 120]

Figures, never asserted; a loaded machine makes the VMs boot slower, not the reads more.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import joblib  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

from activities.azure.compute import AzureComputeProvider  # noqa: E402
from activities.azure.credentials import GivenTokenCredential  # noqa: E402
from activities.azure.scale_sets import scale_set_name  # noqa: E402
from config.contract.activities import RequestInstancesInput  # noqa: E402
from config.host_api import DeploymentRuntime, ProbeSpec, RuntimeEnvironment  # noqa: E402
from config.settings import Settings  # noqa: E402
from tests.fakes.arm.client import FakeArmProcess  # noqa: E402
from tests.host.helpers import SCORE_PY  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

ARM_REFILL_PER_SECOND = 25.0  # per subscription, reads (ARM's token bucket; 250 in a burst)
READS = (
    "virtualMachineScaleSets.list",
    "virtualMachineScaleSetVMs.list",
    "virtualMachineScaleSets.get",
    "virtualMachineScaleSetVMs.get",  # each new VM's user data (its spec), once
)
CONDA = "name: bench\ndependencies:\n  - python>=3.11\n  - pip\n  - pip:\n    - scikit-learn\n    - joblib\n"


def reads(state: dict) -> int:
    return sum(n for op, n in state["requests"].items() if op in READS or op.startswith("networkInterfaces"))


def artifacts(root: Path) -> tuple[Path, Path]:
    model = root / "model"
    (model / "model").mkdir(parents=True)
    joblib.dump(LinearRegression().fit([[0.0], [1.0]], [1.0, 3.0]), model / "model" / "model.joblib")
    code = root / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE_PY)
    return code, model


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tidegate-arm-budget-"))
    code, model = artifacts(work)
    fake = FakeArmProcess.prepare(work / "fake", free_port())
    fake.start()
    await fake.wait_up()
    settings = Settings(
        home=work / "home",
        **fake.azure_settings("bench", watch_interval=args.interval),
    )
    provider = AzureComputeProvider(settings, credential=GivenTokenCredential(fake.token))
    probe = ProbeSpec(initial_delay=1, period=5)

    def request(n: int) -> RequestInstancesInput:
        runtime = DeploymentRuntime(
            endpoint="bench",
            deployment=f"d{n:02d}",
            code_dir=str(code),
            model_dir=str(model),
            spec_hash="s1",
            environment=RuntimeEnvironment(conda_file=CONDA),
            readiness_probe=probe,
            liveness_probe=probe,
        )
        return RequestInstancesInput(runtime=runtime, instance_count=1)

    try:
        started = time.monotonic()
        for n in range(args.deployments):
            await provider.request_instances(request(n))
        print(
            f"{args.deployments} scale sets of one VM created in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        # Until every VM serves, as the watcher's own rounds tell.
        latest: dict[str, list[str]] = {}
        since = 0
        while sum(states == ["ready"] for states in latest.values()) < args.deployments:
            changes = await provider.changes(since, 30.0)
            since = changes.sequence
            latest |= {d.deployment: [i.state for i in d.instances] for d in changes.deployments}
        print(
            f"all {args.deployments} VMs ready {time.monotonic() - started:.0f} s after the first PUT",
            flush=True,
        )

        before, t0 = reads(await fake.state()), time.monotonic()
        deadline = t0 + args.window
        while time.monotonic() < deadline:
            changes = await provider.changes(since, deadline - time.monotonic())
            since = changes.sequence
        spent = reads(await fake.state()) - before
        per_second = spent / (time.monotonic() - t0)
        print(
            f"\nwatcher at {args.interval:g} s, {args.deployments} deployments, {args.window:g} s window:\n"
            f"  ARM reads/s   {per_second:8.2f}   ({spent} reads)\n"
            f"  ARM refill/s  {ARM_REFILL_PER_SECOND:8.2f}   -> "
            f"{100 * per_second / ARM_REFILL_PER_SECOND:.1f} % of the budget",
            flush=True,
        )

        victim = scale_set_name("bench", "d00")
        await fake.kill(victim, "0")
        killed = time.monotonic()
        seen = replaced = None
        while replaced is None:
            changes = await provider.changes(since, 60.0)
            since = changes.sequence
            for snapshot in changes.deployments:
                if snapshot.deployment != "d00":
                    continue
                states = [i.state for i in snapshot.instances]
                if seen is None and "failed" in states:
                    seen = time.monotonic() - killed
                    await provider.request_instances(request(0))  # what the workflow asks for
                elif seen is not None and states == ["ready"]:
                    replaced = time.monotonic() - killed
        print(
            f"\nkilled VM: seen failed after {seen:.1f} s, a new VM ready after {replaced:.1f} s "
            f"(watcher interval {args.interval:g} s)"
        )
    finally:
        await provider.close()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument(
        "--interval", type=float, default=25.0, help="the watcher's interval (the default setting)"
    )
    parser.add_argument("--window", type=float, default=120.0, help="seconds of idle watching measured")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
