"""`tidegate down` signals only the processes `up` started: a reused pid is never killed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from control import stack
from host.processes import create_time


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """Some other program that now holds a pid once recorded as Tidegate's."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def _record(home: Path, entry: object) -> Settings:
    settings = Settings(home=home)
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "stack.json").write_text(json.dumps({"gateway": entry}))
    return settings


def test_down_leaves_a_reused_pid_alone(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    start = create_time(bystander.pid)
    assert start is not None
    settings = _record(tmp_path, {"pid": bystander.pid, "start_time": start - 1, "boot_id": stack.boot_id()})

    assert stack.stop(settings) == []
    assert bystander.poll() is None


def test_down_leaves_a_pid_from_before_a_reboot_alone(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    start = create_time(bystander.pid)
    settings = _record(tmp_path, {"pid": bystander.pid, "start_time": start, "boot_id": "another-boot"})

    assert stack.stop(settings) == []
    assert bystander.poll() is None


def test_down_leaves_a_pid_recorded_without_its_start_time_alone(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    settings = _record(tmp_path, bystander.pid)

    assert stack.stop(settings) == []
    assert bystander.poll() is None


def test_down_stops_the_process_it_recorded(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    entry = {"pid": bystander.pid, "start_time": create_time(bystander.pid), "boot_id": stack.boot_id()}
    settings = _record(tmp_path, entry)

    assert stack.stop(settings) == ["gateway"]
    assert bystander.wait(timeout=30) != 0
