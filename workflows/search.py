"""Custom search attributes, so the Temporal UI filters rollouts by endpoint, deployment, phase.

A dev server takes them as start flags (`dev_server_flags`); any other cluster gets them from
the worker at start (`ensure_search_attributes`), through Temporal's operator service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.service import RPCError, RPCStatusCode

if TYPE_CHECKING:
    from temporalio.client import Client

ENDPOINT = SearchAttributeKey.for_keyword("TidegateEndpoint")
FROM = SearchAttributeKey.for_keyword("TidegateFrom")
TO = SearchAttributeKey.for_keyword("TidegateTo")
PHASE = SearchAttributeKey.for_keyword("TidegatePhase")
STEP_WEIGHT = SearchAttributeKey.for_int("TidegateStepWeight")

ALL = (ENDPOINT, FROM, TO, PHASE, STEP_WEIGHT)

# The names `temporal server start-dev --search-attribute` and
# `temporal operator search-attribute create --type` accept.
TYPE_NAMES: dict[SearchAttributeIndexedValueType, str] = {
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}

RPC_TIMEOUT = timedelta(seconds=10)
# Reads of the list after an add, until it shows what was added (a bound, not a schedule).
LISTED_POLLS = 50
LISTED_EVERY = 0.2


def type_name(indexed_value_type: int) -> str:
    """The CLI's name for a server's IndexedValueType number (`Keyword`, `Int`, ...)."""
    try:
        return TYPE_NAMES[SearchAttributeIndexedValueType(indexed_value_type)]
    except (ValueError, KeyError):
        return f"IndexedValueType {indexed_value_type}"


def dev_server_flags() -> list[str]:
    """`temporal server start-dev --search-attribute Name=Type` for each key."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={type_name(key.indexed_value_type)}"]
    return flags


def initial(endpoint: str, baseline: str, canary: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(ENDPOINT, endpoint),
            SearchAttributePair(FROM, baseline),
            SearchAttributePair(TO, canary),
            SearchAttributePair(PHASE, "Progressing"),
            SearchAttributePair(STEP_WEIGHT, 0),
        ]
    )


@dataclass(frozen=True)
class TypeConflict:
    name: str
    wanted: SearchAttributeIndexedValueType
    found: int

    def __str__(self) -> str:
        return f"{self.name} is {type_name(self.found)}, Tidegate needs {type_name(self.wanted)}"


@dataclass(frozen=True)
class SearchAttributePlan:
    missing: tuple[SearchAttributeKey[Any], ...]
    conflicts: tuple[TypeConflict, ...]


def plan_search_attributes(
    listed: Mapping[str, int], wanted: Iterable[SearchAttributeKey[Any]] = ALL
) -> SearchAttributePlan:
    """Which of `wanted` a namespace lacks, and which it has under another type, given the
    custom attributes the server lists (name -> IndexedValueType number)."""
    missing: list[SearchAttributeKey[Any]] = []
    conflicts: list[TypeConflict] = []
    for key in wanted:
        found = listed.get(key.name)
        if found is None:
            missing.append(key)
        elif int(found) != int(key.indexed_value_type):
            conflicts.append(TypeConflict(key.name, key.indexed_value_type, int(found)))
    return SearchAttributePlan(missing=tuple(missing), conflicts=tuple(conflicts))


def create_commands(keys: Sequence[SearchAttributeKey[Any]], namespace: str) -> list[str]:
    """The `temporal operator search-attribute create` lines that add `keys`, one each.
    Hazard: CLI 1.9 takes `--name A --name B --type Keyword`, says it added them, and adds A only."""
    return [
        f"temporal operator search-attribute create --namespace {namespace} "
        f"--name {key.name} --type {type_name(key.indexed_value_type)}"
        for key in keys
    ]


class SearchAttributeError(RuntimeError):
    """Tidegate's search attributes are not usable in this namespace; the worker must not start."""


