"""The host-wide long poll the worker's instance watcher follows (`GET /changes?since=S`),
against a real host and real instances, through the compute provider as the watcher calls it:
every deployment at first, then only what changed, as soon as it changes (a killed instance
within the poll); a quiet host answers nothing at the timeout; the control credential as on
every route. The provider's `get_instances` never waits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from temporalio.exceptions import ApplicationError

from activities.local.compute import LocalComputeProvider
from config.contract.activities import GetInstancesInput
from config.host_api import DeploymentInstances, InstanceChanges
from tests.host.helpers import HANG_GUARD_SECONDS, HostProcess, UserFiles, runtime

ENDPOINT = "ep-changes"


def ours(changes: InstanceChanges) -> dict[str, DeploymentInstances]:
    """The deployments of this test's endpoint (the host is shared with other tests)."""
    return {d.deployment: d for d in changes.deployments if d.endpoint == ENDPOINT}


async def follow_changes(
    provider: LocalComputeProvider, since: int, done: dict[str, str]
) -> tuple[int, dict[str, DeploymentInstances]]:
    """Long-poll changes from `since` until each named deployment shows its instances (or,
    for "environment", its environment) in the given state; the last position and views."""
    seen: dict[str, DeploymentInstances] = {}
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while True:
        changes = await provider.changes(since, 10)
        assert changes.sequence >= since, "the sequence never goes back"
        seen |= ours(changes)
        since = changes.sequence
        if all(name in seen and _in_state(seen[name], state) for name, state in done.items()):
            return since, seen
        assert time.monotonic() < deadline, f"never reached {done}: {seen}"


def _in_state(status: DeploymentInstances, state: str) -> bool:
    if state == "environment ready":
        return status.environment_state == "ready"
    return bool(status.instances) and all(i.state == state for i in status.instances)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer not-the-credential"}], ids=["missing", "wrong"]
)
async def test_changes_needs_the_control_credential(host: HostProcess, headers: dict[str, str]) -> None:
    code, body = await host.call("GET", "/changes", headers=headers, params={"timeout": "0"})
    assert (code, body["error"]["code"]) == (401, "Unauthorized")


@pytest.mark.parametrize(
    "params",
    [{"since": "-1"}, {"since": "x"}, {"since": "0", "timeout": "soon"}, {"since": "0", "timeout": "-2"}],
    ids=["negative_since", "since_not_a_number", "timeout_not_a_number", "negative_timeout"],
)
async def test_changes_refuses_a_bad_position_or_timeout(host: HostProcess, params: dict[str, str]) -> None:
    code, body = await host.call("GET", "/changes", params=params)
    assert code == 400, body


async def test_changes_tells_every_deployment_first_then_only_what_changed_as_it_changes(
    host: HostProcess, user_files: UserFiles
) -> None:
    provider = LocalComputeProvider(host.settings)
    a = runtime(ENDPOINT, "a", user_files.code_dir, model_dir=user_files.model_dir)
    b = runtime(ENDPOINT, "b", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(a, 0)
    await host.put(b, 0)
    since, seen = await follow_changes(provider, 0, {"a": "environment ready", "b": "environment ready"})
    assert set(seen) == {"a", "b"}

    quiet = await provider.changes(since, 0.3)  # nothing of ours changes: none at the timeout
    assert ours(quiet) == {} and quiet.sequence >= since

    await host.put(a, 1)  # only a changes
    since, seen = await follow_changes(provider, since, {"a": "ready"})
    assert "b" not in seen
    (instance,) = seen["a"].instances

    poll = asyncio.create_task(follow_changes(provider, since, {"a": "failed"}))
    await asyncio.sleep(0.2)  # the poll is waiting on the host
    os.killpg(instance.pid or 0, signal.SIGKILL)
    _, seen = await poll
    assert seen["a"].instances[0].exit_code == -signal.SIGKILL
    assert "b" not in seen

    beyond = await provider.changes(10**9, 30)  # a host that lost its state answers at once
    assert {"a", "b"} <= set(ours(beyond)) and beyond.sequence < 10**9

    now = await provider.get_instances(GetInstancesInput(endpoint=ENDPOINT, deployment="a"))
    assert now == seen["a"] or now.version > seen["a"].version
    await host.delete(ENDPOINT, "a")
    await host.delete(ENDPOINT, "b")
    with pytest.raises(ApplicationError) as unknown:
        await provider.get_instances(GetInstancesInput(endpoint=ENDPOINT, deployment="a"))
    assert unknown.value.type == "UnknownDeployment"
