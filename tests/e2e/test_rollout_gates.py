"""Gates that judge a canary against its baseline, on a real stack under steady load: a canary
failing 30 % of its requests is rolled back by a baseline-relative bound and by the two-proportion
test, a canary 200 ms slower by a latency bound relative to the baseline's p99, each verdict
naming its gate and numbers; and a green that answers differently from blue
fails a mirror phase on `mirror_match_rate` before it ever takes live traffic."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.project import deployment_yaml
from tests.e2e.test_rollout import BODY
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

EP = "gates-ep"

# A first step held far longer than the test: only a failed gate ends these rollouts.
ONE_LONG_STEP = """
strategy: canary
steps:
  - {weight: 20, hold: 5m}
check_interval: 1s
failure_limit: 2
after_failure: {canary: keep}
"""

RELATIVE_BOUND = (
    ONE_LONG_STEP
    + """
gates:
  - when: error_rate <= baseline + 0.01
    window: 5s
    min_requests: 10
"""
)

LATENCY_RATIO = (
    ONE_LONG_STEP
    + """
gates:
  - when: latency_p99 <= baseline * 1.2
    window: 5s
    min_requests: 10
"""
)

TWO_PROPORTION = (
    ONE_LONG_STEP
    + """
gates:
  - metric: error_rate
    test: two_proportion
    confidence: 0.99
    window: 5s
    min_requests: 10
"""
)

# Blue/green: green shadows half of blue's requests first, and only a passed mirror phase
# would give it traffic (a mirror phase held far longer than the test).
MIRROR_FIRST = """
strategy: blue_green
mirror:
  share: 50
  duration: 5m
  gates:
    - when: mirror_match_rate >= 0.99
      window: 5s
      min_requests: 10
blue_green_hold: 1s
check_interval: 1s
failure_limit: 2
after_failure: {canary: keep}
"""


@pytest.fixture(scope="module")
def key(stack: LocalStack, project: tuple[Path, dict]) -> str:
    """One endpoint for the module: blue (model-1) with all traffic, and green (model-2) whose
    run() fails a share of requests, or answers late, while this module's flag files say so."""
    root, _ = project
    fault = {"SCORE_FAULT_FILE": str(root / "gates-fault"), "SCORE_DELAY_FILE": str(root / "gates-delay")}
    (root / "gates-green.yml").write_text(deployment_yaml("green", "model-2", "code-faulty", env=fault))
    key = stack.serve(EP, root)
    stack.ok("online-deployment", "create", "-n", "green", "-e", EP, "-f", "gates-green.yml", cwd=root)
    return key


@pytest.fixture
def fault(project: tuple[Path, dict]) -> Iterator[Path]:
    """Write a share (e.g. "0.3") here and green fails that share of its requests."""
    flag = project[0] / "gates-fault"
    flag.unlink(missing_ok=True)
    yield flag
    flag.unlink(missing_ok=True)


@pytest.fixture
def delay(project: tuple[Path, dict]) -> Iterator[Path]:
    """Write seconds (e.g. "0.2") here and green takes that much longer to answer."""
    flag = project[0] / "gates-delay"
    flag.unlink(missing_ok=True)
    yield flag
    flag.unlink(missing_ok=True)


def roll_out_under_load(
    stack: LocalStack, root: Path, key: str, plan: str
) -> tuple[subprocess.CompletedProcess[str], SteadyLoad]:
    """`rollout start` of green with this plan (waiting for its end) while clients call the endpoint."""
    (root / "gates-rollout.yml").write_text(plan)
    with SteadyLoad(f"{stack.http_base}/endpoints/{EP}/score", key, BODY) as load:
        done = stack.tidegate(
            "rollout", "start", "--endpoint", EP, "--to", "green", "-f", "gates-rollout.yml", cwd=root
        )
    return done, load


def test_a_canary_worse_than_baseline_plus_one_point_is_rolled_back_naming_the_gate_and_numbers(
    stack: LocalStack, project: tuple[Path, dict], key: str, fault: Path
) -> None:
    root, _ = project
    fault.write_text("0.3")
    done, load = roll_out_under_load(stack, root, key, RELATIVE_BOUND)
    assert done.returncode == 1 and "RolledBack" in done.stderr, done.stderr
    status = stack.json("rollout", "status", "--endpoint", EP)
    assert status["phase"] == "RolledBack", status
    # Blue fails nothing, so the bound is 0 + 0.01; green fails about 30 %.
    assert re.fullmatch(
        r"error_rate <= baseline \+ 0\.01: "
        r"error_rate 0\.\d+ > 0\.01 \(\d+ requests\) \(2 of 2 checks failed\)",
        status["reason"],
    ), status["reason"]
    [verdict] = status["gates"]
    assert verdict["gate"] == "error_rate <= baseline + 0.01" and verdict["outcome"] == "fail", verdict
    assert verdict["bound"] == pytest.approx(0.01) and verdict["value"] > 0.1, verdict
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic") == {"blue": 100, "green": 0}
    assert load.failures_from("blue") == 0 and load.failures_from("green") > 0, load.seen


