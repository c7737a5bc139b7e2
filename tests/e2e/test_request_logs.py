"""`online-deployment get-logs --request-id`: one request's gateway access-log line and what
its instance logged while serving it (azmlinfsrv's own line, the model's print() and
traceback), on a real stack; nothing of the other requests."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.project import deployment_yaml
from tests.support.polling import until
from tests.support.stack import LocalStack

EP = "logs-ep"
# A model that logs what it was asked (print() in run() reaches azmlinfsrv's log), and raises
# for a "boom".
SCORE_TELLS = """
import json

def init():
    pass

def run(raw_data):
    tag = json.loads(raw_data)["tag"]
    print(f"scoring tag {tag}")
    if tag == "boom":
        raise ValueError(f"run() failed for tag {tag}")
    return {"tag": tag}
"""


@pytest.fixture(scope="module")
def key(stack: LocalStack, project: tuple[Path, dict[str, list[float]]]) -> str:
    root, _ = project
    (root / "code-tells").mkdir(exist_ok=True)
    (root / "code-tells" / "score.py").write_text(SCORE_TELLS)
    (root / "tells.yml").write_text(deployment_yaml("blue", "model-1", "code-tells", endpoint=EP))
    return stack.serve(EP, root, "tells.yml")


async def score(stack: LocalStack, key: str, tag: str, request_id: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{stack.http_base}/endpoints/{EP}/score", data=json.dumps({"tag": tag}), headers=headers
        ) as response:
            await response.read()
            return response.status, response.headers["x-request-id"]


def request_logs(stack: LocalStack, request_id: str) -> tuple[list[dict[str, object]], list[str]]:
    """get-logs --request-id, split into the access-log lines and the instances' lines."""
    out = stack.ok("online-deployment", "get-logs", "-n", "blue", "-e", EP, "--request-id", request_id)
    gateway, _, instances = out.partition("\n\n")
    head, *access = gateway.strip().splitlines()
    assert head == "=== gateway access log ==="
    return [json.loads(line) for line in access], instances.strip().splitlines()


def test_get_logs_with_a_request_id_shows_that_request_only(stack: LocalStack, key: str) -> None:
    one, two = f"rid-one-{uuid.uuid4()}", f"rid-two-{uuid.uuid4()}"
    assert asyncio.run(score(stack, key, "apple", one)) == (200, one)
    assert asyncio.run(score(stack, key, "boom", two)) == (424, two)
    status, made = asyncio.run(score(stack, key, "pear", None))  # the gateway makes its id
    assert status == 200

    # The access log is flushed every 0.2 s: poll (bounded) until the line is there.
    until(lambda: request_logs(stack, made)[0], what="the access-log line of the last request")

    access, instance = request_logs(stack, one)
    assert [(line["request_id"], line["status"], line["deployment"]) for line in access] == [
        (one, 200, "blue")
    ]
    assert instance[0].startswith("=== instance blue-")
    text = "\n".join(instance)
    assert f"request_id={one} scoring tag apple" in text
    assert f"request_id={one} POST /score 200" in text  # azmlinfsrv's own line for it
    assert "boom" not in text and "pear" not in text and two not in text

    access, instance = request_logs(stack, two)
    assert [(line["status"], line["code"]) for line in access] == [(424, "ModelError")]
    text = "\n".join(instance)
    assert f"request_id={two} scoring tag boom" in text
    assert "ValueError: run() failed for tag boom" in text  # the traceback under its record
    assert "apple" not in text

    access, instance = request_logs(stack, made)
    assert [line["request_id"] for line in access] == [made]
    assert any(f"request_id={made} scoring tag pear" in line for line in instance)

    access, instance = request_logs(stack, "no-such-request")
    assert (access, instance) == ([], [])
