"""Desired deployments in, running azmlinfsrv processes out.

Each deployment holds its desired runtime and instance count; `_step` moves its
instances one move closer (never blocking: processes are started at once, stopped
in the background, environments built in the background) and is run on every PUT
and on every supervisor tick (about once a second, sooner when something changed).

An instance is *current* when it runs the deployment's spec_hash in its environment
(so a runtime patch, which changes the environment, replaces instances too). A new
spec replaces the others in one of two ways:

- `max_surge` 0: every new instance starts at once; the old ones leave when as many
  new ones are ready as were asked for.
- `max_surge` N: rolling. At most `instance_count + N` instances run (draining ones
  included); an old ready instance leaves only while the ready ones, without it,
  still number `instance_count`. A current instance that failed halts the rollout
  where it is: the old ones keep serving until a PUT replaces the failed one or
  puts the old spec back (which converges the same way, rolling).

A ready instance that leaves (replaced, scaled in) is first `draining` for
`drain_seconds`, so the caller can take it out of the route table before it stops.

Every running instance is probed as Azure (Kubernetes) probes a container, with the
deployment's `readiness_probe` and `liveness_probe`, each on its own schedule: no probe
before `initial_delay` after the process started, then one every `period`, each given
`timeout` seconds (decisions/probes.py counts). Readiness: `success_threshold` passes in a
row make a starting (or unready) instance ready; `failure_threshold` failures in a row make a
ready one `unready` (out of the route table, not replaced); an instance never ready within
initial_delay + period x failure_threshold has failed to start. Liveness, which runs from
initial_delay whether the instance is ready or not: `failure_threshold` failures in a row
mark it failed, as does its process exiting (seen within a tick). A failed
instance is not restarted here: it stays failed (exit code, log tail) until a PUT of
the deployment, which starts a replacement (`replaces`, `restarts` + 1); the failed
one stays listed until its replacement is ready or has failed as well. Deciding when
to replace, and backing off in a crash loop, is the workflows' job.

Every change of a deployment's instance states (or its environment's) gives it a new
`version` from one host-wide counter, written to disk before anyone can see it, so
versions only grow across host restarts; `wait` long-polls one deployment's version, and
`changes` the counter itself: every deployment changed since a point, for a watcher that
serves them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
import structlog

from config.host_api import (
    DeploymentInstances,
    DeploymentRuntime,
    EnsureInstancesRequest,
    InstanceChanges,
    ProbeSpec,
)
from config.settings import Settings
from decisions.probes import ProbeCount, count_probe, next_probe_at, startup_budget_seconds
from decisions.rolling_update import DOWN, RUNNING, OldInstance, instances_to_start, old_instances_to_retire
from host.environments import Environments, EnvironmentStatus, environment_key
from host.errors import HostError, not_found
from host.instances import REQUEST_ID_TAG, Instance, host_sandbox, probe_once, spawn
from host.processes import (
    ProcessHandle,
    is_alive,
    lost_its_port,
    port_is_free,
    records_with,
    seconds_since_start,
    tail_lines,
)
from host.state import (
    DeploymentRecord,
    HostState,
    InstanceRecord,
    ProcessRecord,
    load_state,
    save_state,
)

log = structlog.get_logger("host.supervisor")

TICK_SECONDS = 1.0
MAX_PORT = 65535
PORT_RACES_RETRIED = 3  # a starting instance whose port was taken under it gets a new one, this often
DEFAULT_DRAIN_SECONDS = 2.0
# Not serving and never coming back by themselves.
# Holding a process that the probes watch.
_PROBED = ("starting", "ready", "unready")
# Which instances go first when a deployment shrinks: broken before booting before serving.
_SHED_ORDER = {"failed": 0, "stopped": 0, "starting": 1, "unready": 1, "ready": 2}


@dataclass
class Deployment:
    runtime: DeploymentRuntime
    instance_count: int
    env_key: str
    max_surge: int = 0
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    version: int = 0
    instances: list[Instance] = field(default_factory=list)
    environment: EnvironmentStatus | None = None
    stopping: set[asyncio.Task[None]] = field(default_factory=set)
    # What the version was last bumped for: environment state and (id, state) of each instance.
    signature: tuple[object, ...] | None = None
    # Set (and replaced) on every version bump; long polls wait on it.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return self.runtime.endpoint

    @property
    def name(self) -> str:
        return self.runtime.deployment

    def is_current(self, instance: Instance) -> bool:
        """Runs the desired spec in the desired environment (records from before runtime
        patches carry no environment key and count as current)."""
        return instance.spec_hash == self.runtime.spec_hash and instance.env_key in (None, self.env_key)


@dataclass
class _Stopping:
    process: ProcessHandle
    port: int
    task: asyncio.Task[None]


class Supervisor:
    """Owns every deployment's instances on this machine and the state file that records them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._state_path = settings.host_dir / "state.json"
        self._logs_root = settings.host_dir / "logs"
        self._envs = Environments(settings.host_dir / "envs", allow_pip_options=settings.allow_pip_options)
        self._sandbox = host_sandbox(settings)
        self._deployments: dict[tuple[str, str], Deployment] = {}
        self._stopping: dict[int, _Stopping] = {}
        self._wake = asyncio.Event()
        self._dirty = False
        self._sequence = 0
        # Set (and replaced) on every version bump of any deployment; `changes` waits on it.
        self._any_changed = asyncio.Event()
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the state file: adopt live instances, start again those whose process is gone."""
        # A fresh connection per probe: a pooled one to a port whose instance was replaced
        # would fail a healthy instance's probe.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        state = load_state(self._state_path)
        self._sequence = state.sequence
        for proc in state.stopping:
            handle = ProcessHandle(proc.pid, proc.create_time)
            if is_alive(proc.pid, proc.create_time):
                self._stop_in_background(handle, port=0)
        adopted = restarted = 0
        for record in state.deployments:
            dep = Deployment(
                runtime=record.runtime,
                instance_count=record.instance_count,
                env_key=environment_key(record.runtime.environment),
                max_surge=record.max_surge,
                drain_seconds=record.drain_seconds,
                version=record.version,
            )
            self._sequence = max(self._sequence, dep.version)
            self._deployments[(dep.endpoint, dep.name)] = dep
            for rec in record.instances:
                instance = self._restore(dep, rec)
                if instance is None:
                    continue
                dep.instances.append(instance)
                if instance.process is not None:
                    adopted += 1
                    log.info(
                        "instance.adopted",
                        endpoint=dep.endpoint,
                        deployment=dep.name,
                        instance=instance.id,
                        pid=instance.pid,
                        port=instance.port,
                        state=instance.state,
                        restarts=instance.restarts,
                    )
                    if instance.state in _PROBED:
                        self._watch(dep, instance)
                elif instance.state == "starting":
                    restarted += 1
        self._dirty = True
        # Each deployment's first step bumps its version past anything handed out before.
        for dep in list(self._deployments.values()):
            self._step(dep, explicit=False)
        self._save_if_dirty()
        self._loop_task = asyncio.create_task(self._supervise(), name="host-supervisor")
        self.ready.set()
        log.info(
            "host.state_loaded",
            deployments=len(self._deployments),
            adopted=adopted,
            restarting=restarted,
            version=self._sequence,
        )

    def release_waiters(self) -> None:
        """Answer every long poll now (the host is stopping) and any later one at once."""
        self._closing = True
        for dep in self._deployments.values():
            dep.changed.set()
        self._any_changed.set()

    async def close(self) -> None:
        """Stop every instance process but keep the desired state, so the next start brings
        them back on the same ports."""
        self.release_waiters()
        if not self.ready.is_set():  # never started (e.g. the API port was taken): nothing ran
            if self._session is not None:
                await self._session.close()
            return
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        probes = [i.probe for d in self._deployments.values() for i in d.instances if i.probe]
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await self._envs.close()
        stops = []
        for dep in self._deployments.values():
            for instance in list(dep.instances):
                if instance.process is not None:
                    stops.append(self._stop_for_shutdown(dep, instance))
        await asyncio.gather(*stops)
        await asyncio.gather(*(s.task for s in self._stopping.values()), return_exceptions=True)
        self._dirty = True
        self._save_if_dirty()
        if self._session is not None:
            await self._session.close()
        log.info("host.instances_stopped", instances=len(stops))

    async def _stop_for_shutdown(self, dep: Deployment, instance: Instance) -> None:
        process = instance.process
        assert process is not None
        await process.stop()
        instance.process = None
        if instance.state == "draining":
            dep.instances.remove(instance)  # it was leaving: not started again next time
        elif instance.state != "failed":
            instance.state = "stopped"
        log.info(
            "instance.stopped",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            reason="host stopping",
        )

    def _restore(self, dep: Deployment, rec: InstanceRecord) -> Instance | None:
        instance = Instance(
            id=rec.id,
            port=rec.port,
            spec_hash=rec.spec_hash,
            log_path=self._log_path(dep, rec.id),
            state=rec.state,
            exit_code=rec.exit_code,
            error=rec.error,
            env_key=rec.env_key,
            restarts=rec.restarts,
            replaces=rec.replaces,
            drain_until=rec.drain_until,
        )
        if rec.state == "failed":
            return instance
        if rec.pid and rec.create_time is not None and is_alive(rec.pid, rec.create_time):
            instance.process = ProcessHandle(rec.pid, rec.create_time)
            # Its probes' initial delay counts from when the process really started.
            age = seconds_since_start(rec.create_time)
            instance.started_at = time.monotonic() - (age or 0.0)
            # A ready (or unready) instance keeps its state and its probes go on, a starting one
            # is probed for readiness again, a draining one finishes its drain.
            if rec.state == "draining":
                instance.drain_until = rec.drain_until or time.time()
            elif rec.state not in ("ready", "unready"):
                instance.state = "starting"
            return instance
        if rec.state == "draining" or not dep.is_current(instance):
            return None  # it was leaving anyway: not started again
        # Gone: started again on the same port by the next step (pid None, state starting).
        instance.state = "starting"
        return instance

    # ---- API operations ----------------------------------------------------------------

    def ensure(self, request: EnsureInstancesRequest) -> DeploymentInstances:
        runtime = request.runtime
        key = (runtime.endpoint, runtime.deployment)
        env_key = environment_key(runtime.environment)
        dep = self._deployments.get(key)
        if dep is None:
            dep = Deployment(runtime=runtime, instance_count=request.instance_count, env_key=env_key)
            self._deployments[key] = dep
        dep.runtime, dep.instance_count, dep.env_key = runtime, request.instance_count, env_key
        dep.max_surge, dep.drain_seconds = request.max_surge, request.drain_seconds
        log.info(
            "deployment.ensure",
            endpoint=runtime.endpoint,
            deployment=runtime.deployment,
            spec_hash=runtime.spec_hash,
            env=env_key,
            patch=runtime.environment.patch,
            instance_count=request.instance_count,
            max_surge=request.max_surge,
            drain_seconds=request.drain_seconds,
        )
        self._dirty = True
        self._step(dep, explicit=True)
        self._save_if_dirty()
        return self._view(dep)

    def get(self, endpoint: str, deployment: str) -> DeploymentInstances:
        return self._view(self._require(endpoint, deployment))

    async def wait(
        self, endpoint: str, deployment: str, *, after: int, timeout: float
    ) -> DeploymentInstances:
        """The deployment once its version passes `after`, or as it is after `timeout` seconds.

        404 if it is (or gets) deleted meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            dep = self._require(endpoint, deployment)
            view = self._view(dep)
            remaining = deadline - loop.time()
            if view.version > after or remaining <= 0 or self._closing:
                return view
            with contextlib.suppress(TimeoutError):
                # This await yields until the next version bump (or delete) or the deadline.
                await asyncio.wait_for(dep.changed.wait(), remaining)

    async def changes(self, *, since: int, timeout: float) -> InstanceChanges:
        """Every deployment whose version passed `since`, once there is one, or none after
        `timeout` seconds; with the sequence to ask from next. A `since` beyond this host's
        sequence (its state was lost) answers every deployment at once. 503 while the host
        stops: an empty answer at once would have the watcher ask again and again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._closing:
                raise HostError(503, "HostStopping", "the host is stopping; ask again once it is back")
            deployments = list(self._deployments.values())
            for dep in deployments:
                self._changed(dep)  # a view would bump it: do so before reading the sequence
            sequence = self._sequence
            reset = since > sequence
            changed = [self._view(dep) for dep in deployments if reset or dep.version > since]
            remaining = deadline - loop.time()
            if changed or remaining <= 0:
                return InstanceChanges(sequence=sequence, deployments=changed)
            with contextlib.suppress(TimeoutError):
                # This await yields until any deployment's next version bump or the deadline.
                await asyncio.wait_for(self._any_changed.wait(), remaining)

    def list_deployments(self) -> list[DeploymentInstances]:
        return [self._view(dep) for dep in self._deployments.values()]

    async def delete(self, endpoint: str, deployment: str) -> bool:
        """Stop all instances and forget the deployment; returns once the processes are gone."""
        dep = self._deployments.pop((endpoint, deployment), None)
        if dep is None:
            return False
        dep.changed.set()  # long polls on it answer 404
        for instance in list(dep.instances):
            self._discard(dep, instance, reason="deployment deleted")
        self._dirty = True
        self._save_if_dirty()
        # Includes instances replaced or scaled away earlier and still shutting down.
        await asyncio.gather(*dep.stopping, return_exceptions=True)
        self._save_if_dirty()
        shutil.rmtree(self._home(dep), ignore_errors=True)
        log.info("deployment.deleted", endpoint=endpoint, deployment=deployment)
        return True

    def request_logs(self, endpoint: str, deployment: str, request_id: str) -> str:
        """The records every instance of the deployment, current or gone, logged while serving
        ``request_id`` (tagged by host/loopback_server.py), under each instance's heading."""
        dep = self._require(endpoint, deployment)
        needle = f"{REQUEST_ID_TAG}{request_id} "
        parts = []
        for path in sorted((self._logs_root / dep.endpoint / dep.name).glob("*.log")):
            found = records_with(path, needle)
            if found:
                parts.append("\n".join([f"=== instance {path.stem} ===", *found]))
        return "\n\n".join(parts) + ("\n" if parts else "")

    def logs(self, endpoint: str, deployment: str, *, lines: int, instance: str | None) -> str:
        dep = self._require(endpoint, deployment)
        if instance is not None:
            known = {i.id for i in dep.instances}
            if instance not in known and not self._log_path(dep, instance).is_file():
                raise not_found(
                    f"instance {instance!r} of {endpoint}/{deployment} not found",
                    code="InstanceNotFound",
                )
            ids = [instance]
        else:
            ids = [i.id for i in dep.instances]
        parts = []
        for instance_id in ids:
            body = tail_lines(self._log_path(dep, instance_id), lines)
            parts.append("\n".join([f"=== instance {instance_id} ===", *body]))
        return "\n\n".join(parts) + ("\n" if parts else "")

    # ---- reconcile ---------------------------------------------------------------------

    def _step(self, dep: Deployment, *, explicit: bool) -> None:
        """One move toward `instance_count` current instances; never blocks.

        `explicit` (a PUT) also replaces failed instances and retries a failed environment.
        """
        env = self._envs.ensure(dep.runtime.environment, retry_failed=explicit, on_done=self.wake)
        dep.environment = env
        self._end_drains(dep)
        staying = [i for i in dep.instances if i.state != "draining"]
        old = [i for i in staying if not dep.is_current(i)]
        superseded = {i.replaces for i in staying if i.replaces}
        # The places instance_count counts: a failed instance whose replacement is under way
        # is only listed (for the caller to see), the replacement holds its place.
        slots = [i for i in staying if dep.is_current(i) and not (i.state in DOWN and i.id in superseded)]

        if env.state == "failed":  # nothing can start: what waited for the environment goes
            for instance in [i for i in slots if i.process is None and i.state == "starting"]:
                self._discard(dep, instance, reason="environment failed")
                slots.remove(instance)

        excess = len(slots) - dep.instance_count
        if excess > 0:
            ranked = sorted(enumerate(slots), key=lambda p: (_SHED_ORDER[p[1].state], -p[0]))
            for _, instance in ranked[:excess]:
                self._retire(dep, instance, reason="scale-in")
                slots.remove(instance)

        if env.state != "failed":
            if explicit:
                for n, instance in enumerate(slots):
                    if instance.state in DOWN:
                        slots[n] = self._add_instance(dep, replacing=instance)
            missing = instances_to_start(
                wanted=dep.instance_count,
                holding_places=len(slots),
                running=sum(1 for i in dep.instances if i.state in RUNNING),
                max_surge=dep.max_surge,
            )
            for _ in range(missing):
                slots.append(self._add_instance(dep))

        if env.state == "ready":
            for instance in slots:
                if instance.process is None and instance.state == "starting":
                    self._launch(dep, instance, env)

        self._replace_old(dep, old, slots)
        self._changed(dep)

    def _replace_old(self, dep: Deployment, old: list[Instance], slots: list[Instance]) -> None:
        """Let old-spec instances go as far as the current ones can take over
        (decisions/rolling_update.py decides which)."""
        ready = sum(1 for i in slots if i.state == "ready")
        plan = old_instances_to_retire(
            wanted=dep.instance_count,
            ready_current=ready,
            old=[OldInstance(i.id, i.state, i.process is not None) for i in old],
            max_surge=dep.max_surge,
            current_failed=any(i.state in DOWN for i in slots),
        )
        if plan.halted:
            log.debug("rolling_update.halted", endpoint=dep.endpoint, deployment=dep.name)
        by_id = {i.id: i for i in old}
        for instance_id in plan.leave:
            instance = by_id[instance_id]
            serving = instance.state == "ready"
            self._retire(dep, instance, reason="replaced")
            if serving and dep.max_surge > 0:
                log.info(
                    "rolling_update.step",
                    endpoint=dep.endpoint,
                    deployment=dep.name,
                    retired=instance.id,
                    ready_current=ready,
                    old_left=sum(1 for i in dep.instances if not dep.is_current(i) and i.state == "ready"),
                )

    def _retire(self, dep: Deployment, instance: Instance, *, reason: str) -> None:
        """A ready instance drains first (the caller takes it out of its routes); others go."""
        if instance.state != "ready" or instance.process is None or dep.drain_seconds <= 0:
            self._discard(dep, instance, reason=reason)
            return
        instance.state = "draining"
        instance.drain_until = time.time() + dep.drain_seconds
        if instance.probe is not None:
            instance.probe.cancel()
            instance.probe = None
        self._dirty = True
        # A little late rather than early: the drain is measured on the wall clock.
        asyncio.get_running_loop().call_later(dep.drain_seconds + 0.05, self.wake)
        log.info(
            "instance.draining",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            seconds=dep.drain_seconds,
            reason=reason,
        )

    def _end_drains(self, dep: Deployment) -> None:
        now = time.time()
        for instance in [i for i in dep.instances if i.state == "draining"]:
            process = instance.process
            if process is None or process.poll()[0]:
                self._discard(dep, instance, reason="exited while draining")
            elif instance.drain_until is None or now >= instance.drain_until:
                self._discard(dep, instance, reason="drained")

    def _add_instance(self, dep: Deployment, *, replacing: Instance | None = None) -> Instance:
        taken = {i.id for i in dep.instances}
        while (instance_id := f"{dep.name}-{secrets.token_hex(3)}") in taken:
            pass
        instance = Instance(
            id=instance_id,
            port=self._allocate_port(),
            spec_hash=dep.runtime.spec_hash,
            log_path=self._log_path(dep, instance_id),
            env_key=dep.env_key,
        )
        if replacing is not None:
            instance.restarts, instance.replaces = replacing.restarts + 1, replacing.id
            log.info(
                "instance.replacing",
                endpoint=dep.endpoint,
                deployment=dep.name,
                instance=instance.id,
                replaces=replacing.id,
                restarts=instance.restarts,
            )
        dep.instances.append(instance)
        self._dirty = True
        return instance

    def _launch(self, dep: Deployment, instance: Instance, env: EnvironmentStatus) -> None:
        if not self._port_usable(instance.port):
            self._move_to_new_port(dep, instance, "instance.port_taken")
        try:
            key = self._settings.app_insights_key
            instance.process = spawn(
                instance,
                dep.runtime,
                env,
                home=self._home(dep),
                sandbox=self._sandbox,
                app_insights_key=key.get_secret_value() if key else None,
            )
            instance.started_at = time.monotonic()
        except OSError as exc:
            instance.state, instance.error = "failed", f"cannot start azmlinfsrv: {exc}"
            log.error("instance.failed", instance=instance.id, error=instance.error)
            self._dirty = True
            return
        instance.state, instance.exit_code, instance.error = "starting", None, None
        self._dirty = True
        log.info(
            "instance.started",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            pid=instance.pid,
            spec_hash=instance.spec_hash,
            restarts=instance.restarts,
        )
        self._watch(dep, instance)

    # ---- probes ------------------------------------------------------------------------

    def _watch(self, dep: Deployment, instance: Instance) -> None:
        instance.probe = asyncio.create_task(self._probe(dep, instance), name=f"probe-{instance.id}")

    async def _probe(self, dep: Deployment, instance: Instance) -> None:
        """Readiness and liveness side by side, each on its own schedule, while it runs."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._readiness(dep, instance))
            group.create_task(self._liveness(dep, instance))

    async def _probes(
        self, dep: Deployment, instance: Instance, kind: Literal["readiness", "liveness"]
    ) -> AsyncIterator[tuple[ProbeSpec, str | None]]:
        """Each probe of `kind` on its schedule, with its error (None: it passed), for as long
        as the instance is probed at all."""
        assert self._session is not None
        previous: float | None = None
        while True:
            probe = dep.runtime.readiness_probe if kind == "readiness" else dep.runtime.liveness_probe
            await self._sleep_until(next_probe_at(probe, started=self._started(instance), previous=previous))
            if not self._probed(dep, instance):
                return
            previous = time.monotonic()
            error = await probe_once(instance, self._session, probe)
            if not self._probed(dep, instance):
                return  # this await yielded: it may have died, drained or gone meanwhile
            yield probe, error

    async def _readiness(self, dep: Deployment, instance: Instance) -> None:
        """Starting -> ready (or failed to start); ready <-> unready, as the counts say.

        Polls every `period` from `initial_delay`, also before the first success: Azure probes
        no sooner, and a faster poll would bunch `success_threshold`'s passes into a moment.
        azmlinfsrv holds `GET /` until init() is done, so a probe in flight (up to `timeout`)
        answers as soon as it is. Small `initial_delay`/`period` make instances serve sooner.
        """
        count = ProbeCount.readiness(ready=instance.state == "ready")  # adopted ones keep theirs
        async for probe, error in self._probes(dep, instance, "readiness"):
            count = count_probe(probe, count, ok=error is None)
            if instance.state == "starting":
                if count.passing:
                    self._became_ready(dep, instance, count)
                elif time.monotonic() - self._started(instance) >= startup_budget_seconds(probe):
                    budget = startup_budget_seconds(probe)
                    self._mark_failed(dep, instance, f"not ready after {budget:.0f} s: {error}")
                    return
            elif instance.state == "ready" and not count.passing:
                self._became_unready(dep, instance, count, probe.failure_threshold, error)
            elif instance.state == "unready" and count.passing:
                self._became_ready(dep, instance, count)

    async def _liveness(self, dep: Deployment, instance: Instance) -> None:
        """From `initial_delay` on, ready or not: `failure_threshold` failures in a row fail it."""
        count = ProbeCount.liveness()
        async for probe, error in self._probes(dep, instance, "liveness"):
            failures = count.failures
            count = count_probe(probe, count, ok=error is None)
            if error is None:
                if failures:
                    log.info("instance.liveness_recovered", instance=instance.id, failures=failures)
                continue
            log.warning(
                "instance.liveness_failed",
                endpoint=dep.endpoint,
                deployment=dep.name,
                instance=instance.id,
                state=instance.state,
                failures=count.failures,
                failure_threshold=probe.failure_threshold,
                error=error,
            )
            if not count.passing:
                reason = f"liveness probe failed {count.failures} times in a row: {error}"
                self._mark_failed(dep, instance, reason)
                return

    def _became_ready(self, dep: Deployment, instance: Instance, count: ProbeCount) -> None:
        again = instance.state == "unready"
        instance.state = "ready"
        log.info(
            "instance.ready_again" if again else "instance.ready",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            successes=count.successes,
            restarts=instance.restarts,
        )
        if not again:
            self._drop_predecessor(dep, instance)
        self._dirty = True
        self._changed(dep)
        self.wake()

    def _became_unready(
        self, dep: Deployment, instance: Instance, count: ProbeCount, threshold: int, error: str | None
    ) -> None:
        instance.state = "unready"
        log.warning(
            "instance.unready",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            failures=count.failures,
            failure_threshold=threshold,
            error=error,
        )
        self._dirty = True
        self._changed(dep)
        self.wake()

    @staticmethod
    def _started(instance: Instance) -> float:
        return instance.started_at if instance.started_at is not None else time.monotonic()

    @staticmethod
    async def _sleep_until(moment: float) -> None:
        delay = moment - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    @staticmethod
    def _probed(dep: Deployment, instance: Instance) -> bool:
        return instance in dep.instances and instance.state in _PROBED and instance.process is not None

    # ---- failure and removal -----------------------------------------------------------

    def _mark_failed(self, dep: Deployment, instance: Instance, reason: str | None) -> None:
        """Failed, with exit code and log tail; a process still running is stopped."""
        if instance.state == "failed" or instance not in dep.instances:
            return
        code = None
        process, instance.process = instance.process, None
        if process is not None:
            exited, code = process.poll()
            if exited:
                # A killed gunicorn master leaves its worker finishing the request in hand. Let
                # it, for the drain time, while the workflow takes the instance out of the route
                # table; then nothing of the group may linger.
                asyncio.get_running_loop().call_later(dep.drain_seconds, process.kill_leftovers)
            else:  # hung or unready: stopped in the background, its port held meanwhile
                self._stop_tracked(dep, process, instance.port)
        tail = instance.failure_tail()
        # The exited process is let go: its pid may be reused, never signal it again.
        instance.state, instance.exit_code = "failed", code
        instance.error = f"{reason}\n{tail}" if reason else tail
        log.warning(
            "instance.failed",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            exit_code=code,
            restarts=instance.restarts,
            reason=reason or "process exited",
        )
        # Its predecessor's story is told by this one now (restarts counts on).
        self._drop_predecessor(dep, instance)
        self._dirty = True
        self._changed(dep)
        self.wake()

    def _drop_predecessor(self, dep: Deployment, instance: Instance) -> None:
        """The failed instance this one replaced has been listed long enough."""
        for other in list(dep.instances):
            if other.id == instance.replaces and other.state in DOWN:
                self._discard(dep, other, reason=f"replaced by {instance.id}")

    def _discard(self, dep: Deployment, instance: Instance, *, reason: str) -> None:
        """Drop an instance from the deployment; its process is stopped in the background."""
        if instance not in dep.instances:
            return
        dep.instances.remove(instance)
        if instance.probe is not None:
            instance.probe.cancel()
        self._dirty = True
        process, instance.process = instance.process, None
        log.info(
            "instance.stopping",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            pid=process.pid if process else None,
            reason=reason,
        )
        if process is not None:
            self._stop_tracked(dep, process, instance.port)
        if instance.replaces:  # a replacement going away takes its failed predecessor along
            self._drop_predecessor(dep, instance)

    def _stop_tracked(self, dep: Deployment, process: ProcessHandle, port: int) -> None:
        task = self._stop_in_background(process, port=port)
        dep.stopping.add(task)
        task.add_done_callback(dep.stopping.discard)

    def _stop_in_background(self, process: ProcessHandle, *, port: int) -> asyncio.Task[None]:
        async def stop() -> None:
            try:
                await process.stop()
            finally:
                self._stopping.pop(process.pid, None)
                self._dirty = True
                self.wake()

        task = asyncio.create_task(stop(), name=f"stop-{process.pid}")
        self._stopping[process.pid] = _Stopping(process=process, port=port, task=task)
        return task

    # ---- the loop ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_SECONDS)
            self._wake.clear()
            try:
                self._tick()
            except HostError as exc:  # e.g. no free port: try again next tick
                log.error("supervisor.tick_failed", code=exc.code, error=exc.message)
            except OSError as exc:  # disk full or the like: keep supervising what runs
                log.error("supervisor.tick_failed", error=str(exc))

    def _tick(self) -> None:
        for dep in list(self._deployments.values()):
            for instance in list(dep.instances):
                if instance.state in _PROBED and instance.process is not None:
                    exited, _ = instance.process.poll()
                    if exited and not self._relaunched_on_new_port(dep, instance):
                        self._mark_failed(dep, instance, None)
            self._step(dep, explicit=False)
        self._save_if_dirty()

    def _relaunched_on_new_port(self, dep: Deployment, instance: Instance) -> bool:
        """A starting instance whose port another process bound between our check and its own
        bind did nothing wrong: it starts again on a new port (a few times), not counted as a crash."""
        if instance.state != "starting" or not dep.is_current(instance):
            return False
        if instance.port_races >= PORT_RACES_RETRIED:
            return False
        if not lost_its_port(tail_lines(instance.log_path, 40), instance.port):
            return False
        if instance.probe is not None:
            instance.probe.cancel()
        instance.process, instance.port_races = None, instance.port_races + 1
        self._move_to_new_port(dep, instance, "instance.port_lost")
        self._dirty = True
        return True  # launched again by this tick's step

    def _move_to_new_port(self, dep: Deployment, instance: Instance, event: str) -> None:
        old_port, instance.port = instance.port, self._allocate_port()
        log.warning(
            event,
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=old_port,
            new_port=instance.port,
        )

    def wake(self) -> None:
        self._wake.set()

    # ---- helpers -----------------------------------------------------------------------

    def _changed(self, dep: Deployment) -> None:
        """Bump the version if an instance's (or the environment's) state moved since the last
        bump; persisted before it is returned, so a restarted host never hands it out again."""
        env = dep.environment
        signature = (env.state if env else "building", tuple((i.id, i.state) for i in dep.instances))
        if signature == dep.signature:
            return
        dep.signature = signature
        self._sequence += 1
        dep.version = self._sequence
        self._dirty = True
        self._save_if_dirty()
        event, dep.changed = dep.changed, asyncio.Event()
        event.set()
        everyone, self._any_changed = self._any_changed, asyncio.Event()
        everyone.set()

    def _require(self, endpoint: str, deployment: str) -> Deployment:
        dep = self._deployments.get((endpoint, deployment))
        if dep is None:
            raise not_found(
                f"deployment {endpoint}/{deployment} is not on this host",
                code="DeploymentNotFound",
            )
        return dep

    def _view(self, dep: Deployment) -> DeploymentInstances:
        self._changed(dep)
        env = dep.environment
        return DeploymentInstances(
            endpoint=dep.endpoint,
            deployment=dep.name,
            environment_state=env.state if env else "building",
            environment_error=env.error if env else None,
            warnings=list(env.warnings) if env else [],
            instances=[i.status() for i in dep.instances],
            version=dep.version,
        )

    def _home(self, dep: Deployment) -> Path:
        """The deployment's HOME and TMPDIR: the one place its instances may write in the state dir."""
        return self._settings.host_dir / "homes" / dep.endpoint / dep.name

    def _log_path(self, dep: Deployment, instance_id: str) -> Path:
        return self._logs_root / dep.endpoint / dep.name / f"{instance_id}.log"

    def _reserved_ports(self) -> set[int]:
        s = self._settings
        ports = {i.port for d in self._deployments.values() for i in d.instances}
        ports |= {stopping.port for stopping in self._stopping.values()}
        ports |= {
            s.host_port,
            s.gateway_http_port,
            s.gateway_https_port,
            s.gateway_admin_port,
            s.temporal_port,
            s.temporal_ui_port,
        }
        return ports

    def _port_usable(self, port: int) -> bool:
        stopping = {s.port for s in self._stopping.values()}
        return port not in stopping and port_is_free(port)

    def _allocate_port(self) -> int:
        reserved = self._reserved_ports()
        for port in range(self._settings.instance_port_start, MAX_PORT + 1):
            if port not in reserved and port_is_free(port):
                return port
        raise HostError(503, "NoFreePort", f"no free port from {self._settings.instance_port_start} upward")

    def _save_if_dirty(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        state = HostState(
            sequence=self._sequence,
            deployments=[
                DeploymentRecord(
                    runtime=dep.runtime,
                    instance_count=dep.instance_count,
                    max_surge=dep.max_surge,
                    drain_seconds=dep.drain_seconds,
                    version=dep.version,
                    instances=[i.record() for i in dep.instances],
                )
                for dep in self._deployments.values()
            ],
            stopping=[
                ProcessRecord(pid=s.process.pid, create_time=s.process.start_time)
                for s in self._stopping.values()
                if s.process.start_time is not None
            ],
        )
        save_state(self._state_path, state)
