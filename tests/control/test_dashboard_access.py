"""Who may open the dashboard and steer from it, on a real `tidegate api` process (no Temporal
behind it: these answers come before any call to it): the session serves the API's own origin
under /ui/ only, a signed-out page goes to the login form and back, a POST needs the CSRF token,
and every page carries a strict Content-Security-Policy."""

from __future__ import annotations

import urllib.parse

import aiohttp
import pytest

from control.api_server import SESSION_COOKIE
from control.dashboard.security import Csrf
from tests.control.conftest import ApiProcess

PAUSE = "/ui/endpoints/some-ep/rollout/pause"
LOGS = "/ui/endpoints/some-ep/deployments/blue/logs"


async def sign_in(api: ApiProcess, next_path: str | None = None) -> tuple[str, str]:
    """The session cookie's value and where the login form sent the browser."""
    form = {"credential": api.token, **({"next": next_path} if next_path is not None else {})}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{api.url}/login", data=form, allow_redirects=False) as response:
            assert response.status == 303
            return response.cookies[SESSION_COOKIE].value, response.headers["Location"]


async def request(
    api: ApiProcess,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    data: dict[str, str] | None = None,
    **headers: str,
) -> tuple[int, str, dict[str, str]]:
    if cookie is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, f"{api.url}{path}", data=data, headers=headers, allow_redirects=False
        ) as response:
            return response.status, await response.text(), dict(response.headers)


async def test_a_signed_out_page_goes_to_the_login_form_and_the_json_answers_401(api: ApiProcess) -> None:
    status, _, headers = await request(api, "GET", "/ui/endpoints/some-ep?x=1")
    assert status == 303
    assert headers["Location"] == "/login?" + urllib.parse.urlencode({"next": "/ui/endpoints/some-ep?x=1"})
    status, body, _ = await request(api, "GET", "/ui/api/endpoints")
    assert status == 401 and "control credential" in body
    status, _, _ = await request(api, "POST", PAUSE, data={"csrf_token": "x"})
    assert status == 401


async def test_a_signed_out_logs_page_goes_to_the_login_form_and_shows_no_line(api: ApiProcess) -> None:
    path = f"{LOGS}?instance=blue-1&follow=1&part=live"
    status, body, headers = await request(api, "GET", path)
    assert status == 303 and "instance" not in body
    assert headers["Location"] == "/login?" + urllib.parse.urlencode({"next": path})


async def test_the_login_form_carries_next_and_signing_in_goes_there(api: ApiProcess) -> None:
    status, body, _ = await request(api, "GET", "/login?next=%2Fui%2Fendpoints%2Fsome-ep")
    assert status == 200 and 'name="next" value="/ui/endpoints/some-ep"' in body
    _, location = await sign_in(api, "/ui/endpoints/some-ep")
    assert location == "/ui/endpoints/some-ep"


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/ui/",
        "//evil.example/ui/",
        "/codec/decode",
        "/\\evil.example/ui/",
        "javascript:alert(1)",
    ],
    ids=["another_site", "scheme_relative", "not_the_dashboard", "backslash", "javascript"],
)
async def test_signing_in_never_sends_the_browser_elsewhere(api: ApiProcess, next_path: str) -> None:
    _, location = await sign_in(api, next_path)
    assert location == "/login"


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:1"], ids=["other_site", "other_port"]
)
async def test_a_session_opens_the_dashboard_only_from_its_own_origin(api: ApiProcess, origin: str) -> None:
    cookie, _ = await sign_in(api)
    status, _, _ = await request(api, "GET", "/ui/api/endpoints", cookie=cookie, Origin=origin)
    assert status == 401
    token = Csrf(api.token).token(cookie)
    status, _, _ = await request(api, "POST", PAUSE, cookie=cookie, data={"csrf_token": token}, Origin=origin)
    assert status == 401


async def test_a_session_from_the_dashboard_does_not_open_the_codec(api: ApiProcess) -> None:
    cookie, _ = await sign_in(api)
    status, _, _ = await request(api, "POST", "/codec/decode", cookie=cookie, Origin=api.url)
    assert status == 401


@pytest.mark.parametrize(
    "form",
    [{}, {"csrf_token": ""}, {"csrf_token": "forged"}, {"reason": "x"}],
    ids=["no_token", "empty_token", "forged_token", "reason_only"],
)
async def test_a_post_without_the_csrf_token_is_403(api: ApiProcess, form: dict[str, str]) -> None:
    cookie, _ = await sign_in(api)
    status, body, _ = await request(api, "POST", PAUSE, cookie=cookie, data=form, Origin=api.url)
    assert status == 403 and "CSRF" in body


async def test_another_sessions_csrf_token_is_403(api: ApiProcess) -> None:
    mine, _ = await sign_in(api)
    theirs, _ = await sign_in(api)
    token = Csrf(api.token).token(theirs)
    status, _, _ = await request(api, "POST", PAUSE, cookie=mine, data={"csrf_token": token}, Origin=api.url)
    assert status == 403


async def test_with_the_token_the_post_reaches_the_rollout_and_says_what_failed(api: ApiProcess) -> None:
    """No Temporal behind this API: past the CSRF check, the answer is a page naming that."""
    cookie, _ = await sign_in(api)
    token = Csrf(api.token).token(cookie)
    status, body, headers = await request(
        api, "POST", PAUSE, cookie=cookie, data={"csrf_token": token}, Origin=api.url
    )
    assert status == 503 and "Temporal" in body
    assert headers["Content-Type"].startswith("text/html")
    assert api.token not in body and cookie not in body


async def test_pages_and_their_files_carry_a_strict_policy(api: ApiProcess) -> None:
    cookie, _ = await sign_in(api)
    for path in ("/ui/endpoints/some-ep", LOGS, "/ui/static/dashboard.js", "/ui/static/dashboard.css"):
        status, body, headers = await request(api, "GET", path, cookie=cookie)
        assert status in (200, 503), (path, status, body[:200])
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    status, _, _ = await request(api, "GET", "/ui/static/../control.token", cookie=cookie)
    assert status == 404
