"""RolloutWorkflow on Temporal's time-skipping test server: holds of hours pass in an instant.

The workflow is the real one. Its activities are recorders registered under the real names
(the traffic it asks for, the deployments it retires, a scripted gateway window), and the
endpoint it releases at the end is a small recording workflow under the EndpointWorkflow
name: the release signal is the only call a rollout makes to its endpoint. The weights a
real endpoint turns into routes are tested against the real EndpointWorkflow on a dev server
in test_rollout_workflow.py.

Every steering signal is sent from every phase a rollout can be in, and each case says what
a user then sees: the phase, and the traffic changes that followed. One test, a hung traffic
change, runs on the real dev server: it reads why an attempt was retried, which the test
server does not record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity, workflow
from temporalio.api.enums.v1 import TimeoutType
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.contract.activities import QueryWindowInput, RetireDeploymentInput
from config.contract.ids import endpoint_id, rollout_id
from config.contract.names import ENDPOINT_WORKFLOW, Activity, EndpointSignal
from config.contract.rollout import RolloutState
from config.contract.workflows import EndRolloutInput, RolloutWorkflowInput, SetRolloutTrafficInput
from config.rollout import RolloutSpec
from config.stats import WindowStats
from decisions.rollout import expand_plan
from tests.conftest import time_skipping_server
from tests.workflows.recorders import scripted_window
from workflows.rollout import RolloutWorkflow

HOURS = timedelta(hours=5)


@workflow.defn(name=ENDPOINT_WORKFLOW)
class ReleaseRecorder:
    """Stands in for the endpoint: records the rollouts that released it."""

    def __init__(self) -> None:
        self._released: list[str] = []

    @workflow.run
    async def run(self, name: str) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=EndpointSignal.END_ROLLOUT)
    def end_rollout(self, request: EndRolloutInput) -> None:
        self._released.append(request.rollout_id)

    @workflow.query
    def released(self) -> list[str]:
        return list(self._released)


@dataclass
class Traffic:
    canary: int
    mirror: int = 0
    undo: bool = False


@dataclass
class Rig:
    env: WorkflowEnvironment
    task_queue: str
    error_rate: dict[str, float] = field(default_factory=lambda: {"blue": 0.0, "green": 0.0})
    traffic: list[Traffic] = field(default_factory=list)
    retired: list[tuple[str, str]] = field(default_factory=list)
    started: list[WorkflowHandle] = field(default_factory=list)
    hang_first_attempt_at: int | None = None  # a canary weight whose first change never returns
    attempts: list[tuple[int, int]] = field(default_factory=list)  # (canary weight, attempt)

    def activities(self) -> list[Any]:
        @activity.defn(name=Activity.SET_ROLLOUT_TRAFFIC)
        async def set_rollout_traffic(request: SetRolloutTrafficInput) -> None:
            attempt = activity.info().attempt
            self.attempts.append((request.canary_weight, attempt))
            if request.canary_weight == self.hang_first_attempt_at and attempt == 1:
                await asyncio.Event().wait()  # hung, no heartbeat: as a worker that died
            self.traffic.append(Traffic(request.canary_weight, request.mirror_share, request.undo))

        @activity.defn(name=Activity.RETIRE_DEPLOYMENT)
        async def retire_deployment(request: RetireDeploymentInput) -> None:
            self.retired.append((request.deployment, request.action))

        @activity.defn(name=Activity.QUERY_WINDOW)
        async def query_window(request: QueryWindowInput) -> WindowStats:
            return scripted_window(request, self.error_rate[request.deployment])

        return [set_rollout_traffic, retire_deployment, query_window]

    def worker(self, *, cached: bool = True) -> Worker:
        return Worker(
            self.env.client,
            task_queue=self.task_queue,
            workflows=[RolloutWorkflow, ReleaseRecorder],
            activities=self.activities(),
            # Uncached, every workflow task replays the history: no sticky queue tied to a
            # worker that is gone (the test server would wait out its timeout in real time).
            max_cached_workflows=1000 if cached else 0,
        )

    async def start(self, **spec: Any) -> Rollout:
        name = f"ep-{uuid.uuid4().hex[:8]}"
        endpoint = await self.env.client.start_workflow(
            ReleaseRecorder.run, name, id=endpoint_id(name), task_queue=self.task_queue
        )
        plan = expand_plan(RolloutSpec(**spec), endpoint=name, baseline="blue", canary="green")
        handle = await self.env.client.start_workflow(
            RolloutWorkflow.run,
            RolloutWorkflowInput(rollout_id=rollout_id(name, 1), plan=plan, search_attributes=False),
            id=rollout_id(name, 1),
            task_queue=self.task_queue,
        )
        self.started += [handle, endpoint]
        return Rollout(self, handle, endpoint)

    async def terminate_leftovers(self) -> None:
        """Paused rollouts and the endpoint stand-ins run on; the next test starts clean."""
        for handle in self.started:
            try:
                await handle.terminate("test over")
            except RPCError:
                pass  # finished already


@dataclass
class Rollout:
    rig: Rig
    handle: WorkflowHandle
    endpoint: WorkflowHandle

    async def state(self) -> RolloutState:
        status = await self.handle.query(RolloutWorkflow.status)
        assert status.state is not None
        return status.state

    async def until(self, phase: str, *, weight: int | None = None, mirror: int | None = None) -> None:
        """Real time passes here (time skipping is locked outside `result`), so holds stay put."""
        for _ in range(400):
            state = await self.state()
            if (
                state.phase == phase
                and (weight is None or state.weight == weight)
                and (mirror is None or state.mirror_share == mirror)
            ):
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"rollout never reached {phase} (weight {weight}, mirror {mirror}): {state}")

    async def released(self) -> list[str]:
        return await self.endpoint.query(ReleaseRecorder.released)


@pytest_asyncio.fixture(scope="module")
async def skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A test server of this module's own. The server skips time only while no task waits
    for a worker, so a workflow another module left running with a timer and no worker would
    stall every skip here."""
    async with time_skipping_server() as env:
        yield env


