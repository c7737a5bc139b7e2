"""What the DeploymentWorkflow's control loop relies on, against the real host and real azmlinfsrv
instances: failures seen through the long poll, replacements counted, liveness probes, rolling
updates that never lose capacity and stop on a bad spec, runtime patches, and a host restart that
keeps versions and restart counts.

Each test has a deployment of its own; the last one kills and restarts the shared host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.host_api import RuntimeEnvironment
from host.environments import environment_key
from tests.host.helpers import (
    HANG_GUARD_SECONDS,
    HostProcess,
    UserFiles,
    all_ready,
    port_answers,
    process_alive,
    runtime,
)

ROWS = [[1.0]]
# Fast enough for a test: a hung instance is failed after three missed one-second probes.
# Liveness runs from initial_delay whether the instance is ready or not (as in Azure), so the
# delay and the failures together leave a booting instance far more time than it needs.
FAST_LIVENESS = {
    "initial_delay": 5,
    "period": 1,
    "timeout": 1,
    "success_threshold": 1,
    "failure_threshold": 3,
}
ROLLING = {"max_surge": 1, "drain_seconds": 0.5}

Status = dict[str, Any]


def states(status: Status) -> dict[str, str]:
    return {i["id"]: i["state"] for i in status["instances"]}


def by_id(status: Status) -> dict[str, Status]:
    return {i["id"]: i for i in status["instances"]}


def count(status: Status, state: str, spec_hash: str | None = None) -> int:
    return sum(
        1
        for i in status["instances"]
        if i["state"] == state and (spec_hash is None or i["spec_hash"] == spec_hash)
    )


def has_failed(instance_id: str) -> Callable[[Status], bool]:
    return lambda status: states(status).get(instance_id) == "failed"


async def score(host: HostProcess, instance: Status) -> tuple[int, Any]:
    async with host.session.post(instance["url"] + "/score", json={"data": ROWS}) as resp:
        return resp.status, await resp.json()


async def until_gone(pid: int) -> None:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while process_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} never stopped"
        await asyncio.sleep(0.1)


async def until_closed(port: int) -> None:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while await port_answers(port):
        assert time.monotonic() < deadline, f"port {port} still answers"
        await asyncio.sleep(0.1)


class CapacityWatch:
    """Checks every status a long poll returns during a rolling change: never fewer than
    `minimum` ready, never more than `most` running; remembers each instance's states."""

    def __init__(self, minimum: int, most: int) -> None:
        self.minimum, self.most = minimum, most
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.observations = 0

    def __call__(self, status: Status) -> None:
        self.observations += 1
        shown = json.dumps(states(status))
        assert count(status, "ready") >= self.minimum, f"capacity dropped: {shown}"
        running = sum(count(status, s) for s in ("starting", "ready", "draining"))
        assert running <= self.most, f"more than max_surge extra: {shown}"
        for instance in status["instances"]:
            self.seen[instance["id"]].add(instance["state"])


