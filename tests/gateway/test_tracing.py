"""Traces: with TIDEGATE_OTLP_ENDPOINT set, the real gateway sends a span per request over
OTLP/HTTP to a real receiver (an aiohttp server here, decoding the protobuf with
opentelemetry-proto): a child of the client's W3C traceparent, the parent of what the instance
gets, carrying the same request id as the x-request-id header and the access-log line."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.gateway.conftest import KEY, Backend, GatewayProcess
from tests.gateway.helpers import push_route, score
from tests.support.otlp import OtlpReceiver, ReceivedSpan

GUARD_S = 30.0  # bounds waits on a broken build; not a timing assertion


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    made = OtlpReceiver()
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


@pytest_asyncio.fixture(scope="module")
async def traced(
    tmp_path_factory: Any, receiver: OtlpReceiver, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess.create(
        tmp_path_factory.mktemp("traced-gateway"),
        TIDEGATE_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_BSP_SCHEDULE_DELAY="50",  # ms between exports: the test waits less
    )
    await process.start()
    try:
        await push_route(
            client,
            process,
            "traced-ep",
            {"blue": [backends["blue"].url], "fail": [backends["fail"].url]},
            {"blue": 100},
        )
        yield process
    finally:
        await process.stop()


def _instance_headers(backend: Backend, request_id: str) -> dict[str, str]:
    (headers,) = [h for h in backend.headers if h.get("x-request-id") == request_id]
    return dict(headers)


async def _access_line(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    path = gateway.home / "gateway" / "access.log"
    async with asyncio.timeout(GUARD_S):
        while True:
            if path.exists():
                for line in path.read_text().splitlines():
                    fields = json.loads(line)
                    if fields["request_id"] == request_id:
                        return dict(fields)
            await asyncio.sleep(0.05)


async def test_a_request_span_is_the_child_of_the_clients_traceparent_and_the_parent_of_the_instances(
    traced: GatewayProcess,
    receiver: OtlpReceiver,
    backends: dict[str, Backend],
    client: aiohttp.ClientSession,
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    reply = await score(
        client,
        traced,
        "traced-ep",
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=opaque"},
    )
    assert reply.status == 200
    request_id = reply.headers["x-request-id"]

    received = await receiver.span_for(request_id)
    span = received.span
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == parent_id
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.name == "POST /score"
    assert span.start_time_unix_nano < span.end_time_unix_nano
    assert received.attributes == {
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "url.path": "/score",
        "tidegate.endpoint": "traced-ep",
        "tidegate.deployment": "blue",
        "tidegate.instance": "blue-0",
        "tidegate.request_id": request_id,
    }
    assert received.resource["service.name"] == "tidegate-gateway"

    # The instance sees the gateway's span as its parent, in the client's trace.
    upstream = _instance_headers(backends["blue"], request_id)
    assert upstream["traceparent"] == f"00-{trace_id}-{span.span_id.hex()}-01"
    assert upstream["tracestate"] == "vendor=opaque"

    line = await _access_line(traced, request_id)
    assert (line["endpoint"], line["deployment"], line["instance"], line["status"]) == (
        "traced-ep",
        "blue",
        "blue-0",
        200,
    )


async def test_every_answer_has_a_span_with_its_request_id_and_no_credential(
    traced: GatewayProcess,
    receiver: OtlpReceiver,
    backends: dict[str, Backend],
    client: aiohttp.ClientSession,
) -> None:
    plain = await score(client, traced, "traced-ep")
    model_error = await score(client, traced, "traced-ep", headers={"azureml-model-deployment": "fail"})
    refused = await score(client, traced, "traced-ep", key="not-the-key-0123456789")
    garbled = await score(client, traced, "traced-ep", headers={"traceparent": "00-not-a-trace-context"})
    assert [plain.status, model_error.status, refused.status, garbled.status] == [200, 424, 401, 200]

    spans: dict[str, ReceivedSpan] = {}
    for name, reply in {
        "plain": plain,
        "model_error": model_error,
        "refused": refused,
        "garbled": garbled,
    }.items():
        request_id = reply.headers["x-request-id"]
        spans[name] = received = await receiver.span_for(request_id)
        assert received.span.parent_span_id == b""  # a root: no (valid) trace context came in
        assert received.attributes["http.response.status_code"] == reply.status
        assert (await _access_line(traced, request_id))["status"] == reply.status

    failed = spans["model_error"]
    assert failed.attributes["tidegate.deployment"] == "fail"
    assert failed.attributes["error.type"] == "ModelError"
    assert failed.span.status.code == Status.STATUS_CODE_ERROR
    unauthorised = spans["refused"]
    assert unauthorised.attributes["error.type"] == "Unauthorized"
    assert "tidegate.deployment" not in unauthorised.attributes
    assert unauthorised.span.status.code == Status.STATUS_CODE_UNSET  # the client's error, not ours
    # A malformed traceparent never reaches the instance: the gateway's own span replaces it.
    upstream = _instance_headers(backends["blue"], garbled.headers["x-request-id"])
    own = spans["garbled"].span
    assert upstream["traceparent"] == f"00-{own.trace_id.hex()}-{own.span_id.hex()}-01"
    # No key, good or bad, nor any Authorization, in anything exported.
    exported = b"".join(receiver.bodies)
    assert KEY.encode() not in exported
    assert b"not-the-key-0123456789" not in exported
    assert b"authorization" not in exported.lower()


async def test_without_tracing_the_clients_traceparent_reaches_the_instance_unchanged(
    gateway: GatewayProcess, backends: dict[str, Backend], client: aiohttp.ClientSession
) -> None:
    await push_route(client, gateway, "untraced-ep", {"green": [backends["green"].url]}, {"green": 100})
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    reply = await score(client, gateway, "untraced-ep", headers={"traceparent": traceparent})
    assert reply.status == 200
    assert _instance_headers(backends["green"], reply.headers["x-request-id"])["traceparent"] == traceparent


async def test_a_client_trace_not_sampled_gives_no_span_and_the_instance_hears_so(
    traced: GatewayProcess,
    receiver: OtlpReceiver,
    backends: dict[str, Backend],
    client: aiohttp.ClientSession,
) -> None:
    trace_id = secrets.token_hex(16)
    unsampled = await score(
        client, traced, "traced-ep", headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00"}
    )
    sampled = await score(client, traced, "traced-ep")  # exported after the one before, if at all
    await receiver.span_for(sampled.headers["x-request-id"])

    assert unsampled.status == 200
    assert not [s for s in receiver.spans if s.span.trace_id.hex() == trace_id]
    upstream = _instance_headers(backends["blue"], unsampled.headers["x-request-id"])["traceparent"]
    version, upstream_trace, span_id, flags = upstream.split("-")
    assert (version, upstream_trace, flags) == ("00", trace_id, "00")  # same trace, not sampled
    assert len(span_id) == 16 and span_id != "0" * 16
