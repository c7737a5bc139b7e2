"""Process identity, log tails and the failure excerpt an instance reports."""

from __future__ import annotations

import os
from pathlib import Path

from host.processes import create_time, failure_excerpt, is_alive, tail_lines

TRACEBACK = [
    "2026-11-25 12:51:13,889 E [3556] azmlinfsrv - User's init function failed",
    "2026-11-25 12:51:13,890 E [3556] azmlinfsrv - Encountered Exception Traceback (most recent call last):",
    '  File "/code/score.py", line 2, in init',
    '    raise RuntimeError("boom")',
    "RuntimeError: boom",
    "",
    "The above exception was the direct cause of the following exception:",
    "",
    "Traceback (most recent call last):",
    '  File "/srv/aml_blueprint.py", line 109, in setup',
    "UserScriptException: Caught an unhandled exception from the user script",
    "",
]
EXIT = [
    "2026-11-25 12:51:13,998 E [3555] gunicorn.error - Worker (pid:3556) exited with code 3.",
    "2026-11-25 12:51:13,999 E [3555] gunicorn.error - Reason: Worker failed to boot.",
]


def test_own_process_is_alive_and_a_wrong_start_time_means_pid_reuse() -> None:
    me = os.getpid()
    started = create_time(me)
    assert started is not None
    assert is_alive(me, started)
    assert not is_alive(me, started + 1)
    assert not is_alive(None, None)


def test_tail_lines_reads_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert tail_lines(log, 3) == ["line 4997", "line 4998", "line 4999"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


def test_failure_excerpt_is_the_log_tail_when_it_holds_the_traceback() -> None:
    lines = ["noise"] * 50 + TRACEBACK + EXIT
    excerpt = failure_excerpt(lines)
    assert excerpt.splitlines() == lines[-30:]
    assert "RuntimeError: boom" in excerpt


def test_failure_excerpt_finds_a_traceback_pushed_up_by_later_lines() -> None:
    listing = [f"2026-11-25 12:51:13,890 I [3556] azmlinfsrv - model/file{i}.bin" for i in range(80)]
    lines = ["noise"] * 10 + TRACEBACK + listing + EXIT
    excerpt = failure_excerpt(lines)
    assert "RuntimeError: boom" in excerpt
    assert "UserScriptException" in excerpt
    assert excerpt.endswith("Reason: Worker failed to boot.")
    assert "file3.bin" not in excerpt
