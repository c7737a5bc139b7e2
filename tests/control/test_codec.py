"""The payload codec: what Temporal keeps is ciphertext; Tidegate's processes read it back."""

from __future__ import annotations

import base64
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from config.contract.codec import (
    ENCODING,
    KEY_ID_METADATA,
    CodecKeyError,
    EncryptionCodec,
    codec,
    data_converter,
    ensure_codec_key,
    new_key_text,
)
from config.settings import Settings
from tests.workflows.record_histories import recorded, workflow_id_of
from worker.main import WORKFLOWS

SECRET = "s3cr3t-db-password-7f1c"
# The recordings made before the codec existed: no payload in them is encrypted.
_ENCRYPTED = base64.b64encode(ENCODING).decode()
RECORDED = [path for path in recorded() if _ENCRYPTED not in path.read_text()]


def deployment_input() -> dict[str, object]:
    return {"name": "blue", "environment_variables": {"DB_PASSWORD": SECRET}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


async def test_a_payload_round_trips_through_encode_and_decode(settings: Settings) -> None:
    converter = data_converter(settings)
    encoded = await converter.encode([deployment_input()])
    assert await converter.decode(encoded, [dict]) == [deployment_input()]


async def test_the_ciphertext_holds_neither_the_secret_nor_its_encoding(settings: Settings) -> None:
    [encoded] = await data_converter(settings).encode([deployment_input()])
    assert encoded.metadata["encoding"] == ENCODING
    assert encoded.metadata[KEY_ID_METADATA] == codec(settings).key_id.encode()
    raw = encoded.SerializeToString()
    assert SECRET.encode() not in raw
    assert b"json/plain" not in raw  # the inner payload's metadata is encrypted too


async def test_the_same_value_encrypts_differently_each_time(settings: Settings) -> None:
    converter = data_converter(settings)
    [first] = await converter.encode([deployment_input()])
    [second] = await converter.encode([deployment_input()])
    assert first.data != second.data


async def test_a_payload_under_another_key_fails_naming_both_keys(tmp_path: Path) -> None:
    ours = data_converter(Settings(home=tmp_path / "a"))
    theirs = Settings(home=tmp_path / "b")
    encoded = await ours.encode([deployment_input()])
    with pytest.raises(CodecKeyError) as failure:
        await codec(theirs).decode(encoded)
    message = str(failure.value)
    assert ours.payload_codec.key_id in message and codec(theirs).key_id in message
    assert "TIDEGATE_CODEC_KEY" in message


async def test_an_altered_ciphertext_fails_authentication(settings: Settings) -> None:
    [encoded] = await data_converter(settings).encode([deployment_input()])
    tampered = Payload()
    tampered.CopyFrom(encoded)
    tampered.data = encoded.data[:-1] + bytes([encoded.data[-1] ^ 1])
    with pytest.raises(CodecKeyError, match="failed authentication"):
        await codec(settings).decode([tampered])


async def test_an_unencrypted_payload_passes_through_decode(settings: Settings) -> None:
    """Histories written before the codec still replay and still show."""
    [plain] = await pydantic_data_converter.encode([deployment_input()])
    assert await codec(settings).decode([plain]) == [plain]
    assert await data_converter(settings).decode([plain], [dict]) == [deployment_input()]


async def test_failure_messages_are_encrypted_too(settings: Settings) -> None:
    """An activity's error may quote a secret: its message and stack trace go in the codec."""
    converter = data_converter(settings)
    failure = Failure()
    await converter.encode_failure(RuntimeError(f"could not connect with {SECRET}"), failure)
    assert SECRET.encode() not in failure.SerializeToString()
    error = await converter.decode_failure(failure)
    assert SECRET in str(error)


def test_the_key_is_made_once_readable_by_its_owner_only(settings: Settings) -> None:
    key = ensure_codec_key(settings)
    path = settings.home / "codec.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700
    assert ensure_codec_key(settings) == key
    assert [p.name for p in settings.home.iterdir()] == ["codec.key"]  # nothing staged left behind


def test_processes_starting_at_once_agree_on_one_key(settings: Settings) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: ensure_codec_key(settings), range(16)))
    assert len(keys) == 1


def test_a_key_given_in_the_setting_is_used_and_no_file_is_made(tmp_path: Path) -> None:
    text = new_key_text()
    settings = Settings(home=tmp_path / "home", codec_key=SecretStr(text))
    assert (
        codec(settings).key_id == codec(Settings(home=tmp_path / "other", codec_key=SecretStr(text))).key_id
    )
    assert not (tmp_path / "home" / "codec.key").exists()


@pytest.mark.parametrize(
    "value, problem",
    [("not base64 at all!", "not base64"), ("c2hvcnQ=", "holds 5 bytes")],
    ids=["garbage", "too_short"],
)
def test_a_bad_key_setting_is_refused_naming_the_setting(tmp_path: Path, value: str, problem: str) -> None:
    settings = Settings(home=tmp_path, codec_key=SecretStr(value))
    with pytest.raises(CodecKeyError, match=problem) as failure:
        ensure_codec_key(settings)
    assert "TIDEGATE_CODEC_KEY" in str(failure.value)


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(CodecKeyError, match="32 bytes"):
        EncryptionCodec(os.urandom(16))


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: path.stem)
async def test_histories_recorded_before_the_codec_replay_through_it(settings: Settings, path: Path) -> None:
    """Running workflows started before the codec keep running on a worker that has it."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=data_converter(settings))
    history = WorkflowHistory.from_json(workflow_id_of(path), path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None
