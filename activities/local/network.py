"""`local` network provider: the gateways' admin API.

A push goes to every gateway at once, each with a few quick retries of its own, so one
gateway that is down delays nobody else; the result names the gateways that did not take it
(down, refusing, or holding a newer generation), and the endpoint's workflow pushes again
until they do.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import structlog

from config.contract.activities import (
    ApplyRouteInput,
    PatchGatewaysInput,
    PatchGatewaysResult,
    PushRouteResult,
    RemoveRouteInput,
)
from config.routes import EndpointRoute
from config.security import control_client_ssl, control_session
from config.settings import Settings

log = structlog.get_logger()

PUSH_ATTEMPTS = 3
PUSH_FIRST_BACKOFF_SECONDS = 0.2
PUSH_TIMEOUT = aiohttp.ClientTimeout(total=3, sock_connect=1)


class LocalNetworkProvider:
    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context`: what https admin URLs are trusted with (default: the control CA)."""
        self._targets = settings.gateway_admin_targets
        self._settings = settings
        self._ssl = ssl_context if ssl_context is not None else control_client_ssl(settings)

    def _session(self) -> aiohttp.ClientSession:
        return control_session(self._settings, ssl_context=self._ssl, timeout=PUSH_TIMEOUT)

    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult:
        # Each gateway learns how many share the endpoint's limits.
        route = request.route
        body = route.model_copy(update={"gateways": len(self._targets)}).model_dump(mode="json")
        return await self._to_every_gateway(
            "PUT", route.name, route.generation, lambda target: {"json": body}
        )

    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult:
        params = {"generation": str(request.generation)}
        return await self._to_every_gateway(
            "DELETE", request.endpoint, request.generation, lambda target: {"params": params}
        )

    async def patch_gateways(self, request: PatchGatewaysInput) -> PatchGatewaysResult:
        """Gateways given by URL run where `tidegate up` (or their operator) runs them: no image
        of theirs for a host patch to change."""
        return PatchGatewaysResult(outcome="Skipped", detail="the gateways are not VMs of a scale set")

    async def read_tables(self) -> dict[str, dict[str, Any] | None]:
        """Each gateway's whole route table as its admin API holds it (`GET /routes`: routes
        and tombstones), or None for a gateway that does not answer."""
        async with self._session() as session:
            found = await asyncio.gather(*(_read_table(session, t) for t in self._targets))
        return dict(zip(self._targets, found, strict=True))

    async def put_route_to(self, target: str, route: EndpointRoute) -> str | None:
        """One route, as it is (its generation kept), to one gateway: None once it holds that
        generation or a newer one, else why not."""
        body = route.model_dump(mode="json")
        async with self._session() as session:
            why = await _push(
                session, "PUT", f"{target}/routes/{route.name}", route.generation, {"json": body}
            )
        if why is not None and why.startswith("holds generation"):
            return None  # a newer push reached it first: it holds at least this table
        return why

    async def drain_gateway(self, target: str, *, close_idle_after: float) -> str | None:
        """Tell one gateway to drain (`POST /drain`: its health path says 503 from then on, and
        its idle connections close `close_idle_after` seconds later): None once it says it
        drains, else why not."""
        params = {"close_idle_after": f"{close_idle_after:.1f}"}
        try:
            async with (
                self._session() as session,
                session.post(f"{target}/drain", params=params) as response,
            ):
                if response.status == 200:
                    return None
                return f"HTTP {response.status}: {(await response.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError) as err:
            return repr(err)

    async def _to_every_gateway(
        self, method: str, endpoint: str, generation: int, arguments: Any
    ) -> PushRouteResult:
        async with self._session() as session:
            reasons = await asyncio.gather(
                *(
                    _push(session, method, f"{t}/routes/{endpoint}", generation, arguments(t))
                    for t in self._targets
                )
            )
        lagging = {t: why for t, why in zip(self._targets, reasons, strict=True) if why is not None}
        for target in self._targets:
            event = "route.lagging" if target in lagging else "route.pushed"
            log.info(
                event,
                endpoint=endpoint,
                gateway=target,
                method=method,
                generation=generation,
                reason=lagging.get(target),
            )
        return PushRouteResult(lagging=lagging, gateways=len(self._targets))


async def _read_table(session: aiohttp.ClientSession, target: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"{target}/routes") as response:
            if response.status != 200:
                return None
            found = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return found if isinstance(found, dict) else None


async def _push(
    session: aiohttp.ClientSession, method: str, url: str, generation: int, arguments: dict[str, Any]
) -> str | None:
    """One gateway, a few quick tries: None once it holds this generation, else why not."""
    reason = "not tried"
    backoff = PUSH_FIRST_BACKOFF_SECONDS
    for attempt in range(PUSH_ATTEMPTS):
        if attempt:
            await asyncio.sleep(backoff)
            backoff *= 2
        try:
            async with session.request(method, url, **arguments) as response:
                if response.status >= 400:
                    text = (await response.text())[:300]
                    reason = f"answered {response.status}: {text}"
                    if response.status < 500:
                        return reason  # refused: asking again gets the same answer
                    continue
                result = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = f"unreachable: {type(exc).__name__}: {exc}"[:300]
            continue
        if result.get("applied"):
            return None
        held = result.get("generation")
        return f"holds generation {held}, newer than {generation}: it ignored this push"
    return reason
