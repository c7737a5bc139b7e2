"""`make histories`: record the workflow histories that tests/workflows/test_replay.py replays.

Runs the demo on a fresh local system (`tidegate up` with its own TIDEGATE_HOME), then an
undo, a second rollout paused, resumed and rolled back by hand, and a host patch, and writes
the history of every workflow Temporal holds into tests/workflows/histories/<today>/ (or
<today>T<HHMM>/ for a second recording that day), one JSON
file per run (the format `temporal workflow show --output json` prints). Earlier recordings
stay: a workflow started on older code must keep replaying after every later change (those
changes go behind `workflow.patched`). Remove a recording only when no workflow started on that
code can still be running, and say so in the commit.
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
from datetime import UTC, datetime
from pathlib import Path

from config.contract.temporal_client import connect
from config.settings import load_settings

# The codec key `make histories` records with (a test key, not a secret): recorded histories
# replay through the same converter the worker uses, plain payloads passing through.
HISTORY_CODEC_KEY = "dGlkZWdhdGUtcmVjb3JkZWQtaGlzdG9yaWVzLWtleSE="

HISTORIES = Path(__file__).resolve().parent / "histories"
ROOT = Path(__file__).resolve().parents[2]


def recorded() -> list[Path]:
    """Every recorded history, oldest recording first (one folder per recording date)."""
    return sorted(HISTORIES.glob("*/*.json"))


def file_name(workflow_id: str, run_id: str) -> str:
    return f"{workflow_id.replace('/', '__')}__{run_id[-12:]}.json"


def workflow_id_of(path: Path) -> str:
    return "/".join(path.stem.split("__")[:-1])


def run(*args: str) -> None:
    print(f"$ {' '.join(args)}", flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


def tidegate_until(*args: str, output: str | None = None, tries: int = 120) -> None:
    """`tidegate args` until it succeeds (and prints `output`, if given): a signal takes
    effect, and a finished rollout releases its endpoint, a moment after the call."""
    argv = [sys.executable, "-m", "control.cli", *args]
    print(f"$ tidegate {' '.join(args)}", flush=True)
    for _ in range(tries):
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if done.returncode == 0 and (output is None or done.stdout.strip() == output):
            return
        time.sleep(0.5)
    raise SystemExit(f"tidegate {' '.join(args)} never succeeded: {done.stderr or done.stdout}")


async def export() -> int:
    client = await connect(load_settings())
    # One folder per recording, never written over: a second one on a day gets the time too.
    now = datetime.now(UTC)
    folder = HISTORIES / now.date().isoformat()
    if folder.exists():
        folder = HISTORIES / now.strftime("%Y-%m-%dT%H%M")
    folder.mkdir(parents=True)
    count = 0
    async for execution in client.list_workflows():
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        history = await handle.fetch_history()
        document = json.loads(history.to_json())
        path = folder / file_name(execution.id, execution.run_id)
        path.write_text(json.dumps(document, sort_keys=True) + "\n")
        print(f"{path.relative_to(ROOT)}: {execution.workflow_type}, {len(history.events)} events")
        count += 1
    return count


def main() -> None:
    python = sys.executable
    home = tempfile.mkdtemp(prefix="tidegate-histories-")
    os.environ["TIDEGATE_HOME"] = home
    os.environ["TIDEGATE_CODEC_KEY"] = HISTORY_CODEC_KEY  # so the replay test can read them
    run(python, "-m", "control.cli", "up", "--detach")
    try:
        run(python, "-m", "control.demo")
        run(python, "-m", "control.cli", "rollout", "undo", "--endpoint", "demo-ep")
        rollout = ["--endpoint", "demo-ep"]
        tidegate_until(
            "rollout", "start", *rollout, "--to", "green", "-f", "config/samples/rollout.yml", "--no-wait"
        )
        tidegate_until("rollout", "pause", *rollout)
        tidegate_until("rollout", "status", *rollout, "--query", "phase", "-o", "tsv", output="Paused")
        tidegate_until("rollout", "resume", *rollout)
        tidegate_until("rollout", "rollback", *rollout)
        tidegate_until("rollout", "status", *rollout, "--query", "phase", "-o", "tsv", output="RolledBack")
        # Every deployment and then the gateways (none of their own here: the step says Skipped).
        run(python, "-m", "control.cli", "host", "patch")
        print(f"{asyncio.run(export())} histories written to {HISTORIES.relative_to(ROOT)}")
    finally:
        run(python, "-m", "control.cli", "down")
        shutil.rmtree(home)  # its keys and models go with it


if __name__ == "__main__":
    main()
