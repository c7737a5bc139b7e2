"""Azure's probe settings on real instances: liveness waits initial_delay, even for an instance
that never gets ready; readiness takes a ready instance out after failure_threshold failures
and back after success_threshold passes, without replacing it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from host.processes import create_time, seconds_since_start
from tests.host.helpers import HostProcess, UserFiles, all_ready, runtime

# /proc start times and uptime tick in hundredths of a second.
CLOCK_SLACK_SECONDS = 0.05


def host_events(host: HostProcess, event: str, instance: str) -> list[dict[str, Any]]:
    """The host's log lines (JSON) of one event for one instance."""
    found = []
    for line in (host.home / f"host-{host.starts}.log").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == event and record.get("instance") == instance:
            found.append(record)
    return found


def the_instance(status: dict[str, Any]) -> dict[str, Any]:
    (instance,) = status["instances"]
    return instance


async def test_liveness_waits_initial_delay_before_failing_an_instance_whose_init_never_ends(
    host: HostProcess, user_files: UserFiles, tmp_path: Path
) -> None:
    # One failed probe is enough to fail it, and from its start `GET /` never answers: only
    # initial_delay keeps it alive for a while.
    liveness = {"initial_delay": 3, "period": 1, "timeout": 1, "success_threshold": 1, "failure_threshold": 1}
    rt = runtime(
        "probe-delay",
        "blue",
        user_files.slow_init_dir,
        model_dir=None,
        liveness_probe=liveness,
        environment_variables={"GO_FLAG": str(tmp_path / "go")},
    )
    _, put = await host.put(rt, 1)
    started: list[float] = []

    def note_the_start(status: dict[str, Any]) -> None:
        pid = the_instance(status)["pid"]
        ticks = create_time(pid) if pid and not started else None
        age = seconds_since_start(ticks) if ticks is not None else None
        if age is not None:
            started.append(time.monotonic() - age)

    note_the_start(put)
    done = await host.follow(
        "probe-delay",
        "blue",
        lambda s: the_instance(s)["state"] == "failed",
        after=put["version"],
        each=note_the_start,
    )
    seen_failed = time.monotonic()
    failed = the_instance(done)
    assert failed["error"].startswith("liveness probe failed 1 times in a row: GET / ")
    assert started, "never saw the instance's process"
    # A lower bound, not a timing claim: the failure came no sooner than initial_delay after
    # the process started (it can only be seen later than it happened).
    assert seen_failed - started[0] >= liveness["initial_delay"] - CLOCK_SLACK_SECONDS
    (first,) = host_events(host, "instance.liveness_failed", failed["id"])
    assert first["state"] == "starting"  # liveness does not wait for readiness
    # The stopped process's init() may end now, so it exits at once rather than at the grace.
    (tmp_path / "go").touch()
    await host.delete("probe-delay", "blue")


async def test_readiness_takes_an_instance_out_after_failure_threshold_and_back_after_success_threshold(
    host: HostProcess, user_files: UserFiles
) -> None:
    readiness = {
        "initial_delay": 1,
        "period": 1,
        "timeout": 1,
        "success_threshold": 2,
        "failure_threshold": 2,
    }
    # Liveness would take far longer to give up: what moves here is readiness alone.
    liveness = {"initial_delay": 1, "period": 1, "timeout": 1, "failure_threshold": 600}
    rt = runtime(
        "probe-ready",
        "blue",
        user_files.code_dir,
        model_dir=user_files.model_dir,
        readiness_probe=readiness,
        liveness_probe=liveness,
    )
    await host.put(rt, 1)
    ready = the_instance(await host.wait_for("probe-ready", "blue", all_ready(1)))
    (became_ready,) = host_events(host, "instance.ready", ready["id"])
    assert became_ready["successes"] == 2

    os.killpg(ready["pid"], signal.SIGSTOP)  # alive, port open, never answers
    try:
        out = await host.follow("probe-ready", "blue", lambda s: the_instance(s)["state"] != "ready")
    finally:
        os.killpg(ready["pid"], signal.SIGCONT)
    unready = the_instance(out)
    assert (unready["id"], unready["state"], unready["pid"]) == (ready["id"], "unready", ready["pid"])
    (went_out,) = host_events(host, "instance.unready", ready["id"])
    assert (went_out["failures"], went_out["failure_threshold"]) == (2, 2)

    back = await host.follow("probe-ready", "blue", all_ready(1), after=out["version"])
    again = the_instance(back)
    assert (again["id"], again["pid"], again["restarts"]) == (ready["id"], ready["pid"], 0)  # never replaced
    (came_back,) = host_events(host, "instance.ready_again", ready["id"])
    assert came_back["successes"] == 2
    await host.delete("probe-ready", "blue")
