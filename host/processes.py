"""Process and port plumbing: identity through /proc, process-group signals, free ports, log tails."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_SECONDS = 5.0
ERROR_TAIL_LINES = 30
_TRACEBACK_HEAD = "Traceback (most recent call last)"
_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")


@dataclass(frozen=True)
class ProcStat:
    state: str
    start_time: int


def proc_stat(pid: int) -> ProcStat | None:
    """State letter and start time (clock ticks since boot) of a process, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], start_time=int(fields[19]))


def create_time(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat.start_time if stat else None


def seconds_since_start(start_time: int) -> float | None:
    """How long ago a process with this /proc start time (clock ticks since boot) started;
    None if the clock cannot be read."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_time / os.sysconf("SC_CLK_TCK"))


def is_alive(pid: int | None, start_time: int | None) -> bool:
    """True if `pid` still runs and is the process that was started (not a reused pid)."""
    if not pid:
        return False
    stat = proc_stat(pid)
    if stat is None or stat.state in ("Z", "X"):
        return False
    return start_time is None or stat.start_time == start_time


def killpg(pid: int, sig: int) -> None:
    """Signal the whole session the instance leads (gunicorn master and its workers)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessHandle:
    """A running instance process: our child (Popen) or one adopted from an earlier host."""

    def __init__(
        self, pid: int, start_time: int | None, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid = pid
        self.start_time = start_time
        self.popen = popen

    def poll(self) -> tuple[bool, int | None]:
        """(exited, exit_code); the exit code is unknown for processes we did not start."""
        if self.popen is not None:
            code = self.popen.poll()
            return code is not None, code
        return not is_alive(self.pid, self.start_time), None

    def signal_group(self, sig: int) -> None:
        if self.popen is None and not is_alive(self.pid, self.start_time):
            return  # never signal a pid that may now belong to someone else
        killpg(self.pid, sig)

    def kill_leftovers(self) -> None:
        """After the leader died on its own: SIGKILL what it left in its group (a gunicorn
        worker whose master was killed lingers, port open, until it notices). Call it as soon
        as the exit is seen; see the note at the end of `stop`."""
        killpg(self.pid, signal.SIGKILL)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM the group, SIGKILL it after `grace` seconds; returns the exit code if known."""
        exited, code = self.poll()
        if exited:
            return code
        self.signal_group(signal.SIGTERM)
        # A stopped (SIGSTOP, hung in a debugger) group would hold the TERM until the KILL.
        self.signal_group(signal.SIGCONT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            exited, code = self.poll()
            if exited:
                break
        if not exited:
            self.signal_group(signal.SIGKILL)
            while not exited:
                await asyncio.sleep(0.05)
                exited, code = self.poll()
        # Just after the leader's exit: children it left behind may linger in its group, and
        # the pgid is not reused while any of them lives, so this reaches only them.
        killpg(self.pid, signal.SIGKILL)
        return code


def port_is_free(port: int) -> bool:
    """Whether `port` is free on every address (instances bind loopback; be conservative)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def lost_its_port(lines: list[str], port: int) -> bool:
    """Whether a server's log says another process took `port` between our check and its bind
    (an outgoing connection's ephemeral port, say): gunicorn's "Connection in use" for it."""
    return any("Address already in use" in line and f", {port})" in line for line in lines)


def tail_lines(path: Path, n: int) -> list[str]:
    """The last `n` lines of a file, reading backwards so large logs cost little."""
    if n <= 0:
        return []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block = 8192
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode(errors="replace").splitlines()
    return lines[-n:]


def failure_excerpt(lines: list[str], limit: int = ERROR_TAIL_LINES) -> str:
    """The tail of a log that explains a failure: the last `limit` lines, or, when the
    traceback sits further up (azmlinfsrv lists the model directory after it), the whole
    traceback chain followed by the last few lines."""
    tail = lines[-limit:]
    if any(_TRACEBACK_HEAD in line for line in tail):
        return "\n".join(tail)
    starts = [i for i, line in enumerate(lines) if _TRACEBACK_HEAD in line]
    if not starts:
        return "\n".join(tail)
    start = starts[-1]
    # Walk back over chained exceptions so the user's own frame comes first.
    for earlier in reversed(starts[:-1]):
        between = lines[earlier:start]
        if any(marker in line for line in between for marker in _CHAINED):
            start = earlier
        else:
            break
    end = start + 1
    while end < len(lines) and (
        lines[end].startswith((" ", "\t"))
        or not lines[end].strip()
        or any(marker in lines[end] for marker in _CHAINED)
        or _TRACEBACK_HEAD in lines[end]
        or not _looks_like_log_record(lines[end])
    ):
        end += 1
    block = lines[start:end][: limit * 2]
    return "\n".join([*block, "[...]", *lines[-5:]])


def records_with(path: Path, needle: str) -> list[str]:
    """The log records of ``path`` whose first line holds ``needle``, each with the lines that
    continue it (a traceback under an error record). The whole file is read, a line at a time."""
    found: list[str] = []
    keeping = False
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return found
    with f:
        for raw in f:
            line = raw.rstrip("\n")
            if _looks_like_log_record(line) or line.startswith("[tidegate]"):
                keeping = needle in line
            if keeping:
                found.append(line)
    return found


def _looks_like_log_record(line: str) -> bool:
    # azmlinfsrv/gunicorn records start with a date: "2026-11-25 12:51:13,890 E [pid] ..."
    return len(line) >= 10 and line[:4].isdigit() and line[4] == "-" and line[7] == "-"
