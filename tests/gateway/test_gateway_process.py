"""The real gateway process (``python -m gateway``) against small aiohttp backends.

Each test pushes its own endpoint through the admin API, so tests share one process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from config.tokens import SigningKey, issue_token
from tests.gateway.conftest import (
    KEY,
    SECONDARY_KEY,
    Backend,
    GatewayProcess,
    route_body,
)
from tests.gateway.helpers import delete, eventually, push, push_route, score

# --- scoring and auth ---


async def test_valid_key_scores_and_names_the_deployment(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-basic", {"blue": [backends["blue"].url]}, {"blue": 100})
    reply = await score(client, gateway, "t-basic", headers={"x-request-id": "rid-123"})
    assert reply.status == 200
    assert reply.headers["azureml-model-deployment"] == "blue"
    assert reply.headers["x-request-id"] == "rid-123"
    assert reply.json() == {"backend": "blue", "bytes": len(b'{"data": [1, 2, 3]}')}
    sent = backends["blue"].headers[-1]
    assert sent["x-request-id"] == "rid-123"
    assert sent["Content-Type"] == "application/json"
    assert "Authorization" not in sent


async def test_secondary_key_path_form_and_generated_request_id(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client, gateway, "t-path", {"blue": [backends["blue"].url]}, {"blue": 100}, keys=[KEY, SECONDARY_KEY]
    )
    reply = await score(client, gateway, "t-path", key=SECONDARY_KEY, path_form=True)
    assert reply.status == 200
    assert len(reply.headers["x-request-id"]) == 36
    client_id = await score(
        client, gateway, "t-path", path_form=True, headers={"x-ms-client-request-id": "client-7"}
    )
    assert client_id.headers["x-request-id"] == "client-7"


async def test_swagger_is_forwarded(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-swagger", {"green": [backends["green"].url]}, {"green": 100})
    reply = await score(client, gateway, "t-swagger", method="GET", resource="/swagger.json", data=None)
    assert reply.status == 200
    assert reply.json() == {"swagger": "2.0", "backend": "green"}


@pytest.mark.parametrize(
    ("key", "authorization"),
    [(None, None), ("wrong-key", None), (None, f"Basic {KEY}"), (None, KEY)],
    ids=["no_key", "wrong_key", "wrong_scheme", "key_without_bearer"],
)
async def test_missing_or_wrong_key_is_401(
    gateway: GatewayProcess,
    backends: dict[str, Backend],
    client: aiohttp.ClientSession,
    key: str | None,
    authorization: str | None,
) -> None:
    await push_route(client, gateway, "t-auth", {"blue": [backends["blue"].url]}, {"blue": 100})
    headers = {"Authorization": authorization} if authorization else {}
    reply = await score(client, gateway, "t-auth", key=key, headers=headers)
    assert reply.status == 401
    assert reply.error_code == "Unauthorized"
    assert KEY.encode() not in reply.body


async def test_a_token_endpoint_takes_its_tokens_and_no_key_and_stops_a_token_at_its_expiry(
    gateway: GatewayProcess, backends: dict[str, Backend]
) -> None:
    signing = SigningKey.generate(version=1)
    body = route_body("t-token", 1, {"blue": [backends["blue"].url]}, {"blue": 100})
    body |= {"auth_mode": "aml_token", "token_public_keys": [signing.public]}
    # One connection throughout: the token it sent is remembered on it, up to the token's expiry.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one_connection:
        await push(one_connection, gateway, body)
        soon = issue_token(signing, "t-token", now=time.time() - 58, lifetime_seconds=60)
        good = issue_token(signing, "t-token", now=time.time(), lifetime_seconds=3600)

        assert (await score(one_connection, gateway, "t-token", key=good.access_token)).status == 200
        assert (await score(one_connection, gateway, "t-token", key=KEY)).status == 401
        assert (await score(one_connection, gateway, "t-token", key=soon.access_token)).status == 200
        await asyncio.sleep(max(0.0, soon.expires_at - time.time()) + 0.2)
        late = await score(one_connection, gateway, "t-token", key=soon.access_token)
        assert (late.status, late.error_code) == (401, "Unauthorized")
        assert (await score(one_connection, gateway, "t-token", key=good.access_token)).status == 200


async def test_unknown_endpoint_is_404(gateway: GatewayProcess, client: aiohttp.ClientSession) -> None:
    reply = await score(client, gateway, "t-nobody")
    assert (reply.status, reply.error_code) == (404, "EndpointNotFound")


# --- traffic ---


async def test_90_10_split_lands_green_between_7_and_13_percent(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "t-split",
        {"blue": [backends["blue"].url], "green": [backends["green"].url]},
        {"blue": 90, "green": 10},
    )
    limit = asyncio.Semaphore(32)

    async def one() -> str:
        async with limit:
            reply = await score(client, gateway, "t-split")
            assert reply.status == 200
            return reply.headers["azureml-model-deployment"]

    landed = Counter(await asyncio.gather(*(one() for _ in range(2000))))
    assert set(landed) == {"blue", "green"}
    assert 140 <= landed["green"] <= 260, landed


async def test_header_targets_a_deployment_at_0_percent(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "t-target",
        {"blue": [backends["blue"].url], "green": [backends["green"].url]},
        {"blue": 100, "green": 0},
    )
    for _ in range(5):
        reply = await score(client, gateway, "t-target", headers={"azureml-model-deployment": "green"})
        assert reply.status == 200
        assert reply.headers["azureml-model-deployment"] == "green"
        assert reply.json()["backend"] == "green"


async def test_header_naming_an_unknown_deployment_is_404(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-target-404", {"blue": [backends["blue"].url]}, {"blue": 100})
    reply = await score(client, gateway, "t-target-404", headers={"azureml-model-deployment": "purple"})
    assert (reply.status, reply.error_code) == (404, "DeploymentNotFound")


async def test_all_traffic_0_without_header_is_no_valid_deployments(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-zero", {"blue": [backends["blue"].url]}, {"blue": 0})
    reply = await score(client, gateway, "t-zero")
    assert (reply.status, reply.error_code) == (404, "NoValidDeployments")


async def test_least_outstanding_spreads_concurrent_requests(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    a, b = backends["hold-a"], backends["hold-b"]
    await push_route(client, gateway, "t-lor", {"blue": [a.url, b.url]}, {"blue": 100})
    pending = [asyncio.create_task(score(client, gateway, "t-lor")) for _ in range(4)]
    await eventually(lambda: a.seen["score"] + b.seen["score"] == 4)
    assert (a.seen["score"], b.seen["score"]) == (2, 2)
    a.release.set()
    b.release.set()
    assert [r.status for r in await asyncio.gather(*pending)] == [200] * 4


# --- failures ---


async def test_model_error_is_424_without_the_instance_body(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-fail", {"broken": [backends["fail"].url]}, {"broken": 100})
    reply = await score(client, gateway, "t-fail")
    assert reply.status == 424
    assert reply.json() == {
        "error": {
            "code": "ModelError",
            "message": "the model's run() failed; see get-logs for deployment broken",
        }
    }
    assert b"Traceback" not in reply.body and b"SECRET" not in reply.body
    assert reply.headers["azureml-model-deployment"] == "broken"


async def test_model_4xx_passes_through_with_its_body(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-422", {"blue": [backends["reject"].url]}, {"blue": 100})
    reply = await score(client, gateway, "t-422")
    assert reply.status == 422
    assert reply.json() == {"detail": "bad input"}


async def test_204_passes_through_and_keeps_the_connection_framed(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-204", {"blue": [backends["empty"].url]}, {"blue": 100})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    request = (
        f"POST /endpoints/t-204/score HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    for _ in range(2):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204")
        assert b"content-length" not in head.lower()
    writer.close()


async def test_instance_slower_than_request_timeout_is_408(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client, gateway, "t-slow", {"blue": [backends["slow"].url]}, {"blue": 100}, timeout_ms=200
    )
    reply = await score(client, gateway, "t-slow")
    assert (reply.status, reply.error_code) == (408, "RequestTimeout")
    # The connection stays usable for the next request.
    again = await score(client, gateway, "t-slow")
    assert again.status == 408


async def test_unreachable_only_instance_holds_the_request_then_503(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    # Nothing reached an instance, so the request waits for one (none comes) rather than 502.
    await push_route(
        client, gateway, "t-down", {"blue": ["http://127.0.0.1:9"]}, {"blue": 100}, timeout_ms=300
    )
    reply = await score(client, gateway, "t-down")
    assert (reply.status, reply.error_code) == (503, "NoHealthyInstance")


async def test_connection_failure_retries_another_instance(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client, gateway, "t-retry", {"blue": ["http://127.0.0.1:9", backends["blue"].url]}, {"blue": 100}
    )
    for _ in range(4):
        assert (await score(client, gateway, "t-retry")).status == 200


async def test_deployment_without_instances_is_503(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    # Held for request_timeout_ms in case an instance comes, then 503.
    await push_route(client, gateway, "t-empty", {"blue": []}, {"blue": 100}, timeout_ms=300)
    reply = await score(client, gateway, "t-empty")
    assert (reply.status, reply.error_code) == (503, "NoHealthyInstance")


async def test_oversize_content_length_is_413(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client, gateway, "t-big", {"blue": [backends["blue"].url]}, {"blue": 100}, max_request_bytes=1000
    )
    before = backends["blue"].seen["score"]
    reply = await score(client, gateway, "t-big", data=b"x" * 200_000)
    assert (reply.status, reply.error_code) == (413, "PayloadTooLarge")
    assert (await score(client, gateway, "t-big", data=b"x" * 1000)).status == 200
    assert backends["blue"].seen["score"] == before + 1


async def test_oversize_chunked_body_is_413_as_it_streams(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "t-chunked",
        {"blue": [backends["blue"].url]},
        {"blue": 100},
        max_request_bytes=10_000,
    )

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"y" * 4096

    reply = await score(client, gateway, "t-chunked", data=chunks(64))
    assert (reply.status, reply.error_code) == (413, "PayloadTooLarge")
    small = await score(client, gateway, "t-chunked", data=chunks(2))
    assert small.status == 200
    assert small.json()["bytes"] == 8192


async def test_oversize_with_expect_100_continue_is_refused_before_the_body(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client, gateway, "t-expect", {"blue": [backends["blue"].url]}, {"blue": 100}, max_request_bytes=1000
    )
    reply = await score(client, gateway, "t-expect", data=b"z" * 5000, expect100=True)
    assert reply.status == 413
    ok = await score(client, gateway, "t-expect", data=b"z" * 500, expect100=True)
    assert ok.status == 200


async def test_pipelined_requests_are_answered_in_order(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client,
        gateway,
        "t-pipe",
        {"blue": [backends["blue"].url], "green": [backends["green"].url]},
        {"blue": 50, "green": 50},
    )
    requests = b"".join(
        b"POST /endpoints/t-pipe/score HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {KEY}\r\nazureml-model-deployment: {dep}\r\n".encode()
        + f"x-request-id: {i}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        for i, dep in enumerate(["green", "blue", "nope", "green"])
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    writer.write(requests)
    seen = []
    for _ in range(4):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if line)
        await reader.readexactly(int(fields["content-length"]))
        seen.append((lines[0].split(" ")[1], fields["x-request-id"], fields.get("azureml-model-deployment")))
    writer.close()
    assert seen == [("200", "0", "green"), ("200", "1", "blue"), ("404", "2", None), ("200", "3", "green")]


async def test_malformed_request_is_400_json(gateway: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    writer.write(b"POST /score HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "BadRequest"


# --- the route table ---


async def test_older_generation_is_ignored(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    deployments = {"blue": [backends["blue"].url], "green": [backends["green"].url]}
    assert await push_route(client, gateway, "t-gen", deployments, {"blue": 100}, generation=5) == {
        "applied": True,
        "generation": 5,
    }
    older = await push_route(client, gateway, "t-gen", deployments, {"green": 100}, generation=4)
    assert older == {"applied": False, "generation": 5}
    reply = await score(client, gateway, "t-gen")
    assert reply.headers["azureml-model-deployment"] == "blue"


async def test_delete_makes_404_and_an_older_push_cannot_revive(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    body = route_body("t-del", 3, {"blue": [backends["blue"].url]}, {"blue": 100})
    await push(client, gateway, body)
    assert (await score(client, gateway, "t-del")).status == 200
    assert await delete(client, gateway, "t-del", 2) == {"applied": False, "generation": 3}
    assert (await score(client, gateway, "t-del")).status == 200
    assert await delete(client, gateway, "t-del", 4) == {"applied": True, "generation": 4}
    assert (await score(client, gateway, "t-del")).status == 404
    assert (await push(client, gateway, body | {"generation": 4}))["applied"] is False
    assert (await score(client, gateway, "t-del")).status == 404
    assert (await push(client, gateway, body | {"generation": 5}))["applied"] is True
    assert (await score(client, gateway, "t-del")).status == 200


async def test_get_routes_shows_hashes_only(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-list", {"blue": [backends["blue"].url]}, {"blue": 100})
    async with client.get(f"{gateway.admin}/routes", headers=gateway.admin_headers) as response:
        text = await response.text()
    assert response.status == 200
    assert "t-list" in json.loads(text)["routes"]
    assert KEY not in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (json.dumps({"name": "t-bad"}).encode(), "generation"),
        (json.dumps({"name": "t-bad", "generation": "soon"}).encode(), "generation"),
        (json.dumps({"name": "t-other", "generation": 1}).encode(), "name"),
        (
            json.dumps(
                {
                    "name": "t-bad",
                    "generation": 1,
                    "deployments": {"blue": {"name": "blue", "instances": [{"id": "i", "url": "nope"}]}},
                }
            ).encode(),
            "deployments.blue.instances.0.url",
        ),
    ],
    ids=["not_json", "missing_generation", "generation_not_int", "name_mismatch", "bad_url"],
)
async def test_bad_route_body_is_400_naming_the_field(
    gateway: GatewayProcess, client: aiohttp.ClientSession, body: bytes, field: str
) -> None:
    async with client.put(
        f"{gateway.admin}/routes/t-bad", data=body, headers=gateway.admin_headers
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "BadRequest"
    assert field in [d["field"] for d in error.get("details", [])] or error["field"] == field


async def test_delete_without_generation_is_400(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    async with client.delete(f"{gateway.admin}/routes/t-x", headers=gateway.admin_headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "generation"


# --- TLS ---


async def test_https_with_the_local_ca(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "my-ep", {"blue": [backends["blue"].url]}, {"blue": 100})
    context = ssl.create_default_context(cafile=str(gateway.home / "tls" / "ca.pem"))
    async with client.post(
        f"https://127.0.0.1:{gateway.https_port}/score",
        data=b"{}",
        headers={"Host": f"my-ep.localhost:{gateway.https_port}", "Authorization": f"Bearer {KEY}"},
        ssl=context,
        server_hostname="my-ep.localhost",
    ) as response:
        assert response.status == 200
        assert response.headers["azureml-model-deployment"] == "blue"
    # The certificate is the one minted for the exact SNI name (curl refuses *.localhost).
    _, writer = await asyncio.open_connection(
        "127.0.0.1", gateway.https_port, ssl=context, server_hostname="my-ep.localhost"
    )
    peer = writer.get_extra_info("peercert")
    writer.close()
    assert peer["subjectAltName"] == (("DNS", "my-ep.localhost"),)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_trusts_the_gateway_with_the_local_ca(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "my-curl", {"blue": [backends["blue"].url]}, {"blue": 100})
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--fail-with-body",
        "--cacert",
        str(gateway.home / "tls" / "ca.pem"),
        "--resolve",
        f"my-curl.localhost:{gateway.https_port}:127.0.0.1",
        "-H",
        f"Authorization: Bearer {KEY}",
        "-d",
        "{}",
        f"https://my-curl.localhost:{gateway.https_port}/score",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await curl.communicate()
    assert curl.returncode == 0, err.decode()
    assert json.loads(out)["backend"] == "blue"


# --- logs, restart, admin token ---


async def test_access_log_has_every_field_and_never_the_key(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "t-log", {"blue": [backends["blue"].url]}, {"blue": 100})
    await score(client, gateway, "t-log", headers={"x-request-id": "log-ok"})
    await score(client, gateway, "t-log", key="wrong-" + KEY, headers={"x-request-id": "log-401"})
    path = gateway.home / "gateway" / "access.log"
    await eventually(lambda: path.exists() and "log-401" in path.read_text())
    entries = {e["request_id"]: e for e in map(json.loads, path.read_text().splitlines())}
    ok = entries["log-ok"]
    assert {k: ok[k] for k in ("endpoint", "deployment", "instance", "status")} == {
        "endpoint": "t-log",
        "deployment": "blue",
        "instance": "blue-0",
        "status": 200,
    }
    assert ok["latency_ms"] >= 0 and ok["bytes_in"] > 0 and ok["bytes_out"] > 0 and ok["time"]
    assert entries["log-401"]["status"] == 401
    for text in (path.read_text(), gateway.stderr_path.read_text()):
        assert KEY not in text
        assert "Bearer" not in text
    # Written once, to the access log: never again to the process's own (unrotated) log.
    assert "log-401" not in gateway.stderr_path.read_text()


async def test_restarted_gateway_serves_at_once_from_the_persisted_table(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(
        client, gateway, "t-restart", {"blue": [backends["blue"].url]}, {"blue": 100}, generation=7
    )
    assert await gateway.stop() == 0
    await gateway.start()  # returns as soon as the ports accept connections
    reply = await score(client, gateway, "t-restart")
    assert reply.status == 200
    assert reply.headers["azureml-model-deployment"] == "blue"
    older = route_body("t-restart", 6, {"blue": [backends["green"].url]}, {"blue": 100})
    assert (await push(client, gateway, older))["applied"] is False


async def test_the_control_credential_made_on_first_start_guards_the_admin_api(
    tmp_path: Path, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    """No TIDEGATE_CONTROL_TOKEN: the gateway makes $TIDEGATE_HOME/control.token (0600) and
    the admin API takes that credential and no other."""
    process = GatewayProcess.create(tmp_path / "home", control_token=None)
    await process.start()
    try:
        token_file = process.home / "control.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert process.home.stat().st_mode & 0o777 == 0o700
        body = route_body("t-token", 1, {"blue": [backends["blue"].url]}, {"blue": 100})
        async with client.put(f"{process.admin}/routes/t-token", json=body) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "Unauthorized"
        async with client.get(f"{process.admin}/healthz") as response:
            assert response.status == 200
        result = await push(client, process, body, Authorization=f"Bearer {token_file.read_text().strip()}")
        assert result["applied"] is True
        assert (await score(client, process, "t-token")).status == 200
    finally:
        assert await process.stop() == 0


async def test_sigterm_lets_the_request_in_flight_finish(
    tmp_path: Path, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    held = backends["hold-drain"]
    process = GatewayProcess.create(tmp_path / "home")
    await process.start()
    try:
        await push_route(client, process, "t-drain", {"blue": [held.url]}, {"blue": 100})
        pending = asyncio.create_task(score(client, process, "t-drain"))
        await eventually(lambda: held.seen["score"] == 1)
        assert process.proc is not None
        process.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)  # the gateway is now stopping with one request in flight
        held.release.set()
        assert (await pending).status == 200
    finally:
        assert await process.stop() == 0


async def test_request_on_a_pooled_connection_the_instance_dropped_is_sent_again(
    gateway: GatewayProcess, client: aiohttp.ClientSession
) -> None:
    """An instance that answers one request per connection, then hangs up on the next one
    (the race of an idle keep-alive timeout): the gateway resends on a fresh connection."""
    answered = 0

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        for first in (True, False):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if not first:
                break
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await push_route(client, gateway, "t-replay", {"blue": [f"http://127.0.0.1:{port}"]}, {"blue": 100})
        for _ in range(3):
            assert (await score(client, gateway, "t-replay")).status == 200
        assert answered == 3
    finally:
        server.close()