@pytest_asyncio.fixture
async def rig(skipping: WorkflowEnvironment) -> AsyncIterator[Rig]:
    rig = Rig(skipping, f"tq-{uuid.uuid4()}")
    try:
        async with rig.worker():
            yield rig
    finally:
        await rig.terminate_leftovers()


PASSING = [{"when": "error_rate <= 0.05", "window": "30s", "min_requests": 10}]
CANARY = {
    "steps": [{"weight": 10, "hold": "1h"}, {"weight": 50, "hold": "1h"}],
    "gates": PASSING,
    "check_interval": "5m",
    "after_success": {"keep_previous_for": "0s"},
}
MIRRORED = {**CANARY, "mirror": {"share": 10, "duration": "1h", "gates": PASSING}}


# ---- the plain paths -------------------------------------------------------------------------
async def test_hours_of_holds_pass_step_by_step_to_100(rig: Rig) -> None:
    rollout = await rig.start(**CANARY)
    final = await rollout.handle.result()
    assert final.phase == "Succeeded"
    assert [t.canary for t in rig.traffic] == [10, 50, 100]
    assert await rollout.released() == [rollout.handle.id]


async def test_a_canary_failing_its_gate_is_rolled_back_after_the_failure_limit(rig: Rig) -> None:
    rig.error_rate["green"] = 0.2
    rollout = await rig.start(**{**CANARY, "failure_limit": 3})
    final = await rollout.handle.result()
    assert final.phase == "RolledBack"
    assert "error_rate 0.2 > 0.05" in (final.reason or "")
    assert "(3 of 3 checks failed)" in (final.reason or "")
    assert [t.canary for t in rig.traffic] == [10, 0]


async def test_a_pause_holds_through_hours_of_skipped_time_until_resumed(rig: Rig) -> None:
    rollout = await rig.start(**CANARY)
    await rollout.until("Progressing", weight=10)
    await rollout.handle.signal(RolloutWorkflow.pause, "watching dashboards")
    await rollout.until("Paused")
    await rig.env.sleep(HOURS)
    state = await rollout.state()
    assert (state.phase, state.weight, state.pause_reason) == ("Paused", 10, "watching dashboards")
    assert [t.canary for t in rig.traffic] == [10]
    await rollout.handle.signal(RolloutWorkflow.resume)
    assert (await rollout.handle.result()).phase == "Succeeded"
    assert [t.canary for t in rig.traffic] == [10, 50, 100]


