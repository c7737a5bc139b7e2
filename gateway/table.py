"""The gateway's route table: generation rules, validation, hot-path form and persistence.

An endpoint's route is replaced only by a push whose generation is at least the one held;
a delete leaves a tombstone so a late, older push cannot bring the endpoint back. The table
is written whole and atomically on every change and read back at start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from config.routes import ApplyRouteResult, EndpointRoute
from gateway.routing import TrafficPlan, route_plan
from gateway.upstream import InstanceState

log = structlog.get_logger("gateway.table")

TABLE_FORMAT = 1


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


def route_problems(route: EndpointRoute, path_name: str | None = None) -> list[FieldProblem]:
    """What is wrong with a pushed route beyond its JSON types, each naming its field."""
    problems: list[FieldProblem] = []
    if path_name is not None and route.name.lower() != path_name.lower():
        problems.append(FieldProblem("name", f"body names {route.name!r} but the path names {path_name!r}"))
    if not route.name or "/" in route.name or "." in route.name:
        problems.append(FieldProblem("name", "must be a non-empty name without '/' or '.'"))
    if route.generation < 0:
        problems.append(FieldProblem("generation", "must be >= 0"))
    if route.max_request_bytes <= 0:
        problems.append(FieldProblem("max_request_bytes", "must be > 0"))
    for name, weight in route.traffic.items():
        if weight < 0:
            problems.append(FieldProblem(f"traffic.{name}", "weight must be >= 0"))
    for digest in route.key_sha256:
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            problems.append(FieldProblem("key_sha256", "each entry must be 64 hex characters"))
            break
    for key, deployment in route.deployments.items():
        where = f"deployments.{key}"
        if deployment.request_timeout_ms <= 0:
            problems.append(FieldProblem(f"{where}.request_timeout_ms", "must be > 0"))
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


class DeploymentState:
    """One deployment as the proxy uses it: pre-encoded header, timeout, live instances."""

    __slots__ = ("name", "header", "timeout", "instances", "rotor")

    def __init__(self, name: str, timeout_ms: int, instances: list[InstanceState]) -> None:
        self.name = name
        self.header = b"azureml-model-deployment: " + name.encode("latin-1") + b"\r\n"
        self.timeout = timeout_ms / 1000.0
        self.instances = instances
        self.rotor = 0


class EndpointState:
    """One endpoint as the proxy uses it, rebuilt on every applied push."""

    __slots__ = ("name", "route", "auth_mode", "key_sha256", "plan", "deployments", "max_bytes")

    def __init__(
        self,
        route: EndpointRoute,
        plan: TrafficPlan,
        deployments: dict[str, DeploymentState],
    ) -> None:
        self.name = route.name
        self.route = route
        self.auth_mode = route.auth_mode
        self.key_sha256 = tuple(digest.lower() for digest in route.key_sha256)
        self.plan = plan
        self.deployments = deployments
        self.max_bytes = route.max_request_bytes


def build_endpoint_state(
    route: EndpointRoute, previous: dict[tuple[str, str], InstanceState]
) -> EndpointState:
    """Hot-path form of a route, keeping each unchanged instance's load and pooled connections."""
    deployments: dict[str, DeploymentState] = {}
    for name, deployment in route.deployments.items():
        instances = [
            previous.get((inst.id, inst.url)) or InstanceState(inst.id, inst.url)
            for inst in deployment.instances
        ]
        deployments[name] = DeploymentState(name, deployment.request_timeout_ms, instances)
    return EndpointState(route, route_plan(route), deployments)


def _instances_of(state: EndpointState | None) -> dict[tuple[str, str], InstanceState]:
    if state is None:
        return {}
    return {
        (inst.id, inst.url): inst
        for deployment in state.deployments.values()
        for inst in deployment.instances
    }


def _retire_dropped(old: EndpointState | None, new: EndpointState | None) -> None:
    kept = set(map(id, _instances_of(new).values()))
    for inst in _instances_of(old).values():
        if id(inst) not in kept:
            inst.retire()


@dataclass
class RouteTable:
    """Every endpoint's route and tombstone; ``live`` is what the proxy reads per request."""

    routes: dict[str, EndpointRoute] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    live: dict[str, EndpointState] = field(default_factory=dict)
    on_change: Callable[[], None] | None = None

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
        new = build_endpoint_state(route, _instances_of(old))
        self.routes[key] = route
        self.tombstones.pop(key, None)
        self.live[key] = new
        _retire_dropped(old, new)
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
        _retire_dropped(self.live.pop(key, None), None)
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
        for key, generation in dict(document.get("tombstones", {})).items():
            table.tombstones[str(key)] = int(generation)
        for raw in dict(document.get("routes", {})).values():
            route = EndpointRoute.model_validate(raw)
            problems = route_problems(route)
            if problems:
                log.warning(
                    "routes.skipped",
                    endpoint=route.name,
                    problems=[f"{p.field}: {p.message}" for p in problems],
                )
                continue
            table.put(route)
        return table

    def endpoints(self) -> Iterable[str]:
        return self.routes.keys()


# --- persistence I/O ---


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` so a crash leaves either the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
