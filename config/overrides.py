"""`--set path=value` overrides, as `az ml ... create -f spec.yml --set a.b=c` applies them.

Paths are dotted keys with optional list indexes: `instance_count`, `tags.team`,
`request_settings.request_timeout_ms`, `identity.user_assigned_identities[0].resource_id`.
Values are read as YAML, so `2` is an int, `true` a bool, `null` None, `'2'` a string and
`{blue: 90, green: 10}` a mapping; an empty value is the empty string.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

__all__ = [
    "PathPart",
    "apply_set",
    "format_path",
    "parse_assignment",
    "parse_assignments",
    "parse_path",
    "set_path",
]

PathPart = str | int

_SEGMENT = re.compile(r"^(?P<key>[^.\[\]=]+)(?P<indexes>(\[\d+\])*)$")
_INDEX = re.compile(r"\[(\d+)\]")


def parse_path(path: str) -> list[PathPart]:
    """`a.b[0].c` -> ["a", "b", 0, "c"]; ValueError when malformed."""
    if not path or path != path.strip():
        raise ValueError(f"malformed path {path!r}")
    parts: list[PathPart] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ValueError(f"malformed path {path!r}")
        parts.append(match["key"])
        parts.extend(int(i) for i in _INDEX.findall(match["indexes"]))
    return parts


def format_path(parts: Iterable[PathPart]) -> str:
    """["a", "b", 0, "c"] -> `a.b[0].c`, the form issues and `--set` use."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _parse_value(text: str) -> Any:
    if text == "":
        return ""
    # YAML 1.2 (ruamel), as the spec files are read: `yes`/`on` stay strings.
    return YAML(typ="safe", pure=True).load(text)


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """`tags.team=ml` -> ("tags.team", "ml"); ValueError naming the assignment if malformed."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set {assignment!r}: expected path=value")
    try:
        parse_path(key)
    except ValueError as exc:
        raise ValueError(f"--set {assignment!r}: {exc}") from None
    try:
        value = _parse_value(raw)
    except YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"--set {assignment!r}: value is not valid YAML ({problem})") from None
    return key, value


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Many `--set` arguments as {dotted path: value}; later ones win, as in az."""
    parsed: dict[str, Any] = {}
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        parsed[key] = value
    return parsed


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set `value` at the dotted `path` inside `data`, in place, creating missing mappings.

    Raises ValueError when the path runs through a scalar or past the end of a list.
    """
    parts = parse_path(path)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        node = _child(node, part, path, create=dict if isinstance(nxt, str) else None)
    _assign(node, parts[-1], value, path)


def _child(node: Any, part: PathPart, path: str, *, create: type | None) -> Any:
    if isinstance(part, int):
        if not isinstance(node, list):
            raise ValueError(f"{path}: [{part}] indexes something that is not a list")
        if part >= len(node):
            raise ValueError(f"{path}: index {part} is past the end of a list of {len(node)}")
        return node[part]
    if not isinstance(node, dict):
        raise ValueError(f"{path}: {part!r} is inside something that is not a mapping")
    if part not in node or node[part] is None:
        if create is None:
            raise ValueError(f"{path}: there is no list at {part!r} to index")
        node[part] = create()
    return node[part]


def _assign(node: Any, part: PathPart, value: Any, path: str) -> None:
    if isinstance(part, int):
        if not isinstance(node, list):
            raise ValueError(f"{path}: [{part}] indexes something that is not a list")
        if part >= len(node):
            raise ValueError(f"{path}: index {part} is past the end of a list of {len(node)}")
        node[part] = value
        return
    if not isinstance(node, dict):
        raise ValueError(f"{path}: {part!r} is inside something that is not a mapping")
    node[part] = value


def apply_set(data: Mapping[str, Any], assignments: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `path=value` assignment applied in order.

    The input is left untouched; ruamel mappings stay ruamel mappings (with their line
    numbers), so the result can still be validated with line-accurate errors.
    """
    result = copy.deepcopy(data)
    if not isinstance(result, dict):
        raise ValueError("--set needs a mapping to apply to")
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        try:
            set_path(result, key, value)
        except ValueError as exc:
            raise ValueError(f"--set {assignment!r}: {exc}") from None
    return result
