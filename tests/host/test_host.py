"""The host as its callers see it: a real `python -m host` process running real azmlinfsrv
instances of a score.py that serves a small sklearn model.

The tests share one host (and so one built environment); they run in file order, and the
later ones restart that host.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import pytest_asyncio

from config.requirements import ALLOW_HINT
from tests.host.helpers import (
    HostProcess,
    UserFiles,
    all_ready,
    listening_addresses,
    port_answers,
    process_alive,
    runtime,
)
from tests.support.ports import free_port

ROWS = [[10.0], [-2.5]]


async def score(host: HostProcess, instance: dict[str, Any], body: dict[str, Any]) -> Any:
    async with host.session.post(instance["url"] + "/score", json=body) as resp:
        return resp.status, await resp.json()


@pytest_asyncio.fixture(scope="module")
async def serving(host: HostProcess, user_files: UserFiles) -> dict[str, Any]:
    """ep-a/blue with one ready instance, used by the tests that follow it."""
    rt = runtime("ep-a", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    code, body = await host.put(rt, 1)
    assert code == 202, body
    return await host.wait_for("ep-a", "blue", all_ready(1))


async def test_unknown_deployment_is_404_and_delete_is_idempotent(host: HostProcess) -> None:
    code, body = await host.get("nope", "nothing")
    assert code == 404
    assert body["error"]["code"] == "DeploymentNotFound"
    code, body = await host.delete("nope", "nothing")
    assert (code, body["deleted"]) == (200, False)


async def test_bad_body_is_400_naming_the_field(host: HostProcess, user_files: UserFiles) -> None:
    rt = runtime("ep-x", "blue", user_files.code_dir, model_dir=None)
    del rt["spec_hash"]
    code, body = await host.put(rt, 1)
    assert code == 400
    assert "runtime.spec_hash" in body["error"]["message"]

    rt = runtime("ep-x", "blue", user_files.code_dir / "missing", model_dir=None)
    code, body = await host.put(rt, 1)
    assert code == 400
    assert "runtime.code_dir" in body["error"]["message"]

    code, body = await host.put(runtime("ep-x", "blue", user_files.code_dir, model_dir=None), -1)
    assert code == 400
    assert "instance_count" in body["error"]["message"]


async def test_put_starts_an_instance_that_scores_with_the_model(
    host: HostProcess, serving: dict[str, Any], user_files: UserFiles
) -> None:
    (instance,) = serving["instances"]
    assert serving["environment_state"] == "ready"
    assert instance["url"] == f"http://127.0.0.1:{instance['port']}"
    assert instance["port"] >= host.instance_port_start
    code, answer = await score(host, instance, {"data": ROWS})
    assert code == 200
    assert answer == user_files.expected(ROWS)

    listing = await host.deployments()
    assert ("ep-a", "blue") in {(d["endpoint"], d["deployment"]) for d in listing}


async def test_an_instance_listens_on_loopback_only(serving: dict[str, Any]) -> None:
    (instance,) = serving["instances"]
    assert listening_addresses(instance["port"]) == {"0100007F"}  # 127.0.0.1, nothing else


async def test_a_deployment_cannot_set_variables_that_put_its_server_on_the_network(
    host: HostProcess, user_files: UserFiles
) -> None:
    # The launcher reads TIDEGATE_INSTANCE_BIND and gunicorn GUNICORN_CMD_ARGS; a deployment's
    # variables must reach neither (the spec refuses the second; a host is asked directly here).
    extra = free_port()
    rt = runtime(
        "ep-bind",
        "blue",
        user_files.code_dir,
        model_dir=user_files.model_dir,
        environment_variables={
            "TIDEGATE_INSTANCE_BIND": "0.0.0.0",
            "tidegate_home": "/",
            "GUNICORN_CMD_ARGS": f"--bind 0.0.0.0:{extra}",
            "KEPT": "1",
        },
    )
    code, body = await host.put(rt, 1)
    assert code == 202, body
    (instance,) = (await host.wait_for("ep-bind", "blue", all_ready(1)))["instances"]

    assert listening_addresses(instance["port"]) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
    assert listening_addresses(extra) == set()
    stripped = [e for e in host.events("instance.env_stripped") if e["endpoint"] == "ep-bind"]
    assert stripped and all(
        e["names"] == ["GUNICORN_CMD_ARGS", "TIDEGATE_INSTANCE_BIND", "TIDEGATE_TEST_VAR", "tidegate_home"]
        for e in stripped
    )
    assert "0.0.0.0" not in json.dumps(stripped)  # names only, never values
    await host.delete("ep-bind", "blue")


async def test_app_insights_on_a_host_without_a_key_is_refused_naming_the_field_and_setting(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("ep-insights", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    code, body = await host.put({**rt, "app_insights_enabled": True}, 1)
    assert code == 400, body
    assert body["error"]["message"].startswith("runtime.app_insights_enabled: this host has no")
    assert "TIDEGATE_APP_INSIGHTS_KEY" in body["error"]["message"]
    assert (await host.get("ep-insights", "blue"))[0] == 404  # nothing started


async def test_run_error_is_a_500_the_instance_stays_ready_and_logs_the_traceback(
    host: HostProcess, serving: dict[str, Any]
) -> None:
    (instance,) = serving["instances"]
    code, _ = await score(host, instance, {"explode": True})
    assert code == 500
    _, status = await host.get("ep-a", "blue")
    assert [i["state"] for i in status["instances"]] == ["ready"]

    code, text = await host.logs("ep-a", "blue", lines="60")
    assert code == 200
    assert f"=== instance {instance['id']} ===" in text
    assert "Traceback (most recent call last)" in text
    assert "ValueError: score.py was asked to explode" in text


async def test_scale_up_and_down_keeps_existing_instances(host: HostProcess, user_files: UserFiles) -> None:
    rt = runtime("ep-b", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(rt, 1)
    (first,) = (await host.wait_for("ep-b", "blue", all_ready(1)))["instances"]

    await host.put(rt, 2)
    two = (await host.wait_for("ep-b", "blue", all_ready(2)))["instances"]
    assert first in two
    assert len({i["port"] for i in two}) == 2
    (second,) = [i for i in two if i["id"] != first["id"]]

    await host.put(rt, 1)
    one = (await host.wait_for("ep-b", "blue", all_ready(1)))["instances"]
    assert [i["id"] for i in one] == [first["id"]]  # the newest goes first
    code, _ = await host.delete("ep-b", "blue")
    assert code == 200
    assert not process_alive(second["pid"]) and not process_alive(first["pid"])


async def test_new_spec_hash_replaces_the_instances(host: HostProcess, user_files: UserFiles) -> None:
    rt = runtime("ep-r", "blue", user_files.code_dir, model_dir=user_files.model_dir)
    await host.put(rt, 1)
    (old,) = (await host.wait_for("ep-r", "blue", all_ready(1)))["instances"]

    await host.put({**rt, "spec_hash": "spec-2"}, 1)
    (new,) = (await host.wait_for("ep-r", "blue", all_ready(1, "spec-2")))["instances"]
    assert new["id"] != old["id"]
    await host.delete("ep-r", "blue")
    assert not process_alive(old["pid"]) and not process_alive(new["pid"])


async def test_init_error_fails_the_instance_with_its_traceback(
    host: HostProcess, user_files: UserFiles
) -> None:
    rt = runtime("ep-c", "blue", user_files.init_fails_dir, model_dir=user_files.model_dir)
    code, body = await host.put(rt, 1)
    assert code == 202, body
    status = await host.wait_for("ep-c", "blue", lambda s: [i["state"] for i in s["instances"]] == ["failed"])
    (instance,) = status["instances"]
    assert instance["exit_code"] == 3  # azmlinfsrv: worker exits 3, gunicorn master follows
    assert "Traceback (most recent call last)" in instance["error"]
    assert "RuntimeError: init could not load the model (on purpose)" in instance["error"]
    assert instance["pid"] is None
    assert not await port_answers(instance["port"])

    _, text = await host.logs("ep-c", "blue", lines="200", instance=instance["id"])
    assert "RuntimeError: init could not load the model (on purpose)" in text
    await host.delete("ep-c", "blue")


async def test_kill_9_of_the_host_leaves_instances_running_and_the_next_host_adopts_them(
    host: HostProcess, serving: dict[str, Any], user_files: UserFiles
) -> None:
    (before,) = serving["instances"]
    await host.stop(signal.SIGKILL)
    assert process_alive(before["pid"])
    code, answer = await score(host, before, {"data": ROWS})  # serving without a host
    assert (code, answer) == (200, user_files.expected(ROWS))

    await host.restart()
    (after,) = (await host.wait_for("ep-a", "blue", all_ready(1)))["instances"]
    assert (after["id"], after["pid"], after["port"]) == (
        before["id"],
        before["pid"],
        before["port"],
    )


async def test_sigterm_stops_instances_and_the_next_start_brings_them_back_on_the_same_port(
    host: HostProcess, serving: dict[str, Any], user_files: UserFiles
) -> None:
    _, status = await host.get("ep-a", "blue")
    (before,) = status["instances"]
    assert await host.stop(signal.SIGTERM) == 0
    assert not process_alive(before["pid"])
    assert not await port_answers(before["port"])

    await host.restart()
    (after,) = (await host.wait_for("ep-a", "blue", all_ready(1)))["instances"]
    assert (after["id"], after["port"]) == (before["id"], before["port"])
    assert after["pid"] != before["pid"]
    code, answer = await score(host, after, {"data": ROWS})
    assert (code, answer) == (200, user_files.expected(ROWS))


async def test_python_pin_of_the_same_major_version_runs_on_the_host_python_with_a_warning(
    host: HostProcess, user_files: UserFiles
) -> None:
    conda = "dependencies:\n  - python=3.8\n  - scikit-learn\n"
    rt = runtime("ep-d", "blue", user_files.code_dir, model_dir=None, conda_file=conda)
    await host.put(rt, 0)
    status = await host.wait_for("ep-d", "blue", lambda s: s["environment_state"] != "building")
    assert status["environment_state"] == "ready"
    host_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert status["warnings"] == [f"environment asks for python=3.8; running on host Python {host_python}"]
    await host.delete("ep-d", "blue")


async def test_python_pin_of_another_major_version_fails_the_environment(
    host: HostProcess, user_files: UserFiles
) -> None:
    conda = "dependencies:\n  - python=2.7\n  - scikit-learn\n"
    rt = runtime("ep-e", "blue", user_files.code_dir, model_dir=None, conda_file=conda)
    await host.put(rt, 1)
    status = await host.wait_for("ep-e", "blue", lambda s: s["environment_state"] != "building")
    assert status["environment_state"] == "failed"
    assert "python=2.7" in status["environment_error"]
    assert status["instances"] == []
    await host.delete("ep-e", "blue")


async def test_a_package_pip_cannot_find_fails_the_environment_naming_it(
    host: HostProcess, user_files: UserFiles
) -> None:
    missing = "tidegate-no-such-package-7f3a9c"
    rt = runtime(
        "ep-f",
        "blue",
        user_files.code_dir,
        model_dir=None,
        conda_file=None,
        pip_requirements=[missing],
    )
    await host.put(rt, 1)
    status = await host.wait_for("ep-f", "blue", lambda s: s["environment_state"] != "building")
    assert status["environment_state"] == "failed"
    assert missing in status["environment_error"]
    assert status["instances"] == []
    await host.delete("ep-f", "blue")


async def test_an_environment_that_installs_from_outside_the_index_fails_naming_the_line(
    host: HostProcess, user_files: UserFiles
) -> None:
    conda = (
        "dependencies:\n  - scikit-learn\n  - pip:\n      - joblib\n      - --index-url https://x.example\n"
    )
    rt = runtime("ep-g", "blue", user_files.code_dir, model_dir=None, conda_file=conda)
    code, body = await host.put(rt, 1)
    assert code == 202, body
    status = await host.wait_for("ep-g", "blue", lambda s: s["environment_state"] != "building")
    assert status["environment_state"] == "failed"
    assert status["environment_error"] == (
        f'environment.conda_file:5: "--index-url https://x.example" is a pip option; {ALLOW_HINT}'
    )
    assert status["instances"] == []
    await host.delete("ep-g", "blue")


async def test_delete_stops_the_processes_and_forgets_the_deployment(
    host: HostProcess, serving: dict[str, Any]
) -> None:
    _, status = await host.get("ep-a", "blue")
    (instance,) = status["instances"]
    assert process_alive(instance["pid"])
    code, body = await host.delete("ep-a", "blue")
    assert (code, body["deleted"]) == (200, True)
    assert not process_alive(instance["pid"])
    assert not await port_answers(instance["port"])
    code, _ = await host.get("ep-a", "blue")
    assert code == 404
