"""Keep a deployment's own code away from Tidegate's state: a Landlock sandbox per instance.

An instance runs the user's score.py as the host's own OS user, so without this it could read
the control credential, the endpoint keys, the codec key and the CA's private key in the state
dir, or the user's cloud logins under ~ (`~/.azure`, `~/.ssh`). Landlock (Linux 5.13 and
newer, no privilege needed) lets a process give up filesystem access for itself and every
process it starts; the kernel then refuses the rest with EACCES.

Landlock grants, it never denies: a rule allows some access beneath one folder. So "all but
these folders" is built as rules on every sibling along the way down to each hidden folder
(`plan_rules`), and inside a hidden folder only what the instance needs: its environment, code
and model read-only, its own home and temp folder read-write. Listing a folder on the way down
(`/`, `/root`) and making new entries directly in it are refused; everything beneath its other
entries is not. Signals to processes outside the sandbox (the host, the gateway: same user) and
abstract unix sockets are scoped too where the kernel knows how (Landlock ABI 6).

`python -m host.confinement --hide H --read R --write W -- command...` applies the rules and
executes the command; it never runs the command unconfined. The host decides beforehand whether
to wrap at all (`TIDEGATE_INSTANCE_CONFINEMENT`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Access = Literal["full", "read"]

# x86_64 and aarch64 share the generic syscall numbers for Landlock.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights by the ABI that introduced them (uapi/linux/landlock.h).
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_ALL = (1 << 13) - 1  # execute ... make_sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_READ_ONLY = _EXECUTE | _READ_FILE | _READ_DIR
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class ConfinementUnavailable(RuntimeError):
    """This kernel (or platform) cannot confine a process with Landlock."""


@dataclass(frozen=True)
class Rule:
    path: Path
    access: Access


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def plan_rules(
    *,
    hidden: Iterable[Path],
    readable: Iterable[Path],
    writable: Iterable[Path],
    children: Callable[[Path], Iterable[Path]],
) -> list[Rule]:
    """The rules that allow everything but the `hidden` folders, and inside them only the
    `readable` and `writable` ones. Paths are taken as given (absolute, symlinks resolved by the
    caller). A readable or writable path that is a hidden folder or holds one is left out: it
    would open the folder it sits in."""
    roots = sorted({Path(p) for p in hidden})
    roots = [r for r in roots if not any(o != r and _within(r, o) for o in roots)]
    if not roots:  # nothing hidden: nothing denied
        return [Rule(Path("/"), "full")]
    on_the_way = {a for r in roots for a in r.parents}
    rules: list[Rule] = []
    for folder in sorted(on_the_way):
        for child in sorted(children(folder)):
            if child in on_the_way or child in roots:
                continue
            rules.append(Rule(child, "full"))

    def inside(path: Path) -> bool:
        return any(_within(path, r) for r in roots) and not any(_within(r, path) for r in roots)

    rules += [Rule(Path(p), "read") for p in sorted(set(readable)) if inside(Path(p))]
    rules += [Rule(Path(p), "full") for p in sorted(set(writable)) if inside(Path(p))]
    return rules


def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise ConfinementUnavailable(f"Landlock is Linux's; this is {sys.platform}")
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (too old, or turned off)."""
    try:
        libc = _libc()
    except ConfinementUnavailable:
        return 0
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _handled_fs(abi: int) -> int:
    rights = _ABI1_ALL
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _errno_error(what: str) -> ConfinementUnavailable:
    err = ctypes.get_errno()
    return ConfinementUnavailable(f"{what}: {os.strerror(err)}")


def restrict_self(rules: Sequence[Rule]) -> int:
    """Confine this process, and all it will start, to `rules`; returns the ABI used. Raises
    ConfinementUnavailable, leaving the process as it was, when the kernel cannot."""
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementUnavailable("this kernel has no Landlock (Linux 5.13+, landlock in lsm=)")
    libc = _libc()
    handled = _handled_fs(abi)
    attr = _RulesetAttr(handled, 0, _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise _errno_error("landlock_create_ruleset")
    try:
        for rule in rules:
            _add_rule(libc, ruleset, rule, handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _errno_error("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise _errno_error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_rule(libc: ctypes.CDLL, ruleset: int, rule: Rule, handled: int) -> None:
    try:
        # Never through a symlink: /tmp/pytest-current -> a folder that holds a hidden one would
        # open that whole folder. Whatever a link points at is allowed (or not) on its own.
        fd = os.open(rule.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone since it was listed, or not ours to open: no rule, no access
        return
    if stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        return
    try:
        allowed = handled if rule.access == "full" else _READ_ONLY
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= _FILE_ONLY
        beneath = _PathBeneathAttr(allowed & handled, fd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(beneath), 0) != 0:
            raise _errno_error(f"landlock_add_rule({rule.path})")
    finally:
        os.close(fd)


def _children(folder: Path) -> list[Path]:
    try:
        return [folder / name for name in os.listdir(folder)]
    except OSError:
        return []


def wrapper_command(
    *,
    python: str,
    hidden: Iterable[Path],
    readable: Iterable[Path],
    writable: Iterable[Path],
    command: Sequence[str],
) -> list[str]:
    """`command`, run confined by this module under the host's interpreter `python`. Isolated
    (-I): started in the user's code folder, it must not import a `host` package of theirs."""
    args = [python, "-I", "-m", "host.confinement"]
    for flag, paths in (("--hide", hidden), ("--read", readable), ("--write", writable)):
        for path in paths:
            args += [flag, str(path)]
    return [*args, "--", *command]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m host.confinement")
    parser.add_argument("--hide", action="append", default=[], type=Path)
    parser.add_argument("--read", action="append", default=[], type=Path)
    parser.add_argument("--write", action="append", default=[], type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    rules = plan_rules(hidden=args.hide, readable=args.read, writable=args.write, children=_children)
    try:
        restrict_self(rules)
    except ConfinementUnavailable as exc:
        # Never run the user's code unconfined when confinement was asked for.
        print(f"[tidegate] cannot confine the instance: {exc}", file=sys.stderr, flush=True)
        sys.exit(126)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
