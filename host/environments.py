"""Virtualenvs for deployment instances: one per content hash, built once, then shared.

A venv is made without pip and sees the host's own site-packages through a `.pth`
line (so azmlinfsrv, flask, numpy... are there at once, while anything installed
into the venv comes first on sys.path). Requirements are installed with the host's
pip aimed at the venv's interpreter; what the host already has is "already
satisfied" and costs nothing.

A runtime patch (`RuntimeEnvironment.patch` > 0) is part of the content hash, so it
gets a virtualenv of its own, built with `pip install --upgrade` of every listed
requirement and of azureml-inference-server-http: the newest versions the
requirements allow, installed into the venv over the host's copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import re
import shlex
import shutil
import site
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from config.host_api import EnvironmentState, RuntimeEnvironment
from config.requirements import conda_pip_problems, pip_entry_problems

log = structlog.get_logger("host.environments")

MARKER = "tidegate-env.json"
PTH_NAME = "_tidegate_host.pth"
# What a runtime patch refreshes besides the listed requirements: the scoring server itself.
INFERENCE_SERVER = "azureml-inference-server-http"

# conda package names whose PyPI distribution is called something else.
CONDA_TO_PYPI: dict[str, str] = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-xgboost": "xgboost",
    "py-xgboost-cpu": "xgboost",
    "py-lightgbm": "lightgbm",
    "pytables": "tables",
    "matplotlib-base": "matplotlib",
    "msgpack-python": "msgpack",
    "opencv": "opencv-python",
    "py-opencv": "opencv-python",
    "tensorflow-cpu": "tensorflow",
}

# conda packages that are system libraries or conda plumbing with nothing to install from PyPI.
CONDA_ONLY: frozenset[str] = frozenset(
    {
        "_libgcc_mutex",
        "_openmp_mutex",
        "blas",
        "ca-certificates",
        "cpuonly",
        "cudatoolkit",
        "cudnn",
        "ld_impl_linux-64",
        "libblas",
        "libcblas",
        "libffi",
        "libgcc-ng",
        "libgomp",
        "liblapack",
        "libstdcxx-ng",
        "ncurses",
        "nomkl",
        "openssl",
        "pytorch-cuda",
        "pytorch-mutex",
        "readline",
        "sqlite",
        "tk",
        "vc",
        "vs2015_runtime",
        "xz",
        "zlib",
    }
)

# Run inside a freshly built venv: azmlinfsrv must import, and the gunicorn it brings decides
# whether `--no-control-socket` exists (gunicorn >= 25.1 otherwise shares ~/.gunicorn/gunicorn.ctl
# between all instances).
_PROBE = (
    "import json, importlib.metadata as md, azureml_inference_server_http, gunicorn; "
    "print(json.dumps({'gunicorn': gunicorn.__version__, "
    "'inference_server': md.version('azureml-inference-server-http')}))"
)

_CONDA_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")


class EnvironmentSpecError(ValueError):
    """The environment cannot be built on this host; the message says why."""


@dataclass(frozen=True)
class EnvironmentPlan:
    """What a RuntimeEnvironment means on this host: pip arguments, warnings, or why not."""

    key: str
    requirements: list[str]
    warnings: list[str]
    error: str | None = None
    patch: int = 0

    @property
    def upgrade(self) -> bool:
        """A patched environment is built with `pip install --upgrade`."""
        return self.patch > 0


@dataclass
class EnvironmentStatus:
    key: str
    path: Path
    state: EnvironmentState
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    gunicorn_version: str | None = None

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def gunicorn_has_control_socket(self) -> bool:
        if not self.gunicorn_version:
            return False
        parts = re.findall(r"\d+", self.gunicorn_version)[:2]
        major, minor = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) if parts else (0, 0)
        return (major, minor) >= (25, 1)


def host_site_packages() -> list[str]:
    return [p for p in site.getsitepackages() if Path(p).is_dir()]


def environment_key(env: RuntimeEnvironment) -> str:
    """Content hash of the environment, and of the interpreter and packages it is layered on."""
    material = {
        "conda_file": env.conda_file,
        "pip_requirements": env.pip_requirements,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "base": host_site_packages(),
    }
    if env.patch > 0:  # patch 0 keeps the keys (and the virtualenvs) made before patches existed
        material["patch"] = env.patch
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def conda_to_pip(dependency: str) -> tuple[str, str]:
    """A conda match spec as (name, pip version specifier): `scikit-learn=1.0.2` ->
    ("scikit-learn", "==1.0.2"), `numpy=1.21` -> ("numpy", "==1.21.*"), `numpy>=1.2` kept."""
    text = dependency.strip()
    if "::" in text:
        text = text.split("::", 1)[1]  # channel::name
    match = _CONDA_NAME.match(text)
    if not match:
        raise EnvironmentSpecError(f"cannot read conda dependency {dependency!r}")
    name, rest = match.group(1), match.group(2).strip()
    if not rest:
        return name, ""
    if rest.startswith("=="):
        return name, "==" + rest[2:].split("=")[0].strip()
    if rest.startswith("="):
        return name, _fuzzy_pin(rest[1:].split("=")[0].strip())
    if rest[0] in "<>!~":
        return name, rest.replace(" ", "")
    # "numpy 1.21 py39_0": version then build string, separated by spaces
    version = rest.split()[0]
    if version[0] in "<>!=~":
        return name, version
    return name, _fuzzy_pin(version)


def _fuzzy_pin(version: str) -> str:
    # conda's `=1.21` means 1.21.*; a full x.y.z pin is exact.
    base = version.rstrip("*").rstrip(".")
    if "*" in version or base.count(".") < 2:
        return f"=={base}.*"
    return f"=={base}"


def _pip_entries(entries: list[object]) -> list[str]:
    """pip requirement lines as install arguments: comments dropped, options split."""
    args: list[str] = []
    for entry in entries:
        line = str(entry).strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            args.extend(shlex.split(line))
        else:
            args.append(line)
    return args


def check_python_pin(spec: str, *, host: tuple[int, int, int] | None = None) -> str | None:
    """A warning when the host's Python does not meet `python<spec>` but has its major version.

    Raises EnvironmentSpecError when the major version differs: that cannot run here.
    """
    major, minor, micro = host or tuple(sys.version_info[:3])
    _, pip_spec = conda_to_pip(f"python{spec}" if spec[:1] in "<>=!~" else f"python {spec}")
    shown = f"python{spec}" if spec[:1] in "<>=!~" else f"python {spec}"
    host_text = f"{major}.{minor}"
    try:
        if SpecifierSet(pip_spec).contains(f"{major}.{minor}.{micro}", prereleases=True):
            return None
    except InvalidSpecifier:
        return f"cannot read {shown}; running on host Python {host_text}"
    wanted = re.search(r"\d+", spec)
    if wanted and int(wanted.group()) != major:
        raise EnvironmentSpecError(
            f"environment asks for {shown}; the host runs Python {host_text} and cannot "
            f"provide Python {wanted.group()}"
        )
    return f"environment asks for {shown}; running on host Python {host_text}"


def pip_option_problems(env: RuntimeEnvironment) -> list[str]:
    """Lines of the environment that install from outside the package index (config/requirements)."""
    problems = conda_pip_problems(env.conda_file, source="environment.conda_file") if env.conda_file else []
    return problems + pip_entry_problems(
        enumerate(env.pip_requirements, start=1), source="environment.pip_requirements"
    )


def plan_environment(env: RuntimeEnvironment, *, allow_pip_options: bool = False) -> EnvironmentPlan:
    """Translate the conda file and pip requirements into pip arguments for this host.

    Pip options, VCS, URL and path requirements run code from wherever they point: refused
    (the plan's error names each line) unless the host allows them."""
    key = environment_key(env)
    requirements: list[str] = []
    warnings: list[str] = []
    if not allow_pip_options:
        problems = pip_option_problems(env)
        if problems:
            return EnvironmentPlan(
                key=key, requirements=[], warnings=[], error="\n".join(problems), patch=env.patch
            )
    try:
        if env.conda_file:
            requirements_, warnings_ = _conda_requirements(env.conda_file)
            requirements.extend(requirements_)
            warnings.extend(warnings_)
        requirements.extend(_pip_entries(list(env.pip_requirements)))
    except EnvironmentSpecError as exc:
        return EnvironmentPlan(key=key, requirements=[], warnings=warnings, error=str(exc), patch=env.patch)
    if env.patch > 0 and INFERENCE_SERVER not in _requirement_names(requirements):
        requirements.append(INFERENCE_SERVER)
    return EnvironmentPlan(key=key, requirements=requirements, warnings=warnings, patch=env.patch)


def _requirement_names(args: list[str]) -> set[str]:
    """Normalised project names among pip arguments (options and their values skipped)."""
    names = set()
    for arg in args:
        if arg.startswith("-"):
            continue
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", arg)
        if match and "://" not in arg and "/" not in arg:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def _conda_requirements(conda_text: str) -> tuple[list[str], list[str]]:
    try:
        doc = yaml.safe_load(conda_text)
    except yaml.YAMLError as exc:
        raise EnvironmentSpecError(f"conda file is not valid YAML: {exc}") from exc
    if doc is None:
        return [], []
    if not isinstance(doc, dict):
        raise EnvironmentSpecError("conda file must be a mapping with a 'dependencies' list")
    dependencies = doc.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise EnvironmentSpecError("conda file 'dependencies' must be a list")
    requirements: list[str] = []
    pip_section: list[object] = []
    warnings: list[str] = []
    for dependency in dependencies:
        if isinstance(dependency, dict):
            pip_list = dependency.get("pip") or []
            if not isinstance(pip_list, list):
                raise EnvironmentSpecError("conda file 'pip:' entry must be a list")
            pip_section.extend(pip_list)
            continue
        name, spec = conda_to_pip(str(dependency))
        lowered = name.lower()
        if lowered == "python":
            if spec:
                raw = str(dependency).strip().split("::")[-1][len(name) :].strip()
                warning = check_python_pin(raw)
                if warning:
                    warnings.append(warning)
            continue
        if lowered == "pip":
            continue
        if lowered in CONDA_ONLY:
            warnings.append(f"conda package {name} has no PyPI counterpart; skipped")
            continue
        requirements.append(CONDA_TO_PYPI.get(lowered, name) + spec)
    return requirements + _pip_entries(pip_section), warnings


_NOT_FOUND = re.compile(r"No matching distribution found for (\S+)")
_VERSIONS = re.compile(
    r"Could not find a version that satisfies the requirement (\S+) \(from versions: ([^)]*)\)"
)


def pip_failure_message(output: str, returncode: int) -> str:
    """What went wrong in a pip run, naming the package when pip could not find one."""
    missing = _NOT_FOUND.findall(output)
    if missing:
        requirement = missing[-1]
        available = dict(_VERSIONS.findall(output)).get(requirement, "none").strip()
        if available and available != "none":
            return f"No matching distribution found for {requirement} (versions available: {available})"
        return f"No matching distribution found for {requirement}: no such package on the index"
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    detail = "\n".join(errors[-10:]) or "\n".join(output.splitlines()[-15:])
    return f"pip install failed (exit {returncode}):\n{detail}"


async def _run(args: list[str], *, log_file: Path) -> tuple[int, str]:
    """Run a build command, append its output to the build log, return (code, output)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    with open(log_file, "a") as f:
        f.write(f"$ {shlex.join(args)}\n{text}\n[exit {proc.returncode}]\n")
    return proc.returncode or 0, text


class Environments:
    """Builds and caches the virtualenvs under `<host_dir>/envs/<hash>`."""

    def __init__(self, root: Path, *, allow_pip_options: bool = False) -> None:
        self._root = root
        self._allow_pip_options = allow_pip_options
        self._status: dict[str, EnvironmentStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def ensure(
        self,
        env: RuntimeEnvironment,
        *,
        retry_failed: bool,
        on_done: Callable[[], None],
    ) -> EnvironmentStatus:
        """The environment's status now; starts a background build if it is not built yet.

        A failed build is tried again only when `retry_failed` (an explicit request).
        """
        plan = plan_environment(env, allow_pip_options=self._allow_pip_options)
        path = self._root / plan.key
        status = self._status.get(plan.key)
        if status is not None and (status.state in ("ready", "building") or not retry_failed):
            return status
        if plan.error:
            status = EnvironmentStatus(
                key=plan.key, path=path, state="failed", warnings=plan.warnings, error=plan.error
            )
            self._status[plan.key] = status
            log.warning("environment.refused", env=plan.key, error=plan.error)
            return status
        marker = self._read_marker(path)
        if marker is not None:
            status = EnvironmentStatus(
                key=plan.key,
                path=path,
                state="ready",
                warnings=plan.warnings,
                gunicorn_version=marker.get("gunicorn"),
            )
            self._status[plan.key] = status
            return status
        status = EnvironmentStatus(key=plan.key, path=path, state="building", warnings=plan.warnings)
        self._status[plan.key] = status
        self._tasks[plan.key] = asyncio.create_task(
            self._build(plan, status, on_done), name=f"env-build-{plan.key}"
        )
        return status

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _read_marker(self, path: Path) -> dict[str, str] | None:
        try:
            return json.loads((path / MARKER).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    async def _build(
        self, plan: EnvironmentPlan, status: EnvironmentStatus, on_done: Callable[[], None]
    ) -> None:
        lock = self._locks.setdefault(plan.key, asyncio.Lock())
        try:
            async with lock:
                await self._build_locked(plan, status)
        except asyncio.CancelledError:
            status.state, status.error = "failed", "build cancelled: the host is stopping"
            raise
        except OSError as exc:
            status.state, status.error = "failed", f"environment build failed: {exc}"
            log.error("environment.failed", env=plan.key, error=status.error)
        finally:
            self._tasks.pop(plan.key, None)
            on_done()

    async def _build_locked(self, plan: EnvironmentPlan, status: EnvironmentStatus) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        path = status.path
        build_log = self._root / f"{plan.key}.build.log"
        # A file lock as well: two hosts sharing a home must not build into one directory.
        with open(self._root / f"{plan.key}.lock", "w") as lock_file:
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.2)  # this await yields: another process is building
            marker = self._read_marker(path)
            if marker is not None:
                status.state, status.gunicorn_version = "ready", marker.get("gunicorn")
                return
            started = asyncio.get_running_loop().time()
            log.info("environment.building", env=plan.key, requirements=plan.requirements)
            if path.exists():
                shutil.rmtree(path)  # a build that died half way
            build_log.write_text("")
            code, out = await _run(
                [sys.executable, "-m", "venv", "--without-pip", str(path)], log_file=build_log
            )
            if code != 0:
                self._fail(status, f"python -m venv failed (exit {code}): {out.strip()[-500:]}")
                return
            self._link_host_packages(path)
            if plan.requirements:
                code, out = await _run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "--python",
                        str(status.python),
                        "install",
                        "--no-input",
                        "--disable-pip-version-check",
                        # Newest allowed version of each listed package, into the venv (pip
                        # leaves the host's copy alone: "outside environment").
                        *(["--upgrade"] if plan.upgrade else []),
                        *plan.requirements,
                    ],
                    log_file=build_log,
                )
                if code != 0:
                    self._fail(status, pip_failure_message(out, code))
                    return
            code, out = await _run([str(status.python), "-c", _PROBE], log_file=build_log)
            if code != 0:
                last = out.strip().splitlines()[-1:] or [""]
                self._fail(status, f"azmlinfsrv cannot start in this environment: {last[0]}")
                return
            facts = json.loads(out.strip().splitlines()[-1])
            tmp = path / f".{MARKER}.tmp"
            tmp.write_text(json.dumps({"key": plan.key, **facts}))
            tmp.replace(path / MARKER)
            status.state, status.gunicorn_version = "ready", facts.get("gunicorn")
            seconds = round(asyncio.get_running_loop().time() - started, 2)
            log.info("environment.ready", env=plan.key, seconds=seconds)
            if plan.upgrade:
                log.info(
                    "environment.patched",
                    env=plan.key,
                    patch=plan.patch,
                    upgraded=plan.requirements,
                    inference_server=facts.get("inference_server"),
                    gunicorn=facts.get("gunicorn"),
                )

    def _link_host_packages(self, path: Path) -> None:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        target = path / "lib" / version / "site-packages"
        target.mkdir(parents=True, exist_ok=True)
        # Plain path lines: appended after the venv's own site-packages, so the venv wins.
        (target / PTH_NAME).write_text("".join(f"{p}\n" for p in host_site_packages()))

    def _fail(self, status: EnvironmentStatus, error: str) -> None:
        status.state, status.error = "failed", error
        log.warning("environment.failed", env=status.key, error=error)
        shutil.rmtree(status.path, ignore_errors=True)
