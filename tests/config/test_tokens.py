"""Endpoint tokens: what the gateway accepts and what it refuses, with no network call."""

from __future__ import annotations

import base64
import json

import pytest

from config.tokens import SigningKey, issue_token, load_public_keys, verify_token

NOW = 1_800_000_000.0
DAY = 24 * 3600


def _part(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate(version=1)


def test_a_token_verifies_for_its_endpoint_until_it_expires(key: SigningKey) -> None:
    issued = issue_token(key, "my-ep", now=NOW, lifetime_seconds=DAY)
    keys = load_public_keys([key.public])
    assert verify_token(issued.access_token, "my-ep", keys, now=NOW + DAY - 1) == NOW + DAY
    assert verify_token(issued.access_token, "my-ep", keys, now=NOW + DAY) is None


def test_a_token_says_to_refresh_after_half_its_life(key: SigningKey) -> None:
    issued = issue_token(key, "my-ep", now=NOW, lifetime_seconds=DAY)
    assert (issued.expires_at, issued.refresh_after) == (NOW + DAY, NOW + DAY // 2)


def test_a_token_for_another_endpoint_is_refused(key: SigningKey) -> None:
    issued = issue_token(key, "other-ep", now=NOW, lifetime_seconds=DAY)
    assert verify_token(issued.access_token, "my-ep", load_public_keys([key.public]), now=NOW) is None


def test_a_token_with_changed_claims_is_refused(key: SigningKey) -> None:
    header, _, signature = issue_token(key, "my-ep", now=NOW, lifetime_seconds=60).access_token.split(".")
    longer = _part({"iss": "tidegate", "aud": "tidegate-endpoint:my-ep", "iat": NOW, "exp": NOW + 10 * DAY})
    forged = f"{header}.{longer}.{signature}"
    assert verify_token(forged, "my-ep", load_public_keys([key.public]), now=NOW) is None


def test_a_token_signed_by_a_retired_key_is_refused(key: SigningKey) -> None:
    issued = issue_token(key, "my-ep", now=NOW, lifetime_seconds=DAY)
    rotated = SigningKey.generate(version=2)
    assert verify_token(issued.access_token, "my-ep", load_public_keys([rotated.public]), now=NOW) is None


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256"])
def test_a_token_naming_another_algorithm_is_refused_before_its_signature(key: SigningKey, alg: str) -> None:
    good = issue_token(key, "my-ep", now=NOW, lifetime_seconds=DAY).access_token
    _, claims, signature = good.split(".")
    for forged in (
        f"{_part({'alg': alg, 'typ': 'JWT'})}.{claims}.",
        f"{_part({'alg': alg})}.{claims}.{signature}",
    ):
        assert verify_token(forged, "my-ep", load_public_keys([key.public]), now=NOW) is None


@pytest.mark.parametrize(
    "garbage", ["", "a.b", "a.b.c", "!!!.???.###", "eyJhbGciOiJFZERTQSJ9..", "x" * 5000], ids=repr
)
def test_garbage_is_refused_without_an_error(key: SigningKey, garbage: str) -> None:
    assert verify_token(garbage, "my-ep", load_public_keys([key.public]), now=NOW) is None


def test_a_route_without_public_keys_accepts_no_token(key: SigningKey) -> None:
    issued = issue_token(key, "my-ep", now=NOW, lifetime_seconds=DAY)
    assert verify_token(issued.access_token, "my-ep", load_public_keys(["not base64!", ""]), now=NOW) is None


def test_the_claims_name_the_endpoint_and_the_key_version(key: SigningKey) -> None:
    issued = issue_token(key, "my-ep", now=NOW, lifetime_seconds=DAY)
    assert _claims(issued.access_token) == {
        "iss": "tidegate",
        "aud": "tidegate-endpoint:my-ep",
        "iat": int(NOW),
        "exp": int(NOW) + DAY,
    }
