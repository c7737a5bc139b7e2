"""Which pip requirement lines install from somewhere other than the package index.

An environment's pip lines are handed to `pip install`. A plain requirement (`numpy==1.26`,
`pandas>=2; python_version >= "3.10"`) installs a release from the configured index. Option
lines (`--index-url`, `-e`, `-r`, `--trusted-host`...), VCS URLs, URLs and local paths install
code from wherever the file says, so they are refused unless the operator allows them
(``TIDEGATE_ALLOW_PIP_OPTIONS=true``). Pure: text in, problems out; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import yaml

ALLOW_HINT = "Tidegate installs only from the package index; set TIDEGATE_ALLOW_PIP_OPTIONS=true to allow it"

_VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
# A PEP 508 direct reference: `name[extras] @ <url or path>`.
_DIRECT_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*@\s*(?P<target>\S+)")
# pip strips comments: `#` at the start of a line or after whitespace.
_COMMENT = re.compile(r"(^|\s)#.*$")
_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
# Per-requirement options that only narrow what pip accepts.
_HARMLESS_REQUIREMENT_OPTIONS = ("--hash",)


def pip_entry_problem(entry: str) -> str | None:
    """Why one pip line installs from outside the index (`"is a pip option"`), or None."""
    text = _COMMENT.sub("", entry).strip()
    if not text:
        return None
    if text.startswith("-"):
        return "is a pip option"
    lowered = text.lower()
    if lowered.startswith(_VCS_PREFIXES):
        return "is a VCS requirement"
    reference = _DIRECT_REFERENCE.match(text)
    if reference is not None:
        target = reference.group("target").lower()
        if target.startswith(_VCS_PREFIXES):
            return "is a VCS requirement"
        if _is_url(target):
            return "is a URL requirement"
        return "is a local path requirement"
    if _is_url(lowered):
        return "is a URL requirement"
    words = text.split(";", 1)[0].split()
    if words and _is_path(words[0]):
        return "is a local path requirement"
    for token in words[1:]:
        if token.startswith("-") and not token.startswith(_HARMLESS_REQUIREMENT_OPTIONS):
            return f"carries the pip option {token.split('=', 1)[0]}"
    return None


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("file:")


def _is_path(token: str) -> bool:
    return (
        token.startswith((".", "/", "~"))
        or "/" in token
        or "\\" in token
        or token.lower().endswith(_ARCHIVE_SUFFIXES)
    )


def pip_entry_problems(entries: Iterable[tuple[int, str]], *, source: str) -> list[str]:
    """Problems among (line number, pip line) pairs of `source`, each naming file and line."""
    problems = []
    for line, entry in entries:
        reason = pip_entry_problem(entry)
        if reason is not None:
            problems.append(f'{source}:{line}: "{entry.strip()}" {reason}; {ALLOW_HINT}')
    return problems


def pip_requirements_problems(text: str, *, source: str) -> list[str]:
    """Problems in the text of a pip requirements file (`requirements.txt`)."""
    return pip_entry_problems(_logical_lines(text), source=source)


def conda_pip_problems(conda_text: str, *, source: str) -> list[str]:
    """Problems in a conda environment file's `pip:` section, with the file's line numbers.

    A conda dependency that starts with `-` is one too: the host hands conda packages to pip.
    Text that is not a conda mapping gives no problems here; reading the file reports it.
    """
    try:
        root = yaml.compose(conda_text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    dependencies = _mapping_value(root, "dependencies")
    if not isinstance(dependencies, yaml.SequenceNode):
        return []
    entries: list[tuple[int, str]] = []
    for item in dependencies.value:
        if isinstance(item, yaml.ScalarNode):
            if str(item.value).strip().startswith("-"):
                entries.append((item.start_mark.line + 1, str(item.value)))
            continue
        pip = _mapping_value(item, "pip")
        if isinstance(pip, yaml.SequenceNode):
            entries.extend(
                (node.start_mark.line + 1, str(node.value))
                for node in pip.value
                if isinstance(node, yaml.ScalarNode)
            )
    return pip_entry_problems(entries, source=source)


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    return None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """pip's lines: a trailing backslash joins the next one; numbered by their first line."""
    lines: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        start, joined = pending if pending is not None else (number, "")
        if raw.endswith("\\"):
            pending = (start, joined + raw[:-1])
            continue
        pending = None
        lines.append((start, joined + raw))
    if pending is not None:
        lines.append(pending)
    return lines
