"""Node recovery, crash loops, rolling updates and runtime patches on a real stack under load."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.e2e.project import REQUEST
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

BODY = json.dumps({"data": REQUEST}).encode()


def host_instances(stack: LocalStack, endpoint: str, deployment: str) -> list[dict]:
    url = f"http://127.0.0.1:{stack.port('host')}/deployments/{endpoint}/{deployment}"
    return stack.control_json(url)["instances"]


def gateway_route(stack: LocalStack, endpoint: str) -> dict:
    return stack.control_json(f"http://127.0.0.1:{stack.port('gateway_admin')}/routes/{endpoint}")


def until_replaced(stack: LocalStack, endpoint: str) -> None:
    """Until blue's killed instance has a ready replacement."""
    until(
        lambda: any(
            i["restarts"] == 1 and i["state"] == "ready" for i in host_instances(stack, endpoint, "blue")
        ),
        "a ready replacement",
    )


def served(stack: LocalStack, root: Path, name: str, file: str = "blue.yml", count: int = 2) -> str:
    return stack.serve(
        name, root, file, f"instance_count={count}", "request_settings.max_concurrent_requests_per_instance=4"
    )


def test_a_killed_instance_is_replaced_and_only_requests_it_held_can_fail(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    key = served(stack, root, "heal-ep")
    victim = host_instances(stack, "heal-ep", "blue")[0]
    with SteadyLoad(f"{stack.http_base}/endpoints/heal-ep/score", key, BODY) as load:
        os.kill(victim["pid"], signal.SIGKILL)
        until_replaced(stack, "heal-ep")
    show = lambda: stack.json("online-deployment", "show", "-n", "blue", "-e", "heal-ep")  # noqa: E731
    until(lambda: sorted(i["restarts"] for i in show()["instances"]) == [0, 1], "show lists the replacement")
    assert show()["provisioning_state"] == "Succeeded"
    # What can still fail is a request the killed instance had already accepted (in flight or in
    # its accept queue): retrying it could run the model twice, so the gateway does not. At most
    # one per client; usually none (the orphaned worker finishes what it holds).
    failed = load.failures_from("blue") + load.seen[("-", 0)]
    print(f"client errors with 2 instances, one killed: {failed} of {sum(load.seen.values())}")
    assert failed <= load.concurrency
    assert load.answered_by("blue") > 0


def test_with_retry_dropped_requests_a_killed_instance_costs_clients_no_error(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    key = served(stack, root, "retry-ep")
    setting = "properties.tidegate/retry_dropped_requests=true"
    stack.ok("online-endpoint", "update", "-n", "retry-ep", "--set", setting)
    until(lambda: gateway_route(stack, "retry-ep")["retry_dropped_requests"], "the gateway has the setting")
    victim = host_instances(stack, "retry-ep", "blue")[0]
    with SteadyLoad(f"{stack.http_base}/endpoints/retry-ep/score", key, BODY) as load:
        os.kill(victim["pid"], signal.SIGKILL)
        until_replaced(stack, "retry-ep")
    failed = sum(n for (_, status), n in load.seen.items() if status != 200)
    print(f"client errors with 2 instances, one killed, retry on: {failed} of {sum(load.seen.values())}")
    assert failed == 0, load.seen
    assert load.answered_by("blue") > 0


def test_with_one_instance_only_requests_in_flight_at_the_kill_fail(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    key = served(stack, root, "solo-ep", count=1)
    (victim,) = host_instances(stack, "solo-ep", "blue")
    with SteadyLoad(f"{stack.http_base}/endpoints/solo-ep/score", key, BODY, concurrency=2) as load:
        os.kill(victim["pid"], signal.SIGKILL)
        until_replaced(stack, "solo-ep")
        served_before = load.seen[("blue", 200)]
        until(lambda: load.seen[("blue", 200)] > served_before + 20, "answers from the replacement")
    failed = sum(n for (_, status), n in load.seen.items() if status != 200)
    print(f"failed around the kill with one instance: {failed} of {sum(load.seen.values())}: {load.seen}")
    statuses = {status for (_, status), n in load.seen.items() if status != 200}
    assert statuses <= {429, 502, 503}, load.seen  # no instance to answer: never a hang or a 500
    # Requests that arrive while the only instance is gone wait for its replacement (they never
    # reached run()); only one the killed instance had accepted can fail: one per client at most.
    assert failed <= load.concurrency, load.seen


def test_a_crash_loop_backs_off_and_reports_degraded_with_the_reason(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    served(stack, root, "loop-ep", file="crashes.yml", count=1)
    (root / "crash").write_text("now")
    try:
        until(
            lambda: (
                stack.json("online-deployment", "show", "-n", "blue", "-e", "loop-ep", "--query", "health")
                == "Degraded"
            ),
            "Degraded",
        )
        shown = stack.json("online-deployment", "show", "-n", "blue", "-e", "loop-ep")
        assert "crash loop" in shown["health_reason"] and "exited with code" in shown["health_reason"]
        assert shown["provisioning_state"] == "Succeeded"
        assert max(i["restarts"] for i in shown["instances"]) >= 2
    finally:
        (root / "crash").unlink()


def test_a_rolling_update_changes_every_instance_with_no_client_error(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    key = served(stack, root, "roll-upd")
    before = {i["id"] for i in host_instances(stack, "roll-upd", "blue")}
    with SteadyLoad(f"{stack.http_base}/endpoints/roll-upd/score", key, BODY) as load:
        stack.ok(
            "online-deployment",
            "update",
            "-n",
            "blue",
            "-e",
            "roll-upd",
            "--set",
            "environment_variables.RELEASE=2",
        )
    after = {i["id"] for i in host_instances(stack, "roll-upd", "blue")}
    assert before.isdisjoint(after) and len(after) == 2
    assert load.failures_from("blue") == 0 and load.seen[("-", 0)] == 0


def test_a_host_patch_replaces_instances_with_no_client_error(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    key = served(stack, root, "patch-ep")
    before = {i["id"] for i in host_instances(stack, "patch-ep", "blue")}
    with SteadyLoad(f"{stack.http_base}/endpoints/patch-ep/score", key, BODY) as load:
        result = stack.json("host", "patch", "--endpoint", "patch-ep")
    assert [r["outcome"] for r in result["results"]] == ["Succeeded"]
    assert result["id"].startswith("host-patch/")
    assert before.isdisjoint({i["id"] for i in host_instances(stack, "patch-ep", "blue")})
    assert load.failures_from("blue") == 0 and load.seen[("-", 0)] == 0