def test_a_canary_slower_than_its_baselines_p99_times_1_2_is_rolled_back_naming_both_latencies(
    stack: LocalStack, project: tuple[Path, dict], key: str, delay: Path
) -> None:
    root, _ = project
    delay.write_text("0.2")
    done, load = roll_out_under_load(stack, root, key, LATENCY_RATIO)
    assert done.returncode == 1 and "RolledBack" in done.stderr, done.stderr
    status = stack.json("rollout", "status", "--endpoint", EP)
    assert status["phase"] == "RolledBack", status
    [verdict] = status["gates"]
    assert verdict["gate"] == "latency_p99 <= baseline * 1.2" and verdict["outcome"] == "fail", verdict
    # Green answers in at least 200 ms; blue's p99, times 1.2, is far below that.
    assert verdict["value"] >= 200 and verdict["bound"] < verdict["value"], verdict
    assert status["reason"].startswith("latency_p99 <= baseline * 1.2: latency_p99 "), status["reason"]
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic") == {"blue": 100, "green": 0}
    assert load.failures_from("blue") == 0, load.seen


def test_a_canary_worse_than_baseline_by_the_two_proportion_test_is_rolled_back_naming_its_numbers(
    stack: LocalStack, project: tuple[Path, dict], key: str, fault: Path
) -> None:
    root, _ = project
    fault.write_text("0.3")
    done, load = roll_out_under_load(stack, root, key, TWO_PROPORTION)
    assert done.returncode == 1 and "RolledBack" in done.stderr, done.stderr
    status = stack.json("rollout", "status", "--endpoint", EP)
    assert status["phase"] == "RolledBack", status
    assert re.fullmatch(
        r"error_rate <= baseline \(two_proportion, 99%\): error_rate canary 0\.\d+ vs baseline 0, "
        r"z=\d+\.\d\d, p=\S+: worse at 99% confidence \(2 of 2 checks failed\)",
        status["reason"],
    ), status["reason"]
    [verdict] = status["gates"]
    assert verdict["gate"] == "error_rate <= baseline (two_proportion, 99%)", verdict
    assert verdict["outcome"] == "fail" and verdict["value"] > 0.1 and verdict["bound"] == 0, verdict
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic") == {"blue": 100, "green": 0}
    assert load.failures_from("blue") == 0 and load.failures_from("green") > 0, load.seen


def test_a_green_answering_differently_fails_the_mirror_phase_before_it_takes_live_traffic(
    stack: LocalStack, project: tuple[Path, dict], key: str, fault: Path
) -> None:
    root, _ = project  # no fault: green answers every request, with model-2's numbers
    (root / "gates-rollout.yml").write_text(MIRROR_FIRST)
    green_window = (
        f"http://127.0.0.1:{stack.port('gateway_admin')}/stats?endpoint={EP}&deployment=green&window=2s"
    )
    with SteadyLoad(f"{stack.http_base}/endpoints/{EP}/score", key, BODY) as load:
        done = stack.tidegate(
            "rollout", "start", "--endpoint", EP, "--to", "green", "-f", "gates-rollout.yml", cwd=root
        )
        # Copies already on their way may still land; after them the gateway sends green none.
        until(lambda: stack.control_json(green_window)["mirror"]["requests"] == 0, "no more copies to green")
    assert done.returncode == 1 and "RolledBack" in done.stderr, done.stderr
    status = stack.json("rollout", "status", "--endpoint", EP)
    assert status["phase"] == "RolledBack" and status["step"] == "0/1", status
    assert re.fullmatch(
        r"mirror_match_rate >= 0\.99: mirror_match_rate 0 < 0\.99 \(\d+ requests\) \(2 of 2 checks failed\)",
        status["reason"],
    ), status["reason"]
    events = [(h["event"], h["detail"]) for h in status["history"]]
    assert events[0] == ("mirror", "shadow 50%") and events[-1][0] == "rolledback", events
    assert not [e for e in events if e[0] == "weights"], events  # no traffic step was ever taken
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "[traffic, mirror_traffic]") == [
        {"blue": 100, "green": 0},
        {},
    ]
    # Every client answer came from blue; green only ever saw copies.
    assert load.answered_by("green") == 0 and load.failures_from("blue") == 0, load.seen
    assert load.answered_by("blue") > 0, load.seen
