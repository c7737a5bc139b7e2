"""Rollback benchmark: how fast does a bad canary lose its traffic, and what do clients see?

A stack of its own (Temporal dev server, worker, host, gateway) serves an endpoint where a
rollout holds green at 10 % (blue 90 %) under steady load. Then a fault is injected into green
(a flag file its score.py reads: 30 % of requests raise) and the clock runs until the gateway's
route table gives green 0 %. Printed beside the configured check interval and the anchors'
analysis intervals. Figures are printed, never asserted.

    .venv/bin/python bench/rollback.py [--check-interval 5s] [--failure-limit 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.project import REQUEST, write_project  # noqa: E402
from tests.support.load import SteadyLoad  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

ROLLOUT = """
strategy: canary
steps:
  - {{weight: 10, hold: 1h}}
gates:
  - when: error_rate <= 0.05
    window: {window}
    min_requests: 10
check_interval: {interval}
failure_limit: {limit}
"""


def green_share(stack: LocalStack, endpoint: str) -> int:
    route = stack.control_json(f"http://127.0.0.1:{stack.port('gateway_admin')}/routes/{endpoint}")
    return int(route.get("traffic", {}).get("green", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-interval", default="5s")
    parser.add_argument("--window", default="5s")
    parser.add_argument("--failure-limit", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "project", Path(tmp) / "home"
        root.mkdir()
        write_project(root)
        (root / "rollout.yml").write_text(
            ROLLOUT.format(interval=args.check_interval, window=args.window, limit=args.failure_limit)
        )
        stack = LocalStack.create(home)
        stack.up()
        try:
            key = stack.serve("bench-ep", root)
            stack.ok(
                "online-deployment", "create", "-n", "green", "-e", "bench-ep", "-f", "faulty.yml", cwd=root
            )
            body = json.dumps({"data": REQUEST}).encode()
            url = f"{stack.http_base}/endpoints/bench-ep/score"
            with SteadyLoad(url, key, body) as load:
                stack.ok(
                    "rollout",
                    "start",
                    "-e",
                    "bench-ep",
                    "--to",
                    "green",
                    "-f",
                    "rollout.yml",
                    "--no-wait",
                    cwd=root,
                )
                while green_share(stack, "bench-ep") != 10:
                    time.sleep(0.05)
                time.sleep(3)  # steady state at 90/10
                errors_before = sum(n for (_, s), n in load.seen.items() if s != 200)
                (root / "fault").write_text("0.3")
                fault_at = time.monotonic()
                while green_share(stack, "bench-ep") != 0:
                    time.sleep(0.05)
                elapsed = time.monotonic() - fault_at
                failed = sum(n for (_, s), n in load.seen.items() if s != 200) - errors_before
                blue_failed = load.failures_from("blue")
                total = sum(load.seen.values())
        finally:
            stack.down()

    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| fault injected → green at 0 % | {elapsed:.1f} s |")
    settings = f"{args.check_interval} / {args.window} / {args.failure_limit}"
    print(f"| check interval / window / failure limit | {settings} |")
    print(f"| client requests failed in between | {failed} (from blue: {blue_failed}) of {total} sent |")
    print("| Argo Rollouts / Flagger default analysis interval | 60 s (Flagger: interval 1m) |")
    print("| SageMaker deployment guardrails | CloudWatch alarms on 1-minute metrics at best |")


if __name__ == "__main__":
    main()
