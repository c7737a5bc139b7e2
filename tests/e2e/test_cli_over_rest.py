"""The CLI's two ways in, on one real stack, with the same scenarios: `direct` (straight to
Temporal) and `rest` (`tidegate --api URL`, through the ARM-shaped REST API). The `rest` CLI is
given a Temporal port where nothing listens, so a command that reached past the API would fail.

Create from YAML, show (the same fields and values whichever way they are read), update traffic,
get-credentials and invoke, a bad field, a rollout that succeeds and one that rolls back, delete.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_ports
from tests.support.stack import LocalStack

PATHS = ("direct", "rest")

QUICK = """
strategy: canary
steps:
  - {weight: 50, hold: 1s}
check_interval: 1s
after_success: {keep_previous_for: 1s, then: keep}
"""

# A gate that never sees enough requests and fails when its one-second deadline passes.
FAILING = """
strategy: canary
steps:
  - {weight: 50, hold: 1h}
gates:
  - when: error_rate <= 0.05
    window: 1s
    min_requests: 100000
    on_no_data: fail
    no_data_deadline: 1s
check_interval: 1s
failure_limit: 1
after_failure: {canary: keep, drain: 1s}
"""


@dataclass
class Cli:
    """`tidegate` one way or the other, on the session's stack."""

    path: str
    stack: LocalStack
    endpoint: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.port('api')}"

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        if self.path == "direct":
            return self.stack.tidegate(*args, cwd=cwd)
        nowhere = LocalStack(
            home=self.stack.home, env={**self.stack.env, "TIDEGATE_TEMPORAL_PORT": str(free_ports(1)[0])}
        )
        return nowhere.tidegate("--api", self.api_url, *args, cwd=cwd)

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        done = self.run(*args, cwd=cwd)
        assert done.returncode == 0, f"[{self.path}] tidegate {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout.strip()

    def json(self, *args: str, cwd: Path | None = None) -> Any:
        return json.loads(self.ok(*args, "-o", "json", cwd=cwd))

    def other(self) -> Cli:
        return Cli(path=PATHS[1 - PATHS.index(self.path)], stack=self.stack, endpoint=self.endpoint)


@pytest.fixture(scope="module", params=PATHS)
def cli(request: pytest.FixtureRequest, stack: LocalStack) -> Cli:
    return Cli(path=request.param, stack=stack, endpoint=f"cli-{request.param}")


@pytest.fixture(scope="module")
def created(cli: Cli, project: tuple[Path, dict]) -> dict[str, Any]:
    """The endpoint from endpoint.yml, blue from blue.yml with all traffic, green at 0 %; what
    each create printed."""
    root, _ = project
    ep = cli.endpoint
    endpoint = cli.json("online-endpoint", "create", "--name", ep, "-f", "endpoint.yml", cwd=root)
    blue = cli.json(
        "online-deployment", "create", "-n", "blue", "-e", ep, "-f", "blue.yml", "--all-traffic", cwd=root
    )
    green = cli.json("online-deployment", "create", "-n", "green", "-e", ep, "-f", "green.yml", cwd=root)
    return {"endpoint": endpoint, "blue": blue, "green": green}


def test_create_from_yaml_ends_serving(cli: Cli, created: dict[str, Any]) -> None:
    assert created["endpoint"]["name"] == cli.endpoint
    assert created["endpoint"]["provisioning_state"] == "Succeeded"
    for name in ("blue", "green"):
        assert (created[name]["name"], created[name]["provisioning_state"]) == (name, "Succeeded")
    assert cli.json("online-endpoint", "show", "-n", cli.endpoint, "--query", "traffic") == {"blue": 100}


