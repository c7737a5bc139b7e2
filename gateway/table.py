"""The gateway's route table: generation rules, validation, hot-path form and persistence.

An endpoint's route is replaced only by a push whose generation is at least the one held;
a delete leaves a tombstone so a late, older push cannot bring the endpoint back. The table
is written whole and atomically on every change and read back at start.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from config.contract.defaults import (
    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE,
    DEFAULT_MAX_QUEUE_WAIT_MS,
    DEFAULT_REQUEST_TIMEOUT_MS,
)
from config.files import write_atomically
from config.routes import ApplyRouteResult, DeploymentRoute, EndpointRoute
from config.tokens import load_public_keys, verify_token
from gateway.ratelimit import TokenBucket, retry_after_s
from gateway.responses import error_body
from gateway.routing import RoutingError, TrafficPlan, route_plan
from gateway.upstream import InstanceState
from gateway.windows import Window, WindowSet

log = structlog.get_logger("gateway.table")

TABLE_FORMAT = 1
# The queue is bounded in time by max_queue_wait_ms (Azure's only bound); these bound its
# memory: waiting requests a deployment holds per instance slot, and at most this many.
QUEUE_PER_SLOT = 64
MAX_QUEUE = 4096
TOO_MANY_REQUESTS = "TooManyRequests"  # every 429's code; the body's "limit" says which one
# Generations are epoch milliseconds (decisions.routes.next_generation). One far ahead of the
# clock would win over every later push until that time came, so the admin API refuses it.
MAX_GENERATION_AHEAD_MS = 24 * 3600 * 1000


# --- decisions (pure) ---


def accepts_put(held: int | None, tombstone: int | None, incoming: int) -> bool:
    """A push applies when no newer route is held and no delete at or after it was seen."""
    if held is not None and incoming < held:
        return False
    if tombstone is not None and incoming <= tombstone:
        return False
    return True


def accepts_delete(held: int | None, tombstone: int | None, incoming: int) -> bool:
    """A delete applies when it is at least as new as the route held and any earlier delete."""
    if held is not None and incoming < held:
        return False
    if tombstone is not None and incoming < tombstone:
        return False
    return True


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    message: str


def generation_problems(generation: int, now_ms: int) -> list[FieldProblem]:
    """A generation is epoch milliseconds, at most ``MAX_GENERATION_AHEAD_MS`` ahead of
    ``now_ms`` (this gateway's clock): a later one would pin the route until that time."""
    if generation < 0:
        return [FieldProblem("generation", "must be >= 0")]
    if generation > now_ms + MAX_GENERATION_AHEAD_MS:
        ahead_h = MAX_GENERATION_AHEAD_MS // 3_600_000
        return [
            FieldProblem(
                "generation",
                f"{generation} is more than {ahead_h} h ahead of this gateway's clock ({now_ms} ms since "
                "the epoch); generations are epoch milliseconds",
            )
        ]
    return []


def route_problems(
    route: EndpointRoute, path_name: str | None = None, *, now_ms: int | None = None
) -> list[FieldProblem]:
    """What is wrong with a pushed route beyond its JSON types, each naming its field.
    With ``now_ms``, a generation implausibly far ahead of it is one of them."""
    problems: list[FieldProblem] = []
    if path_name is not None and route.name.lower() != path_name.lower():
        problems.append(FieldProblem("name", f"body names {route.name!r} but the path names {path_name!r}"))
    if not route.name or "/" in route.name or "." in route.name:
        problems.append(FieldProblem("name", "must be a non-empty name without '/' or '.'"))
    if now_ms is not None:
        problems += generation_problems(route.generation, now_ms)
    elif route.generation < 0:
        problems.append(FieldProblem("generation", "must be >= 0"))
    if route.max_request_bytes <= 0:
        problems.append(FieldProblem("max_request_bytes", "must be > 0"))
    if not (math.isfinite(route.max_requests_per_second) and route.max_requests_per_second >= 0):
        problems.append(FieldProblem("max_requests_per_second", "must be a number >= 0 (0: no limit)"))
    for name, weight in route.traffic.items():
        if weight < 0:
            problems.append(FieldProblem(f"traffic.{name}", "weight must be >= 0"))
    for name, share in route.mirror_traffic.items():
        if not 0 <= share <= 100:
            problems.append(FieldProblem(f"mirror_traffic.{name}", "must be between 0 and 100"))
    for digest in route.key_sha256:
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            problems.append(FieldProblem("key_sha256", "each entry must be 64 hex characters"))
            break
    for key, deployment in route.deployments.items():
        where = f"deployments.{key}"
        if deployment.request_timeout_ms <= 0:
            problems.append(FieldProblem(f"{where}.request_timeout_ms", "must be > 0"))
        if deployment.max_concurrent_requests_per_instance < 1:
            problems.append(FieldProblem(f"{where}.max_concurrent_requests_per_instance", "must be >= 1"))
        if deployment.max_queue_wait_ms < 0:
            problems.append(FieldProblem(f"{where}.max_queue_wait_ms", "must be >= 0"))
        for index, instance in enumerate(deployment.instances):
            try:
                InstanceState(instance.id, instance.url)
            except ValueError as exc:
                problems.append(FieldProblem(f"{where}.instances.{index}.url", str(exc)))
    return problems


def describe_validation_error(exc: ValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(".".join(str(part) for part in err["loc"]) or "body", err["msg"]) for err in exc.errors()
    ]


# --- hot-path form ---


def process_share(limit: int, shares: int) -> int:
    """This process's part of a per-instance limit when ``shares`` processes (over every
    gateway) divide it: the kernel and the load balancer spread connections, not requests,
    so each takes an equal share, at least 1."""
    return max(1, math.ceil(limit / max(1, shares)))


class DeploymentState:
    """One deployment as the proxy uses it. Kept across pushes (updated in place) so its
    waiting queue and in-flight requests survive a route change."""

    __slots__ = (
        "endpoint",
        "name",
        "header",
        "timeout",
        "instances",
        "rotor",
        "limit",
        "instance_limit",
        "queue_wait",
        "queue_limit",
        "hold_limit",
        "waiting",
        "queued",
        "held",
        "window",
        "busy_body",
        "wait_body",
    )

    def __init__(self, endpoint: str, name: str, window: Window) -> None:
        self.endpoint = endpoint
        self.name = name
        self.header = b"azureml-model-deployment: " + name.encode("latin-1") + b"\r\n"
        self.window = window
        self.rotor = 0
        self.waiting: deque[Any] = deque()  # requests waiting for a slot (lazily removed)
        self.queued = 0  # how many in ``waiting`` still wait
        self.held = 0  # of those, how many wait for a healthy instance (none when they came)
        self.timeout = DEFAULT_REQUEST_TIMEOUT_MS / 1000
        self.instances: list[InstanceState] = []
        self.limit = DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE
        self.instance_limit = DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE
        self.queue_wait = DEFAULT_MAX_QUEUE_WAIT_MS / 1000
        self.queue_limit = QUEUE_PER_SLOT
        self.hold_limit = QUEUE_PER_SLOT
        self.busy_body = b""
        self.wait_body = b""

    def update(self, route: DeploymentRoute, instances: list[InstanceState], shares: int) -> None:
        self.timeout = route.request_timeout_ms / 1000.0
        self.instances = instances
        self.instance_limit = route.max_concurrent_requests_per_instance
        self.limit = process_share(self.instance_limit, shares)
        self.queue_wait = route.max_queue_wait_ms / 1000.0
        slots = max(1, len(instances)) * self.limit
        # Waiting out a missing instance is a recovery, not an overload: the memory bound
        # applies, max_queue_wait_ms does not (a deployment with no overload queue still holds).
        self.hold_limit = min(MAX_QUEUE, slots * QUEUE_PER_SLOT)
        self.queue_limit = self.hold_limit if route.max_queue_wait_ms > 0 else 0
        self.busy_body = too_many_body(
            f"deployment {self.name}: every instance has {self.instance_limit} requests in flight "
            f"(max_concurrent_requests_per_instance) and the queue of {self.queue_limit} is full",
            "instance_concurrency",
        )
        self.wait_body = too_many_body(
            f"deployment {self.name}: no instance freed a slot within max_queue_wait_ms="
            f"{route.max_queue_wait_ms}",
            "queue_wait",
        )


def too_many_body(message: str, limit: str) -> bytes:
    return error_body(TOO_MANY_REQUESTS, message, limit)


def rate_limited(endpoint: str, rate: float, wait: float) -> RoutingError:
    """The 429 for a request over ``endpoint``'s rate; ``wait``: seconds until a token is back."""
    return RoutingError(
        429,
        TOO_MANY_REQUESTS,
        f"endpoint {endpoint} allows {rate:g} requests/s",
        limit="endpoint_rate",
        retry_after=retry_after_s(wait),
    )


TOKENS_REMEMBERED = 4096


def token_expiry(endpoint: EndpointState, token: str | None, now: float) -> int | None:
    """When `token` stops being good for `endpoint`, or None if it is not good now."""
    if not token:
        return None
    expires = endpoint.tokens_seen.get(token)
    if expires is None:
        expires = verify_token(token, endpoint.name, endpoint.token_keys, now=now)
        if expires is None:
            return None
        if len(endpoint.tokens_seen) >= TOKENS_REMEMBERED:
            endpoint.tokens_seen.clear()
        endpoint.tokens_seen[token] = expires
    return expires if expires > now else None


class EndpointState:
    """One endpoint as the proxy uses it, rebuilt on every applied push."""

    __slots__ = (
        "name",
        "route",
        "auth_mode",
        "key_sha256",
        "token_keys",
        "tokens_seen",
        "plan",
        "deployments",
        "max_bytes",
        "limiter",
        "retry_dropped",
        "window",
        "mirrors",
    )

    def __init__(
        self,
        route: EndpointRoute,
        plan: TrafficPlan,
        deployments: dict[str, DeploymentState],
        window: Window | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.name = route.name
        self.route = route
        self.auth_mode = route.auth_mode
        self.key_sha256 = tuple(digest.lower() for digest in route.key_sha256)
        self.token_keys = load_public_keys(route.token_public_keys) if route.auth_mode == "aml_token" else []
        # Tokens that verified, with their expiry: a client without keep-alive pays for the
        # signature check once per token, not per request. Rebuilt with the state on each push.
        self.tokens_seen: dict[str, int] = {}
        self.plan = plan
        self.deployments = deployments
        self.max_bytes = route.max_request_bytes
        self.limiter = limiter  # None: no rate limit (the hot path checks only this)
        self.retry_dropped = route.retry_dropped_requests
        self.window = window if window is not None else Window(route.name.lower(), "")
        # Shadow deployments and the share of requests each gets a copy of.
        self.mirrors = tuple(
            (deployments[name], min(share, 100) / 100.0)
            for name, share in route.mirror_traffic.items()
            if share > 0 and name in deployments
        )


def build_endpoint_state(
    route: EndpointRoute,
    previous: dict[tuple[str, str], InstanceState],
    *,
    old: EndpointState | None = None,
    windows: WindowSet | None = None,
    processes: int = 1,
    now: float = 0.0,
) -> EndpointState:
    """Hot-path form of a route, keeping each unchanged instance's load and pooled
    connections and each kept deployment's queue."""
    shares = processes * route.gateways  # this process's part of each limit: 1/shares
    endpoint = route.name.lower()
    kept = old.deployments if old is not None else {}
    deployments: dict[str, DeploymentState] = {}
    for name, deployment in route.deployments.items():
        instances = [
            previous.get((inst.id, inst.url)) or InstanceState(inst.id, inst.url)
            for inst in deployment.instances
        ]
        state = kept.get(name)
        if state is None:
            window = windows.get(endpoint, name) if windows is not None else Window(endpoint, name)
            state = DeploymentState(endpoint, name, window)
        state.update(deployment, instances, shares)
        deployments[name] = state
    window = windows.get(endpoint) if windows is not None else None
    limiter = _limiter(route, old, shares, now)
    return EndpointState(route, route_plan(route), deployments, window, limiter)


def _limiter(route: EndpointRoute, old: EndpointState | None, shares: int, now: float) -> TokenBucket | None:
    """This process's bucket for the endpoint: an equal share of the endpoint's rate when
    ``shares`` processes (over every gateway) divide it, as for instance limits. Kept across
    pushes while the rate stays (a re-push every route_repush_seconds must not refill it), a
    full new one when the rate changes."""
    if route.max_requests_per_second <= 0:
        return None
    rate = route.max_requests_per_second / max(1, shares)
    kept = old.limiter if old is not None else None
    if kept is not None and kept.rate == rate:
        return kept
    return TokenBucket(rate, now)


def _instances_of(state: EndpointState | None) -> dict[tuple[str, str], InstanceState]:
    if state is None:
        return {}
    return {
        (inst.id, inst.url): inst
        for deployment in state.deployments.values()
        for inst in deployment.instances
    }


def _retire_dropped(old: dict[tuple[str, str], InstanceState], new: EndpointState | None) -> None:
    kept = set(map(id, _instances_of(new).values()))
    for inst in old.values():
        if id(inst) not in kept:
            inst.retire()


@dataclass
class RouteTable:
    """Every endpoint's route and tombstone; ``live`` is what the proxy reads per request."""

    routes: dict[str, EndpointRoute] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    live: dict[str, EndpointState] = field(default_factory=dict)
    on_change: Callable[[], None] | None = None
    windows: WindowSet = field(default_factory=WindowSet)
    processes: int = 1  # gateway processes sharing the ports (limits are split between them)
    on_rebuilt: Callable[[EndpointState], None] | None = None
    # Deployments a push or delete took away (the flag: the whole endpoint went).
    on_dropped: Callable[[list[DeploymentState], bool], None] | None = None

    @staticmethod
    def _key(name: str) -> str:
        return name.lower()

    def get(self, name: str) -> EndpointRoute | None:
        return self.routes.get(self._key(name))

    def put(self, route: EndpointRoute) -> ApplyRouteResult:
        key = self._key(route.name)
        held = self.routes.get(key)
        held_gen = held.generation if held is not None else None
        tombstone = self.tombstones.get(key)
        if not accepts_put(held_gen, tombstone, route.generation):
            current = held_gen if held_gen is not None else tombstone
            return ApplyRouteResult(applied=False, generation=current or 0)
        old = self.live.get(key)
        previous = _instances_of(old)  # before the build: kept deployments update in place
        new = build_endpoint_state(
            route, previous, old=old, windows=self.windows, processes=self.processes, now=time.perf_counter()
        )
        self.routes[key] = route
        self.tombstones.pop(key, None)
        self.live[key] = new
        _retire_dropped(previous, new)
        if self.on_rebuilt is not None:
            self.on_rebuilt(new)
        if old is not None and self.on_dropped is not None:
            kept_states = set(map(id, new.deployments.values()))
            gone = [state for state in old.deployments.values() if id(state) not in kept_states]
            if gone:
                self.on_dropped(gone, False)
        self._changed()
        return ApplyRouteResult(applied=True, generation=route.generation)

    def delete(self, name: str, generation: int) -> ApplyRouteResult:
        key = self._key(name)
        held = self.routes.get(key)
        held_gen = held.generation if held is not None else None
        tombstone = self.tombstones.get(key)
        if not accepts_delete(held_gen, tombstone, generation):
            current = held_gen if held_gen is not None else tombstone
            return ApplyRouteResult(applied=False, generation=current or 0)
        self.routes.pop(key, None)
        self.tombstones[key] = generation
        old = self.live.pop(key, None)
        _retire_dropped(_instances_of(old), None)
        if old is not None and self.on_dropped is not None and old.deployments:
            self.on_dropped(list(old.deployments.values()), True)
        self._changed()
        return ApplyRouteResult(applied=True, generation=generation)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- persistence form ---
    def to_document(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "routes": {key: route.model_dump(mode="json") for key, route in self.routes.items()},
            "tombstones": dict(self.tombstones),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RouteTable:
        table = cls()
        now_ms = wall_ms()
        for key, generation in dict(document.get("tombstones", {})).items():
            if generation_problems(int(generation), now_ms):
                log.warning("routes.tombstone_skipped", endpoint=str(key), generation=int(generation))
                continue
            table.tombstones[str(key)] = int(generation)
        for route in _valid_routes(document, now_ms):
            table.put(route)
        return table

    def apply_document(self, document: dict[str, Any]) -> int:
        """Take in a table another process persisted, under the generation rules (nothing
        older replaces what is held); unchanged routes are left alone. Returns the changes."""
        changes = 0
        for key, generation in dict(document.get("tombstones", {})).items():
            if self.tombstones.get(str(key)) != int(generation):
                changes += self.delete(str(key), int(generation)).applied
        for route in _valid_routes(document, wall_ms()):
            if self.routes.get(self._key(route.name)) != route:
                changes += self.put(route).applied
        return changes

    def endpoints(self) -> Iterable[str]:
        return self.routes.keys()


def wall_ms() -> int:
    """This gateway's clock in the generations' unit (epoch milliseconds)."""
    return time.time_ns() // 1_000_000


def _valid_routes(document: dict[str, Any], now_ms: int) -> list[EndpointRoute]:
    routes = []
    for raw in dict(document.get("routes", {})).values():
        route = EndpointRoute.model_validate(raw)
        problems = route_problems(route, now_ms=now_ms)
        if problems:
            log.warning(
                "routes.skipped",
                endpoint=route.name,
                problems=[f"{p.field}: {p.message}" for p in problems],
            )
            continue
        routes.append(route)
    return routes


# --- persistence I/O ---


def save_table(path: Path, table: RouteTable) -> None:
    write_atomically(path, json.dumps(table.to_document(), indent=1).encode())


def load_table(path: Path) -> RouteTable:
    """The table persisted at ``path``; an unreadable file is set aside and the table starts
    empty (endpoints re-push their routes periodically, so it heals)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return RouteTable()
    try:
        return RouteTable.from_document(json.loads(raw))
    except (ValueError, TypeError, ValidationError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        log.error("routes.unreadable", path=str(path), moved_to=str(aside), error=str(exc))
        return RouteTable()
