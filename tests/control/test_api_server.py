"""`tidegate api`: the remote payload codec the Temporal UI and CLI call, behind the control
credential (a bearer header for the CLI, a signed session cookie for a signed-in browser).

The requests below are shaped as the installed Temporal CLI 1.9.1 and UI 2.54.1 were seen to
send them: ``POST <endpoint>/decode`` (the UI adds ``?preserveStorageRefs=true``) with
``Content-Type: application/json`` and ``X-Namespace``; the UI first sends a CORS preflight
asking for ``content-type,x-namespace``, and sends cookies only with "include cross-origin
credentials" on.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest
import trustme
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.contrib.pydantic import pydantic_data_converter

from config.contract.codec import ENCODING, data_converter
from config.settings import Settings
from control import stack
from control.api_server import SESSION_COOKIE, Sessions, codec_endpoint
from tests.control.conftest import ROOT, ApiProcess, start_api, stop_api

SECRET = "s3cr3t-db-password-41d2"
UI_PATH = "/codec/decode?preserveStorageRefs=true"


async def encrypted_payloads(api: ApiProcess) -> list[Payload]:
    """What Temporal's history holds for a deployment input, written by a Tidegate client."""
    converter = data_converter(api.settings())
    return await converter.encode([{"environment_variables": {"DB_PASSWORD": SECRET}}])


def body_of(payloads: list[Payload]) -> str:
    """Payloads as protobuf JSON: base64 data and metadata, as the UI and CLI send them."""
    return json_format.MessageToJson(Payloads(payloads=payloads))


def payloads_in(text: str) -> list[Payload]:
    return list(json_format.Parse(text, Payloads()).payloads)


async def post(
    api: ApiProcess, path: str, payloads: list[Payload], **headers: str
) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    sent = {"Content-Type": "application/json", "X-Namespace": "default", **headers}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{api.url}{path}", data=body_of(payloads), headers=sent) as response:
            return response.status, await response.text(), response.headers


async def sign_in(api: ApiProcess, credential: str) -> tuple[int, SimpleCookie]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{api.url}/login", data={"credential": credential}, allow_redirects=False
        ) as response:
            cookie = SimpleCookie()
            for header in response.headers.getall("Set-Cookie", []):
                cookie.load(header)
            return response.status, cookie


async def session_cookie(api: ApiProcess) -> str:
    status, cookie = await sign_in(api, api.token)
    assert status == 303
    return cookie[SESSION_COOKIE].value


