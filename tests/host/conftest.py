"""A real host process on its own ports and state dir, shared by the host tests, and the
user-side material it serves: a trained sklearn model and score.py files."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import joblib
import pytest
import pytest_asyncio
from sklearn.linear_model import LinearRegression

from tests.host.helpers import (
    FLAKY_PY,
    INIT_FAILS_PY,
    SCORE_PY,
    SLOW_INIT_PY,
    HostProcess,
    UserFiles,
    kill_leftovers,
)
from tests.support.ports import free_port, instance_port_start


@pytest.fixture(scope="session")
def user_files(host: HostProcess) -> UserFiles:
    """The code and model where the CLI snapshots them: the host runs nothing from elsewhere."""
    root = host.settings.artifacts_dir
    model_dir = root / "models" / "test-model"
    (model_dir / "model").mkdir(parents=True)
    model = LinearRegression().fit([[0.0], [1.0], [2.0], [3.0]], [1.0, 3.0, 5.0, 7.5])
    joblib.dump(model, model_dir / "model" / "model.joblib")
    code_dir = root / "code" / "sklearn"
    code_dir.mkdir(parents=True)
    (code_dir / "score.py").write_text(SCORE_PY)
    init_fails_dir = root / "code" / "code-init-fails"
    init_fails_dir.mkdir()
    (init_fails_dir / "score.py").write_text(INIT_FAILS_PY)
    flaky_dir = root / "code" / "code-flaky"
    flaky_dir.mkdir()
    (flaky_dir / "score.py").write_text(FLAKY_PY)
    slow_init_dir = root / "code" / "code-slow-init"
    slow_init_dir.mkdir()
    (slow_init_dir / "score.py").write_text(SLOW_INIT_PY)
    return UserFiles(
        model_dir=model_dir,
        code_dir=code_dir,
        init_fails_dir=init_fails_dir,
        flaky_dir=flaky_dir,
        slow_init_dir=slow_init_dir,
        expected=lambda rows: model.predict(rows).tolist(),
    )


@pytest_asyncio.fixture(scope="session")
async def host(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HostProcess]:
    home = tmp_path_factory.mktemp("host-home")
    process = HostProcess(home=home, port=free_port(), instance_port_start=instance_port_start())
    async with aiohttp.ClientSession() as session:
        process.session = session
        process.start()
        try:
            await process.wait_healthy()
            yield process
        finally:
            if process.running():
                await process.stop()
            kill_leftovers(process.state_file)
