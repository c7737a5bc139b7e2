"""Every workflow payload encrypted before it reaches Temporal (AES-256-GCM).

A deployment's ``environment_variables`` (often secrets) travel in workflow inputs, activity
inputs and results, so Temporal would keep them in its history in clear text. Tidegate's
clients (the CLI and the worker) share one data converter whose codec encrypts
each payload whole: Temporal's history, its UI and ``temporal workflow show`` see
``binary/encrypted`` bytes and a key id; the codec endpoint of ``tidegate api`` decodes them
for whoever holds the control credential.

The key is 32 random bytes, made on first use as ``$TIDEGATE_HOME/codec.key`` (mode 0600), or
given to a process as ``TIDEGATE_CODEC_KEY`` (urlsafe base64) when the parts run on several
machines: every client and worker of one Temporal namespace needs the same key.

Payloads that are not encrypted pass through ``decode`` unchanged, so histories written before
the codec (and the recorded ones the replay tests use) still replay.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from config.security import ensure_home
from config.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
CODEC_KEY_FILE = "codec.key"
KEY_ENV = "TIDEGATE_CODEC_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12


class CodecKeyError(ValueError):
    """A payload this process cannot decrypt, or a key it cannot use; the message says which
    key was expected and where keys come from."""


def key_id(key: bytes) -> str:
    """A name for a key that reveals nothing of it: histories say which key encrypted them."""
    return hashlib.sha256(b"tidegate-codec-key-id\0" + key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (its metadata included, so the encoding
    and the type it names are hidden too). The key id is authenticated as associated data."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CodecKeyError(f"a codec key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        self._key_id_bytes = self.key_id.encode()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload.SerializeToString(), self._key_id_bytes)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: self._key_id_bytes},
            data=nonce + sealed,
        )

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before the codec, or by a client without it
        given = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        if given != self.key_id:
            raise CodecKeyError(
                f"payload encrypted with codec key {given or '(none)'}, this process has key "
                f"{self.key_id}: give it the key that encrypted the history ({KEY_ENV}, or "
                f"$TIDEGATE_HOME/{CODEC_KEY_FILE})"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, sealed, self._key_id_bytes)
        except InvalidTag:
            raise CodecKeyError(
                f"payload under codec key {self.key_id} failed authentication: it was altered or truncated"
            ) from None
        return Payload.FromString(plain)


def _parse_key(text: str, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        raise CodecKeyError(f"{source} is not base64 (expected {KEY_BYTES} random bytes)") from None
    if len(key) != KEY_BYTES:
        raise CodecKeyError(f"{source} holds {len(key)} bytes; a codec key is {KEY_BYTES}")
    return key


def new_key_text() -> str:
    """A fresh key as ``TIDEGATE_CODEC_KEY`` and the key file spell it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def ensure_codec_key(settings: Settings) -> bytes:
    """The key: the setting, else the state dir's file, made on first use. The file appears
    whole or not at all (written aside, then hard-linked into place, which fails if another
    process got there first), so two processes starting at once agree on one key."""
    if settings.codec_key is not None:
        return _parse_key(settings.codec_key.get_secret_value(), KEY_ENV)
    home = ensure_home(settings)
    path = home / CODEC_KEY_FILE
    if not path.exists():
        staged = home / f".{CODEC_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(new_key_text() + "\n")
            try:
                os.link(staged, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
        finally:
            staged.unlink(missing_ok=True)
    return _parse_key(path.read_text(), str(path))


def codec(settings: Settings) -> EncryptionCodec:
    return EncryptionCodec(ensure_codec_key(settings))


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic JSON payloads, encrypted; failure messages and stack traces move into an
    encoded attribute so the codec covers them too (an error may quote a secret)."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec(settings),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
