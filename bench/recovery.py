"""Recovery benchmark: kill -9 one of two instances under steady load and time the repair.

Prints: kill → out of the gateway's route table, kill → replacement serving (in the table),
the replacement's own start time (process start → ready, i.e. the model's load time), and the
client errors: once with the endpoint's defaults, once with tidegate/retry_dropped_requests on
(requests the killed instance had read are sent once more, to the other instance). Beside
them: Azure VM scale sets' automatic instance repairs, whose grace period is at least 10
minutes. Figures are printed, never asserted.

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

RETRY = "tidegate/retry_dropped_requests"


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


def measure(stack: LocalStack, root: Path, endpoint: str, retry_dropped: bool) -> dict:
    """Serve `endpoint` on two instances, kill one under steady load, time the repair."""
    host = f"http://127.0.0.1:{stack.port('host')}/deployments/{endpoint}/blue"
    routes = f"http://127.0.0.1:{stack.port('gateway_admin')}/routes/{endpoint}"
    get = stack.control_json
    key = stack.serve(endpoint, root, "blue.yml", "instance_count=2")
    if retry_dropped:
        stack.ok("online-endpoint", "update", "-n", endpoint, "--set", f"properties.{RETRY}=true")
        while not get(routes).get("retry_dropped_requests"):
            time.sleep(0.05)
    victim = get(host)["instances"][0]
    body = json.dumps({"data": REQUEST}).encode()
    with SteadyLoad(f"{stack.http_base}/endpoints/{endpoint}/score", key, body) as load:
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
    logs = stack.ok("online-deployment", "get-logs", "-n", "blue", "-e", endpoint, "--lines", "400")
    return {
        "out_of_table": out_of_table,
        "serving_again": serving_again,
        "replacement": replacement,
        "errors": sum(n for (_, s), n in load.seen.items() if s != 200),
        "requests": sum(load.seen.values()),
        "log_lines": len(logs.splitlines()),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "project", Path(tmp) / "home"
        root.mkdir()
        write_project(root)
        load_seconds = model_load_seconds(root)
        stack = LocalStack.create(home)
        stack.up()
        try:
            plain = measure(stack, root, "rec-ep", retry_dropped=False)
            retry = measure(stack, root, "rec-retry", retry_dropped=True)
        finally:
            stack.down()
    runs = (plain, retry)

    def row(measure: str, cells: list[str], goal: str = "") -> None:
        print(f"| {measure} | {' | '.join(cells)} | {goal} |")

    print()
    row("measure", ["default", f"{RETRY}=true"], "goal")
    print("|---|---|---|---|")
    row("kill → out of the route table", [f"{r['out_of_table']:.2f} s" for r in runs], "≤ 2 s")
    row("kill → replacement serving", [f"{r['serving_again']:.2f} s" for r in runs], "≤ model load + 5 s")
    row("azmlinfsrv start → ready, same model, by hand", [f"{load_seconds:.2f} s", ""], "(baseline)")
    row(
        "replacement instance",
        [f"{r['replacement']['id']} (restarts {r['replacement']['restarts']})" for r in runs],
    )
    row("client errors (2 instances)", [f"{r['errors']} of {r['requests']}" for r in runs], "0")
    row("Azure VMSS automatic instance repairs", ["grace period ≥ 10 min (default 30 min)", ""])
    row("instance log lines read", [str(r["log_lines"]) for r in runs])


if __name__ == "__main__":
    main()