async def test_no_data_past_its_deadline_pauses_rather_than_passing(rig: Rig) -> None:
    quiet = [{"when": "error_rate <= 0.05", "min_requests": 1000, "no_data_deadline": "10m"}]
    rollout = await rig.start(**{**CANARY, "gates": quiet})
    await rollout.until("Progressing", weight=10)
    await rig.env.sleep(timedelta(minutes=11))
    await rollout.until("Paused")
    state = await rollout.state()
    assert state.pause_reason is not None and state.pause_reason.startswith("no data for 600s")
    assert [t.canary for t in rig.traffic] == [10]


async def test_a_worker_restart_mid_rollout_resumes_where_it_was(skipping: WorkflowEnvironment) -> None:
    rig = Rig(skipping, f"tq-{uuid.uuid4()}")
    async with rig.worker(cached=False):
        rollout = await rig.start(**CANARY)
        await rollout.until("Progressing", weight=10)
    # A new worker (nothing cached) picks the rollout up from its history. While no worker
    # runs, the test server cannot skip time (a workflow task waits), so only real time passes.
    await asyncio.sleep(1)
    async with rig.worker(cached=False):
        final = await rollout.handle.result()
    assert final.phase == "Succeeded"
    assert [t.canary for t in rig.traffic] == [10, 50, 100]


async def test_a_traffic_change_that_stops_heartbeating_is_retried_and_applied_once(
    temporal_dev: WorkflowEnvironment,
) -> None:
    rig = Rig(temporal_dev, f"tq-{uuid.uuid4()}", hang_first_attempt_at=50)
    quick = {**CANARY, "steps": [{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "1s"}]}
    async with rig.worker():
        rollout = await rig.start(**{**quick, "check_interval": "1s"})
        final = await rollout.handle.result()
    assert final.phase == "Succeeded"
    assert [t.canary for t in rig.traffic] == [10, 50, 100]
    assert rig.attempts == [(10, 1), (50, 1), (50, 2), (100, 1)]
    history = await rollout.handle.fetch_history()
    retried = [
        event.activity_task_started_event_attributes
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
        and event.activity_task_started_event_attributes.attempt > 1
    ]
    # The hung attempt was given up after the 10 s heartbeat timeout, not the 60 s
    # start-to-close one.
    assert [started.last_failure.timeout_failure_info.timeout_type for started in retried] == [
        TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    ]
    await rig.terminate_leftovers()


async def test_after_success_the_baseline_stays_warm_then_is_deleted(rig: Rig) -> None:
    rollout = await rig.start(**{**CANARY, "after_success": {"keep_previous_for": "2h", "then": "delete"}})
    await rollout.handle.result()
    assert rig.retired == [("blue", "delete")]


async def test_after_failure_the_canary_is_deleted_only_after_the_drain(rig: Rig) -> None:
    rollout = await rig.start(**{**CANARY, "after_failure": {"canary": "delete", "drain": "30m"}})
    await rollout.until("Progressing", weight=10)
    await rollout.handle.signal(RolloutWorkflow.rollback, "stop")
    await rollout.until("RolledBack")
    assert [t.canary for t in rig.traffic] == [10, 0]
    assert rig.retired == []  # traffic is back first; capacity waits for the drain
    await rollout.handle.result()
    assert rig.retired == [("green", "delete")]


