"""How an Azure ML environment (conda file, pip requirements) becomes pip arguments here."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from config.host_api import DeploymentRuntime, RuntimeEnvironment
from config.requirements import ALLOW_HINT
from host.environments import (
    EnvironmentSpecError,
    EnvironmentStatus,
    check_python_pin,
    conda_to_pip,
    environment_key,
    pip_failure_message,
    plan_environment,
)
from host.instances import instance_environment

HOST = (3, 11, 7)


@pytest.mark.parametrize(
    ("dependency", "expected"),
    [
        ("scikit-learn=1.0.2", ("scikit-learn", "==1.0.2")),
        ("numpy=1.21", ("numpy", "==1.21.*")),
        ("numpy=1.21.*", ("numpy", "==1.21.*")),
        ("numpy>=1.2", ("numpy", ">=1.2")),
        ("numpy >=1.2, <2", ("numpy", ">=1.2,<2")),
        ("pandas==2.1.0", ("pandas", "==2.1.0")),
        ("pandas", ("pandas", "")),
        ("conda-forge::lightgbm=4.1.0", ("lightgbm", "==4.1.0")),
        ("openssl=3.0.12=h7f8727e_0", ("openssl", "==3.0.12")),
        ("numpy 1.26.4 py311h64a7726_0", ("numpy", "==1.26.4")),
    ],
    ids=[
        "exact-pin-becomes-double-equals",
        "two-part-pin-is-a-prefix-like-conda",
        "star-pin-kept",
        "range-kept",
        "range-with-spaces-joined",
        "double-equals-kept",
        "unpinned",
        "channel-prefix-dropped",
        "build-string-dropped",
        "space-separated-version-and-build",
    ],
)
def test_conda_dependency_becomes_a_pip_requirement(dependency: str, expected: tuple[str, str]) -> None:
    assert conda_to_pip(dependency) == expected


def test_conda_file_yields_conda_and_pip_requirements_with_pypi_names() -> None:
    conda = """
name: model-env
channels: [conda-forge, pytorch]
dependencies:
  - python=3.11
  - pip=23
  - scikit-learn=1.0.2
  - pytorch=2.1.0
  - py-xgboost>=1.7
  - cudatoolkit=11.8
  - pip:
      - azureml-inference-server-http
      - --extra-index-url https://example.invalid/simple
