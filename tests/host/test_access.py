"""Who may use the host API, and what it may run: the control credential on every route but
`GET /healthz`, HTTPS whenever it listens beyond loopback, and only code and models that lie in
Tidegate's own stores. Against real `python -m host` processes; the compute provider (the
worker's client of the host) is used as the worker uses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.local.compute import LocalComputeProvider
from config.contract.activities import DeleteInstancesInput, RequestInstancesInput, WatchInstancesInput
from config.host_api import DeploymentRuntime
from gateway.tls import ensure_tls
from tests.host.helpers import (
    HostProcess,
    UserFiles,
    listening_addresses,
    port_answers,
    runtime,
)
from tests.support.ports import free_port, instance_port_start

NO_CREDENTIAL: dict[str, str] = {}
WRONG_CREDENTIAL = {"Authorization": "Bearer not-the-credential"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/deployments"),
        ("GET", "/deployments/ep-auth/blue"),
        ("GET", "/deployments/ep-auth/blue/logs"),
        ("DELETE", "/deployments/ep-auth/blue"),
        ("GET", "/no/such/route"),
        ("POST", "/healthz"),
    ],
    ids=["list", "get", "logs", "delete", "unknown_route", "healthz_other_method"],
)
@pytest.mark.parametrize("headers", [NO_CREDENTIAL, WRONG_CREDENTIAL], ids=["missing", "wrong"])
async def test_every_route_but_healthz_needs_the_control_credential(
    host: HostProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    code, body = await host.call(method, path, headers=headers)

    assert code == 401
    assert body["error"]["code"] == "Unauthorized"
    assert "control credential" in body["error"]["message"]


async def test_healthz_answers_without_a_credential(host: HostProcess) -> None:
    assert await host.call("GET", "/healthz", headers=NO_CREDENTIAL) == (200, {"status": "ok"})


@pytest.mark.parametrize("headers", [NO_CREDENTIAL, WRONG_CREDENTIAL], ids=["missing", "wrong"])
async def test_a_put_without_the_credential_starts_nothing(
    host: HostProcess, user_files: UserFiles, headers: dict[str, str]
) -> None:
    rt = runtime("ep-auth", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    body = {"runtime": rt, "instance_count": 1}

    code, answer = await host.call("PUT", "/deployments/ep-auth/blue", headers=headers, json=body)

    assert (code, answer["error"]["code"]) == (401, "Unauthorized")
    assert "ep-auth" not in {d["endpoint"] for d in await host.deployments()}
    code, answer = await host.get("ep-auth", "blue")
    assert (code, answer["error"]["code"]) == (404, "DeploymentNotFound")


def _provider_input(user_files: UserFiles) -> RequestInstancesInput:
    rt = runtime("ep-provider", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    return RequestInstancesInput(runtime=DeploymentRuntime.model_validate(rt), instance_count=0)


async def test_the_compute_provider_sends_the_credential(host: HostProcess, user_files: UserFiles) -> None:
    provider = LocalComputeProvider(host.settings)

    requested = await provider.request_instances(_provider_input(user_files))
    watched = await ActivityEnvironment().run(
        provider.watch_instances,
        WatchInstancesInput(endpoint="ep-provider", deployment="blue", since_version=0, timeout_seconds=60),
    )
    await provider.delete_instances(DeleteInstancesInput(endpoint="ep-provider", deployment="blue"))

    assert (requested.endpoint, requested.deployment, requested.instances) == ("ep-provider", "blue", [])
    assert watched.version >= requested.version
    assert "ep-provider" not in {d["endpoint"] for d in await host.deployments()}


async def test_a_compute_provider_with_another_credential_is_refused(
    host: HostProcess, user_files: UserFiles
) -> None:
    provider = LocalComputeProvider(
        host.settings.model_copy(update={"control_token": SecretStr("not-the-credential")})
    )

    with pytest.raises(ApplicationError) as refused:
        await provider.request_instances(_provider_input(user_files))

    assert refused.value.type == "HostUnauthorized"
    assert not refused.value.non_retryable  # fixed by making the credentials agree
    assert "ep-provider" not in {d["endpoint"] for d in await host.deployments()}


# ---- what the host may run ------------------------------------------------------------------

Layout = Callable[[HostProcess, UserFiles, Path], dict[str, Any]]


def _outside_code(tmp: Path) -> Path:
    code = tmp / "elsewhere"
    code.mkdir(exist_ok=True)
    (code / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw):\n    return raw\n")
    return code


def _link(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    return link


def _code_outside(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    return runtime("ep-path", "blue", _outside_code(tmp), model_dir=None)


def _code_dotdot(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    outside = _outside_code(tmp)
    escape = (
        host.settings.artifacts_dir / "code" / os.path.relpath(outside, host.settings.artifacts_dir / "code")
    )
    return runtime("ep-path", "blue", escape, model_dir=None)


def _code_symlink(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    link = _link(host.settings.artifacts_dir / "code" / f"link-{tmp.name}", _outside_code(tmp))
    return runtime("ep-path", "blue", link, model_dir=None)


def _code_is_the_store(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    return runtime("ep-path", "blue", host.settings.artifacts_dir, model_dir=None)


def _model_outside(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    return runtime("ep-path", "blue", files.code_dir, model_dir=tmp)


def _model_symlink(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    link = _link(host.settings.artifacts_dir / "models" / f"link-{tmp.name}", tmp)
    return runtime("ep-path", "blue", files.code_dir, model_dir=link)


def _script(script: str) -> Layout:
    def layout(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
        return {**runtime("ep-path", "blue", files.code_dir, model_dir=None), "scoring_script": script}

    return layout


def _script_symlink(host: HostProcess, files: UserFiles, tmp: Path) -> dict[str, Any]:
    code = host.settings.artifacts_dir / "code" / f"script-link-{tmp.name}"
    _link(code / "score.py", _outside_code(tmp) / "score.py")
    return runtime("ep-path", "blue", code, model_dir=None)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        pytest.param(
            _code_outside,
            "runtime.code_dir: '{tmp}/elsewhere' is outside the artifact store",
            id="code_outside_the_stores",
        ),
        pytest.param(
            _code_dotdot,
            "(it resolves to '{tmp}/elsewhere') is outside the artifact store",
            id="code_escaping_with_dotdot",
        ),
        pytest.param(
            _code_symlink,
            "(it resolves to '{tmp}/elsewhere') is outside the artifact store",
            id="code_escaping_through_a_symlink",
        ),
        pytest.param(
            _code_is_the_store,
            "runtime.code_dir: '{artifacts}' is outside the artifact store",
            id="code_is_the_whole_store",
        ),
        pytest.param(
            _model_outside,
            "runtime.model_dir: '{tmp}' is outside the artifact store",
            id="model_outside_the_stores",
        ),
        pytest.param(
            _model_symlink,
            "(it resolves to '{tmp}') is outside the artifact store",
            id="model_escaping_through_a_symlink",
        ),
        pytest.param(
            _script("/etc/hostname"),
            "runtime.scoring_script: '/etc/hostname' must be a path relative to runtime.code_dir",
            id="script_absolute",
        ),
        pytest.param(
            _script("../../../score.py"),
            "runtime.scoring_script: '../../../score.py' leads outside runtime.code_dir",
            id="script_escaping_with_dotdot",
        ),
        pytest.param(
            _script("../code-flaky/score.py"),
            "runtime.scoring_script: '../code-flaky/score.py' leads outside runtime.code_dir",
            id="script_in_another_snapshot",
        ),
        pytest.param(
            _script_symlink,
            "runtime.scoring_script: 'score.py' leads outside runtime.code_dir",
            id="script_escaping_through_a_symlink",
        ),
    ],
)
async def test_the_host_runs_only_code_and_models_from_the_artifact_store(
    host: HostProcess, user_files: UserFiles, tmp_path: Path, layout: Layout, message: str
) -> None:
    tmp = tmp_path.resolve()
    rt = layout(host, user_files, tmp)

    code, body = await host.put(rt, 1)

    assert code == 400, body
    assert body["error"]["code"] == "InvalidBody"
    assert message.format(tmp=tmp, artifacts=host.settings.artifacts_dir) in body["error"]["message"]
    assert "ep-path" not in {d["endpoint"] for d in await host.deployments()}


async def test_code_in_the_artifact_store_and_a_model_in_the_registry_are_accepted(
    host: HostProcess, user_files: UserFiles
) -> None:
    registered = host.settings.registry_dir / "test-model" / "1"
    registered.mkdir(parents=True, exist_ok=True)
    rt = runtime("ep-path-ok", "blue", user_files.code_dir, model_dir=registered, conda_file=None)

    code, body = await host.put(rt, 0)

    assert code == 202, body
    assert (await host.delete("ep-path-ok", "blue"))[0] == 200


# ---- where the API listens -------------------------------------------------------------------


async def test_a_host_bound_beyond_loopback_without_a_certificate_exits_1_saying_why(
    host: HostProcess, tmp_path: Path
) -> None:
    other = HostProcess(
        home=tmp_path / "home",
        port=free_port(),
        instance_port_start=instance_port_start(),
        env={"TIDEGATE_HOST_BIND": "0.0.0.0"},
    )
    other.home.mkdir()
    other.session = host.session
    other.start()

    assert await other.exited() == 1
    (failed,) = other.events("host.failed")
    assert failed["error"].startswith("TIDEGATE_HOST_BIND=0.0.0.0 listens beyond loopback: set ")
    assert "TIDEGATE_CONTROL_TLS_CERT" in failed["error"]
    assert not await port_answers(other.port)
    assert not (other.home / "host" / "state.json").exists()  # nothing adopted, nothing written


async def test_a_host_bound_beyond_loopback_serves_https_and_still_needs_the_credential(
    host: HostProcess, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    secure = HostProcess(home=home, port=free_port(), instance_port_start=instance_port_start(), tls=True)
    material = ensure_tls(secure.settings)  # the local CA; clients trust $TIDEGATE_HOME/tls/ca.pem
    secure.env = {
        "TIDEGATE_HOST_BIND": "0.0.0.0",
        "TIDEGATE_CONTROL_TLS_CERT": str(material.cert),
        "TIDEGATE_CONTROL_TLS_KEY": str(material.key),
    }
    secure.session = host.session
    secure.start()
    try:
        await secure.wait_healthy()  # over HTTPS, trusting the local CA
        assert listening_addresses(secure.port) == {"00000000"}  # 0.0.0.0, as asked

        code, body = await secure.call("GET", "/deployments", headers=NO_CREDENTIAL)
        assert (code, body["error"]["code"]) == (401, "Unauthorized")

        provider = LocalComputeProvider(secure.settings)  # host_url https://localhost:<port>
        await provider.delete_instances(DeleteInstancesInput(endpoint="ep-tls", deployment="blue"))
        with pytest.raises(ApplicationError) as unknown:
            await provider.watch_instances(
                WatchInstancesInput(endpoint="ep-tls", deployment="blue", since_version=0)
            )
        assert unknown.value.type == "UnknownDeployment"
    finally:
        assert await secure.stop() == 0
