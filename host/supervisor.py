"""Desired deployments in, running azmlinfsrv processes out.

Each deployment holds its desired runtime and instance count; `_step` moves its
instances one move closer (never blocking: processes are started at once, stopped
in the background, environments built in the background) and is run on every PUT
and on every supervisor tick (about once a second, sooner when something changed).

Replacement of a new spec_hash is surge-style: instances of the new spec start at
once and the old ones are stopped when as many new ones are ready as were asked
for, so a deployment keeps serving while it is replaced; if the new ones fail, the
old ones keep running and both show in the listing.

Not done here, on purpose: restarting an instance that failed. A failed instance
stays failed (with its exit code and the tail of its log) until the next PUT of the
deployment, which replaces it; deciding to do that is the workflows' job.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from config.host_api import (
    DeploymentInstances,
    DeploymentRuntime,
    EnsureInstancesRequest,
)
from config.settings import Settings
from host.environments import Environments, EnvironmentStatus
from host.errors import HostError, not_found
from host.instances import Instance, spawn, wait_ready
from host.processes import ProcessHandle, is_alive, port_is_free, tail_lines
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
# Which instances go first when a deployment shrinks: broken before booting before serving.
_SHED_ORDER = {"failed": 0, "stopped": 0, "starting": 1, "ready": 2}


@dataclass
class Deployment:
    runtime: DeploymentRuntime
    instance_count: int
    instances: list[Instance] = field(default_factory=list)
    environment: EnvironmentStatus | None = None
    stopping: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return self.runtime.endpoint

    @property
    def name(self) -> str:
        return self.runtime.deployment


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
        self._envs = Environments(settings.host_dir / "envs")
        self._deployments: dict[tuple[str, str], Deployment] = {}
        self._stopping: dict[int, _Stopping] = {}
        self._wake = asyncio.Event()
        self._dirty = False
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the state file: adopt live instances, start again those whose process is gone."""
        self._session = aiohttp.ClientSession()
        state = load_state(self._state_path)
        for proc in state.stopping:
            handle = ProcessHandle(proc.pid, proc.create_time)
            if is_alive(proc.pid, proc.create_time):
                self._stop_in_background(handle, port=0)
        adopted = restarted = 0
        for record in state.deployments:
            dep = Deployment(runtime=record.runtime, instance_count=record.instance_count)
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
                    )
                    if instance.state == "starting":
                        self._watch_startup(dep, instance)
                elif instance.state == "starting":
                    restarted += 1
        self._dirty = True
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
        )

    async def close(self) -> None:
        """Stop every instance process but keep the desired state, so the next start brings
        them back on the same ports."""
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
            for instance in dep.instances:
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
        if instance.state != "failed":
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
        )
        if rec.state == "failed":
            return instance
        if rec.pid and rec.create_time is not None and is_alive(rec.pid, rec.create_time):
            instance.process = ProcessHandle(rec.pid, rec.create_time)
            # A ready instance stays ready (the tick notices if it dies); a starting one is
            # probed again.
            instance.state = "ready" if rec.state == "ready" else "starting"
            return instance
        if rec.spec_hash != dep.runtime.spec_hash:
            return None  # an old-spec instance that was being replaced: not started again
        # Gone: started again on the same port by the next step (pid None, state starting).
        instance.state = "starting"
        return instance

    # ---- API operations ----------------------------------------------------------------

    def ensure(self, request: EnsureInstancesRequest) -> DeploymentInstances:
        runtime = request.runtime
        key = (runtime.endpoint, runtime.deployment)
        dep = self._deployments.get(key)
        if dep is None:
            dep = Deployment(runtime=runtime, instance_count=request.instance_count)
            self._deployments[key] = dep
        else:
            dep.runtime, dep.instance_count = runtime, request.instance_count
        log.info(
            "deployment.ensure",
            endpoint=runtime.endpoint,
            deployment=runtime.deployment,
            spec_hash=runtime.spec_hash,
            instance_count=request.instance_count,
        )
        self._dirty = True
        self._step(dep, explicit=True)
        self._save_if_dirty()
        return self._view(dep)

    def get(self, endpoint: str, deployment: str) -> DeploymentInstances:
        return self._view(self._require(endpoint, deployment))

    def list_deployments(self) -> list[DeploymentInstances]:
        return [self._view(dep) for dep in self._deployments.values()]

    async def delete(self, endpoint: str, deployment: str) -> bool:
        """Stop all instances and forget the deployment; returns once the processes are gone."""
        dep = self._deployments.pop((endpoint, deployment), None)
        if dep is None:
            return False
        for instance in list(dep.instances):
            self._discard(dep, instance)
        self._dirty = True
        self._save_if_dirty()
        # Includes instances replaced or scaled away earlier and still shutting down.
        await asyncio.gather(*dep.stopping, return_exceptions=True)
        self._save_if_dirty()
        log.info("deployment.deleted", endpoint=endpoint, deployment=deployment)
        return True

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
        """One move toward `instance_count` instances of `runtime.spec_hash`; never blocks.

        `explicit` (a PUT) also replaces failed instances and retries a failed environment.
        """
        runtime = dep.runtime
        env = self._envs.ensure(runtime.environment, retry_failed=explicit, on_done=self.wake)
        dep.environment = env
        current = [i for i in dep.instances if i.spec_hash == runtime.spec_hash]
        old = [i for i in dep.instances if i.spec_hash != runtime.spec_hash]

        discard = []
        if explicit:
            discard += [i for i in current if i.state in ("failed", "stopped")]
        if env.state == "failed":
            discard += [i for i in current if i.process is None and i.state == "starting"]
        for instance in discard:
            self._discard(dep, instance)
            current.remove(instance)

        excess = len(current) - dep.instance_count
        if excess > 0:
            ranked = sorted(enumerate(current), key=lambda p: (_SHED_ORDER[p[1].state], -p[0]))
            for _, instance in ranked[:excess]:
                self._discard(dep, instance)
                current.remove(instance)
        missing = dep.instance_count - len(current) if env.state != "failed" else 0
        for _ in range(missing):
            instance = self._new_instance(dep)
            dep.instances.append(instance)
            current.append(instance)
            self._dirty = True

        if env.state == "ready":
            for instance in current:
                if instance.process is None and instance.state == "starting":
                    self._launch(dep, instance, env)

        ready = sum(1 for i in current if i.state == "ready")
        for instance in old:
            if (
                instance.state in ("failed", "stopped")
                or instance.process is None
                or dep.instance_count == 0
                or ready >= dep.instance_count
            ):
                self._discard(dep, instance)

    def _new_instance(self, dep: Deployment) -> Instance:
        taken = {i.id for i in dep.instances}
        while (instance_id := f"{dep.name}-{secrets.token_hex(3)}") in taken:
            pass
        return Instance(
            id=instance_id,
            port=self._allocate_port(),
            spec_hash=dep.runtime.spec_hash,
            log_path=self._log_path(dep, instance_id),
        )

    def _launch(self, dep: Deployment, instance: Instance, env: EnvironmentStatus) -> None:
        if not self._port_usable(instance.port):
            old_port, instance.port = instance.port, self._allocate_port()
            log.warning(
                "instance.port_taken",
                endpoint=dep.endpoint,
                deployment=dep.name,
                instance=instance.id,
                port=old_port,
                new_port=instance.port,
            )
        try:
            instance.process = spawn(instance, dep.runtime, env)
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
        )
        self._watch_startup(dep, instance)

    def _watch_startup(self, dep: Deployment, instance: Instance) -> None:
        instance.probe = asyncio.create_task(self._startup(dep, instance), name=f"probe-{instance.id}")

    async def _startup(self, dep: Deployment, instance: Instance) -> None:
        assert self._session is not None
        ready, reason = await wait_ready(instance, self._session, dep.runtime.readiness_probe)
        if instance not in dep.instances or instance.state != "starting":
            return  # discarded or failed while we waited
        if ready:
            instance.state = "ready"
            log.info(
                "instance.ready",
                endpoint=dep.endpoint,
                deployment=dep.name,
                instance=instance.id,
                port=instance.port,
            )
            self._dirty = True
            self.wake()
            return
        process = instance.process
        if process is not None:
            exited, _ = process.poll()
            if not exited:
                await process.stop()  # this await yields: up to the stop grace period
        self._mark_failed(dep, instance, reason if reason not in (None, "exited") else None)

    def _mark_failed(self, dep: Deployment, instance: Instance, reason: str | None) -> None:
        if instance.state == "failed":
            return
        code = None
        if instance.process is not None:
            _, code = instance.process.poll()
        tail = instance.failure_tail()
        # The exited process is let go: its pid may be reused, never signal it again.
        instance.process = None
        instance.state, instance.exit_code = "failed", code
        instance.error = f"{reason}\n{tail}" if reason else tail
        log.warning(
            "instance.failed",
            endpoint=dep.endpoint,
            deployment=dep.name,
            instance=instance.id,
            port=instance.port,
            exit_code=code,
            reason=reason or "process exited",
        )
        self._dirty = True
        self.wake()

    def _discard(self, dep: Deployment, instance: Instance) -> None:
        """Drop an instance from the deployment; its process is stopped in the background."""
        if instance in dep.instances:
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
        )
        if process is not None:
            task = self._stop_in_background(process, port=instance.port)
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
                if instance.state == "ready" and instance.process is not None:
                    exited, _ = instance.process.poll()
                    if exited:
                        self._mark_failed(dep, instance, None)
            self._step(dep, explicit=False)
        self._save_if_dirty()

    def wake(self) -> None:
        self._wake.set()

    # ---- helpers -----------------------------------------------------------------------

    def _require(self, endpoint: str, deployment: str) -> Deployment:
        dep = self._deployments.get((endpoint, deployment))
        if dep is None:
            raise not_found(
                f"deployment {endpoint}/{deployment} is not on this host",
                code="DeploymentNotFound",
            )
        return dep

    def _view(self, dep: Deployment) -> DeploymentInstances:
        env = dep.environment
        return DeploymentInstances(
            endpoint=dep.endpoint,
            deployment=dep.name,
            environment_state=env.state if env else "building",
            environment_error=env.error if env else None,
            warnings=list(env.warnings) if env else [],
            instances=[i.status() for i in dep.instances],
        )

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
            deployments=[
                DeploymentRecord(
                    runtime=dep.runtime,
                    instance_count=dep.instance_count,
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