"""
    env = RuntimeEnvironment(conda_file=conda, pip_requirements=["joblib"])
    plan = plan_environment(env, allow_pip_options=True)
    assert plan.error is None
    assert plan.requirements == [
        "scikit-learn==1.0.2",
        "torch==2.1.0",
        "xgboost>=1.7",
        "azureml-inference-server-http",
        "--extra-index-url",
        "https://example.invalid/simple",
        "joblib",
    ]
    assert plan.warnings == ["conda package cudatoolkit has no PyPI counterpart; skipped"]


def test_pip_options_and_non_index_requirements_are_refused_unless_the_host_allows_them() -> None:
    conda = (
        "dependencies:\n  - numpy\n  - pip:\n      - joblib\n      - --extra-index-url https://x.example\n"
    )
    env = RuntimeEnvironment(conda_file=conda, pip_requirements=["scipy", "git+https://x.example/r"])

    plan = plan_environment(env)

    assert plan.error == "\n".join(
        [
            f'environment.conda_file:5: "--extra-index-url https://x.example" is a pip option; {ALLOW_HINT}',
            f'environment.pip_requirements:2: "git+https://x.example/r" is a VCS requirement; {ALLOW_HINT}',
        ]
    )
    assert plan.requirements == []
    allowed = plan_environment(env, allow_pip_options=True)
    assert allowed.error is None
    assert "git+https://x.example/r" in allowed.requirements


@pytest.mark.parametrize(
    ("spec", "warning"),
    [
        ("=3.11", None),
        ("=3.11.7", None),
        (">=3.8", None),
        ("=3.8", "environment asks for python=3.8; running on host Python 3.11"),
        ("3.9", "environment asks for python 3.9; running on host Python 3.11"),
        (">=3.12", "environment asks for python>=3.12; running on host Python 3.11"),
    ],
    ids=[
        "same-minor-is-silent",
        "same-patch-is-silent",
        "satisfied-range-is-silent",
        "older-minor-warns",
        "space-form-warns",
        "newer-range-warns",
    ],
)
def test_python_pin_of_the_host_major_runs_here(spec: str, warning: str | None) -> None:
    assert check_python_pin(spec, host=HOST) == warning


def test_python_pin_of_another_major_cannot_run_here() -> None:
    with pytest.raises(EnvironmentSpecError, match=r"python=2\.7.*Python 3\.11"):
        check_python_pin("=2.7", host=HOST)


def test_broken_conda_file_is_an_environment_error_not_a_crash() -> None:
    plan = plan_environment(RuntimeEnvironment(conda_file="dependencies: {not: a list}"))
    assert plan.error == "conda file 'dependencies' must be a list"


def test_environment_key_follows_content() -> None:
    a = RuntimeEnvironment(conda_file="dependencies: [numpy]")
    assert environment_key(a) == environment_key(a.model_copy(deep=True))
    assert environment_key(a) != environment_key(RuntimeEnvironment(pip_requirements=["numpy"]))


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "ERROR: Could not find a version that satisfies the requirement nope-pkg "
            "(from versions: none)\nERROR: No matching distribution found for nope-pkg\n",
            "No matching distribution found for nope-pkg: no such package on the index",
        ),
        (
            "ERROR: Could not find a version that satisfies the requirement numpy==0.0.1 "
            "(from versions: 1.26.0, 2.0.0)\n"
            "ERROR: No matching distribution found for numpy==0.0.1\n",
            "No matching distribution found for numpy==0.0.1 (versions available: 1.26.0, 2.0.0)",
        ),
        (
            "Collecting x\nERROR: Failed building wheel for x\n",
            "pip install failed (exit 1):\nERROR: Failed building wheel for x",
        ),
    ],
    ids=["unknown-package-named", "unavailable-version-named", "other-failure-quotes-errors"],
)
def test_pip_failure_names_what_pip_could_not_install(output: str, expected: str) -> None:
    assert pip_failure_message(output, 1) == expected


def test_instance_environment_keeps_host_settings_out_and_the_deployment_in() -> None:
    runtime = DeploymentRuntime(
        endpoint="ep",
        deployment="blue",
        code_dir="/code",
        model_dir="/models/m1",
        environment_variables={"WORKER_COUNT": "2"},
        spec_hash="s",
    )
    env = EnvironmentStatus(key="k", path=Path("/envs/k"), state="ready", gunicorn_version="27.0.1")
    base = {"PATH": "/usr/bin", "TIDEGATE_ADMIN_TOKEN": "secret", "SERVER_PORT": "1"}
    out = instance_environment(runtime, env, base)
    assert "TIDEGATE_ADMIN_TOKEN" not in out and "SERVER_PORT" not in out
    assert out["PATH"] == "/envs/k/bin:/usr/bin"
    assert out["AZUREML_MODEL_DIR"] == "/models/m1"
    assert out["WORKER_COUNT"] == "2"
    assert out["GUNICORN_CMD_ARGS"] == "--no-control-socket"
    older = EnvironmentStatus(key="k", path=Path("/e"), state="ready", gunicorn_version="22.0")
    assert "GUNICORN_CMD_ARGS" not in instance_environment(runtime, older, base)


def test_a_deployment_s_tidegate_variables_never_reach_the_instance_and_only_their_names_are_logged() -> None:
    runtime = DeploymentRuntime(
        endpoint="ep",
        deployment="blue",
        code_dir="/code",
        environment_variables={
            "TIDEGATE_INSTANCE_BIND": "0.0.0.0",
            "Tidegate_Control_Token": "stolen",
            "WORKER_COUNT": "2",
        },
        spec_hash="s",
    )
    env = EnvironmentStatus(key="k", path=Path("/envs/k"), state="ready")

    with capture_logs() as logs:
        out = instance_environment(runtime, env, {"PATH": "/usr/bin", "tidegate_home": "/h"})

    assert not [k for k in out if k.upper().startswith("TIDEGATE_")]
    assert out["WORKER_COUNT"] == "2"
    assert logs == [
        {
            "event": "instance.env_stripped",
            "log_level": "warning",
            "endpoint": "ep",
            "deployment": "blue",
            "names": ["TIDEGATE_INSTANCE_BIND", "Tidegate_Control_Token"],
        }
    ]


def test_a_runtime_patch_is_a_new_environment_and_patch_0_keeps_the_old_keys() -> None:
    base = RuntimeEnvironment(pip_requirements=["joblib"])
    assert environment_key(base) == environment_key(base.model_copy(update={"patch": 0}))
    patched = [environment_key(base.model_copy(update={"patch": n})) for n in (1, 2)]
    assert len({environment_key(base), *patched}) == 3


@pytest.mark.parametrize(
    ("pip_requirements", "expected"),
    [
        (["joblib"], ["joblib", "azureml-inference-server-http"]),
        ([], ["azureml-inference-server-http"]),
        (["azureml-inference-server-http==1.4.1"], ["azureml-inference-server-http==1.4.1"]),
        (["AzureML_Inference.Server-HTTP>=1.3"], ["AzureML_Inference.Server-HTTP>=1.3"]),
    ],
    ids=[
        "listed-requirements-and-the-server",
        "the-server-alone",
        "a-pinned-server-keeps-its-pin",
        "the-server-named-another-way-is-not-added-twice",
    ],
)
def test_a_patched_environment_upgrades_its_requirements_and_the_server(
    pip_requirements: list[str], expected: list[str]
) -> None:
    plan = plan_environment(RuntimeEnvironment(pip_requirements=pip_requirements, patch=1))
    assert plan.upgrade and plan.error is None
    assert plan.requirements == expected


def test_an_unpatched_environment_installs_as_listed_without_upgrading() -> None:
    plan = plan_environment(RuntimeEnvironment(pip_requirements=["joblib"]))
    assert not plan.upgrade
    assert plan.requirements == ["joblib"]


def test_app_insights_reaches_an_instance_only_when_its_deployment_asks_and_the_host_has_a_key() -> None:
    env = EnvironmentStatus(key="k", path=Path("/envs/k"), state="ready")
    on = DeploymentRuntime(
        endpoint="ep",
        deployment="blue",
        code_dir="/code",
        spec_hash="s",
        app_insights_enabled=True,
        environment_variables={"AML_APP_INSIGHTS_KEY": "the user's own"},
    )
    off = on.model_copy(update={"app_insights_enabled": False})
    key = "00000000-1111-2222-3333-444444444444"

    enabled = instance_environment(on, env, {}, app_insights_key=key)
    assert (enabled["AML_APP_INSIGHTS_ENABLED"], enabled["AML_APP_INSIGHTS_KEY"]) == ("true", key)
    assert "AML_APP_INSIGHTS_KEY" not in instance_environment(off, env, {}, app_insights_key=key)
    assert "AML_APP_INSIGHTS_KEY" not in instance_environment(on, env, {}, app_insights_key=None)
