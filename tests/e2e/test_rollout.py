"""Rollouts on a real stack under steady load: a bad canary rolls back by itself, a good one
takes over and the old deployment is retired; clients never see an error from the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.project import REQUEST
from tests.support.load import SteadyLoad
from tests.support.stack import LocalStack

BODY = json.dumps({"data": REQUEST}).encode()

ROLLOUT = """
strategy: canary
steps:
  - {weight: 20, hold: 4s}
  - {weight: 50, hold: 4s}
gates:
  - when: error_rate <= 0.05
    window: 10s
    min_requests: 10
check_interval: 1s
failure_limit: 2
after_success: {keep_previous_for: 2s, then: delete}
after_failure: {canary: keep}
"""


def endpoint_with(stack: LocalStack, root: Path, name: str, green_file: str) -> str:
    key = stack.serve(name, root)
    stack.ok("online-deployment", "create", "-n", "green", "-e", name, "-f", green_file, cwd=root)
    (root / "rollout.yml").write_text(ROLLOUT)
    return key


def test_a_canary_failing_30_percent_is_rolled_back_by_itself(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    (root / "fault").write_text("0.3")
    key = endpoint_with(stack, root, "roll-bad", "faulty.yml")
    url = f"{stack.http_base}/endpoints/roll-bad/score"
    with SteadyLoad(url, key, BODY) as load:
        done = stack.tidegate(
            "rollout", "start", "--endpoint", "roll-bad", "--to", "green", "-f", "rollout.yml", cwd=root
        )
    assert done.returncode == 1, done.stderr
    assert "RolledBack" in done.stderr and "error_rate" in done.stderr
    assert stack.json("online-endpoint", "show", "-n", "roll-bad", "--query", "traffic") == {
        "blue": 100,
        "green": 0,
    }
    assert load.failures_from("blue") == 0
    assert load.answered_by("blue") > 0 and load.failures_from("green") > 0
    status = stack.json("rollout", "status", "--endpoint", "roll-bad")
    assert status["phase"] == "RolledBack"
    assert any(g["outcome"] == "fail" for g in status["gates"])


def test_a_good_canary_takes_all_traffic_and_blue_is_retired(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    (root / "fault").unlink(missing_ok=True)
    key = endpoint_with(stack, root, "roll-good", "faulty.yml")
    url = f"{stack.http_base}/endpoints/roll-good/score"
    with SteadyLoad(url, key, BODY) as load:
        stack.ok(
            "rollout",
            "start",
            "--endpoint",
            "roll-good",
            "--to",
            "green",
            "-f",
            "rollout.yml",
            "--no-wait",
            cwd=root,
        )
        refused = stack.tidegate(
            "online-endpoint", "update", "-n", "roll-good", "--traffic", "blue=50 green=50"
        )
        done = stack.tidegate("rollout", "status", "--endpoint", "roll-good", "--watch")
    assert refused.returncode != 0 and "under rollout rollout/roll-good/1" in refused.stderr
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["phase"] == "Succeeded"
    assert load.failures_from("blue") == 0 and load.failures_from("green") == 0
    assert stack.json("online-endpoint", "show", "-n", "roll-good", "--query", "traffic")["green"] == 100
    # blue is kept warm for 2 s, then deleted as the plan says.
    deployments = lambda: stack.json("online-deployment", "list", "-e", "roll-good", "--query", "[].name")  # noqa: E731
    polls = 0
    while "blue" in deployments():
        polls += 1
        assert polls < 200, "blue was never retired"
    rows = stack.json("rollout", "list", "--endpoint", "roll-good", "--state", "succeeded")
    assert [r["id"] for r in rows] == ["rollout/roll-good/1"]


def test_retry_after_a_rollback_runs_the_same_plan_again(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    (root / "fault").write_text("0.3")
    key = stack.key("roll-bad")
    with SteadyLoad(f"{stack.http_base}/endpoints/roll-bad/score", key, BODY):
        started = stack.json("rollout", "retry", "--endpoint", "roll-bad")
        assert started["id"] == "rollout/roll-bad/2"
        done = stack.tidegate("rollout", "status", "--endpoint", "roll-bad", "--watch")
    (root / "fault").unlink()
    assert done.returncode == 1 and "RolledBack" in done.stderr
    assert stack.json("rollout", "status", "--endpoint", "roll-bad", "--query", "[id, phase]") == [
        "rollout/roll-bad/2",
        "RolledBack",
    ]


@pytest.mark.parametrize("verb", ["pause", "promote"])
def test_steering_a_finished_rollout_is_refused(stack: LocalStack, verb: str) -> None:
    done = stack.tidegate("rollout", verb, "--endpoint", "roll-bad")
    assert done.returncode != 0
    assert "rollout/roll-bad/" in done.stderr
