"""The rollout verbs a user types, on a real stack: `rollout plan` prints the whole plan and starts
nothing; pause, resume and promote steer a live rollout to 100 %, from `tidegate rollout` and
from the plain `temporal workflow signal` alike; `rollout undo` after a success puts traffic back
on the old deployment while it is still warm."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from config.binaries import find_binary
from tests.e2e.test_rollout_restarts import status_when
from tests.support.stack import LocalStack

EP = "steer-ep"

PLAN = """
strategy: canary
mirror:
  share: 10
  duration: 30s
  gates:
    - when: mirror_match_rate >= 0.99
      window: 20s
      min_requests: 50
steps:
  - {weight: 10, hold: 2m}
  - {weight: 50, hold: 5m}
gates:
  - when: error_rate <= 0.05
    window: 1m
    min_requests: 30
    on_no_data: pause
    no_data_deadline: 2m
  - when: latency_p99 <= baseline * 1.2
check_interval: 10s
failure_limit: 2
success_count: 3
after_success: {keep_previous_for: 15m, then: delete}
after_failure: {canary: delete, drain: 20s}
"""

# A first step held far longer than the test, and no gates: only a signal moves it on.
HELD = """
strategy: canary
steps:
  - {weight: 20, hold: 1h}
after_success: {keep_previous_for: 1s, then: keep}
"""

# Straight to a success, after which blue stays warm at 0 % long enough to be undone.
QUICK_WITH_BLUE_WARM = """
strategy: canary
steps:
  - {weight: 50, hold: 1s}
after_success: {keep_previous_for: 10m, then: keep}
"""


@pytest.fixture(scope="module")
def endpoint(stack: LocalStack, project: tuple[Path, dict]) -> str:
    """One endpoint for the module: blue (model-1) and green (model-2)."""
    root, _ = project
    stack.serve(EP, root)
    stack.ok("online-deployment", "create", "-n", "green", "-e", EP, "-f", "green.yml", cwd=root)
    return EP


@pytest.fixture
def blue_takes_all_traffic(stack: LocalStack, endpoint: str) -> str:
    """Each test starts from blue at 100 %, whatever the one before left."""
    stack.ok("online-endpoint", "update", "-n", endpoint, "--traffic", "blue=100 green=0")
    return endpoint


def traffic(stack: LocalStack, endpoint: str) -> object:
    return stack.json("online-endpoint", "show", "-n", endpoint, "--query", "traffic")


def answer(stack: LocalStack, endpoint: str, root: Path) -> list[float]:
    return json.loads(
        stack.ok("online-endpoint", "invoke", "--name", endpoint, "--request-file", "request.json", cwd=root)
    )


def test_plan_prints_every_step_gate_and_timeout_and_starts_nothing(
    stack: LocalStack, project: tuple[Path, dict], blue_takes_all_traffic: str
) -> None:
    root, _ = project
    (root / "plan.yml").write_text(PLAN)
    listed = lambda: [r["id"] for r in stack.json("rollout", "list", "--endpoint", EP)]  # noqa: E731
    rollouts_before = listed()
    printed = stack.ok("rollout", "plan", "--endpoint", EP, "--to", "green", "-f", "plan.yml", cwd=root)
    assert printed.splitlines() == [
        f"rollout of {EP}: blue → green (canary)",
        "checks every 10s; roll back after 2 failed checks in a row; "
        "a step advances after 3 passed check(s) and its hold",
        "mirror: 10% shadowed to green for 30s",
        "  gate mirror_match_rate >= 0.99 (window 20s, ≥50 requests, no data → wait (deadline 300s))",
        "step 1/3: green 10%, hold 120s",
        "step 2/3: green 50%, hold 300s",
        "step 3/3: green 100%, hold 0s",
        "gate error_rate <= 0.05: window 60s, ≥30 requests, no data → pause (deadline 120s)",
        "gate latency_p99 <= baseline * 1.2: window 30s, ≥20 requests, no data → wait (deadline 300s)",
        "on success: blue kept warm at 0% for 900s, then delete",
        "on failure: traffic back to blue at once; green delete after a 20s drain",
    ]
    assert listed() == rollouts_before
    assert traffic(stack, EP) == {"blue": 100, "green": 0}


def by_tidegate(stack: LocalStack, rollout: str, verb: str) -> None:
    stack.ok("rollout", verb, "--endpoint", EP)


def by_temporal(stack: LocalStack, rollout: str, verb: str) -> None:
    """The plain Temporal CLI: a signal with no input needs no payload codec."""
    address = f"127.0.0.1:{stack.port('temporal')}"
    done = subprocess.run(
        [find_binary("temporal"), "workflow", "signal", "--workflow-id", rollout, "--name", verb]
        + ["--address", address, "--namespace", "default"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "steer", [by_tidegate, by_temporal], ids=["tidegate rollout", "temporal workflow signal"]
)
def test_pause_resume_and_promote_steer_a_live_rollout_to_100_percent(
    stack: LocalStack,
    project: tuple[Path, dict],
    blue_takes_all_traffic: str,
    steer: Callable[[LocalStack, str, str], None],
) -> None:
    root, _ = project
    (root / "held.yml").write_text(HELD)
    started = stack.json(
        "rollout", "start", "--endpoint", EP, "--to", "green", "-f", "held.yml", "--no-wait", cwd=root
    )
    rollout = started["id"]
    first = status_when(stack, EP, lambda v: v["weights"]["green"] == 20, "green at 20 %")
    assert first["phase"] == "Progressing"

    steer(stack, rollout, "pause")
    paused = status_when(stack, EP, lambda v: v["phase"] != "Progressing", "the pause taken")
    assert (paused["phase"], paused["weights"]) == ("Paused", {"blue": 80, "green": 20})

    steer(stack, rollout, "resume")
    resumed = status_when(stack, EP, lambda v: v["phase"] != "Paused", "the resume taken")
    assert (resumed["phase"], resumed["weights"]) == ("Progressing", {"blue": 80, "green": 20})

    steer(stack, rollout, "promote")
    done = status_when(stack, EP, lambda v: v["phase"] != "Progressing", "the promotion taken")
    assert (done["id"], done["phase"], done["weights"]) == (rollout, "Succeeded", {"blue": 0, "green": 100})
    assert traffic(stack, EP) == {"blue": 0, "green": 100}
    events = [h["event"] for h in done["history"]]
    assert events == ["weights", "paused", "resumed", "promote", "weights", "succeeded"], done["history"]


def test_undo_after_a_success_puts_traffic_back_on_the_old_deployment_while_it_is_warm(
    stack: LocalStack, project: tuple[Path, dict], blue_takes_all_traffic: str
) -> None:
    root, answers = project
    (root / "quick.yml").write_text(QUICK_WITH_BLUE_WARM)
    stack.ok("rollout", "start", "--endpoint", EP, "--to", "green", "-f", "quick.yml", cwd=root)
    assert traffic(stack, EP) == {"blue": 0, "green": 100}
    assert answer(stack, EP, root) == pytest.approx(answers["model-2"])

    stack.ok("rollout", "undo", "--endpoint", EP)
    undone = status_when(stack, EP, lambda v: v["phase"] != "Succeeded", "the undo taken")
    assert undone["phase"] == "RolledBack", undone
    assert undone["reason"] == "undone after success"
    assert (undone["history"][-1]["event"], undone["history"][-1]["detail"]) == (
        "rolledback",
        "undone after success",
    )
    assert traffic(stack, EP) == {"blue": 100, "green": 0}
    assert answer(stack, EP, root) == pytest.approx(answers["model-1"])
