"""Admission: which request gets an instance's slot, which waits for one and for how long, and
which is refused (429, 503, 404) and why.

Per deployment, each instance takes at most ``limit`` requests at once (its
``max_concurrent_requests_per_instance``, shared between gateway processes); beyond that a
request waits in the deployment's bounded FIFO queue for up to ``max_queue_wait_ms``, then
is answered 429. The instance is chosen by least outstanding requests among the healthy
ones (``gateway.routing.pick_instance``); an ejected one (see ``gateway.gateway``) is not
chosen. With no healthy instance (none in the route, or every one ejected) a request is held
in the same queue for up to ``request_timeout_ms`` (a recovery, not an overload:
``max_queue_wait_ms`` does not apply) until a push or a probe brings one, then 503; a push
that takes the deployment or the endpoint away answers the held ones 404. Held requests that
find the instances back but full become ordinary waiters from that moment; waiters that see
the last healthy instance go become held ones. ``request_timeout_ms`` runs from the moment
the request is sent to an instance (the queue has its own bound) and ends in 408 with the
slot handed on.

Retries: a request goes to another instance only when nothing reached the first (the
connect failed), each instance at most once; when every instance refused it, it is held as
above (at the front of the queue), so the only instance of a deployment being killed and
replaced fails only the requests it had already accepted. A held request may go to any
instance a push or a probe brings, one that refused it included: nothing reached it. The
endpoint may opt into one more (``tidegate/retry_dropped_requests``): a request an instance
read and dropped with no byte back, as one killed in run() does, is sent once more, to
another instance as after a refused connect; at most one resend per request, whatever its
cause (the other is ``Sender.resend``'s, in ``gateway.upstream``).

Hazards: every request releases its instance's outstanding count exactly once (``release``)
and leaves the queue exactly once (``waiting`` is cleared by whoever takes it out); a freed
slot goes to the queue before any new arrival (a new request queues behind waiting ones).
"""

from __future__ import annotations

import time
from typing import Final

import structlog

from gateway.mirror import Mirroring
from gateway.request import Request
from gateway.responses import JSON_CONTENT_TYPE
from gateway.routing import FULL, pick_instance
from gateway.table import DeploymentState, EndpointState
from gateway.upstream import Attempt, InstanceState, Sender, upstream_request
from gateway.windows import LIMITED_INSTANCE_CONCURRENCY, LIMITED_QUEUE_WAIT

_perf = time.perf_counter

log = structlog.get_logger("gateway.admission")

RETRY_AFTER: Final = b"retry-after: 1\r\n"
TOO_MANY_HEADERS: Final = JSON_CONTENT_TYPE + RETRY_AFTER


