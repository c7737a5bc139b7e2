"""A user's project the tests write themselves: two sklearn models, score.py, Azure ML YAML."""

from __future__ import annotations

import textwrap
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression

SCORE = """
import json, os
import joblib

model = None

def init():
    global model
    model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.joblib"))

def run(raw_data):
    data = json.loads(raw_data)["data"]
    return model.predict(data).tolist()
"""

SCORE_RUN_RAISES = SCORE.replace(
    "return model.predict(data).tolist()",
    'raise ValueError("run() exploded on purpose: tidegate-test-marker")',
)

# A model whose run() fails a share of requests while a flag file says so, and takes that many
# seconds longer while another one says so (fault injection).
SCORE_FAULTY = SCORE.replace(
    "import joblib",
    "import joblib, random, time\n"
    'FLAG = os.environ.get("SCORE_FAULT_FILE", "")\n'
    'DELAY = os.environ.get("SCORE_DELAY_FILE", "")',
).replace(
    '    data = json.loads(raw_data)["data"]',
    "    if FLAG and os.path.exists(FLAG) and random.random() < float(open(FLAG).read()):\n"
    '        raise RuntimeError("injected fault")\n'
    "    if DELAY and os.path.exists(DELAY):\n"
    "        time.sleep(float(open(DELAY).read()))\n"
    '    data = json.loads(raw_data)["data"]',
)

# A model that, once a flag file appears, kills its own process a moment after it starts: a
# crash loop for the control loop to back off from.
SCORE_CRASHES = SCORE.replace(
    "def init():\n    global model",
    "import threading, time\n"
    'FLAG = os.environ.get("SCORE_CRASH_FILE", "")\n\n'
    "def _die_when_flagged():\n"
    "    while True:\n"
    "        if FLAG and os.path.exists(FLAG):\n"
    "            time.sleep(0.5)\n"
    "            os.kill(os.getppid(), 9)  # the server itself, not just this worker\n"
    "            os._exit(7)\n"
    "        time.sleep(0.2)\n\n"
    "def init():\n"
    "    threading.Thread(target=_die_when_flagged, daemon=True).start()\n"
    "    global model",
)

# A model that takes about 50 ms a request: one instance with one slot is busy from about 20
# requests a second, so a few steady clients keep it above any target.
SCORE_SLOW = SCORE.replace("import joblib", "import joblib, time").replace(
    '    data = json.loads(raw_data)["data"]', '    time.sleep(0.05)\n    data = json.loads(raw_data)["data"]'
)

# Azure's target_utilization fields; one request at a time per instance, as Azure's default.
AUTOSCALE = """\
scale_settings:
  type: target_utilization
  min_instances: 1
  max_instances: 3
  polling_interval: 1
  target_utilization_percentage: 50
request_settings:
  max_concurrent_requests_per_instance: 1
"""

SCORE_INIT_RAISES = SCORE.replace(
    "global model", 'raise RuntimeError("init() exploded on purpose: tidegate-init-marker")'
)

CONDA = """
name: test-env
channels: [conda-forge]
dependencies:
  - python=3.11
  - pip
  - pip:
      - scikit-learn
      - joblib
      - azureml-inference-server-http
"""

REQUEST = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def train(slope: float) -> LinearRegression:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 3))
    y = x @ np.array([slope, 2.0, -1.0]) + 3.0
    return LinearRegression().fit(x, y)


def deployment_yaml(
    name: str, model: str, code: str, endpoint: str = "my-endpoint", env: dict[str, str] | None = None
) -> str:
    variables = "".join(f"\n  {k}: {v}" for k, v in (env or {}).items())
    extra = f"environment_variables:{variables}\n" if env else ""
    return extra + textwrap.dedent(
        f"""\
        $schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
        name: {name}
        endpoint_name: {endpoint}
        model:
          path: {model}/model/
        code_configuration:
          code: {code}/
          scoring_script: score.py
        environment:
          conda_file: environment/conda.yaml
          image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest
        instance_type: Standard_DS3_v2
        instance_count: 1
        readiness_probe:  # Azure's 10 s and 10 s would hold every instance back for 10 s
          initial_delay: 1
          period: 1
        """
    )


def write_project(root: Path) -> dict[str, list[float]]:
    """Write the tree; return each model's expected answer to REQUEST."""
    answers = {}
    for name, slope in (("model-1", 1.0), ("model-2", 10.0)):
        model = train(slope)
        (root / name / "model").mkdir(parents=True)
        joblib.dump(model, root / name / "model" / "model.joblib")
        answers[name] = model.predict(REQUEST).tolist()
    for folder, script in (
        ("code", SCORE),
        ("code-run-raises", SCORE_RUN_RAISES),
        ("code-init-raises", SCORE_INIT_RAISES),
        ("code-faulty", SCORE_FAULTY),
        ("code-crashes", SCORE_CRASHES),
        ("code-slow", SCORE_SLOW),
    ):
        (root / folder).mkdir()
        (root / folder / "score.py").write_text(script)
    (root / "environment").mkdir()
    (root / "environment" / "conda.yaml").write_text(CONDA)
    (root / "endpoint.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json\n"
        "name: my-endpoint\nauth_mode: key\n"
    )
    (root / "blue.yml").write_text(deployment_yaml("blue", "model-1", "code"))
    (root / "green.yml").write_text(deployment_yaml("green", "model-2", "code"))
    (root / "run-raises.yml").write_text(deployment_yaml("broken", "model-1", "code-run-raises"))
    (root / "init-raises.yml").write_text(deployment_yaml("noinit", "model-1", "code-init-raises"))
    fault = {"SCORE_FAULT_FILE": str(root / "fault")}
    (root / "faulty.yml").write_text(deployment_yaml("green", "model-2", "code-faulty", env=fault))
    crash = {"SCORE_CRASH_FILE": str(root / "crash")}
    (root / "crashes.yml").write_text(deployment_yaml("blue", "model-1", "code-crashes", env=crash))
    (root / "autoscale.yml").write_text(deployment_yaml("blue", "model-1", "code-slow") + AUTOSCALE)
    (root / "request.json").write_text('{"data": ' + str(REQUEST) + "}")
    return answers
