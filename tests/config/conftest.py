"""Azure's managed online endpoint sample (azureml-examples cli/endpoints/online/managed/sample),
laid out in a temporary tree the way the repository has it, so relative paths resolve."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ENDPOINT_YML = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: my-endpoint
auth_mode: key
"""

# Line numbers matter: tests name them (model.path is line 5, instance_count line 13).
BLUE_YML = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
name: blue
endpoint_name: my-endpoint
model:
  path: ../../model-1/model/
code_configuration:
  code: ../../model-1/onlinescoring/
  scoring_script: score.py
environment:
  conda_file: ../../model-1/environment/conda.yaml
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest
instance_type: Standard_DS3_v2
instance_count: 1
"""

GREEN_YML = BLUE_YML.replace("name: blue", "name: green").replace("model-1", "model-2")

CONDA_YAML = """\
name: model-env
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
    - azureml-inference-server-http
    - scikit-learn
"""

SCORE_PY = """\
def init():
    pass


def run(raw_data):
    return raw_data
"""


@dataclass
class AzureSample:
    """Paths of the sample tree: online/ holds model-1, model-2 and managed/sample/."""

    online: Path
    sample: Path

    @property
    def endpoint(self) -> Path:
        return self.sample / "endpoint.yml"

    @property
    def blue(self) -> Path:
        return self.sample / "blue-deployment.yml"

    @property
    def green(self) -> Path:
        return self.sample / "green-deployment.yml"

    def write(self, name: str, text: str) -> Path:
        """A YAML file next to the samples, so `../../model-1` still resolves."""
        path = self.sample / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path


@pytest.fixture
def azure_sample(tmp_path: Path) -> AzureSample:
    online = tmp_path / "cli" / "endpoints" / "online"
    for model in ("model-1", "model-2"):
        (online / model / "model").mkdir(parents=True)
        (online / model / "model" / "sklearn_regression_model.pkl").write_bytes(b"\x80\x04.")
        (online / model / "onlinescoring").mkdir()
        (online / model / "onlinescoring" / "score.py").write_text(SCORE_PY, encoding="utf-8")
        (online / model / "environment").mkdir()
        (online / model / "environment" / "conda.yaml").write_text(CONDA_YAML, encoding="utf-8")
    sample = online / "managed" / "sample"
    sample.mkdir(parents=True)
    (sample / "endpoint.yml").write_text(ENDPOINT_YML, encoding="utf-8")
    (sample / "blue-deployment.yml").write_text(BLUE_YML, encoding="utf-8")
    (sample / "green-deployment.yml").write_text(GREEN_YML, encoding="utf-8")
    return AzureSample(online=online, sample=sample)
