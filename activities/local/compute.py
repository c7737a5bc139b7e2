"""`local` compute provider: the Tidegate host runs instances as azmlinfsrv processes."""

from __future__ import annotations

import time

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.messages import DeleteInstancesInput, RequestInstancesInput, WatchInstancesInput
from config.host_api import DeploymentInstances, EnsureInstancesRequest
from config.settings import Settings

# One HTTP long poll at most this long, so the activity heartbeats (and sees cancellation).
POLL_CHUNK_SECONDS = 5.0


class LocalComputeProvider:
    def __init__(self, settings: Settings) -> None:
        self._host = settings.host_target

    def _url(self, endpoint: str, deployment: str) -> str:
        return f"{self._host}/deployments/{endpoint}/{deployment}"

    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances:
        runtime = request.runtime
        body = EnsureInstancesRequest(
            runtime=runtime, instance_count=request.instance_count, max_surge=request.max_surge
        ).model_dump(mode="json")
        body["drain_seconds"] = request.drain_seconds
        async with aiohttp.ClientSession() as session:
            async with session.put(self._url(runtime.endpoint, runtime.deployment), json=body) as response:
                if response.status >= 400:
                    raise ApplicationError(
                        f"host refused the deployment: {await response.text()}",
                        type="HostRefused",
                        non_retryable=response.status < 500,
                    )
                return DeploymentInstances.model_validate(await response.json())

    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances:
        url = self._url(request.endpoint, request.deployment)
        deadline = time.monotonic() + request.timeout_seconds
        async with aiohttp.ClientSession() as session:
            while True:
                chunk = max(0.0, min(POLL_CHUNK_SECONDS, deadline - time.monotonic()))
                params = {"wait_version": str(request.since_version), "timeout": f"{chunk:.3f}"}
                async with session.get(url, params=params) as response:
                    if response.status == 404:
                        raise ApplicationError(
                            f"host has no deployment {request.endpoint}/{request.deployment}",
                            type="UnknownDeployment",
                        )
                    response.raise_for_status()
                    status = DeploymentInstances.model_validate(await response.json())
                if status.version > request.since_version or time.monotonic() >= deadline:
                    return status
                activity.heartbeat(status.version)

    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.delete(self._url(request.endpoint, request.deployment)) as response:
                response.raise_for_status()
