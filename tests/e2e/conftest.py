"""One real stack for the end-to-end tests: Temporal dev server, worker, host, gateway; and the
fake ARM for the tests of the azure provider."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.project import write_project
from tests.fakes.arm.client import FakeArmProcess
from tests.support.ports import free_port
from tests.support.stack import LocalStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack.create(tmp_path_factory.mktemp("tidegate-home"))
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[float]]]:
    root = tmp_path_factory.mktemp("project")
    return root, write_project(root)


@pytest.fixture(scope="module")
def fake_arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeArmProcess]:
    """The fake ARM server, its VMs real processes; one per test module that asks for it."""
    fake = FakeArmProcess.prepare(tmp_path_factory.mktemp("fake-arm"), free_port())
    fake.start()
    try:
        asyncio.run(fake.wait_up())
        yield fake
    finally:
        fake.stop()
