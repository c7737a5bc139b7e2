"""The fake ARM (a real process, TLS, a static token) and an azure compute provider pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import pytest
import pytest_asyncio
from sklearn.linear_model import LinearRegression

from activities.azure.compute import AzureComputeProvider
from activities.azure.credentials import GivenTokenCredential
from config.host_api import DeploymentRuntime, ProbeSpec, RuntimeEnvironment
from config.settings import Settings
from tests.fakes.arm.client import FakeArmProcess
from tests.gateway.conftest import Backend
from tests.host.helpers import SCORE_PY
from tests.support.ports import free_port

# Built on each VM as the host builds it: conda dependencies and a pip section, to pip.
CONDA_FILE = """\
name: sklearn-env
channels: [conda-forge]
dependencies:
  - python>=3.11
  - scikit-learn
  - pip
  - pip:
    - joblib
"""


RESOURCE_GROUP = "tidegate-test"


@dataclass
class Artifacts:
    code_dir: Path
    model_dir: Path
    expected: Callable[[list[list[float]]], list[float]]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """A trained sklearn model and its score.py, where the worker keeps its snapshots."""
    root = tmp_path_factory.mktemp("azure-artifacts")
    model_dir = root / "model"
    (model_dir / "model").mkdir(parents=True)
    model = LinearRegression().fit([[0.0], [1.0], [2.0], [3.0]], [1.0, 3.0, 5.0, 7.5])
    joblib.dump(model, model_dir / "model" / "model.joblib")
    code_dir = root / "code"
    code_dir.mkdir()
    (code_dir / "score.py").write_text(SCORE_PY)
    return Artifacts(
        code_dir=code_dir, model_dir=model_dir, expected=lambda rows: model.predict(rows).tolist()
    )


@pytest_asyncio.fixture(scope="module")
async def fake_arm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FakeArmProcess]:
    """One fake ARM per module; a module's FAKE_ARM_RETRY_AFTER (seconds) sets the Retry-After of
    its operation statuses (0: done at the first status read, no waits)."""
    fake = FakeArmProcess.prepare(tmp_path_factory.mktemp("fake-arm"), free_port())
    fake.retry_after = getattr(request.module, "FAKE_ARM_RETRY_AFTER", fake.retry_after)
    fake.start()
    try:
        await fake.wait_up()
        yield fake
    finally:
        fake.stop()


def azure_settings(fake: FakeArmProcess, home: Path) -> Settings:
    return Settings(home=home, **fake.azure_settings(RESOURCE_GROUP, watch_interval=0.5))


@pytest_asyncio.fixture(scope="module")
async def provider(
    fake_arm: FakeArmProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AzureComputeProvider]:
    settings = azure_settings(fake_arm, tmp_path_factory.mktemp("azure-home"))
    provider = AzureComputeProvider(settings, credential=GivenTokenCredential(fake_arm.token))
    try:
        yield provider
    finally:
        await provider.close()


def runtime(
    artifacts: Artifacts, endpoint: str, deployment: str, spec_hash: str = "spec-1"
) -> DeploymentRuntime:
    return DeploymentRuntime(
        endpoint=endpoint,
        deployment=deployment,
        code_dir=str(artifacts.code_dir),
        model_dir=str(artifacts.model_dir),
        spec_hash=spec_hash,
        environment=RuntimeEnvironment(conda_file=CONDA_FILE),
        readiness_probe=ProbeSpec(initial_delay=1, period=1),
        liveness_probe=ProbeSpec(initial_delay=1, period=1),
    )


@pytest_asyncio.fixture(scope="module")
async def backend() -> AsyncIterator[Backend]:
    """An upstream standing in for a deployment's instance, for tests of route pushes."""
    made = Backend("blue")
    await made.start()
    try:
        yield made
    finally:
        await made.stop()
