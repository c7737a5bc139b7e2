"""A deployment's own code cannot reach Tidegate's secrets: each instance runs under Landlock.

A real `python -m host` starts a real azmlinfsrv whose score.py tries, on request, what a
hostile model would: read the control credential and the keys in the state dir, read the
user's home, signal the host. The planner that turns "hide these folders" into Landlock's
allow-rules is a pure function, tested on its own first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from host.confinement import Rule, landlock_abi, plan_rules, wrapper_command
from tests.host.helpers import HostProcess, UserFiles, all_ready, runtime

TREE = {
    Path("/"): ["bin", "etc", "home", "tmp", "usr"],
    Path("/home"): ["alice", "bob"],
    Path("/home/alice"): [".tidegate", ".ssh", "venv", "notes.txt"],
    Path("/home/alice/.tidegate"): ["control.token", "secrets", "host"],
}


def children(folder: Path) -> list[Path]:
    return [folder / name for name in TREE.get(folder, [])]


def test_the_plan_allows_every_sibling_on_the_way_down_but_not_the_hidden_folder() -> None:
    rules = plan_rules(hidden=[Path("/home/alice")], readable=[], writable=[], children=children)

    assert rules == [
        Rule(Path("/bin"), "full"),
        Rule(Path("/etc"), "full"),
        Rule(Path("/tmp"), "full"),
        Rule(Path("/usr"), "full"),
        Rule(Path("/home/bob"), "full"),
    ]


def test_the_plan_opens_only_the_named_folders_inside_a_hidden_one() -> None:
    rules = plan_rules(
        hidden=[Path("/home/alice"), Path("/home/alice/.tidegate")],
        readable=[Path("/home/alice/venv"), Path("/home/alice/.tidegate/host/envs/e1")],
        writable=[Path("/home/alice/.tidegate/host/homes/ep/blue")],
        children=children,
    )

    inside = [r for r in rules if Path("/home/alice") in r.path.parents]
    assert inside == [
        Rule(Path("/home/alice/.tidegate/host/envs/e1"), "read"),
        Rule(Path("/home/alice/venv"), "read"),
        Rule(Path("/home/alice/.tidegate/host/homes/ep/blue"), "full"),
    ]


@pytest.mark.parametrize(
    "opened",
    [Path("/home/alice"), Path("/home"), Path("/")],
    ids=["the_hidden_folder_itself", "its_parent", "the_root"],
)
def test_the_plan_never_opens_a_folder_that_holds_a_hidden_one(opened: Path) -> None:
    rules = plan_rules(hidden=[Path("/home/alice")], readable=[opened], writable=[opened], children=children)

    assert all(Path("/home/alice") not in (r.path, *r.path.parents) for r in rules)
    assert all(r.path not in Path("/home/alice").parents for r in rules)


PROBE_PY = """\
import json
import os
import subprocess
import sys


def init():
    print("probe ready")


