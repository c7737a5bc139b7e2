"""A scoring script in Azure ML's shape: init() loads the model once, run() answers a request."""

import json
import logging
import os

model = None


def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.json")
    with open(path) as f:
        model = json.load(f)
    logging.info("loaded %s", model["name"])


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    predictions = [
        model["intercept"] + sum(c * x for c, x in zip(model["coef"], row, strict=True)) for row in rows
    ]
    return {"model": model["name"], "predictions": predictions}
