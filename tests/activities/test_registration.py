"""Workflows and the worker agree on names: every activity a workflow calls (read from the
workflow's source) is one the contract declares and the worker registers, and every handler
a workflow offers answers to the name the contract gives its callers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio import activity, workflow

from config.contract import names
from config.settings import Settings
from worker.main import WORKFLOWS, activities

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_MODULES = sorted((ROOT / "workflows").glob("*.py"))
CALLS = {"execute_activity", "start_activity", "execute_local_activity", "start_local_activity"}


def activity_references(source: str) -> tuple[set[str], list[str]]:
    """The activity names a workflow module calls through `names.Activity`, and every call
    that names its activity any other way (a string, a variable), as source text."""
    found: set[str] = set()
    other: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CALLS
        ):
            continue
        first = node.args[0] if node.args else None
        if (
            isinstance(first, ast.Attribute)
            and isinstance(first.value, ast.Name)
            and first.value.id == "Activity"
            and first.attr in names.declared(names.Activity)
        ):
            found.add(getattr(names.Activity, first.attr))
        else:
            other.append(ast.unparse(node)[:80])
    return found, other


def called_by_workflows() -> set[str]:
    called: set[str] = set()
    for path in WORKFLOW_MODULES:
        found, _ = activity_references(path.read_text())
        called |= found
    return called


def registered(tmp_path: Path) -> set[str]:
    settings = Settings(home=tmp_path, control_token=SecretStr("test-credential"))
    # EndpointActivities only keeps the client for later: no connection is made here.
    return {activity._Definition.must_from_callable(fn).name for fn in activities(object(), settings)}


@pytest.mark.parametrize("path", WORKFLOW_MODULES, ids=lambda p: p.name)
def test_a_workflow_names_each_activity_by_its_contract_constant(path: Path) -> None:
    _, other = activity_references(path.read_text())
    assert not other, f"{path.name} calls activities not named by config.contract.names.Activity: {other}"


def test_the_scan_catches_an_activity_named_by_a_string() -> None:
    found, other = activity_references('await workflow.execute_activity("apply_route", request)')
    assert (found, other) == (set(), ["workflow.execute_activity('apply_route', request)"])


def test_every_activity_a_workflow_calls_is_registered_by_the_worker(tmp_path: Path) -> None:
    called = called_by_workflows()
    assert called, "the scan found no activity call at all"
    missing = called - registered(tmp_path)
    assert not missing, f"workflows call {sorted(missing)}, which worker/main.py does not register"


def test_the_worker_registers_exactly_the_activities_the_contract_declares(tmp_path: Path) -> None:
    assert registered(tmp_path) == set(names.declared(names.Activity).values())


def test_every_declared_activity_is_called_by_some_workflow() -> None:
    assert called_by_workflows() == set(names.declared(names.Activity).values())


def handlers(cls: type) -> dict[str, set[str]]:
    definition = workflow._Definition.must_from_class(cls)
    return {
        "type": {definition.name},
        "updates": {name for name in definition.updates if name is not None},
        "signals": {name for name in definition.signals if name is not None},
        "queries": {name for name in definition.queries if name is not None},
    }


CONTRACT = {
    "EndpointWorkflow": {
        "type": {names.ENDPOINT_WORKFLOW},
        "updates": set(names.declared(names.EndpointUpdate).values()),
        "signals": set(names.declared(names.EndpointSignal).values()),
        "queries": set(names.declared(names.EndpointQuery).values()),
    },
    "DeploymentWorkflow": {
        "type": {names.DEPLOYMENT_WORKFLOW},
        "updates": set(),
        "signals": set(names.declared(names.DeploymentSignal).values()),
        "queries": set(),
    },
    "RolloutWorkflow": {
        "type": {names.ROLLOUT_WORKFLOW},
        "updates": set(),
        "signals": set(names.declared(names.RolloutSignal).values()),
        "queries": set(names.declared(names.RolloutQuery).values()),
    },
    "HostPatchWorkflow": {
        "type": {names.HOST_PATCH_WORKFLOW},
        "updates": set(),
        "signals": set(),
        "queries": set(names.declared(names.HostPatchQuery).values()),
    },
}


@pytest.mark.parametrize("cls", WORKFLOWS, ids=lambda cls: cls.__name__)
def test_a_workflow_answers_to_the_names_the_contract_gives_its_callers(cls: type) -> None:
    assert handlers(cls) == CONTRACT[cls.__name__]
