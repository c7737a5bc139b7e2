"""Autoscale on a real stack: steady load above target scales out, quiet scales back in after the
cool-down, one instance at a time, never outside [min_instances, max_instances]."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.facade import Tidegate
from tests.e2e.project import REQUEST
from tests.support.load import SteadyLoad
from tests.support.stack import LocalStack

BODY = json.dumps({"data": REQUEST}).encode()
ENDPOINT = "scale-ep"
MIN_INSTANCES, MAX_INSTANCES = 1, 3  # as in the project's autoscale.yml
COOL_DOWN_SECONDS = 3
# Six clients against one-slot instances of a 50 ms model: more than three instances can take,
# so utilisation stays near 100 % whatever the count (the rest wait in the gateway's queue).
CLIENTS = 6
POLL_SECONDS = 0.25
HOLD_AT_MAX_SECONDS = 3  # three polling intervals with the load still on
# Only keeps a broken build from hanging CI (about 2 minutes of polls per phase).
MAX_POLLS = 480


def ready(shown: dict[str, Any]) -> int:
    return sum(1 for i in shown["instances"] if i["state"] == "ready")


def follow(stack: LocalStack, done: Callable[[dict[str, Any]], bool], what: str, seen: list[int]) -> None:
    """Poll `online-deployment show` (through the client façade the CLI calls) until `done`;
    each change of the number of ready instances is appended to `seen`."""

    async def poll() -> None:
        tidegate = await Tidegate.connect(stack.settings())
        for _ in range(MAX_POLLS):
            shown = await tidegate.show_deployment(ENDPOINT, "blue")
            if not seen or seen[-1] != ready(shown):
                seen.append(ready(shown))
            if done(shown):
                return
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(f"never: {what} (ready counts seen: {seen})")

    asyncio.run(poll())


def at_most_max(shown: dict[str, Any]) -> bool:
    assert len(shown["instances"]) <= MAX_INSTANCES, shown["instances"]
    return True


def settled_at(count: int) -> Callable[[dict[str, Any]], bool]:
    """`count` instances, all ready, nothing draining, the deployment Succeeded."""
    return lambda shown: (
        shown["provisioning_state"] == "Succeeded"
        and len(shown["instances"]) == count
        and ready(shown) == count
    )


def test_autoscale_goes_out_under_load_and_back_in_after_the_cool_down(
    stack: LocalStack, project: tuple[Path, dict]
) -> None:
    root, _ = project
    user = stack.with_settings(scale_in_cooldown_seconds=COOL_DOWN_SECONDS)
    key = user.serve(ENDPOINT, root, "autoscale.yml")
    seen: list[int] = []
    follow(stack, settled_at(MIN_INSTANCES), "min_instances ready", seen)

    started = time.monotonic()
    with SteadyLoad(f"{stack.http_base}/endpoints/{ENDPOINT}/score", key, BODY, concurrency=CLIENTS) as load:
        follow(stack, lambda shown: ready(shown) > MIN_INSTANCES, "a second instance under load", seen)
        out_first = time.monotonic() - started
        follow(stack, lambda shown: ready(shown) == MAX_INSTANCES, "max_instances under load", seen)
        out_full = time.monotonic() - started
        # Still above target at max_instances: it stays there, nothing more starts.
        hold_until = time.monotonic() + HOLD_AT_MAX_SECONDS
        follow(
            stack, lambda shown: at_most_max(shown) and time.monotonic() >= hold_until, "a hold at max", seen
        )
    stopped = time.monotonic()
    follow(stack, settled_at(MIN_INSTANCES), "back to min_instances once the load stopped", seen)
    back_in = time.monotonic() - stopped

    total = sum(load.seen.values())
    too_many = sum(n for (_, status), n in load.seen.items() if status == 429)
    print(
        f"autoscale: first scale-out {out_first:.1f} s and out to {MAX_INSTANCES} {out_full:.1f} s after "
        f"the load began; back to {MIN_INSTANCES} {back_in:.1f} s after it stopped "
        f"(cool-down {COOL_DOWN_SECONDS} s); ready counts {seen}; {total} requests, {too_many} answered 429"
    )
    # 429 is Azure's answer while every instance is busy and the queue wait runs out: the
    # back-pressure that scaling out relieves, not a failure. Anything else is one.
    failed = {f"{who} {status}": n for (who, status), n in load.seen.items() if status not in (200, 429)}
    assert not failed, failed
    assert load.answered_by("blue") > 0
    assert min(seen) == MIN_INSTANCES and max(seen) == MAX_INSTANCES, seen  # never outside
    # In one instance at a time: the counts seen on the way down step by one.
    down = seen[seen.index(MAX_INSTANCES) :]
    assert down == list(range(MAX_INSTANCES, MIN_INSTANCES - 1, -1)), seen
    shown = stack.json("online-deployment", "show", "-n", "blue", "-e", ENDPOINT)
    assert shown["provisioning_state"] == "Succeeded"
    assert [i["state"] for i in shown["instances"]] == ["ready"]