def without_route_generation(view: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The view without the one field that moves by itself (the periodic re-push), and that field."""
    properties = dict(view["properties"])
    generation = properties.pop("route_generation")
    return {**view, "properties": properties}, generation


def test_show_prints_the_same_fields_and_values_either_way(cli: Cli, created: dict[str, Any]) -> None:
    ep = cli.endpoint
    shown, generation = without_route_generation(cli.json("online-endpoint", "show", "-n", ep))
    other, later_generation = without_route_generation(cli.other().json("online-endpoint", "show", "-n", ep))
    assert shown == other
    assert isinstance(generation, int) and later_generation >= generation
    assert (shown["name"], shown["auth_mode"], shown["provisioning_state"]) == (ep, "key", "Succeeded")
    assert shown["scoring_uri"] == f"https://localhost:{cli.stack.port('gateway_https')}/endpoints/{ep}/score"
    assert (
        shown["scoring_uri_http"] == f"http://localhost:{cli.stack.port('gateway_http')}/endpoints/{ep}/score"
    )
    assert shown["properties"]["deployments"] == ["blue", "green"]
    assert shown["properties"]["created_at"] and shown["lagging_gateways"] == {}

    blue = cli.json("online-deployment", "show", "-n", "blue", "-e", ep)
    assert blue == cli.other().json("online-deployment", "show", "-n", "blue", "-e", ep)
    assert blue["model"]["path"].endswith("/model-1/model")
    assert blue["health"] == "Healthy"
    assert [i["state"] for i in blue["instances"]] == ["ready"]
    listed = cli.json("online-deployment", "list", "-e", ep, "--query", "[].name")
    assert listed == ["blue", "green"]
    assert ep in cli.json("online-endpoint", "list", "--query", "[].name")


def test_update_traffic_moves_the_split(cli: Cli, created: dict[str, Any]) -> None:
    ep = cli.endpoint
    updated = cli.json("online-endpoint", "update", "-n", ep, "--traffic", "blue=90 green=10")
    assert updated["traffic"] == {"blue": 90, "green": 10}
    assert cli.other().json("online-endpoint", "show", "-n", ep, "--query", "traffic") == {
        "blue": 90,
        "green": 10,
    }
    cli.ok(
        "online-endpoint",
        "update",
        "-n",
        ep,
        "--traffic",
        "blue=100 green=0",
        "--set",
        "tags.via=" + cli.path,
    )
    shown = cli.other().json("online-endpoint", "show", "-n", ep)
    assert (shown["traffic"], shown["tags"]) == ({"blue": 100, "green": 0}, {"via": cli.path})


def test_get_credentials_then_invoke_answers(
    cli: Cli, created: dict[str, Any], project: tuple[Path, dict]
) -> None:
    root, answers = project
    ep = cli.endpoint
    keys = cli.json("online-endpoint", "get-credentials", "-n", ep)
    assert keys == cli.other().json("online-endpoint", "get-credentials", "-n", ep)
    assert set(keys) == {"primaryKey", "secondaryKey"}
    out = cli.ok("online-endpoint", "invoke", "-n", ep, "--request-file", "request.json", cwd=root)
    assert json.loads(out) == pytest.approx(answers["model-1"])
    out = cli.ok(
        "online-endpoint", "invoke", "-n", ep, "-d", "green", "--request-file", "request.json", cwd=root
    )
    assert json.loads(out) == pytest.approx(answers["model-2"])


def test_a_bad_field_or_a_clash_exits_1_saying_what_and_changes_nothing(
    cli: Cli, created: dict[str, Any], project: tuple[Path, dict]
) -> None:
    ep = cli.endpoint
    done = cli.run("online-endpoint", "update", "-n", ep, "--traffic", "blue=90 ghost=10")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("ERROR: ") and "traffic" in done.stderr and "'ghost'" in done.stderr
    done = cli.run("online-deployment", "update", "-n", "blue", "-e", ep, "--set", "instance_count=0")
    assert done.returncode == 1 and "instance_count" in done.stderr, done.stderr
    again = cli.run("online-deployment", "create", "-n", "blue", "-e", ep, "-f", "blue.yml", cwd=project[0])
    assert again.returncode == 1
    assert f"deployment blue already exists in endpoint {ep}; use `online-deployment update`" in again.stderr
    missing = cli.run("online-endpoint", "show", "-n", "no-such-ep")
    assert missing.returncode == 1 and "endpoint no-such-ep does not exist" in missing.stderr
    assert cli.json("online-endpoint", "show", "-n", ep, "--query", "traffic") == {"blue": 100, "green": 0}


def test_a_rollout_that_succeeds_exits_0_with_its_progress(
    cli: Cli, created: dict[str, Any], project: tuple[Path, dict]
) -> None:
    root, _ = project
    (root / "quick.yml").write_text(QUICK)
    ep = cli.endpoint
    plan = cli.ok("rollout", "plan", "-e", ep, "--to", "green", "-f", "quick.yml", cwd=root)
    assert plan.splitlines()[0] == f"rollout of {ep}: blue → green (canary)"
    done = cli.run("rollout", "start", "-e", ep, "--to", "green", "-f", "quick.yml", cwd=root)
    assert done.returncode == 0, done.stderr
    assert f"started rollout/{ep}/" in done.stderr and "step 1/2: green 50%, hold 1s" in done.stderr
    assert "Succeeded" in done.stderr and "green 100%" in done.stderr
    assert json.loads(done.stdout)["phase"] == "Succeeded"
    assert cli.json("online-endpoint", "show", "-n", ep, "--query", "traffic") == {"blue": 0, "green": 100}


def test_a_rollout_that_rolls_back_exits_1_saying_why(
    cli: Cli, created: dict[str, Any], project: tuple[Path, dict]
) -> None:
    root, _ = project
    (root / "failing.yml").write_text(FAILING)
    ep = cli.endpoint
    done = cli.run("rollout", "start", "-e", ep, "--to", "blue", "-f", "failing.yml", cwd=root)
    assert done.returncode == 1, done.stderr
    assert f"ERROR: rollout rollout/{ep}/2 RolledBack: " in done.stderr
    assert json.loads(done.stdout)["phase"] == "RolledBack"
    assert cli.json("online-endpoint", "show", "-n", ep, "--query", "traffic") == {"blue": 0, "green": 100}
    status = cli.json("rollout", "status", "-e", ep)
    assert (status["id"], status["phase"]) == (f"rollout/{ep}/2", "RolledBack")
    listed = cli.json("rollout", "list", "-e", ep, "--query", "[].id")
    assert sorted(listed) == [f"rollout/{ep}/1", f"rollout/{ep}/2"]
    nothing = cli.run("rollout", "pause", "-e", ep)
    assert nothing.returncode == 1 and "nothing to pause" in nothing.stderr


def test_delete_removes_the_deployment_then_the_endpoint(cli: Cli, created: dict[str, Any]) -> None:
    ep = cli.endpoint
    refused = cli.run("online-deployment", "delete", "-n", "green", "-e", ep, "--yes")
    assert refused.returncode == 1 and "takes 100% of traffic" in refused.stderr
    cli.ok("online-deployment", "delete", "-n", "blue", "-e", ep, "--yes")
    assert cli.json("online-deployment", "list", "-e", ep, "--query", "[].name") == ["green"]
    cli.ok("online-endpoint", "delete", "-n", ep, "--yes")
    gone = cli.run("online-endpoint", "show", "-n", ep)
    assert gone.returncode == 1 and f"endpoint {ep} does not exist" in gone.stderr


def test_a_model_registered_either_way_reads_the_same_either_way(
    cli: Cli, project: tuple[Path, dict]
) -> None:
    root, _ = project
    name = f"model-{cli.path}"
    made = cli.json("model", "create", "-n", name, "-v", "3", "-p", str(root / "model-1" / "model"))

    shown = [c.json("model", "show", "-n", name, "-v", "3") for c in (cli, cli.other())]
    listed = [c.json("model", "list", "-n", name) for c in (cli, cli.other())]

    assert (made["name"], made["version"]) == (name, "3")
    fields = ("name", "version", "content_hash", "description")
    assert [{f: s[f] for f in fields} for s in shown] == [{f: made[f] for f in fields}] * 2
    assert [[m["version"] for m in each] for each in listed] == [["3"], ["3"]]
    # The same files are the same content, whichever way they were sent.
    direct = cli if cli.path == "direct" else cli.other()
    other_name = f"model-{cli.other().path}"
    if direct.run("model", "show", "-n", other_name, "-v", "3").returncode == 0:
        other = direct.json("model", "show", "-n", other_name, "-v", "3")
        assert other["content_hash"] == made["content_hash"]


@pytest.mark.parametrize(
    "args",
    [
        ("up", "--detach"),
        ("host", "patch"),
        ("rollout", "retry", "-e", "x"),
    ],
    ids=["up", "host patch", "rollout retry"],
)
def test_what_the_api_cannot_serve_exits_2_naming_the_option(
    stack: LocalStack, args: tuple[str, ...]
) -> None:
    via_flag = stack.tidegate("--api", f"http://127.0.0.1:{stack.port('api')}", *args)
    assert via_flag.returncode == 2, via_flag.stderr
    command = " ".join(itertools.takewhile(lambda arg: not arg.startswith("-"), args))
    assert f"`tidegate {command}` is not served by the REST API" in via_flag.stderr
    assert "run it without --api" in via_flag.stderr
    if args[0] == "up":
        return  # the local system's own commands heed the flag only (its processes inherit the setting)
    via_setting = LocalStack(
        home=stack.home, env={**stack.env, "TIDEGATE_API_URL": f"http://127.0.0.1:{stack.port('api')}"}
    ).tidegate(*args)
    assert via_setting.returncode == 2 and "TIDEGATE_API_URL" in via_setting.stderr


def test_the_setting_goes_through_the_api_and_a_wrong_credential_is_refused(stack: LocalStack) -> None:
    url = f"http://127.0.0.1:{stack.port('api')}"
    nowhere = {"TIDEGATE_TEMPORAL_PORT": str(free_ports(1)[0])}
    listed = LocalStack(home=stack.home, env={**stack.env, **nowhere, "TIDEGATE_API_URL": url}).tidegate(
        "online-endpoint", "list"
    )
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)
    wrong = LocalStack(home=stack.home, env={**stack.env, "TIDEGATE_CONTROL_TOKEN": "not-the-credential"})
    refused = wrong.tidegate("--api", url, "online-endpoint", "list")
    assert refused.returncode == 1
    assert "refused the control credential (401)" in refused.stderr
    assert "not-the-credential" not in refused.stderr
