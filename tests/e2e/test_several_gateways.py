"""Two real gateways behind one endpoint, one of them stopped: the other takes every change at
once, `show` names the stopped one as lagging, it heals when it is back, and a key rotation
says which gateway does not have the new key yet."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.project import REQUEST
from tests.support.polling import until
from tests.support.ports import free_ports
from tests.support.stack import LocalStack

EP = "two-gw"
BODY = json.dumps({"data": REQUEST}).encode()


@dataclass
class SecondGateway:
    """A gateway of its own (own home, own ports) that shares the stack's control credential."""

    env: dict[str, str]
    admin: str
    http: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(Path(self.env["TIDEGATE_HOME"]) / "gateway.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "gateway"], env=self.env, stdout=log, stderr=log
        )
        until(lambda: _answers(f"{self.admin}/healthz"), "the second gateway answers")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, project: tuple[Path, dict]) -> Iterator[tuple]:
    token = secrets.token_urlsafe(24)
    local = LocalStack.create(tmp_path_factory.mktemp("two-gw-home"))
    https, http, admin = free_ports(3)
    second = SecondGateway(
        env=dict(
            os.environ,
            TIDEGATE_HOME=str(tmp_path_factory.mktemp("second-gw-home")),
            TIDEGATE_CONTROL_TOKEN=token,
            TIDEGATE_GATEWAY_HTTPS_PORT=str(https),
            TIDEGATE_GATEWAY_HTTP_PORT=str(http),
            TIDEGATE_GATEWAY_ADMIN_PORT=str(admin),
        ),
        admin=f"http://127.0.0.1:{admin}",
        http=f"http://127.0.0.1:{http}",
    )
    first_admin = f"http://127.0.0.1:{local.port('gateway_admin')}"
    local.env["TIDEGATE_CONTROL_TOKEN"] = token
    local.env["TIDEGATE_GATEWAY_ADMIN_URLS"] = json.dumps([first_admin, second.admin])
    second.start()
    local.up()
    root, _ = project
    try:
        local.serve(EP, root)
        local.ok("online-deployment", "create", "-n", "green", "-e", EP, "-f", "green.yml", cwd=root)
        yield local, second, first_admin
    finally:
        local.down()
        second.stop()


def route(stack: LocalStack, admin: str) -> dict:
    return stack.control_json(f"{admin}/routes/{EP}")


def lagging(stack: LocalStack) -> dict[str, str]:
    return stack.json("online-endpoint", "show", "-n", EP, "--query", "lagging_gateways")


def invoke(base: str, key: str) -> int:
    request = urllib.request.Request(
        f"{base}/endpoints/{EP}/score",
        data=BODY,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_rollback_reaches_the_live_gateway_while_the_other_is_down_and_heals_it_later(two: tuple) -> None:
    stack, second, first_admin = two
    stack.ok(
        "rollout",
        "start",
        "--endpoint",
        EP,
        "--to",
        "green",
        "--steps",
        "50,100",
        "--hold",
        "1h",
        "--no-wait",
    )
    until(lambda: route(stack, first_admin)["traffic"].get("green") == 50, "green at 50 % on the first")
    assert route(stack, second.admin)["traffic"].get("green") == 50
    second.stop()

    asked = time.monotonic()
    stack.ok("rollout", "rollback", "--endpoint", EP, "--reason", "one gateway down")
    until(lambda: route(stack, first_admin)["traffic"].get("green") == 0, "green back to 0 on the first")
    print(f"rollback live on the running gateway {time.monotonic() - asked:.2f} s after it was asked")

    until(lambda: second.admin in lagging(stack), "show names the stopped gateway as lagging")
    assert "unreachable" in lagging(stack)[second.admin]
    second.start()
    until(lambda: lagging(stack) == {}, "nothing lags once the gateway is back")
    assert route(stack, second.admin)["traffic"].get("green") == 0


def test_regenerating_a_key_while_a_gateway_is_down_says_so(two: tuple) -> None:
    stack, second, _ = two
    old = stack.key(EP, "secondaryKey")
    second.stop()
    try:
        done = stack.tidegate("online-endpoint", "regenerate-keys", "-n", EP, "--key-type", "secondary")
        assert done.returncode == 1
        assert second.admin in done.stderr and "not yet on gateway" in done.stderr
        new = stack.key(EP, "secondaryKey")
        assert new != old
        assert invoke(stack.http_base, new) == 200
        assert invoke(stack.http_base, old) == 401
    finally:
        second.start()
    until(lambda: invoke(second.http, stack.key(EP, "secondaryKey")) == 200, "the new key works there too")
    assert invoke(second.http, old) == 401
