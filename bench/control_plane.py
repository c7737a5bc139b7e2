"""Control-plane benchmark: what an idle deployment costs the worker and Temporal.

A stack of its own serves N deployments of the packaged sample model (tiny instances, one
each, ten to an endpoint) and leaves them idle. Over a measured window it counts, per idle
deployment and scaled to an hour: the worker's CPU seconds, the history events its
DeploymentWorkflow added, and the activities it ran. Printed for each N side by side;
figures are printed, never asserted.

    .venv/bin/python bench/control_plane.py [--counts 1,10,50] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.enums.v1 import EventType  # noqa: E402

from config.contract.temporal_client import connect  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "config" / "samples"
PER_ENDPOINT = 10
SETTLE_SECONDS = 15.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


async def history_counts(stack: LocalStack) -> dict[str, tuple[int, int]]:
    """Per running DeploymentWorkflow: (history events, activities scheduled) so far,
    summed over its continue-as-new runs."""
    client = await connect(stack.settings())
    counts: dict[str, tuple[int, int]] = {}
    query = 'WorkflowType = "DeploymentWorkflow"'
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        history = await handle.fetch_history()
        activities = sum(
            1 for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        )
        events, acts = counts.get(execution.id, (0, 0))
        counts[execution.id] = (events + len(history.events), acts + activities)
    return counts


def serve(stack: LocalStack, count: int) -> None:
    for n in range(count):
        endpoint = f"idle-{n // PER_ENDPOINT}"
        if n % PER_ENDPOINT == 0:
            stack.ok("online-endpoint", "create", "--name", endpoint, "-f", "endpoint.yml", cwd=SAMPLES)
        stack.ok(
            "online-deployment",
            "create",
            "-n",
            f"dep{n}",
            "-e",
            endpoint,
            "-f",
            "blue-deployment.yml",
            cwd=SAMPLES,
        )


def measure(count: int, window: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tidegate-control-plane-") as home:
        stack = LocalStack.create(Path(home))
        stack.up()
        try:
            started = time.monotonic()
            serve(stack, count)
            created = time.monotonic() - started
            time.sleep(SETTLE_SECONDS)
            worker = stack.pids()["worker"]
            before_cpu, before = cpu_seconds(worker), asyncio.run(history_counts(stack))
            time.sleep(window)
            after_cpu, after = cpu_seconds(worker), asyncio.run(history_counts(stack))
        finally:
            stack.down()
    per_hour = 3600.0 / window / count
    events = sum(after[k][0] - before.get(k, (0, 0))[0] for k in after)
    activities = sum(after[k][1] - before.get(k, (0, 0))[1] for k in after)
    return {
        "deployments": count,
        "create_s": created,
        "cpu_s_per_h": (after_cpu - before_cpu) * per_hour,
        "events_per_h": events * per_hour,
        "activities_per_h": activities * per_hour,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,10,50", help="deployment counts, e.g. 1,10,50")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured while idle")
    args = parser.parse_args()
    rows = [measure(int(n), args.window) for n in args.counts.split(",")]
    print(f"\nidle deployments, measured over {args.window:g} s each, per deployment per hour:")
    header = ("deployments", "created in", "worker CPU s", "history events", "activities")
    print(" ".join(f"{h:>14}" for h in header))
    for row in rows:
        print(
            f"{row['deployments']:>14.0f} {row['create_s']:>13.1f}s {row['cpu_s_per_h']:>14.2f} "
            f"{row['events_per_h']:>14.0f} {row['activities_per_h']:>14.0f}"
        )


if __name__ == "__main__":
    main()