async def test_kill_9_of_an_instance_fails_it_within_the_long_poll_and_a_put_replaces_it(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("rec-kill", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(rt, 2)
    ready = await host.wait_for("rec-kill", "blue", all_ready(2))
    victim, survivor = ready["instances"]

    os.killpg(victim["pid"], signal.SIGKILL)
    code, status = await host.watch("rec-kill", "blue", after=ready["version"], timeout=30)
    assert code == 200
    assert status["version"] > ready["version"]
    assert states(status) == {victim["id"]: "failed", survivor["id"]: "ready"}
    failed = by_id(status)[victim["id"]]
    assert failed["exit_code"] == -signal.SIGKILL
    assert failed["pid"] is None and failed["error"]

    code, put = await host.put(rt, 2)
    assert code == 202
    (replacement,) = [i for i in put["instances"] if i["id"] not in (victim["id"], survivor["id"])]
    assert (replacement["replaces"], replacement["restarts"]) == (victim["id"], 1)
    assert states(put)[victim["id"]] == "failed"  # still listed while the replacement starts
    _, again = await host.put(rt, 2)  # idempotent: the replacement is under way already
    assert set(states(again)) == set(states(put))

    done = await host.follow("rec-kill", "blue", all_ready(2), after=put["version"])
    assert set(states(done)) == {survivor["id"], replacement["id"]}
    assert by_id(done)[replacement["id"]]["restarts"] == 1
    assert by_id(done)[replacement["id"]]["replaces"] == victim["id"]
    assert by_id(done)[survivor["id"]]["restarts"] == 0
    assert (await score(host, by_id(done)[replacement["id"]]))[0] == 200
    await host.delete("rec-kill", "blue")


async def test_an_instance_whose_port_is_taken_before_its_server_binds_it_starts_on_another(
    host: HostProcess, user_files: UserFiles, tmp_path: Path
) -> None:
    # A server that takes two seconds longer to start: Python runs this before anything else.
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(2)\n")
    rt = runtime(
        "rec-port",
        "blue",
        user_files.code_dir,
        model_dir=user_files.model_dir,
        environment_variables={"PYTHONPATH": str(tmp_path)},
    )
    await host.put(rt, 1)
    # The race an outgoing connection's ephemeral port can win: the host found the port free
    # and started azmlinfsrv; someone else binds it while the server is still starting.
    started = await host.wait_for("rec-port", "blue", lambda s: bool(s["instances"][0]["pid"]))
    (instance,) = started["instances"]
    with socket.socket() as squatter:
        # As gunicorn does: the port may hold TIME_WAIT connections of an earlier instance.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", instance["port"]))
        squatter.listen()
        done = await host.follow("rec-port", "blue", all_ready(1), after=started["version"])

    (ready,) = done["instances"]
    assert ready["id"] == instance["id"] and ready["port"] != instance["port"]
    assert ready["restarts"] == 0  # not the user's fault: no crash counted
    (lost,) = [e for e in host.events("instance.port_lost") if e["instance"] == instance["id"]]
    assert (lost["port"], lost["new_port"]) == (instance["port"], ready["port"])
    assert (await score(host, ready)) == (200, user_files.expected(ROWS))
    await host.delete("rec-port", "blue")


async def test_an_instance_that_stops_answering_fails_its_liveness_probe_and_is_stopped(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime(
        "rec-hang",
        "blue",
        user_files.code_dir,
        model_dir=user_files.model_dir,
        liveness_probe=FAST_LIVENESS,
    )
    await host.put(rt, 1)
    ready = await host.wait_for("rec-hang", "blue", all_ready(1))
    (hung,) = ready["instances"]

    os.killpg(hung["pid"], signal.SIGSTOP)  # alive, port open, never answers
    status = await host.follow("rec-hang", "blue", has_failed(hung["id"]), after=ready["version"])
    failed = by_id(status)[hung["id"]]
    assert failed["error"].startswith("liveness probe failed 3 times in a row: GET / timed out after 1 s")
    assert failed["pid"] is None
    await until_gone(hung["pid"])  # stopped by the host, though it was stopped (SIGSTOP) itself

    _, put = await host.put(rt, 1)
    done = await host.follow("rec-hang", "blue", all_ready(1), after=put["version"])
    (replacement,) = done["instances"]
    assert (replacement["replaces"], replacement["restarts"]) == (hung["id"], 1)
    await host.delete("rec-hang", "blue")


async def test_long_poll_answers_on_a_change_on_timeout_and_never_holds_up_other_requests(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("rec-poll", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(rt, 1)
    ready = await host.wait_for("rec-poll", "blue", all_ready(1))
    version = ready["version"]

    code, unchanged = await host.watch("rec-poll", "blue", after=version, timeout=0.3)
    assert (code, unchanged["version"], unchanged["instances"]) == (200, version, ready["instances"])

    poll = asyncio.create_task(host.watch("rec-poll", "blue", after=version, timeout=60))
    await asyncio.sleep(0.2)  # let the poll reach the host
    code, _ = await host.get("rec-poll", "blue")
    assert code == 200 and not poll.done()  # answered while the poll waits
    await host.put(rt, 2)  # a second instance starting is a change
    code, changed = await poll
    assert code == 200 and changed["version"] > version
    assert len(changed["instances"]) == 2

    code, at_once = await host.watch("rec-poll", "blue", after=version, timeout=60)
    assert code == 200 and at_once["version"] >= changed["version"]

    for params in ({"after": -1}, {"after": "x"}, {"after": 0, "timeout": "soon"}):
        code, body = await host.watch("rec-poll", "blue", **params)
        assert code == 400, body

    _, latest = await host.get("rec-poll", "blue")
    poll = asyncio.create_task(host.watch("rec-poll", "blue", after=latest["version"] + 1000, timeout=60))
    await asyncio.sleep(0.2)
    await host.delete("rec-poll", "blue")
    code, body = await poll
    assert (code, body["error"]["code"]) == (404, "DeploymentNotFound")


async def test_rolling_update_keeps_capacity_and_drains_each_old_instance(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("rec-roll", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(rt, 2, **ROLLING)
    ready = await host.wait_for("rec-roll", "blue", all_ready(2))
    old = set(states(ready))

    watch = CapacityWatch(minimum=2, most=3)
    _, put = await host.put({**rt, "spec_hash": "spec-2"}, 2, **ROLLING)
    watch(put)
    done = await host.follow("rec-roll", "blue", all_ready(2, "spec-2"), after=put["version"], each=watch)

    assert not old & set(states(done))
    for instance_id in old:
        assert watch.seen[instance_id] == {"ready", "draining"}, watch.seen
    for instance in done["instances"]:
        assert watch.seen[instance["id"]] == {"starting", "ready"}
        assert (await score(host, instance)) == (200, user_files.expected(ROWS))
    await host.delete("rec-roll", "blue")


async def test_a_new_spec_that_fails_stops_the_rollout_and_the_old_spec_rolls_back(
    host: HostProcess, user_files: UserFiles, tmp_path: Path
) -> None:
    flag = tmp_path / "fail-now"
    good = runtime("rec-bad", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(good, 2, **ROLLING)
    ready = await host.wait_for("rec-bad", "blue", all_ready(2))
    old = set(states(ready))
    bad = runtime(
        "rec-bad",
        "blue",
        user_files.flaky_dir,
        model_dir=None,
        spec_hash="spec-bad",
        environment_variables={"FAIL_FLAG": str(flag)},
    )

    watch = CapacityWatch(minimum=2, most=3)
    _, put = await host.put(bad, 2, **ROLLING)

    def fail_the_next_new_one(status: Status) -> bool:
        # The first new instance is ready and an old one drains: the next new one fails.
        if count(status, "draining"):
            flag.touch()
        return flag.exists()

    await host.follow("rec-bad", "blue", fail_the_next_new_one, after=put["version"], each=watch)
    halted = await host.follow(
        "rec-bad", "blue", lambda s: count(s, "failed", "spec-bad") == 1, after=put["version"], each=watch
    )
    assert count(halted, "ready", "spec-bad") == 1
    assert count(halted, "ready", "spec-1") == 1  # the old one left keeps serving
    assert count(halted, "starting") == 0 and count(halted, "draining") == 0
    (failed,) = [i for i in halted["instances"] if i["state"] == "failed"]
    assert "flag file present: failing init (on purpose)" in failed["error"]
    (old_left,) = [i for i in halted["instances"] if i["spec_hash"] == "spec-1"]
    assert old_left["id"] in old
    assert (await score(host, old_left)) == (200, user_files.expected(ROWS))
    code, still = await host.watch("rec-bad", "blue", after=halted["version"], timeout=1.5)
    assert (code, still["version"]) == (200, halted["version"])  # stopped there: nothing moves

    _, back = await host.put(good, 2, **ROLLING)  # the workflow's rollback
    watch(back)
    done = await host.follow("rec-bad", "blue", all_ready(2, "spec-1"), after=back["version"], each=watch)
    assert old_left["id"] in states(done)
    (new_good,) = [i for i in halted["instances"] if i["state"] == "ready" and i["spec_hash"] == "spec-bad"]
    assert watch.seen[new_good["id"]] >= {"ready", "draining"}  # rolled back, drained first
    await host.delete("rec-bad", "blue")


async def test_runtime_patch_builds_an_upgraded_environment_and_rolls_every_instance(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("rec-patch", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(rt, 2, **ROLLING)
    ready = await host.wait_for("rec-patch", "blue", all_ready(2))
    old = set(states(ready))

    patched = {**rt, "environment": {**rt["environment"], "patch": 1}}  # same spec_hash
    watch = CapacityWatch(minimum=2, most=3)
    _, put = await host.put(patched, 2, **ROLLING)
    done = await host.follow(
        "rec-patch",
        "blue",
        lambda s: all_ready(2)(s) and not old & set(states(s)),
        after=put["version"],
        each=watch,
    )
    assert done["warnings"] == []
    for instance_id in old:
        assert "draining" in watch.seen[instance_id]

    envs = host.home / "host" / "envs"
    key = environment_key(RuntimeEnvironment.model_validate(patched["environment"]))
    assert key != environment_key(RuntimeEnvironment.model_validate(rt["environment"]))
    assert (envs / key / "tidegate-env.json").is_file()
    build = (envs / f"{key}.build.log").read_text()
    assert "--upgrade" in build and "azureml-inference-server-http" in build
    assert '"environment.patched"' in (host.home / f"host-{host.starts}.log").read_text()
    for instance in done["instances"]:
        assert (await score(host, instance)) == (200, user_files.expected(ROWS))
    await host.delete("rec-patch", "blue")


async def test_a_host_killed_and_restarted_keeps_versions_restart_counts_and_probes(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime(
        "rec-host",
        "blue",
        user_files.code_dir,
        model_dir=user_files.model_dir,
        liveness_probe=FAST_LIVENESS,
    )
    await host.put(rt, 1)
    (first,) = (await host.wait_for("rec-host", "blue", all_ready(1)))["instances"]
    os.kill(first["pid"], signal.SIGKILL)  # the gunicorn master only: its worker is orphaned
    failed = await host.follow("rec-host", "blue", has_failed(first["id"]))
    await until_closed(first["port"])  # nothing it left behind keeps the port
    _, put = await host.put(rt, 1)
    before = await host.follow("rec-host", "blue", all_ready(1), after=put["version"])
    (replacement,) = before["instances"]
    assert replacement["restarts"] == 1
    assert failed["version"] < put["version"] <= before["version"]

    await host.stop(signal.SIGKILL)
    await host.restart()
    code, after = await host.watch("rec-host", "blue", after=before["version"], timeout=30)
    assert code == 200 and after["version"] > before["version"]  # never handed out twice
    after = await host.wait_for("rec-host", "blue", all_ready(1))
    assert after["instances"] == before["instances"]  # adopted, not started again
    assert process_alive(replacement["pid"])

    # The adopted instance is probed as well.
    os.killpg(replacement["pid"], signal.SIGSTOP)
    status = await host.follow("rec-host", "blue", has_failed(replacement["id"]), after=after["version"])
    (hung,) = status["instances"]
    assert hung["error"].startswith("liveness probe failed 3 times in a row")
    assert hung["restarts"] == 1
    await until_gone(replacement["pid"])
    await host.delete("rec-host", "blue")


async def test_sigterm_answers_pending_long_polls_before_the_host_exits(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("rec-term", "blue", user_files.code_dir, model_dir=None)
    await host.put(rt, 0)
    status = await host.wait_for("rec-term", "blue", lambda s: s["environment_state"] == "ready")
    poll = asyncio.create_task(host.watch("rec-term", "blue", after=status["version"], timeout=60))
    await asyncio.sleep(0.2)  # let the poll reach the host
    # A hang guard, not a timing claim: a poll left waiting holds the host's shutdown for the
    # API runner's whole 60 s grace; answered at once, it stops in about a second.
    assert await asyncio.wait_for(host.stop(signal.SIGTERM), timeout=40) == 0
    code, answer = await poll
    assert (code, answer["version"]) == (200, status["version"])
    await host.restart()
    await host.delete("rec-term", "blue")
