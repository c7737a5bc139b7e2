"""Rollouts on a real stack whose Temporal server, worker and gateway are killed (kill -9) in the
middle of a step: once `tidegate up` has brought them back, each rollout carries on from where it
was and ends as it would have — every step applied once, in order; a bad canary still rolled back."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from config.contract.temporal_client import identity
from control.stack import alive, pollers
from tests.e2e.test_rollout import BODY, endpoint_with
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

# Short holds and a small window, so a restart lands inside a step and the rollout still ends soon.
SHORT_STEPS = """
strategy: canary
steps:
  - {weight: 20, hold: 3s}
  - {weight: 50, hold: 3s}
gates:
  - when: error_rate <= 0.05
    window: 3s
    min_requests: 5
check_interval: 1s
failure_limit: 2
after_success: {keep_previous_for: 1s, then: keep}
after_failure: {canary: keep}
"""

# A first step held far longer than the test: only a failed gate moves this rollout on.
LONG_FIRST_STEP = SHORT_STEPS.replace("{weight: 20, hold: 3s}", "{weight: 20, hold: 5m}")

DOWN_SECONDS = 2.0  # how long the killed processes stay down


def status_when(
    stack: LocalStack, endpoint: str, wanted: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll `rollout status` (one CLI call a poll) until the view shows what is wanted."""
    view: dict[str, Any] = {}
    for _ in range(150):
        shown = stack.json("rollout", "status", "--endpoint", endpoint)
        assert isinstance(shown, dict), shown
        view = shown
        if wanted(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"rollout status never showed {what}; last: {view}")


def kill_9(stack: LocalStack, *names: str) -> dict[str, int]:
    """SIGKILL these processes of the stack and wait until each is gone; their pids."""
    pids = {name: stack.pids()[name] for name in names}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for name, pid in pids.items():
        until(lambda pid=pid: not alive(pid), f"{name} (pid {pid}) gone after kill -9", polls=100)
    return pids


def restart(stack: LocalStack, *names: str, while_down: Callable[[], object] = lambda: None) -> None:
    """kill -9 these processes, keep them down a while, then `tidegate up`: it starts only what
    is missing and returns once every process answers (Temporal's port, a worker polling)."""
    before = stack.pids()
    killed = kill_9(stack, *names)
    while_down()
    time.sleep(DOWN_SECONDS)  # clients and the rollout meet a broken stack for a while
    stack.up()
    after = stack.pids()
    assert all(after[name] != pid for name, pid in killed.items()), (killed, after)
    untouched = {name: pid for name, pid in before.items() if name not in names}
    assert {name: after[name] for name in untouched} == untouched  # the others were left running


def weights_applied(view: dict[str, Any]) -> list[int]:
    """The canary weight of every `weights` event in the rollout's history, in order."""
    found = [re.fullmatch(r"canary (\d+)%", h["detail"]) for h in view["history"] if h["event"] == "weights"]
    assert all(found), view["history"]
    return [int(m[1]) for m in found if m]


def steps_timeline(view: dict[str, Any]) -> str:
    """Each step's weight and how long it lasted until the next one (for the printout)."""
    stamps = [
        (h["detail"], datetime.fromisoformat(h["at"])) for h in view["history"] if h["event"] == "weights"
    ]
    end = datetime.fromisoformat(view["history"][-1]["at"])
    ends = [at for _, at in stamps[1:]] + [end]
    return ", ".join(
        f"{d} for {(e - at).total_seconds():.1f}s" for (d, at), e in zip(stamps, ends, strict=True)
    )


