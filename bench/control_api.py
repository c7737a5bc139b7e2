"""Control-path benchmark: the CLI straight to Temporal vs the same CLI through the REST API.

A stack of its own (Temporal dev server, worker, host, gateway, API) on a temporary home. Each
repeat creates an endpoint and a deployment (until it serves, as `online-deployment create`
waits) once with `tidegate ...` and once with `tidegate --api URL ...`, in alternating order,
then deletes both endpoints (not timed). A warm-up round first builds the environment's
virtualenv, so the figures are the control path, not pip. Times are wall clock around the CLI
processes, so they include each process's start (imports, connecting). Medians are printed
side by side; figures are printed, never asserted.

    .venv/bin/python bench/control_api.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.project import write_project  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

PATHS = ("direct", "--api")


def timed_create(stack: LocalStack, root: Path, prefix: list[str], endpoint: str) -> tuple[float, float]:
    """Seconds to create the endpoint, then the deployment until it serves."""
    started = time.perf_counter()
    stack.ok(*prefix, "online-endpoint", "create", "-n", endpoint, "-f", "endpoint.yml", cwd=root)
    endpoint_done = time.perf_counter()
    stack.ok(
        *prefix,
        "online-deployment",
        "create",
        "-n",
        "blue",
        "-e",
        endpoint,
        "-f",
        "blue.yml",
        "--all-traffic",
        cwd=root,
    )
    return endpoint_done - started, time.perf_counter() - endpoint_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "project", Path(tmp) / "home"
        root.mkdir()
        write_project(root)
        stack = LocalStack.create(home)
        stack.up()
        try:
            api = ["--api", f"http://127.0.0.1:{stack.port('api')}"]
            prefixes = {"direct": [], "--api": api}
            timed_create(stack, root, [], "warm-up")  # builds the environment once
            stack.ok("online-endpoint", "delete", "-n", "warm-up", "--yes")
            results: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
            for i in range(args.repeats):
                order = PATHS if i % 2 == 0 else tuple(reversed(PATHS))
                for path in order:
                    name = f"bench-{'rest' if path == '--api' else 'direct'}-{i}"
                    results[path].append(timed_create(stack, root, prefixes[path], name))
                    stack.ok("online-endpoint", "delete", "-n", name, "--yes")
                    made, served = results[path][-1]
                    line = f"  run {i + 1} {path:<7} endpoint {made:6.2f} s  deployment {served:6.2f} s"
                    print(line, file=sys.stderr)
        finally:
            stack.down()

    print(f"create endpoint + deployment until serving, median of {args.repeats} (seconds)")
    print(f"{'path':<8}{'endpoint':>10}{'deployment':>12}{'total':>9}{'min total':>11}{'max total':>11}")
    for path in PATHS:
        rows = results[path]
        totals = [e + d for e, d in rows]
        print(
            f"{path:<8}{statistics.median(e for e, _ in rows):>10.2f}"
            f"{statistics.median(d for _, d in rows):>12.2f}{statistics.median(totals):>9.2f}"
            f"{min(totals):>11.2f}{max(totals):>11.2f}"
        )


if __name__ == "__main__":
    main()
