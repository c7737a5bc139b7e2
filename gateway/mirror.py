"""Mirrored (shadow) traffic: a copy of a live request sent to a shadow deployment.

The copy's answer never reaches the client. It is counted under the shadow deployment's
own window (status, latency) and compared with the live answer for the same request:
statuses equal and bodies JSON-equal, numbers within a relative tolerance. A copy that
would have to wait for a slot is not sent (``mirror.dropped``): the shadow never queues,
so the live path never waits for it.

A copy needs three things from around it, each handed to ``Mirroring`` by name: the
``Sender`` live requests use too (connect, send, resend once, count refusals towards
ejection), the set the gateway's deadline sweep expires, and admission's ``wake`` (a slot a
copy frees goes to a waiting live request).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from gateway.routing import pick_instance
from gateway.upstream import Attempt, Forwarded, InstanceState, Sender, UpstreamConnection, upstream_request
from gateway.windows import LIMITED_MODEL, MIRROR_DROPPED, MIRROR_REQUESTS

if TYPE_CHECKING:
    from gateway.table import DeploymentState, EndpointState

REL_TOLERANCE: Final = 1e-6
MAX_COMPARED_BYTES: Final = 4 * 1024 * 1024  # larger bodies are compared byte for byte


def values_match(a: Any, b: Any, rel_tol: float = REL_TOLERANCE) -> bool:
    """JSON values equal, numbers (not booleans) within ``rel_tol`` of each other."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or math.isclose(a, b, rel_tol=rel_tol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_match(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_match(x, y, rel_tol) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def answers_match(status_a: int, body_a: bytes, status_b: int, body_b: bytes) -> bool:
    """Whether the shadow answered what the live deployment answered."""
    if status_a != status_b:
        return False
    if body_a == body_b:
        return True
    if len(body_a) > MAX_COMPARED_BYTES or len(body_b) > MAX_COMPARED_BYTES:
        return False
    try:
        return values_match(json.loads(body_a), json.loads(body_b))
    except ValueError:  # not JSON (or not UTF-8): the bytes differ
        return False


class Mirroring:
    """Copies live requests to shadow deployments (one per gateway, while mirroring is on)."""

    __slots__ = ("sender", "timed", "wake", "limits")

    def __init__(
        self,
        sender: Sender,
        timed: set[Attempt],
        wake: Callable[[DeploymentState], None],
        *,
        limits: bool,
    ) -> None:
        self.sender = sender
        self.timed = timed  # the gateway's deadline sweep expires what is in it
        self.wake = wake
        self.limits = limits

    def copies(
        self, req: Forwarded, chosen: DeploymentState, endpoint: EndpointState, now: float
    ) -> list[MirrorCopy] | None:
        """Copy ``req`` to each shadow deployment its share says; never waits for a slot."""
        copies: list[MirrorCopy] = []
        for deployment, share in endpoint.mirrors:
            if deployment is chosen or random.random() >= share:
                continue
            window = deployment.window
            limit = deployment.limit if self.limits else 0
            index = pick_instance(deployment.instances, deployment.rotor, now, limit)
            deployment.rotor += 1
            if index is None or index < 0 or deployment.queued:
                window.record_mirror(MIRROR_DROPPED)
                continue
            instance = deployment.instances[index]
            copy = MirrorCopy(self, deployment, instance, upstream_request(req, instance))
            window.record_mirror(MIRROR_REQUESTS)
            copy.start(now)
            copies.append(copy)
        return copies or None


