"""One deployment instance: an azmlinfsrv process serving the user's score.py on one port.

azmlinfsrv 1.5 (gunicorn underneath) serves `GET /` as its liveness route ("Healthy"),
`POST /score` and `GET /swagger.json` on the same port; it has no separate readiness
route. Gunicorn listens before its worker has run the user's init(), so a request to
`/` waits until init() is done: a 200 there means ready. When init() raises, the worker
logs the traceback and exits with 3, and the gunicorn master exits with 3 as well
("Worker failed to boot"); the process is gone, not left up unhealthy.

So both of Azure's probes, liveness and readiness, are `GET /` here, each on its own
schedule and with its own numbers (decisions/probes.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import structlog

from config.host_api import DeploymentRuntime, InstancePhase, InstanceStatus, ProbeSpec
from config.settings import Settings
from config.specs import SERVER_VARIABLES, is_server_variable, is_tidegate_variable
from host.confinement import ConfinementUnavailable, landlock_abi, wrapper_command
from host.environments import EnvironmentStatus
from host.processes import ProcessHandle, create_time, failure_excerpt, tail_lines
from host.state import InstanceRecord

log = structlog.get_logger("host.instances")

# A script, not a module: the instance's interpreter cannot import the host package.
LAUNCHER = Path(__file__).with_name("loopback_server.py")
# What the launcher puts before a message logged while serving a request (it spells it itself).
REQUEST_ID_TAG = "request_id="
PROBE_PATH = "/"

# Variables that steer azmlinfsrv or the interpreter: the host sets them, never inherits them.
_NOT_INHERITED = SERVER_VARIABLES | {"PYTHONPATH"}


@dataclass
class Instance:
    id: str
    port: int
    spec_hash: str
    log_path: Path
    state: InstancePhase = "starting"
    process: ProcessHandle | None = None
    exit_code: int | None = None
    error: str | None = None
    env_key: str | None = None
    restarts: int = 0
    replaces: str | None = None
    drain_until: float | None = None  # wall clock, so it survives a host restart
    probe: asyncio.Task[None] | None = None  # readiness and liveness, while it runs
    started_at: float | None = None  # time.monotonic() when its process started (this host's clock)
    port_races: int = 0  # times its port was taken before its server could bind it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            id=self.id,
            port=self.port,
            url=self.url,
            pid=self.pid,
            state=self.state,
            spec_hash=self.spec_hash,
            exit_code=self.exit_code,
            error=self.error,
            restarts=self.restarts,
            replaces=self.replaces,
        )

    def record(self) -> InstanceRecord:
        return InstanceRecord(
            id=self.id,
            port=self.port,
            spec_hash=self.spec_hash,
            pid=self.pid,
            create_time=self.process.start_time if self.process else None,
            state=self.state,
            exit_code=self.exit_code,
            error=self.error,
            env_key=self.env_key,
            restarts=self.restarts,
            replaces=self.replaces,
            drain_until=self.drain_until,
        )

    def failure_tail(self) -> str:
        return failure_excerpt(tail_lines(self.log_path, 400))


def instance_environment(
    runtime: DeploymentRuntime,
    env: EnvironmentStatus,
    base: Mapping[str, str],
    *,
    app_insights_key: str | None = None,
    home: Path | None = None,
) -> dict[str, str]:
    """Process environment: the host's minus its own settings, plus the deployment's; with
    `home`, HOME and TMPDIR point into it (a confined instance may write nowhere else there).

    No TIDEGATE_ variable reaches an instance, whoever sets it: the host's would hand it the
    control credential, a deployment's would steer the launcher (TIDEGATE_INSTANCE_BIND=0.0.0.0
    puts /score on the network without the gateway's key). Nor does a deployment's setting of
    how the inference server listens or what it runs (config.specs.SERVER_VARIABLES)."""
    user = runtime.environment_variables
    refused = sorted(k for k in user if is_tidegate_variable(k) or is_server_variable(k))
    out = {k: v for k, v in base.items() if not is_tidegate_variable(k) and k not in _NOT_INHERITED}
    out["PATH"] = f"{env.path / 'bin'}{os.pathsep}{out.get('PATH', os.defpath)}"
    out["VIRTUAL_ENV"] = str(env.path)
    out["PYTHONUNBUFFERED"] = "1"  # print() in score.py reaches the log at once
    out.update({k: v for k, v in user.items() if k not in refused})
    if home is not None:
        out["HOME"], out["TMPDIR"] = str(home), str(home / "tmp")
    out["AML_APP_ROOT"] = runtime.code_dir
    if runtime.model_dir:
        out["AZUREML_MODEL_DIR"] = runtime.model_dir
    if runtime.app_insights_enabled and app_insights_key:
        # azmlinfsrv's own export (as on Azure): its traces and the request/response logs.
        out["AML_APP_INSIGHTS_ENABLED"] = "true"
        out["AML_APP_INSIGHTS_KEY"] = app_insights_key
    if env.gunicorn_has_control_socket:
        # Otherwise every instance's gunicorn fights over one ~/.gunicorn/gunicorn.ctl.
        out["GUNICORN_CMD_ARGS"] = "--no-control-socket"
    if refused:  # names only: a value may be a secret
        log.warning(
            "instance.env_stripped",
            endpoint=runtime.endpoint,
            deployment=runtime.deployment,
            names=refused,
        )
    return out


@dataclass(frozen=True)
class Sandbox:
    """What a confined instance never sees (the state dir, the user's home) and what it may
    read in there besides its own environment, code and model: the host's interpreter and
    libraries, which its environment uses."""

    hidden: tuple[Path, ...]
    readable: tuple[Path, ...]

    def wrap(
        self, command: list[str], runtime: DeploymentRuntime, env: EnvironmentStatus, home: Path
    ) -> list[str]:
        own = [env.path, Path(runtime.code_dir), LAUNCHER]
        if runtime.model_dir:
            own.append(Path(runtime.model_dir))
        return wrapper_command(
            python=sys.executable,
            hidden=self.hidden,
            readable=[*self.readable, *(p.resolve() for p in own)],
            writable=[home.resolve()],
            command=command,
        )


def host_sandbox(settings: Settings) -> Sandbox | None:
    """How this host confines instances (TIDEGATE_INSTANCE_CONFINEMENT), decided once at
    start; None runs them unconfined. Raises ConfinementUnavailable for "landlock" on a kernel
    without it."""
    mode = settings.instance_confinement
    if mode == "off":
        log.warning("host.instances_unconfined", reason="TIDEGATE_INSTANCE_CONFINEMENT=off")
        return None
    abi = landlock_abi()
    if abi < 1:
        if mode == "landlock":
            raise ConfinementUnavailable(
                "TIDEGATE_INSTANCE_CONFINEMENT=landlock, but this kernel has no Landlock (Linux 5.13+)"
            )
        log.warning("host.instances_unconfined", reason="this kernel has no Landlock (Linux 5.13+)")
        return None
    hidden = {settings.home.resolve(), Path.home().resolve()} - {Path("/")}
    interpreter = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path}
    state = settings.home.resolve()
    readable = {Path(p).resolve() for p in interpreter if p and Path(p).exists()}
    readable = {p for p in readable if state not in (p, *p.parents)}
    log.info("host.instances_confined", landlock_abi=abi, hidden=sorted(str(p) for p in hidden))
    return Sandbox(hidden=tuple(sorted(hidden)), readable=tuple(sorted(readable)))


def spawn(
    instance: Instance,
    runtime: DeploymentRuntime,
    env: EnvironmentStatus,
    *,
    home: Path,
    sandbox: Sandbox | None = None,
    app_insights_key: str | None = None,
) -> ProcessHandle:
    """Start azmlinfsrv in its own session, so it outlives a crash of the host; confined by
    `sandbox`, with `home` (the deployment's own folder) as its HOME."""
    instance.log_path.parent.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    args = [
        str(env.python),
        str(LAUNCHER),
        "--entry_script",
        str(Path(runtime.code_dir) / runtime.scoring_script),
        "--port",
        str(instance.port),
    ]
    if sandbox is not None:
        args = sandbox.wrap(args, runtime, env, home)
    with open(instance.log_path, "ab") as log_file:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log_file.write(
            f"[tidegate] {stamp} starting instance {instance.id} on port {instance.port} "
            f"(spec {instance.spec_hash})\n".encode()
        )
        log_file.flush()
        popen = subprocess.Popen(
            args,
            cwd=runtime.code_dir,
            env=instance_environment(runtime, env, os.environ, app_insights_key=app_insights_key, home=home),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ProcessHandle(popen.pid, create_time(popen.pid), popen)


async def probe_once(instance: Instance, session: aiohttp.ClientSession, probe: ProbeSpec) -> str | None:
    """One probe, `GET /` within the probe's timeout: None if it answered 200, else why not."""
    timeout = aiohttp.ClientTimeout(total=float(probe.timeout))
    try:
        async with session.get(instance.url + PROBE_PATH, timeout=timeout) as resp:
            if resp.status == 200:
                return None
            return f"GET {PROBE_PATH} answered {resp.status}"
    except TimeoutError:
        return f"GET {PROBE_PATH} timed out after {probe.timeout} s"
    except aiohttp.ClientError as exc:
        return f"GET {PROBE_PATH} failed: {str(exc) or type(exc).__name__}"