class Admission:
    """Slots, queues and holds for every deployment of the route table (one per gateway)."""

    __slots__ = ("live", "sender", "timed", "queueing", "limits", "windows_on", "mirror")

    def __init__(
        self,
        live: dict[str, EndpointState],
        sender: Sender,
        timed: set[Attempt],
        *,
        limits: bool,
        windows_on: bool,
        mirroring: bool,
    ) -> None:
        self.live = live  # mutated in place by the table, never rebound
        self.sender = sender
        self.timed = timed  # requests on an instance, for the gateway's deadline sweep
        self.queueing: set[DeploymentState] = set()  # deployments with requests waiting
        self.limits = limits
        self.windows_on = windows_on
        self.mirror = Mirroring(sender, timed, self.wake, limits=limits) if mirroring else None

    # --- per request ---
    def admit(self, req: Request) -> None:
        """The request's turn on its connection: a slot on an instance, a place in the queue or
        a refusal; then copies to shadow deployments."""
        deployment = req.deployment
        assert deployment is not None
        if self.windows_on:
            deployment.window.in_flight += 1
            req.counted = True
        now = _perf()
        endpoint = req.endpoint
        assert endpoint is not None
        if deployment.queued and self.limits:  # first come, first served: behind the waiting ones
            if _any_healthy(deployment.instances, now):
                self._queue_or_refuse(req, now)
            else:
                self._hold(req, now)
        else:
            limit = deployment.limit if self.limits else 0
            index = pick_instance(deployment.instances, deployment.rotor, now, limit)
            deployment.rotor += 1
            if index is None:
                self._hold(req, now)
            elif index == FULL:
                self._queue_or_refuse(req, now)
            else:
                if self.windows_on:
                    deployment.window.record_no_wait()
                self.send_to(req, deployment.instances[index], now)
        if endpoint.mirrors and not req.targeted and not req.done and self.mirror is not None:
            # After the live request is on its way.
            req.mirrors = self.mirror.copies(req, deployment, endpoint, now)

    def send_to(self, req: Request, instance: InstanceState, now: float) -> None:
        """Take a slot on ``instance`` and send the request there."""
        instance.busy += instance.outstanding * (now - instance.mark)
        instance.mark = now
        instance.outstanding += 1
        req.instance = req.last_instance = instance
        req.sent_at = now
        if not req.deadline:
            deployment = req.deployment
            assert deployment is not None
            req.deadline = now + deployment.timeout
            self.timed.add(req)
        req.upstream = request = upstream_request(req, instance)
        self.sender.send(req.proto, req, instance, request)

    def release(self, req: Request, now: float = 0.0, wake: bool = True) -> None:
        """Give back the request's slot (if it holds one); with ``wake``, to a waiting request."""
        instance, req.instance = req.instance, None
        if instance is None:
            return
        now = now or _perf()
        instance.busy += instance.outstanding * (now - instance.mark)
        instance.mark = now
        instance.outstanding -= 1
        deployment = req.deployment
        if wake and deployment is not None and deployment.queued:
            self.wake(deployment)

    def elsewhere(self, req: Request, instance: InstanceState, event: str, reason: str) -> None:
        """Take the request off ``instance``, which failed it with no byte back (already counted
        towards its ejection), and send it to another instance of its deployment; with none
        left, hold it for an instance (a push or a probe brings one) rather than fail a request
        that never reached run()."""
        self.release(req, wake=False)
        log.warning(event, instance=instance.id, url=instance.url, error=reason, failures=instance.failures)
        deployment = req.deployment
        assert deployment is not None
        tried = req.tried
        if tried is None:
            tried = req.tried = []
        tried.append(instance)
        if req.deadline:  # off the instance: request_timeout_ms starts again when it is sent
            req.deadline = 0.0
            self.timed.discard(req)
        now = _perf()
        limit = deployment.limit if self.limits else 0
        index = pick_instance(deployment.instances, deployment.rotor, now, limit, tried)
        if index is None:
            # The wake below may send it straight back to an instance that refused it, if
            # that one is not ejected yet: safe (nothing reached it) and bounded (each
            # refusal counts towards EJECT_AFTER, and an ejected instance is not picked).
            # A dropped request may go back to the instance that dropped it: its one resend.
            self._hold_again(req, now)
        elif index == FULL:
            self._queue_or_refuse(req, now)
        else:
            self.send_to(req, deployment.instances[index], now)
        if deployment.queued:
            self.wake(deployment)

    def leave_queue(self, req: Request) -> None:
        """Out of the deployment's queue without a slot (the deque drops it lazily)."""
        deployment = req.deployment
        assert deployment is not None
        req.waiting = False
        deployment.queued -= 1
        if req.held:
            req.held = False
            deployment.held -= 1

    # --- the queue ---
    def wake(self, deployment: DeploymentState) -> None:
        """Give free slots to waiting requests, oldest first."""
        waiting = deployment.waiting
        limit = deployment.limit if self.limits else 0
        now = _perf()
        while deployment.queued and waiting:
            req = waiting[0]
            if not req.waiting:
                waiting.popleft()
                continue
            index = pick_instance(deployment.instances, deployment.rotor, now, limit)
            if index is None:
                if deployment.held < deployment.queued:
                    _hold_all(deployment)
                return
            if index < 0:
                if deployment.held:
                    _unhold(deployment, now)
                return
            deployment.rotor += 1
            waiting.popleft()
            req.waiting = False
            deployment.queued -= 1
            if req.held:
                req.held = False
                deployment.held -= 1
            if self.windows_on:
                deployment.window.record_queue_wait((now - req.queued_at) * 1000.0)
            self.send_to(req, deployment.instances[index], now)

    def expire_waits(self, now: float) -> None:
        """The deadline sweep's part for queues: 429 for a request that waited
        max_queue_wait_ms for a slot, 503 for one held request_timeout_ms for an instance."""
        queueing = self.queueing
        for deployment in list(queueing):
            waiting = deployment.waiting
            wait = deployment.queue_wait
            hold = deployment.timeout
            while waiting:
                req = waiting[0]
                if not req.waiting:
                    waiting.popleft()
                elif req.queued_at + (hold if req.held else wait) <= now:  # FIFO: oldest first
                    waiting.popleft()
                    self._wait_expired(req, now)
                else:
                    break
            if deployment.held:
                # Held and overloaded waiters have different bounds: the order says nothing.
                expired = [
                    r for r in waiting if r.waiting and r.queued_at + (hold if r.held else wait) <= now
                ]
                for req in expired:
                    if req.waiting:
                        self._wait_expired(req, now)
            if not deployment.queued:
                queueing.discard(deployment)

    def dropped(self, deployments: list[DeploymentState], endpoint_gone: bool) -> None:
        """A push or delete took these away: their held requests get the 404 routing gives."""
        for deployment in deployments:
            if not deployment.held:
                continue
            code, message = _gone(deployment, endpoint_gone)
            for req in [r for r in deployment.waiting if r.waiting and r.held]:
                if req.waiting:
                    self.leave_queue(req)
                    req.proto.fail(req, 404, code, message)

    def rebuilt(self, endpoint: EndpointState) -> None:
        """A push (or a probe) may have brought instances: hand their slots to waiting requests."""
        for deployment in endpoint.deployments.values():
            if deployment.queued:
                self.wake(deployment)

    def _hold(self, req: Request, now: float) -> None:
        """No healthy instance: wait in the queue for one (up to request_timeout_ms)."""
        deployment = req.deployment
        assert deployment is not None
        if deployment.queued >= deployment.hold_limit:
            _no_instance(req)
            return
        req.held = True
        deployment.held += 1
        self._enqueue(req, now)

    def _hold_again(self, req: Request, now: float) -> None:
        """Every instance left refused the connection: nothing reached one, so wait for an
        instance as a request that found none does, at the front (it was sent before anything
        now waiting) and from when it first waited, so re-holds cannot stretch the bound."""
        deployment = req.deployment
        assert deployment is not None
        endpoint = self.live.get(deployment.endpoint)
        if endpoint is None or endpoint.deployments.get(deployment.name) is not deployment:
            # A push took the deployment away while it connected: nothing would wake it.
            req.proto.fail(req, 404, *_gone(deployment, endpoint is None))
            return
        if deployment.queued >= deployment.hold_limit:
            _no_instance(req)
            return
        req.tried = None  # a push or a probe may bring back any instance, these included
        req.held = True
        deployment.held += 1
        self._enqueue(req, req.queued_at or now, front=True)

    def _queue_or_refuse(self, req: Request, now: float) -> None:
        deployment = req.deployment
        assert deployment is not None
        if deployment.queued >= deployment.queue_limit:
            _too_many(req, deployment.busy_body, LIMITED_INSTANCE_CONCURRENCY)
            return
        self._enqueue(req, now)

    def _enqueue(self, req: Request, since: float, front: bool = False) -> None:
        deployment = req.deployment
        assert deployment is not None
        waiting = deployment.waiting
        if len(waiting) > 2 * deployment.hold_limit + 16:
            # Requests that stopped waiting are removed lazily; shed them before the deque grows.
            live = [r for r in waiting if r.waiting]
            waiting.clear()
            waiting.extend(live)
        req.waiting = True
        req.queued_at = since
        deployment.queued += 1
        if front:
            waiting.appendleft(req)
        else:
            waiting.append(req)
        self.queueing.add(deployment)

    def _wait_expired(self, req: Request, now: float) -> None:
        """The deadline sweep took ``req`` out of the queue: it waited max_queue_wait_ms (or,
        held for want of a healthy instance, request_timeout_ms)."""
        deployment = req.deployment
        assert deployment is not None
        held = req.held
        self.leave_queue(req)
        if self.windows_on:
            deployment.window.record_queue_wait((now - req.queued_at) * 1000.0)
        if held:
            _no_instance(req, expired=True)
        else:
            _too_many(req, deployment.wait_body, LIMITED_QUEUE_WAIT)


