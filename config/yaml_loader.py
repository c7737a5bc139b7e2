"""Load endpoint and deployment YAML into specs, with every error tied to a file and line.

The YAML is read with ruamel's round-trip loader, which remembers where each key sits, so a
pydantic error at `("request_settings", "request_timeout_ms")` becomes
`blue-deployment.yml:9 request_settings.request_timeout_ms: must be an integer (got 'abc')`.
All problems are reported together in one `SpecError`, one line each, so a CI log shows
the whole list at once. Relative paths (code, model, conda file) are made absolute against
the YAML file's folder, as `az ml` does, and must exist.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from config.overrides import PathPart, format_path, parse_path, set_path
from config.rollout import RolloutSpec
from config.specs import UNION_TAGS, DeploymentSpec, EndpointSpec, is_inside_code

__all__ = [
    "SpecError",
    "SpecIssue",
    "load_deployment_dict",
    "load_deployment_file",
    "load_endpoint_dict",
    "load_endpoint_file",
    "load_rollout_file",
    "read_yaml",
]

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where it is (file, 1-based line, dotted path) and what it is."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}:"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"


class SpecError(ValueError):
    """A spec that cannot be used; `issues` holds every problem found, in line order."""

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues: list[SpecIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    """Parse one YAML file with line information kept; SpecError when unreadable or invalid."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecIssue(source, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue(source, None, "", "is a folder, not a file")]) from None
    except UnicodeDecodeError:
        raise SpecError([SpecIssue(source, None, "", "is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([SpecIssue(source, None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot parse"
        raise SpecError([SpecIssue(source, line, "", f"invalid YAML: {problem}")]) from None
    except YAMLError as exc:
        raise SpecError([SpecIssue(source, None, "", f"invalid YAML: {exc}")]) from None


def load_endpoint_file(path: Path, *, overrides: dict[str, Any] | None = None) -> EndpointSpec:
    """Read an endpoint YAML (`az ml online-endpoint create -f`); overrides win over the file."""
    data = read_yaml(path)
    return _load(EndpointSpec, data, source=str(path), base_dir=None, overrides=overrides)


def load_deployment_file(path: Path, *, overrides: dict[str, Any] | None = None) -> DeploymentSpec:
    """Read a deployment YAML (`az ml online-deployment create -f`); overrides win over the
    file, and relative paths are resolved against the file's folder."""
    data = read_yaml(path)
    base_dir = Path(path).absolute().parent
    return _load(DeploymentSpec, data, source=str(path), base_dir=base_dir, overrides=overrides)


def load_rollout_file(path: Path) -> RolloutSpec:
    """Read a rollout.yml (Tidegate's own), with the same file:line errors."""
    return _load(RolloutSpec, read_yaml(path), source=str(path), base_dir=None, overrides=None)


def load_endpoint_dict(
    data: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> EndpointSpec:
    """Validate an already-parsed endpoint spec (e.g. a REST body). `base_dir` is accepted for
    symmetry; endpoints have no paths. Lines appear only if `data` came from ruamel."""
    return _load(EndpointSpec, data, source=source, base_dir=base_dir, overrides=overrides)


def load_deployment_dict(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    source: str,
    overrides: dict[str, Any] | None = None,
) -> DeploymentSpec:
    """Validate an already-parsed deployment spec; relative paths resolve against `base_dir`."""
    return _load(DeploymentSpec, data, source=source, base_dir=base_dir, overrides=overrides)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _load(
    model: type[SpecT],
    data: Any,
    *,
    source: str,
    base_dir: Path | None,
    overrides: dict[str, Any] | None,
) -> SpecT:
    if not isinstance(data, Mapping):
        raise SpecError([SpecIssue(source, _line_of(data), "", _not_a_mapping(data))])
    # Copy: overrides and resolved paths must not leak into the caller's data. deepcopy keeps
    # ruamel's line records.
    doc: dict[str, Any] = copy.deepcopy(data) if isinstance(data, dict) else dict(data)
    issues: list[SpecIssue] = []
    overridden = _apply_overrides(doc, overrides or {}, source, issues)
    locate = _Locator(doc, source, overridden)

    if model is DeploymentSpec:
        issues.extend(_resolve_deployment_paths(doc, base_dir or Path.cwd(), locate))

    spec: SpecT | None = None
    try:
        spec = model.model_validate(_plain(doc))
    except ValidationError as exc:
        issues.extend(locate.issue(err["loc"], _message(err)) for err in exc.errors())
    if issues or spec is None:
        raise SpecError(_ordered(issues))
    return spec


def _apply_overrides(
    doc: dict[str, Any], overrides: Mapping[str, Any], source: str, issues: list[SpecIssue]
) -> list[list[PathPart]]:
    """Set each override (a top-level key or dotted path); None means "not given"."""
    applied: list[list[PathPart]] = []
    for key, value in overrides.items():
        if value is None:
            continue
        try:
            set_path(doc, key, copy.deepcopy(value))
            applied.append(parse_path(key))
        except ValueError as exc:
            issues.append(SpecIssue(source, None, key, f"bad override: {exc}"))
    return applied


def _ordered(issues: list[SpecIssue]) -> list[SpecIssue]:
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line is None, i.line or 0))


# ---------------------------------------------------------------------------------------
# Locations: pydantic loc -> YAML path and line
# ---------------------------------------------------------------------------------------


class _Locator:
    """Maps a pydantic error location onto the YAML document it came from."""

    def __init__(self, doc: dict[str, Any], source: str, overridden: list[list[PathPart]]):
        self.doc = doc
        self.source = source
        self.overridden = overridden

    def issue(self, loc: Sequence[PathPart], message: str) -> SpecIssue:
        parts, line = self.find(loc)
        if any(parts[: len(o)] == o for o in self.overridden):
            return SpecIssue(self.source, None, format_path(parts), f"{message} (from overrides)")
        return SpecIssue(self.source, line, format_path(parts), message)

    def find(self, loc: Sequence[PathPart]) -> tuple[list[PathPart], int | None]:
        """The YAML path for `loc` and the line of its deepest part present in the file.

        A field that is missing gets its parent's line; union tags (`inline`,
        `target_utilization`, ...) and `[key]` markers are not YAML keys and are skipped.
        """
        parts: list[PathPart] = []
        node: Any = self.doc
        line = _line_of(self.doc)
        for element in loc:
            if element == "[key]":
                continue
            if isinstance(node, Mapping) and element in node:
                line = _key_line(node, element) or line
                parts.append(element)
                node = node[element]
            elif isinstance(node, list) and isinstance(element, int) and element < len(node):
                line = _item_line(node, element) or line
                parts.append(element)
                node = node[element]
            elif isinstance(element, str) and element in UNION_TAGS:
                continue
            else:
                parts.append(element)
                node = None
        return parts, line


def _line_of(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else None


def _key_line(node: Any, key: Any) -> int | None:
    lc = getattr(node, "lc", None)
    position = lc.data.get(key) if lc is not None else None
    return position[0] + 1 if position else None


def _item_line(node: Any, index: int) -> int | None:
    lc = getattr(node, "lc", None)
    position = lc.data.get(index) if lc is not None else None
    return position[0] + 1 if position else None


def _not_a_mapping(data: Any) -> str:
    if data is None:
        return "is empty; expected a mapping of fields (name: ..., ...)"
    return f"top level must be a mapping of fields (name: ..., ...), not {_kind(data)}"


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


# ---------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------

_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
}


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op, bound = {
            "greater_than_equal": ("≥", "ge"),
            "greater_than": (">", "gt"),
            "less_than_equal": ("≤", "le"),
            "less_than": ("<", "lt"),
        }[kind]
        return f"must be {op} {ctx[bound]}{_got(err)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        wanted = choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
        return f"must be {wanted}{_got(err)}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind] + _got(err)
    msg = err["msg"]
    return msg[:1].lower() + msg[1:]


def _got(err: ErrorDetails) -> str:
    value = err.get("input")
    if isinstance(value, Mapping | list):
        return f" (got {_kind(value)})"
    if value is None:
        return " (got null)"
    if isinstance(value, bool):
        return f" (got {'true' if value else 'false'})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f" (got {shown!r})"
    if isinstance(value, int | float):
        return f" (got {value})"
    return ""


# ---------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# (YAML path, what must be there). Only local paths are checked: `azureml:` assets and
# URLs (azureml://datastores/..., https://...) are left as they are.
_DEPLOYMENT_PATHS: list[tuple[tuple[str, ...], str]] = [
    (("code_configuration", "code"), "folder"),
    (("model", "path"), "any"),
    (("environment", "conda_file"), "file"),
    (("environment", "build", "path"), "folder"),
]


def _local_path(value: str) -> str | None:
    """The filesystem path a spec string names, or None if it names a remote asset."""
    if value.startswith("file:") and not value.startswith("file://"):
        value = value[len("file:") :]
    elif value.startswith("file://"):
        value = value[len("file://") :]
    elif value.startswith("azureml:") or _URL.match(value):
        return None
    return value


def _resolve_deployment_paths(doc: dict[str, Any], base_dir: Path, locate: _Locator) -> list[SpecIssue]:
    """Make local paths absolute (in `doc`) and report the ones that are not there."""
    issues: list[SpecIssue] = []
    for keys, want in _DEPLOYMENT_PATHS:
        parent = _get(doc, keys[:-1])
        if not isinstance(parent, dict) or not isinstance(parent.get(keys[-1]), str):
            continue  # absent, or the wrong type: pydantic reports that
        local = _local_path(parent[keys[-1]])
        if local is None or not local.strip():
            continue
        resolved = Path(os.path.normpath(base_dir / os.path.expanduser(local)))
        problem = _path_problem(resolved, want)
        if problem:
            issues.append(locate.issue(keys, f"{resolved} {problem}"))
            continue
        parent[keys[-1]] = str(resolved)
        if keys == ("code_configuration", "code"):
            issues.extend(_check_scoring_script(parent, resolved, locate))
    return issues


def _check_scoring_script(
    code_configuration: dict[str, Any], code_dir: Path, locate: _Locator
) -> list[SpecIssue]:
    script = code_configuration.get("scoring_script")
    if not isinstance(script, str) or not script or not is_inside_code(script):
        return []  # the spec's own rule names a script outside the folder
    if not (code_dir / script).is_file():
        loc = ("code_configuration", "scoring_script")
        return [locate.issue(loc, f"{script} not found in {code_dir}")]
    return []


def _path_problem(path: Path, want: str) -> str | None:
    if not path.exists():
        return "does not exist"
    if want == "folder" and not path.is_dir():
        return "is not a folder"
    if want == "file" and not path.is_file():
        return "is not a file"
    return None


def _get(doc: Any, keys: Sequence[str]) -> Any:
    node = doc
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _plain(value: Any) -> Any:
    """ruamel's mappings, sequences and scalar subclasses as plain Python values."""
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int) and type(value).__name__ == "ScalarBoolean":
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value
