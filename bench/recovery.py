"""Recovery benchmark: kill -9 one of two instances under steady load and time the repair.

Prints: kill → out of the gateway's route table, kill → replacement serving (in the table),
the replacement's own start time (process start → ready, i.e. the model's load time), and the
client errors. Beside them: Azure VM scale sets' automatic instance repairs, whose grace period
is at least 10 minutes. Figures are printed, never asserted.

    .venv/bin/python bench/recovery.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.project import REQUEST, write_project  # noqa: E402
from tests.support.load import SteadyLoad  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402


def get(url: str) -> dict:
    with urllib.request.urlopen(url) as response:
        return json.load(response)


def model_load_seconds(root: Path) -> float:
    """Baseline in the same run: azmlinfsrv started by hand on the same score.py and model."""
    from config.binaries import find_binary
    from tests.support.ports import free_port

    port = free_port()
    env = dict(os.environ, AZUREML_MODEL_DIR=str(root / "model-1"))
    started = time.monotonic()
    process = subprocess.Popen(
        [find_binary("azmlinfsrv"), "--entry_script", str(root / "code" / "score.py"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "project", Path(tmp) / "home"
        root.mkdir()
        write_project(root)
        load_seconds = model_load_seconds(root)
        stack = LocalStack.create(home)
        stack.up()
        host = f"http://127.0.0.1:{stack.port('host')}/deployments/rec-ep/blue"
        routes = f"http://127.0.0.1:{stack.port('gateway_admin')}/routes/rec-ep"
        try:
            stack.ok("online-endpoint", "create", "-n", "rec-ep", "-f", "endpoint.yml", cwd=root)
            stack.ok(
                "online-deployment",
                "create",
                "-n",
                "blue",
                "-e",
                "rec-ep",
                "-f",
                "blue.yml",
                "--all-traffic",
                "--set",
                "instance_count=2",
                cwd=root,
            )
            key = stack.key("rec-ep")
            victim = get(host)["instances"][0]
            body = json.dumps({"data": REQUEST}).encode()
            with SteadyLoad(f"{stack.http_base}/endpoints/rec-ep/score", key, body) as load:
                time.sleep(2)
                killed_at = time.monotonic()
                os.kill(victim["pid"], signal.SIGKILL)
                while any(i["id"] == victim["id"] for i in get(routes)["deployments"]["blue"]["instances"]):
                    time.sleep(0.02)
                out_of_table = time.monotonic() - killed_at
                replacement = None
                while replacement is None:
                    ids = {i["id"] for i in get(routes)["deployments"]["blue"]["instances"]}
                    news = [i for i in get(host)["instances"] if i.get("replaces") == victim["id"]]
                    if news and news[0]["id"] in ids:
                        replacement = news[0]
                    time.sleep(0.02)
                serving_again = time.monotonic() - killed_at
                time.sleep(1)
            logs = stack.ok("online-deployment", "get-logs", "-n", "blue", "-e", "rec-ep", "--lines", "400")
        finally:
            stack.down()
    errors = sum(n for (_, s), n in load.seen.items() if s != 200)
    print()
    print("| measure | value | goal |")
    print("|---|---|---|")
    print(f"| kill → out of the route table | {out_of_table:.2f} s | ≤ 2 s |")
    print(f"| kill → replacement serving | {serving_again:.2f} s | ≤ model load + 5 s |")
    print(f"| azmlinfsrv start → ready, same model, by hand | {load_seconds:.2f} s | (baseline) |")
    print(f"| replacement instance | {replacement['id']} (restarts {replacement['restarts']}) | |")
    print(f"| client errors (2 instances) | {errors} of {sum(load.seen.values())} | 0 |")
    print("| Azure VMSS automatic instance repairs | grace period ≥ 10 min (default 30 min) | |")
    print(f"| instance log lines read | {len(logs.splitlines())} | |")


if __name__ == "__main__":
    main()
