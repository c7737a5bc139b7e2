"""`local` network provider: the gateways' admin API and the file secret store."""

from __future__ import annotations

import aiohttp
import structlog

from activities.local.secrets import LocalSecretStore
from activities.messages import (
    ApplyRouteInput,
    DeleteKeysInput,
    EnsureKeysInput,
    EnsureKeysResult,
    RemoveRouteInput,
)
from config.settings import Settings

log = structlog.get_logger()


class LocalNetworkProvider:
    def __init__(self, settings: Settings) -> None:
        self._targets = settings.gateway_admin_targets
        self._secrets = LocalSecretStore(settings)
        self._headers = settings.admin_headers

    async def apply_route(self, request: ApplyRouteInput) -> None:
        # Each gateway learns how many share the endpoint's limits.
        body = request.route.model_copy(update={"gateways": len(self._targets)}).model_dump(mode="json")
        async with aiohttp.ClientSession(headers=self._headers) as session:
            for target in self._targets:
                url = f"{target}/routes/{request.route.name}"
                async with session.put(url, json=body) as response:
                    response.raise_for_status()
                    result = await response.json()
                log.info(
                    "route.pushed",
                    endpoint=request.route.name,
                    gateway=target,
                    generation=request.route.generation,
                    applied=result.get("applied"),
                )

    async def remove_route(self, request: RemoveRouteInput) -> None:
        async with aiohttp.ClientSession(headers=self._headers) as session:
            for target in self._targets:
                url = f"{target}/routes/{request.endpoint}"
                params = {"generation": str(request.generation)}
                async with session.delete(url, params=params) as response:
                    response.raise_for_status()
                log.info("route.removed", endpoint=request.endpoint, gateway=target)

    async def ensure_keys(self, request: EnsureKeysInput) -> EnsureKeysResult:
        hashes, versions = self._secrets.ensure(request.endpoint, dict(request.versions))
        return EnsureKeysResult(key_sha256=hashes, versions=versions)  # type: ignore[arg-type]

    async def delete_keys(self, request: DeleteKeysInput) -> None:
        self._secrets.delete(request.endpoint)
