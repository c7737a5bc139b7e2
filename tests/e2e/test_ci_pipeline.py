"""examples/ci/ship-model.yml, run as GitHub's runner would run it (no GitHub needed): each
step's `run:` in bash, in order, with the job's env, `GITHUB_ENV` carried from step to step, a
failed step skipping the rest but for `if: always()` steps, and the summary file written. Against
a real local stack under steady client traffic: a good model ends at 100 %; a model whose run()
fails is rolled back and the job fails, both with the rollout's story in the summary.

The team repository is made from the example's deploy/ files with one change: the rollout's
holds and windows are seconds instead of minutes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.project import SCORE, SCORE_RUN_RAISES
from tests.e2e.test_rollout import BODY
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ci"
EP = "ci-ep"
FAST_ROLLOUT = """
strategy: canary
steps:
  - {weight: 10, hold: 3s}
  - {weight: 50, hold: 3s}
gates:
  - when: error_rate <= baseline + 0.01
    window: 3s
    min_requests: 5
check_interval: 1s
failure_limit: 2
after_success: {keep_previous_for: 1s, then: keep}
after_failure: {canary: delete}
"""


@dataclass
class Job:
    returncode: int
    ran: list[str]
    summary: str
    output: str


def run_job(workflow: Path, repo: Path, stack: LocalStack, sha: str) -> Job:
    """The `ship` job's steps, as the runner runs them."""
    job = yaml.safe_load(workflow.read_text())["jobs"]["ship"]
    env = dict(stack.env)
    # Values from `${{ secrets.* }}` stay out: the stack's own settings stand for them.
    env.update({k: str(v) for k, v in job.get("env", {}).items() if "${{" not in str(v)})
    env["ENDPOINT"] = EP
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `tidegate` is installed here
    github_env, summary = repo / ".github-env", repo / ".github-summary"
    github_env.write_text("")
    summary.write_text("")
    env.update(GITHUB_SHA=sha, GITHUB_ENV=str(github_env), GITHUB_STEP_SUMMARY=str(summary))
    failed, ran, output = 0, [], []
    for step in job["steps"]:
        if "run" not in step or (failed and step.get("if") != "always()"):
            continue
        ran.append(step["name"])
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True
        )
        output.append(f"## {step['name']} (exit {done.returncode})\n{done.stdout}{done.stderr}")
        for line in github_env.read_text().splitlines():
            name, _, value = line.partition("=")
            env[name] = value
        if done.returncode and not failed:
            failed = done.returncode
    return Job(failed, ran, summary.read_text(), "\n".join(output))


@pytest.fixture(scope="module")
def live(stack: LocalStack, project: tuple[Path, dict]) -> None:
    """The endpoint in production: blue serving model-1 with all traffic."""
    root, _ = project
    (root / "ci-endpoint.yml").write_text(f"name: {EP}\nauth_mode: key\n")
    stack.ok("online-endpoint", "create", "-f", "ci-endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment", "create", "-n", "blue", "-e", EP, "-f", "blue.yml", "--all-traffic", cwd=root
    )


def team_repo(tmp_path: Path, project: tuple[Path, dict], score: str) -> Path:
    root, _ = project
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE / "deploy", repo / "deploy")
    (repo / "deploy" / "rollout.yml").write_text(FAST_ROLLOUT)
    shutil.copytree(root / "environment", repo / "deploy" / "environment")
    shutil.copytree(root / "model-2" / "model", repo / "model")
    (repo / "src").mkdir()
    (repo / "src" / "score.py").write_text(score)
    return repo


def test_a_push_with_a_good_model_ends_at_100_percent_with_the_story_in_the_summary(
    stack: LocalStack, project: tuple[Path, dict], live: None, tmp_path: Path
) -> None:
    repo = team_repo(tmp_path, project, SCORE)
    with SteadyLoad(f"{stack.http_base}/endpoints/{EP}/score", stack.key(EP), BODY) as load:
        job = run_job(EXAMPLE / "ship-model.yml", repo, stack, sha="1234abcd" * 5)

    assert job.returncode == 0, job.output
    assert job.ran == [
        "Install Tidegate",
        "Name the new deployment after the commit",
        "Create it at 0 % traffic (waits until its instances are ready)",
        "Roll out under gates (exit 1 when it rolls back)",
        "Job summary",
    ]
    traffic = stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic")
    assert traffic == {"blue": 0, "m-1234abcd": 100}
    assert "### Rollout of `m-1234abcd` to `ci-ep`" in job.summary and "phase: Succeeded" in job.summary
    assert load.failures_from("blue") == 0 and load.failures_from("m-1234abcd") == 0, load.seen


def test_a_push_with_a_model_that_fails_is_rolled_back_and_fails_the_job(
    stack: LocalStack, project: tuple[Path, dict], live: None, tmp_path: Path
) -> None:
    repo = team_repo(tmp_path, project, SCORE_RUN_RAISES)
    current = stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic")
    serving = max(current, key=current.__getitem__)
    with SteadyLoad(f"{stack.http_base}/endpoints/{EP}/score", stack.key(EP), BODY):
        job = run_job(EXAMPLE / "ship-model.yml", repo, stack, sha="deadbeef" * 5)

    assert job.returncode == 1, job.output
    assert job.ran[-2:] == ["Roll out under gates (exit 1 when it rolls back)", "Job summary"]
    assert "phase: RolledBack" in job.summary and "rolledback" in job.summary, job.summary
    assert "error_rate <= baseline + 0.01: error_rate 1 > 0.01" in job.summary, job.summary
    assert stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic")[serving] == 100
    until(  # after_failure: {canary: delete}, once its drain is over
        lambda: "m-deadbeef" not in stack.json("online-endpoint", "show", "-n", EP, "--query", "traffic"),
        what="the failed canary deleted",
    )