class MirrorCopy:
    """One copy of a live request on its way to a shadow instance: its own upstream
    ``Exchange`` and ``Attempt``."""

    __slots__ = (
        "mirroring",
        "deployment",
        "instance",
        "request",
        "conn",
        "connecting",
        "deadline",
        "sent_at",
        "replayed",
        "done",
        "status",
        "body",
        "upstream_ms",
        "live",
    )

    def __init__(
        self, mirroring: Mirroring, deployment: DeploymentState, instance: InstanceState, request: bytes
    ) -> None:
        self.mirroring = mirroring
        self.deployment = deployment
        self.instance: InstanceState | None = instance
        self.request = request
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.deadline = 0.0  # in the deadline set (Mirroring.timed) until done
        self.sent_at = 0.0
        self.replayed = False
        self.done = False
        self.status = 0  # the shadow's own status; 0 until it answered, -1 if it never will
        self.body = b""
        self.upstream_ms = 0.0
        # The live answer: None until the live request finished; (status, body, ms) or () if
        # it finished without an instance's answer (then nothing is compared).
        self.live: tuple[Any, ...] | None = None

    def start(self, now: float) -> None:
        instance = self.instance
        assert instance is not None
        instance.busy += instance.outstanding * (now - instance.mark)
        instance.mark = now
        instance.outstanding += 1
        self.sent_at = now
        self.deployment.window.in_flight += 1
        self.deadline = now + self.deployment.timeout
        mirroring = self.mirroring
        mirroring.timed.add(self)
        mirroring.sender.send(self, self, instance, self.request)

    def connect_failed(self, instance: InstanceState, reason: str) -> None:
        """The shadow refused the connect: a 502 under its own name, nothing compared."""
        self._end(502)

    # --- Exchange ---
    def upstream_response(self, status: int, headers: bytes, body: bytes) -> None:
        if self.done:
            return
        self.conn = None
        instance = self.instance
        if instance is not None and instance.failures:
            instance.failures = 0
        self.body = body
        self._end(424 if status >= 500 else status, upstream_status=status)

    def upstream_failed(self, conn: UpstreamConnection, replay_safe: bool) -> None:
        if self.done or conn is not self.conn:
            return
        self.conn = None
        instance = self.instance
        assert instance is not None
        sender = self.mirroring.sender
        if replay_safe and sender.resend(self, self, instance, self.request):
            return
        if not conn.received:
            sender.instance_failed(instance)
        self._end(502)

    def expire(self) -> None:
        """The deadline sweep found the shadow slower than its request_timeout_ms."""
        self.deadline = 0.0
        if self.done:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        task, self.connecting = self.connecting, None
        if task is not None:
            task.cancel()
        self._end(408)

    def _end(self, status: int, upstream_status: int = 0) -> None:
        """The shadow is done: free its slot, count it under its own name, compare."""
        self.done = True
        now = time.perf_counter()
        if self.deadline:
            self.deadline = 0.0
            self.mirroring.timed.discard(self)
        instance, self.instance = self.instance, None
        deployment = self.deployment
        if instance is not None:
            instance.busy += instance.outstanding * (now - instance.mark)
            instance.mark = now
            instance.outstanding -= 1
        window = deployment.window
        window.in_flight -= 1
        elapsed_ms = (now - self.sent_at) * 1000.0
        window.record(status, elapsed_ms)
        if status == 429:  # a shadow copy is shed, never refused: a 429 is the instance's own
            window.record_limited(LIMITED_MODEL)
        self.request = b""
        if upstream_status:
            self.status = upstream_status
            self.upstream_ms = elapsed_ms
            if self.live is not None:
                self._compare()
        else:
            self.status = -1
            self.body = b""
        if deployment.queued:
            self.mirroring.wake(deployment)

    # --- the live side ---
    def live_finished(self, status: int, body: bytes, upstream_ms: float | None) -> None:
        """The live request is answered; ``upstream_ms`` None when no instance answered it."""
        self.live = (status, body, upstream_ms) if upstream_ms is not None else ()
        if self.status > 0:
            self._compare()
        elif self.status < 0:
            self.live = ()

    def _compare(self) -> None:
        live, self.live = self.live, ()
        body, self.body = self.body, b""
        if not live:
            return
        status, live_body, live_ms = live
        match = answers_match(status, live_body, self.status, body)
        self.deployment.window.record_comparison(match, self.upstream_ms - live_ms)