def _unhold(deployment: DeploymentState, now: float) -> None:
    """Instances are back but full: held requests wait as overloaded ones, from now."""
    for req in deployment.waiting:
        if req.waiting and req.held:
            req.held = False
            req.queued_at = now
    deployment.held = 0


def _hold_all(deployment: DeploymentState) -> None:
    """No healthy instance is left (the last one went, or was ejected): requests waiting
    for a slot on one now wait for an instance, up to request_timeout_ms from when they
    came, as a request arriving now would."""
    for req in deployment.waiting:
        if req.waiting and not req.held:
            req.held = True
    deployment.held = deployment.queued


def _too_many(req: Request, body: bytes, limited: int) -> None:
    req.limited = limited  # the windows count the 429 under this reason
    req.proto.finish(req, 429, TOO_MANY_HEADERS, body, "TooManyRequests")


def _no_instance(req: Request, expired: bool = False) -> None:
    """503: held for request_timeout_ms with no instance coming, or no room to hold."""
    deployment = req.deployment
    assert deployment is not None
    if expired:
        why = f"within request_timeout_ms={round(deployment.timeout * 1000)}"
    else:
        why = f"and {deployment.queued} requests already wait for one"
    req.proto.fail(
        req,
        503,
        "NoHealthyInstance",
        f"deployment {deployment.name} has no healthy instance to serve the request {why}",
    )


def _gone(deployment: DeploymentState, endpoint_gone: bool) -> tuple[str, str]:
    """The 404 a request for a deployment a push or delete took away gets (code, message)."""
    if endpoint_gone:
        return "EndpointNotFound", f"no endpoint named {deployment.endpoint!r}"
    return "DeploymentNotFound", f"no deployment named {deployment.name!r}"


def _any_healthy(instances: list[InstanceState], now: float) -> bool:
    for instance in instances:
        if instance.ejected_until <= now:
            return True
    return False
