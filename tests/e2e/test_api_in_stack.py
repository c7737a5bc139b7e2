"""`tidegate up` runs the API beside the other processes, and the Temporal UI it starts knows
where to decode payloads."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.support.stack import LocalStack


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_status_lists_the_api_running_at_its_address(stack: LocalStack) -> None:
    status = stack.json("status")
    assert status["processes"]["api"]["running"] is True
    assert status["api"] == f"http://127.0.0.1:{stack.port('api')}"
    assert get_json(f"{status['api']}/healthz") == {"status": "ok"}


def test_the_temporal_ui_is_given_the_api_as_its_codec_endpoint(stack: LocalStack) -> None:
    ui = get_json(f"http://127.0.0.1:{stack.port('temporal_ui')}/api/v1/settings")
    assert ui["Codec"]["Endpoint"] == f"http://127.0.0.1:{stack.port('api')}/codec"


def test_the_codec_key_is_made_once_in_the_state_dir(stack: LocalStack) -> None:
    key: Path = stack.home / "codec.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in stack.home.glob(".codec.key.*")] == []


def test_down_stops_the_api_with_the_rest(tmp_path: Path) -> None:
    local = LocalStack.create(tmp_path / "home")
    local.up()
    try:
        stopped = local.ok("down")
    finally:
        local.down()  # a no-op once it has stopped
    assert "api" in stopped.removeprefix("stopped: ").split(", ")
