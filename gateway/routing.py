"""Pure routing decisions for the data plane: no I/O, no clock, no protocol code.

The protocol layer (``gateway.client``) parses bytes and calls these; the tests drive them
table-driven. Every function answers one question and returns either its answer or a
``RoutingError`` carrying the HTTP status and Azure-style error code the client should see.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from config.routes import EndpointRoute

# Resources an endpoint serves; each is forwarded to the same path on the instance.
SCORE = "/score"
SWAGGER = "/swagger.json"
_RESOURCES = (SCORE, SWAGGER)
_ENDPOINT_PREFIX = "/endpoints/"
# azmlinfsrv answers 431 past 100 characters; refuse earlier with the same status.
MAX_REQUEST_ID_CHARS = 100


@dataclass(frozen=True, slots=True)
class RoutingError:
    """A request the gateway answers itself; ``code`` follows Azure's names where it has one.
    A 429 names the ``limit`` it hit and when to come back (``retry_after``, seconds)."""

    status: int
    code: str
    message: str
    limit: str | None = None
    retry_after: int = 0


@dataclass(frozen=True, slots=True)
class RequestTarget:
    endpoint: str
    resource: str  # SCORE or SWAGGER


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """An endpoint's traffic split, ready for one draw per request.

    ``names`` are the deployments with weight > 0 and ``cumulative`` their running share
    (the last is exactly 1.0). ``targetable`` is every deployment the
    ``azureml-model-deployment`` header may name, whatever its weight.
    """

    names: tuple[str, ...]
    cumulative: tuple[float, ...]
    targetable: frozenset[str]


class LoadedInstance(Protocol):
    """What instance choice reads from an instance's live state."""

    @property
    def outstanding(self) -> int: ...

    @property
    def ejected_until(self) -> float: ...