# ---- every signal from every phase -----------------------------------------------------------
async def reach(rig: Rig, phase: str) -> Rollout:
    """A rollout sitting in `phase` (real time is locked, so every hold of an hour stays put)."""
    if phase == "Mirroring":
        rollout = await rig.start(**MIRRORED)
        await rollout.until("Mirroring", mirror=10)
    elif phase == "Progressing":
        rollout = await rig.start(**CANARY)
        await rollout.until("Progressing", weight=10)
    elif phase == "Paused":
        rollout = await rig.start(**CANARY)
        await rollout.until("Progressing", weight=10)
        await rollout.handle.signal(RolloutWorkflow.pause, "by hand")
        await rollout.until("Paused")
    elif phase == "Succeeded":  # finished, the baseline still warm for an hour
        rollout = await rig.start(
            **{
                **CANARY,
                "steps": [{"weight": 100, "hold": "0s"}],
                "after_success": {"keep_previous_for": "1h"},
            }
        )
        await rollout.until("Succeeded")
    else:  # RolledBack, the canary waiting out its drain before deletion
        rollout = await rig.start(**{**CANARY, "after_failure": {"canary": "delete", "drain": "1h"}})
        await rollout.until("Progressing", weight=10)
        await rollout.handle.signal(RolloutWorkflow.rollback, "first")
        await rollout.until("RolledBack")
    rig.traffic.clear()
    return rollout


@dataclass(frozen=True)
class Expect:
    phase: str
    traffic: list[tuple[int, int]]  # (canary %, mirror %) asked for after the signal
    finishes: bool = True  # else: still in `phase` after hours of skipped time
    undone: bool = False


FORWARD_FROM_MIRROR = Expect("Succeeded", [(0, 0), (10, 0), (50, 0), (100, 0)])
FORWARD_FROM_10 = Expect("Succeeded", [(50, 0), (100, 0)])
STAYS_PAUSED = Expect("Paused", [], finishes=False)
STAYS_SUCCEEDED = Expect("Succeeded", [])
STAYS_ROLLED_BACK = Expect("RolledBack", [])

CASES: dict[tuple[str, str], Expect] = {
    ("Mirroring", "pause"): Expect("Paused", [], finishes=False),
    ("Mirroring", "resume"): FORWARD_FROM_MIRROR,
    ("Mirroring", "promote"): Expect("Succeeded", [(0, 0), (100, 0)]),
    ("Mirroring", "rollback"): Expect("RolledBack", [(0, 0)]),
    ("Mirroring", "undo"): FORWARD_FROM_MIRROR,
    ("Progressing", "pause"): STAYS_PAUSED,
    ("Progressing", "resume"): FORWARD_FROM_10,
    ("Progressing", "promote"): Expect("Succeeded", [(100, 0)]),
    ("Progressing", "rollback"): Expect("RolledBack", [(0, 0)]),
    ("Progressing", "undo"): FORWARD_FROM_10,
    ("Paused", "pause"): STAYS_PAUSED,
    ("Paused", "resume"): FORWARD_FROM_10,
    ("Paused", "promote"): Expect("Succeeded", [(100, 0)]),
    ("Paused", "rollback"): Expect("RolledBack", [(0, 0)]),
    ("Paused", "undo"): STAYS_PAUSED,
    ("Succeeded", "pause"): STAYS_SUCCEEDED,
    ("Succeeded", "resume"): STAYS_SUCCEEDED,
    ("Succeeded", "promote"): STAYS_SUCCEEDED,
    ("Succeeded", "rollback"): STAYS_SUCCEEDED,
    ("Succeeded", "undo"): Expect("RolledBack", [(0, 0)], undone=True),
    ("RolledBack", "pause"): STAYS_ROLLED_BACK,
    ("RolledBack", "resume"): STAYS_ROLLED_BACK,
    ("RolledBack", "promote"): STAYS_ROLLED_BACK,
    ("RolledBack", "rollback"): STAYS_ROLLED_BACK,
    ("RolledBack", "undo"): STAYS_ROLLED_BACK,
}


@pytest.mark.parametrize(("phase", "signal"), list(CASES), ids=[f"{s}-from-{p}" for p, s in CASES])
async def test_a_signal_from_each_phase_does_what_it_says(rig: Rig, phase: str, signal: str) -> None:
    expect = CASES[(phase, signal)]
    rollout = await reach(rig, phase)
    await rollout.handle.signal(signal, *(["by hand"] if signal in ("pause", "promote", "rollback") else []))
    if expect.finishes:
        final = await rollout.handle.result()
    else:
        await rig.env.sleep(HOURS)
        final = await rollout.state()
    assert final.phase == expect.phase
    assert [(t.canary, t.mirror) for t in rig.traffic] == expect.traffic
    assert any(t.undo for t in rig.traffic) == expect.undone
