"""The layers import one way: control → workflows → decisions → config (the contract leaf);
workflows reach activities only through the contract's names; activities never import a
workflow, and reach the gateway and the host over HTTP, never by import.

Every import counts, including those inside functions, `TYPE_CHECKING` blocks and
`workflow.unsafe.imports_passed_through()`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("config", "decisions", "workflows", "activities", "worker", "control", "gateway", "host")

# What each layer may import besides itself (third-party and standard modules are not checked).
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "decisions": frozenset({"config"}),
    "workflows": frozenset({"config", "decisions"}),
    "activities": frozenset({"config", "decisions"}),
    "worker": frozenset({"config", "decisions", "workflows", "activities"}),
    # The CLI starts every process (`tidegate up`, `tidegate worker`, ...), so it may import them.
    "control": frozenset({"config", "decisions", "workflows", "activities", "worker", "gateway", "host"}),
    "gateway": frozenset({"config", "decisions"}),
    "host": frozenset({"config", "decisions"}),
}

# Only this module spells a workflow id; everything else calls its functions.
ID_PREFIXES = ("endpoint/", "deployment/", "rollout/", "host-patch/")
IDS_MODULE = Path("config/contract/ids.py")


def modules() -> list[Path]:
    return sorted(
        path.relative_to(ROOT)
        for layer in LAYERS
        for path in (ROOT / layer).rglob("*.py")
        if "samples" not in path.parts
    )


def imported_layers(source: str, own: str) -> set[str]:
    """The project layers a module's source imports (a relative import is its own layer)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(own if node.level else (node.module or "").split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=str)
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    layer = path.parts[0]
    forbidden = imported_layers((ROOT / path).read_text(), layer) - ALLOWED[layer] - {layer}
    assert not forbidden, f"{path} ({layer}) imports {sorted(forbidden)}"


def test_the_rules_cover_every_layer_and_have_no_circle() -> None:
    assert set(ALLOWED) == set(LAYERS)
    seen: set[str] = set()

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"import circle: {' → '.join((*path, layer))}"
        if layer in seen:
            return
        for below in ALLOWED[layer]:
            visit(below, (*path, layer))
        seen.add(layer)

    for layer in LAYERS:
        visit(layer, ())


def test_the_checker_sees_imports_inside_functions_and_sandbox_blocks() -> None:
    source = (
        "from temporalio import workflow\n"
        "with workflow.unsafe.imports_passed_through():\n"
        "    from activities.compute import ComputeActivities\n"
        "def later():\n"
        "    import control.cli\n"
        "from . import options\n"
    )
    assert imported_layers(source, "workflows") == {"activities", "control", "workflows"}


WITH_IDS = [path for path in modules() if path.parts[0] not in ("gateway", "host")]


@pytest.mark.parametrize("path", WITH_IDS, ids=str)
def test_only_the_ids_module_spells_a_workflow_id(path: Path) -> None:
    if path == IDS_MODULE:
        return
    tree = ast.parse((ROOT / path).read_text(), filename=str(path))
    spelled = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(ID_PREFIXES)
    ]
    assert not spelled, f"{path} builds or parses a workflow id itself: {spelled}; use config/contract/ids.py"