# ---- the credential ---------------------------------------------------------------------------
async def test_healthz_answers_without_a_credential(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/codec/decode", "/codec/encode", UI_PATH])
async def test_the_codec_refuses_a_caller_without_the_credential(api: ApiProcess, path: str) -> None:
    status, text, headers = await post(api, path, await encrypted_payloads(api))
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert '"code": "Unauthorized"' in text and SECRET not in text


async def test_a_wrong_bearer_credential_is_refused(api: ApiProcess) -> None:
    status, _, _ = await post(
        api, "/codec/decode", await encrypted_payloads(api), Authorization="Bearer not-the-credential"
    )
    assert status == 401


# ---- the codec, as `temporal workflow show --codec-endpoint ... --codec-auth ...` calls it ----
async def test_decode_with_the_bearer_credential_returns_the_payload_in_clear(api: ApiProcess) -> None:
    status, text, _ = await post(
        api, "/codec/decode", await encrypted_payloads(api), Authorization=f"Bearer {api.token}"
    )
    assert status == 200
    [payload] = payloads_in(text)
    assert payload.metadata["encoding"] == b"json/plain"
    assert pydantic_data_converter.payload_converter.from_payloads([payload], [dict]) == [
        {"environment_variables": {"DB_PASSWORD": SECRET}}
    ]


async def test_encode_encrypts_under_the_key_tidegate_decodes_with(api: ApiProcess) -> None:
    plain = pydantic_data_converter.payload_converter.to_payloads([{"note": SECRET}])
    status, text, _ = await post(api, "/codec/encode", plain, Authorization=f"Bearer {api.token}")
    assert status == 200
    [encrypted] = payloads_in(text)
    assert encrypted.metadata["encoding"] == ENCODING and SECRET.encode() not in encrypted.data
    assert await data_converter(api.settings()).decode([encrypted], [dict]) == [{"note": SECRET}]


async def test_an_unencrypted_payload_comes_back_unchanged(api: ApiProcess) -> None:
    plain = pydantic_data_converter.payload_converter.to_payloads([{"written": "before the codec"}])
    status, text, _ = await post(api, "/codec/decode", plain, Authorization=f"Bearer {api.token}")
    assert status == 200
    assert payloads_in(text) == plain


async def test_a_payload_under_another_key_is_refused_naming_the_keys(
    api: ApiProcess, tmp_path: Path
) -> None:
    elsewhere = data_converter(Settings(home=tmp_path / "elsewhere"))
    foreign = await elsewhere.encode([{"environment_variables": {"DB_PASSWORD": SECRET}}])
    status, text, _ = await post(api, "/codec/decode", foreign, Authorization=f"Bearer {api.token}")
    assert status == 400
    assert "UndecodablePayload" in text and elsewhere.payload_codec.key_id in text


async def test_a_body_that_is_not_payloads_is_refused_without_quoting_it(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{api.url}/codec/decode",
            data=f'{{"payload": "{SECRET}"}}',
            headers={"Authorization": f"Bearer {api.token}"},
        ) as response:
            assert response.status == 400
            assert SECRET not in await response.text()


# ---- CORS for the Temporal UI ------------------------------------------------------------------
async def test_the_temporal_ui_preflight_is_answered_for_its_origin(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.options(
            f"{api.url}{UI_PATH}",
            headers={
                "Origin": api.ui_origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == api.ui_origin
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
            allowed = response.headers["Access-Control-Allow-Headers"].lower()
            assert "content-type" in allowed and "x-namespace" in allowed
            assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_a_preflight_from_another_origin_is_refused(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.options(
            f"{api.url}{UI_PATH}",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        ) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_401_to_the_ui_carries_cors_headers_so_the_ui_can_show_it(api: ApiProcess) -> None:
    status, _, headers = await post(api, UI_PATH, await encrypted_payloads(api), Origin=api.ui_origin)
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == api.ui_origin


# ---- signing in, for the Temporal UI in a browser ----------------------------------------------
async def test_the_login_page_is_a_form_that_cannot_be_framed(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/login") as response:
            assert response.status == 200
            page = await response.text()
            assert '<form method="post" action="/login">' in page and 'type="password"' in page
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_signing_in_with_a_wrong_credential_sets_no_cookie(api: ApiProcess) -> None:
    status, cookie = await sign_in(api, "not-the-credential")
    assert status == 401
    assert SESSION_COOKIE not in cookie


async def test_signing_in_sets_an_httponly_strict_session_that_is_not_the_credential(
    api: ApiProcess,
) -> None:
    status, cookie = await sign_in(api, api.token)
    assert status == 303
    morsel = cookie[SESSION_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert api.token not in morsel.value


async def test_a_session_decodes_for_the_temporal_ui(api: ApiProcess) -> None:
    cookie = await session_cookie(api)
    status, text, headers = await post(
        api, UI_PATH, await encrypted_payloads(api), Origin=api.ui_origin, Cookie=f"{SESSION_COOKIE}={cookie}"
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == api.ui_origin
    assert SECRET.encode() in payloads_in(text)[0].data


@pytest.mark.parametrize(
    "origin",
    [None, "http://127.0.0.1:1", "http://evil.example"],
    ids=["no_origin", "other_port", "other_site"],
)
async def test_a_session_serves_only_the_temporal_ui_origin(api: ApiProcess, origin: str | None) -> None:
    """A cookie on 127.0.0.1 reaches every port of it; only the UI's fetches may use it."""
    cookie = await session_cookie(api)
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", **({"Origin": origin} if origin else {})}
    status, _, _ = await post(api, UI_PATH, await encrypted_payloads(api), **headers)
    assert status == 401


async def test_signing_out_clears_the_session_cookie(api: ApiProcess) -> None:
    cookie = await session_cookie(api)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{api.url}/logout", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}, allow_redirects=False
        ) as response:
            assert response.status == 303
            cleared = SimpleCookie()
            cleared.load(response.headers["Set-Cookie"])
            assert cleared[SESSION_COOKIE].value == ""


@pytest.mark.parametrize(
    "value",
    ["", "garbage", "v1.9999999999.nonce.forged-mac", "v2.9999999999.nonce.mac"],
    ids=["empty", "garbage", "forged_mac", "unknown_version"],
)
def test_a_forged_session_value_is_refused(value: str) -> None:
    assert not Sessions("credential").valid(value)


def test_a_session_expires() -> None:
    now = [1_000_000.0]
    sessions = Sessions("credential", ttl=60, clock=lambda: now[0])
    value = sessions.issue()
    assert sessions.valid(value)
    now[0] += 61
    assert not sessions.valid(value)


def test_a_new_credential_ends_every_session() -> None:
    assert not Sessions("new credential").valid(Sessions("old credential").issue())


async def test_the_log_never_holds_the_credential_a_session_or_a_payload(api: ApiProcess) -> None:
    cookie = await session_cookie(api)
    await post(
        api, UI_PATH, await encrypted_payloads(api), Origin=api.ui_origin, Cookie=f"{SESSION_COOKIE}={cookie}"
    )
    await post(api, "/codec/decode", await encrypted_payloads(api), Authorization="Bearer wrong")
    await sign_in(api, "a-wrong-guess-at-the-credential")
    log = api.log_text()
    assert "api.unauthorized" in log and "api.login" in log
    for secret in (api.token, cookie, SECRET, "a-wrong-guess-at-the-credential"):
        assert secret not in log


# ---- as a control listener ---------------------------------------------------------------------
def test_beyond_loopback_without_a_certificate_the_api_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "control.cli", "api"],
        env=dict(os.environ, TIDEGATE_HOME=str(tmp_path / "home"), TIDEGATE_API_BIND="0.0.0.0"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a limit under test
    )
    assert done.returncode == 1
    assert "TIDEGATE_API_BIND=0.0.0.0" in done.stderr


async def test_with_a_certificate_the_api_serves_https_and_the_session_cookie_is_secure(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "api.pem"))
    tls = {
        "TIDEGATE_CONTROL_TLS_CERT": str(tmp_path / "api.pem"),
        "TIDEGATE_CONTROL_TLS_KEY": str(tmp_path / "api.pem"),
    }
    api = start_api(tmp_path / "home", scheme="https", ca=ca, **tls)
    try:
        client = ssl.create_default_context()
        ca.configure_trust(client)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client)) as session:
            async with session.post(
                f"https://127.0.0.1:{api.port}/login", data={"credential": api.token}, allow_redirects=False
            ) as response:
                assert response.status == 303
                cookie = SimpleCookie()
                cookie.load(response.headers["Set-Cookie"])
                assert cookie[SESSION_COOKIE]["secure"] is True
    finally:
        stop_api(api)


# ---- in the local system ----------------------------------------------------------------------
def test_up_starts_the_api_between_gateway_and_worker_and_gives_the_ui_its_codec(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, api_port=18383)
    specs = {spec.name: spec.argv for spec in stack.process_specs(settings)}
    assert list(specs) == list(stack.ORDER) == ["temporal", "host", "gateway", "api", "worker"]
    assert specs["api"][-1] == "api"
    temporal = specs["temporal"]
    assert temporal[temporal.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:18383/codec"
    assert codec_endpoint(settings) == "http://127.0.0.1:18383/codec"
