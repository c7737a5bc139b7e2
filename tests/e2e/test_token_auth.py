"""`auth_mode: aml_token` on the real stack: get-credentials gives an expiring token that the
gateway checks by itself; keys, other endpoints' tokens, expired and forged tokens are 401; a new
primary key retires every token issued before."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from activities.local.secrets import LocalSecretStore
from config.settings import Settings
from config.tokens import issue_token
from tests.e2e.project import REQUEST
from tests.support.stack import LocalStack

EP = "token-ep"
BODY = json.dumps({"data": REQUEST}).encode()


def call(stack: LocalStack, authorization: str | None, endpoint: str = EP) -> int:
    """What a Python client on the machine sees: the URI `show` prints, through urllib."""
    uri = stack.json("online-endpoint", "show", "-n", endpoint, "--query", "scoring_uri")
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(uri, data=BODY, headers=headers)
    try:
        with urllib.request.urlopen(request, context=stack.ssl_context(), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def credentials(stack: LocalStack, project: tuple[Path, dict]) -> dict:
    root, _ = project
    (root / "token-endpoint.yml").write_text(f"name: {EP}\nauth_mode: aml_token\n")
    stack.ok("online-endpoint", "create", "-f", "token-endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment", "create", "-n", "blue", "-e", EP, "-f", "blue.yml", "--all-traffic", cwd=root
    )
    return stack.json("online-endpoint", "get-credentials", "-n", EP)


def test_get_credentials_gives_a_token_for_a_day_to_refresh_after_half(credentials: dict) -> None:
    assert set(credentials) == {"accessToken", "expiryTimeUtc", "refreshAfterTimeUtc", "tokenType"}
    assert credentials["tokenType"] == "Bearer"
    lifetime = credentials["expiryTimeUtc"] - time.time()
    assert 24 * 3600 - 120 < lifetime <= 24 * 3600
    assert credentials["expiryTimeUtc"] - credentials["refreshAfterTimeUtc"] == 12 * 3600


def test_the_token_is_accepted_and_nothing_else_is(
    stack: LocalStack, credentials: dict, project: tuple[Path, dict]
) -> None:
    token = credentials["accessToken"]
    assert call(stack, f"Bearer {token}") == 200
    assert call(stack, None) == 401
    assert call(stack, f"Bearer {token[:-4]}AAAA") == 401  # signature changed
    assert call(stack, "Bearer not.a.token") == 401
    # A key of another endpoint, and this token at another endpoint, open nothing here.
    root, _ = project
    other_key = stack.serve("token-other", root)
    assert call(stack, f"Bearer {other_key}") == 401
    assert call(stack, f"Bearer {token}", endpoint="token-other") == 401
    assert json.loads(
        stack.ok("online-endpoint", "invoke", "-n", EP, "--request-file", "request.json", cwd=root)
    )


def test_an_expired_token_is_refused(stack: LocalStack, credentials: dict) -> None:
    # Signed with the endpoint's own key, an hour ago, for a minute.
    signing = asyncio.run(LocalSecretStore(Settings(home=stack.home)).signing_key(EP))
    assert signing is not None
    expired = issue_token(signing, EP, now=time.time() - 3600, lifetime_seconds=60)
    assert call(stack, f"Bearer {expired.access_token}") == 401


def test_a_new_primary_key_retires_every_token_issued_before(stack: LocalStack, credentials: dict) -> None:
    old = credentials["accessToken"]
    assert call(stack, f"Bearer {old}") == 200
    stack.ok("online-endpoint", "regenerate-keys", "-n", EP, "--key-type", "primary")
    assert call(stack, f"Bearer {old}") == 401
    fresh = stack.json("online-endpoint", "get-credentials", "-n", EP)["accessToken"]
    assert call(stack, f"Bearer {fresh}") == 200