class SearchAttributeTypeConflict(SearchAttributeError):
    pass


class SearchAttributePermissionDenied(SearchAttributeError):
    pass


def conflict_message(conflicts: Sequence[TypeConflict], namespace: str) -> str:
    listed = "; ".join(str(conflict) for conflict in conflicts)
    return (
        f"Temporal namespace {namespace!r} has search attributes of the wrong type: {listed}. "
        "A search attribute's type cannot be changed in place; use another namespace "
        "(TIDEGATE_TEMPORAL_NAMESPACE) or have an operator remove and re-create them."
    )


def permission_message(
    keys: Sequence[SearchAttributeKey[Any]], namespace: str, action: str, error: RPCError
) -> str:
    names = ", ".join(f"{key.name} ({type_name(key.indexed_value_type)})" for key in keys)
    commands = "\n".join(f"  {command}" for command in create_commands(keys, namespace))
    # Refused the list, it cannot tell which exist: the operator adds those that do not.
    which = names if action == "add" else f"whichever of {names} it lacks"
    return (
        f"Temporal refused to {action} search attributes in namespace {namespace!r} "
        f"({error.status.name}: {error.message}). An operator must add {which}:\n{commands}"
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add whichever of Tidegate's search attributes the namespace lacks, before the worker
    polls: a rollout started without them fails. Returns the names added (none on a rerun)."""
    # Hazard: imported here, not above: workflow code imports this module, and structlog
    # pulls in rich, whose import touches `random`, which the workflow sandbox refuses.
    import structlog

    log = structlog.get_logger()
    listed = await _listed(client, namespace, ALL)
    plan = plan_search_attributes(listed)
    if plan.conflicts:
        raise SearchAttributeTypeConflict(conflict_message(plan.conflicts, namespace))
    if not plan.missing:
        log.info("search_attributes.present", namespace=namespace, names=[key.name for key in ALL])
        return []
    request = AddSearchAttributesRequest(
        namespace=namespace,
        search_attributes={
            key.name: IndexedValueType.ValueType(key.indexed_value_type) for key in plan.missing
        },
    )
    try:
        await client.operator_service.add_search_attributes(request, timeout=RPC_TIMEOUT)
    except RPCError as error:
        if error.status == RPCStatusCode.PERMISSION_DENIED:
            raise SearchAttributePermissionDenied(
                permission_message(plan.missing, namespace, "add", error)
            ) from error
        raise
    await _until_listed(client, namespace)
    added = [key.name for key in plan.missing]
    log.info("search_attributes.registered", namespace=namespace, names=added)
    return added


async def _listed(client: Client, namespace: str, keys: Sequence[SearchAttributeKey[Any]]) -> dict[str, int]:
    try:
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace), retry=True, timeout=RPC_TIMEOUT
        )
    except RPCError as error:
        if error.status == RPCStatusCode.PERMISSION_DENIED:
            raise SearchAttributePermissionDenied(
                permission_message(keys, namespace, "list", error)
            ) from error
        raise
    return {name: int(kind) for name, kind in response.custom_attributes.items()}


async def _until_listed(client: Client, namespace: str) -> None:
    """Read the list back until it shows the added attributes. Hazard: the SQL visibility
    store takes an add of an existing name in silence, whatever its type, so a concurrent
    add of another type shows only here."""
    for _ in range(LISTED_POLLS):
        plan = plan_search_attributes(await _listed(client, namespace, ALL))
        if plan.conflicts:
            raise SearchAttributeTypeConflict(conflict_message(plan.conflicts, namespace))
        if not plan.missing:
            return
        await asyncio.sleep(LISTED_EVERY)
    names = ", ".join(key.name for key in plan.missing)
    raise SearchAttributeError(
        f"Temporal accepted search attributes {names} in namespace {namespace!r} "
        f"but still does not list them after {LISTED_POLLS} reads"
    )