def _read(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return "read"
    except PermissionError:
        return "denied"
    except FileNotFoundError:
        return "missing"


def _write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except PermissionError:
        return "denied"


def _signal(pid):
    try:
        os.kill(pid, 0)
        return "sent"
    except PermissionError:
        return "denied"


def run(raw_data):
    ask = json.loads(raw_data)
    return {
        "read": {p: _read(p) for p in ask["read"]},
        "write": {p: _write(p) for p in ask["write"]},
        "signal": _signal(ask["signal"]),
        "home": os.environ["HOME"],
        "tmp": os.environ["TMPDIR"],
    }
"""


@pytest.fixture
def in_users_home() -> Iterator[Path]:
    """A file in the home of the user the host runs as (a stand-in for ~/.azure's tokens)."""
    path = Path.home() / f".tidegate-confinement-probe-{os.getpid()}"
    path.write_text("a cloud login")
    yield path
    path.unlink(missing_ok=True)


@pytest_asyncio.fixture(scope="module")
async def probe(host: HostProcess, user_files: UserFiles) -> dict[str, Any]:
    code_dir = user_files.code_dir.parent / "code-probe"
    code_dir.mkdir(exist_ok=True)
    (code_dir / "score.py").write_text(PROBE_PY)
    code, body = await host.put(runtime("ep-jail", "blue", code_dir, model_dir=user_files.model_dir), 1)
    assert code == 202, body
    status = await host.wait_for("ep-jail", "blue", all_ready(1))
    return status["instances"][0]


async def ask(host: HostProcess, instance: dict[str, Any], **question: Any) -> dict[str, Any]:
    body = {"read": [], "write": [], "signal": os.getpid(), **question}
    async with host.session.post(instance["url"] + "/score", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")


@needs_landlock
async def test_an_instance_cannot_read_the_control_credential_or_the_state_dir(
    host: HostProcess, probe: dict[str, Any]
) -> None:
    token = host.home / "control.token"
    state = host.home / "host" / "state.json"
    assert token.exists() and state.exists()

    answer = await ask(host, probe, read=[str(token), str(state)])

    assert answer["read"] == {str(token): "denied", str(state): "denied"}


@needs_landlock
async def test_an_instance_cannot_read_the_users_home(
    host: HostProcess, probe: dict[str, Any], in_users_home: Path
) -> None:
    answer = await ask(host, probe, read=[str(in_users_home)])

    assert answer["read"] == {str(in_users_home): "denied"}


@needs_landlock
async def test_an_instance_cannot_signal_the_host(host: HostProcess, probe: dict[str, Any]) -> None:
    assert host.proc is not None

    answer = await ask(host, probe, signal=host.proc.pid)

    assert answer["signal"] == "denied"


@needs_landlock
async def test_an_instance_reads_its_model_and_writes_in_its_own_home(
    host: HostProcess, probe: dict[str, Any], user_files: UserFiles
) -> None:
    model = user_files.model_dir / "model" / "model.joblib"
    home = host.home / "host" / "homes" / "ep-jail" / "blue"

    writes = [str(home / "cache.txt"), str(home / "tmp" / "t")]

    answer = await ask(host, probe, read=[str(model)], write=writes)

    assert answer["read"] == {str(model): "read"}
    assert answer["write"] == dict.fromkeys(writes, "written")
    assert (answer["home"], answer["tmp"]) == (str(home), str(home / "tmp"))


async def test_deleting_a_deployment_removes_its_home(host: HostProcess, probe: dict[str, Any]) -> None:
    home = host.home / "host" / "homes" / "ep-jail" / "blue"
    assert home.is_dir()

    code, body = await host.delete("ep-jail", "blue")

    assert (code, body["deleted"]) == (200, True)
    assert not home.exists()


@needs_landlock
def test_a_symlink_beside_the_way_down_does_not_open_the_hidden_folder(tmp_path: Path) -> None:
    hidden = tmp_path / "state"
    hidden.mkdir()
    (hidden / "control.token").write_text("secret")
    (tmp_path / "current").symlink_to(tmp_path)  # as pytest's own /tmp/pytest-of-<user>/pytest-current
    through_link = tmp_path / "current" / "state" / "control.token"
    reader = f"open({str(through_link)!r}).read()"

    done = subprocess.run(
        [sys.executable, "-m", "host.confinement", "--hide", str(hidden), "--", sys.executable, "-c", reader],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 1
    assert "PermissionError" in done.stderr


def test_the_wrapper_never_imports_a_host_package_from_the_users_code_folder(tmp_path: Path) -> None:
    fake = tmp_path / "host"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "confinement.py").write_text("print('the user code ran unconfined')\n")
    command = wrapper_command(
        python=sys.executable, hidden=[], readable=[], writable=[], command=["/bin/true"]
    )

    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)

    assert "unconfined" not in done.stdout
    assert done.returncode == 0, done.stderr


def test_a_plan_that_hides_nothing_allows_everything() -> None:
    assert plan_rules(hidden=[], readable=[], writable=[], children=children) == [Rule(Path("/"), "full")]