def test_a_rollout_carries_on_unchanged_after_kill_9_of_temporal_worker_and_gateway(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    key = endpoint_with(stack, root, "restart-ep", "green.yml")
    (root / "short-steps.yml").write_text(SHORT_STEPS)
    with SteadyLoad(f"{stack.http_base}/endpoints/restart-ep/score", key, BODY) as load:
        stack.ok(
            "rollout",
            "start",
            "--endpoint",
            "restart-ep",
            "--to",
            "green",
            "-f",
            "short-steps.yml",
            "--no-wait",
            cwd=root,
        )
        at_kill = status_when(stack, "restart-ep", lambda v: v["weights"]["green"] > 0, "a first step")
        assert at_kill["phase"] == "Progressing", at_kill
        killed_at = time.monotonic()
        restart(stack, "temporal", "worker", "gateway")
        up_after = time.monotonic() - killed_at
        done = stack.tidegate("rollout", "status", "--endpoint", "restart-ep", "--watch")
        ended_after = time.monotonic() - killed_at
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["id"] == "rollout/restart-ep/1" and view["phase"] == "Succeeded", view
    assert weights_applied(view) == [20, 50, 100]  # each step once, in order: none skipped or repeated
    assert stack.json("online-endpoint", "show", "-n", "restart-ep", "--query", "traffic") == {
        "blue": 0,
        "green": 100,
    }
    # Refused connections while the gateway is down are expected. An answer that is not a 200
    # would be the rollout's doing; one with no deployment, a restarted gateway without its table.
    assert load.failures_from("blue") == 0 and load.failures_from("green") == 0, load.seen
    assert {status for (who, status) in load.seen if who == "-"} <= {0}, load.seen
    assert load.answered_by("blue") > 0 and load.answered_by("green") > 0, load.seen
    print(
        f"\nkilled at step {at_kill['step']}, {DOWN_SECONDS:g}s down; `up` done {up_after:.1f}s and the "
        f"rollout {ended_after:.1f}s after the kill; steps: {steps_timeline(view)}; "
        f"answers: {dict(load.seen)}"
    )


def test_a_bad_canary_still_rolls_back_by_itself_across_a_temporal_restart(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    fault = root / "fault"
    fault.unlink(missing_ok=True)
    key = endpoint_with(stack, root, "restart-bad", "faulty.yml")
    (root / "long-first-step.yml").write_text(LONG_FIRST_STEP)
    try:
        with SteadyLoad(f"{stack.http_base}/endpoints/restart-bad/score", key, BODY) as load:
            stack.ok(
                "rollout",
                "start",
                "--endpoint",
                "restart-bad",
                "--to",
                "green",
                "-f",
                "long-first-step.yml",
                "--no-wait",
                cwd=root,
            )
            at_kill = status_when(stack, "restart-bad", lambda v: v["weights"]["green"] > 0, "a first step")
            assert at_kill["phase"] == "Progressing", at_kill
            # The canary turns bad while Temporal is away: only the restarted server can act on it.
            # The worker and the gateway stay up; `up` returns once the worker polls again.
            restart(stack, "temporal", while_down=lambda: fault.write_text("0.3"))
            done = stack.tidegate("rollout", "status", "--endpoint", "restart-bad", "--watch")
    finally:
        fault.unlink(missing_ok=True)
    assert done.returncode == 1 and "RolledBack" in done.stderr and "error_rate" in done.stderr, done.stderr
    view = json.loads(done.stdout)
    assert view["phase"] == "RolledBack" and weights_applied(view) == [20], view
    assert stack.json("online-endpoint", "show", "-n", "restart-bad", "--query", "traffic") == {
        "blue": 100,
        "green": 0,
    }
    # The gateway stayed up: every client got an answer, and blue's were all 200s.
    assert load.seen[("-", 0)] == 0 and load.failures_from("blue") == 0, load.seen
    assert load.failures_from("green") > 0, load.seen
    print(
        f"\nTemporal killed at step {at_kill['step']}; steps: {steps_timeline(view)}; "
        f"answers: {dict(load.seen)}"
    )


def test_up_after_kill_9_of_the_worker_alone_returns_once_the_new_worker_polls(stack: LocalStack) -> None:
    # Temporal keeps listing a killed worker among the pollers for minutes: `up` must not take
    # that for its replacement being ready.
    restart(stack, "worker")
    assert identity(stack.pids()["worker"]) in asyncio.run(pollers(stack.settings()))