def host_endpoint(host: str, domain: str) -> str | None:
    """The endpoint named by a Host header ``<endpoint>.<domain>[:port]``, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: never an endpoint host
        return None
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    host = host.rstrip(".")
    suffix = "." + domain.lower()
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    if not label or "." in label:
        return None
    return label


def parse_target(path: str, host: str | None, domain: str) -> RequestTarget | RoutingError:
    """Which endpoint and resource a request path (without query) and Host header name.

    ``/endpoints/<endpoint>/score`` works on any host; ``/score`` needs ``<endpoint>.<domain>``.
    """
    if path.startswith(_ENDPOINT_PREFIX):
        rest = path[len(_ENDPOINT_PREFIX) :]
        slash = rest.find("/")
        if slash > 0:
            resource = rest[slash:]
            if resource in _RESOURCES:
                return RequestTarget(endpoint=rest[:slash].lower(), resource=resource)
        return RoutingError(404, "NotFound", f"no such path: {path}")
    if path in _RESOURCES:
        endpoint = host_endpoint(host, domain) if host else None
        if endpoint is None:
            return RoutingError(
                404,
                "EndpointNotFound",
                f"the host names no endpoint; use <endpoint>.{domain} or /endpoints/<endpoint>{path}",
            )
        return RequestTarget(endpoint=endpoint, resource=path)
    return RoutingError(404, "NotFound", f"no such path: {path}")


def bearer_token(authorization: str | None) -> str | None:
    """The credential in ``Authorization: Bearer <credential>`` (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip()
    return credential or None


def key_matches(key: str | None, key_sha256: Sequence[str]) -> bool:
    """Whether ``key`` hashes to one of the held hex digests, compared in constant time.

    Every digest is compared (no early exit), so timing says nothing about which matched.
    """
    if not key:
        return False
    digest = hashlib.sha256(key.encode()).hexdigest()
    matched = False
    for held in key_sha256:
        matched |= hmac.compare_digest(digest, held)
    return matched


def plan_traffic(traffic: Mapping[str, int], deployments: Iterable[str]) -> TrafficPlan:
    """Turn ``{deployment: weight}`` into cumulative shares, for one draw per request.

    Weights are relative (they normally sum to 100). A deployment named in ``traffic`` but
    not (yet) in ``deployments`` keeps its share: its requests find no instance (503) rather
    than silently moving to another deployment.
    """
    live = [(name, weight) for name, weight in traffic.items() if weight > 0]
    total = sum(weight for _, weight in live)
    names: list[str] = []
    cumulative: list[float] = []
    running = 0
    for name, weight in live:
        running += weight
        names.append(name)
        cumulative.append(running / total)
    if cumulative:
        cumulative[-1] = 1.0
    targetable = frozenset(deployments) | frozenset(traffic)
    return TrafficPlan(names=tuple(names), cumulative=tuple(cumulative), targetable=targetable)


def route_plan(route: EndpointRoute) -> TrafficPlan:
    return plan_traffic(route.traffic, list(route.deployments))


def choose_deployment(
    route: EndpointRoute | TrafficPlan, target: str | None, draw: float
) -> str | RoutingError:
    """The deployment one request goes to.

    ``target`` (the ``azureml-model-deployment`` header) wins even at 0 % traffic; otherwise
    ``draw`` in [0, 1) picks by weight. The hot path passes the route's precomputed plan.
    """
    plan = route if isinstance(route, TrafficPlan) else route_plan(route)
    if target:
        if target in plan.targetable:
            return target
        return RoutingError(404, "DeploymentNotFound", f"no deployment named {target!r}")
    if not plan.names:
        return RoutingError(
            404,
            "NoValidDeployments",
            "no deployment takes traffic; set traffic or use the azureml-model-deployment header",
        )
    index = bisect_right(plan.cumulative, draw)  # the first bound above draw
    names = plan.names
    return names[index] if index < len(names) else names[-1]


# ``pick_instance`` answers this when every healthy instance is at its concurrency limit.
FULL = -1


def pick_instance(
    instances: Sequence[LoadedInstance],
    start: int,
    now: float,
    limit: int = 0,
    exclude: Sequence[object] = (),
) -> int | None:
    """Index of the healthy instance with the fewest outstanding requests below ``limit``.

    ``None`` when there is no healthy instance (none at all, or every one ejected, i.e.
    ``ejected_until > now``, or excluded because it already failed this request); ``FULL``
    when healthy instances exist but each has ``limit`` outstanding (``limit`` 0: no limit).
    Ties go to the first one at or after ``start``, so a rotating start spreads them.
    """
    count = len(instances)
    best = -1
    best_load = 0
    full = False
    for step in range(count):
        index = (start + step) % count
        instance = instances[index]
        if instance.ejected_until > now or (exclude and instance in exclude):
            continue
        load = instance.outstanding
        if limit and load >= limit:
            full = True
        elif best == -1 or load < best_load:
            best, best_load = index, load
    if best != -1:
        return best
    return FULL if full else None


def request_id(x_request_id: str | None, client_request_id: str | None, fresh: str) -> str | RoutingError:
    """The id echoed as ``x-request-id``: the client's, else its client request id, else fresh."""
    chosen = x_request_id or client_request_id
    if not chosen:
        return fresh
    if len(chosen) > MAX_REQUEST_ID_CHARS:
        return RoutingError(
            431,
            "RequestHeaderFieldsTooLarge",
            f"x-request-id must not exceed {MAX_REQUEST_ID_CHARS} characters",
        )
    return chosen


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def fresh_request_id(bits: int | None = None) -> str:
    """A random (version 4) UUID string, without building a ``uuid.UUID`` per request.

    Request ids need uniqueness, not secrecy, so the fast non-cryptographic generator will do.
    """
    value = (random.getrandbits(128) if bits is None else bits) & _UUID4_CLEAR | _UUID4_SET
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RequestIds:
    """Version-4-shaped UUID strings for the hot path: a random 74-bit prefix, renewed every
    2**48 ids, and a counter in the last 12 hex digits. Unique (not unpredictable) at a
    quarter of ``fresh_request_id``'s cost; request ids are not secrets."""

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        self._prefix = fresh_request_id()[:24]
        self._next = random.getrandbits(32)

    def new(self) -> str:
        count = self._next
        if count >= 1 << 48:
            self._renew()
            count = self._next
        self._next = count + 1
        return f"{self._prefix}{count:012x}"

    __call__ = new
