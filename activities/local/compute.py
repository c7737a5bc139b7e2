"""`local` compute provider: the Tidegate host runs instances as azmlinfsrv processes."""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.messages import DeleteInstancesInput, EnsureInstancesInput, EnsureInstancesResult
from config.host_api import DeploymentInstances, EnsureInstancesRequest
from config.routes import InstanceRoute
from config.settings import Settings

log = structlog.get_logger()

POLL_SECONDS = 0.5


class LocalComputeProvider:
    def __init__(self, settings: Settings) -> None:
        self._host = settings.host_target

    def _url(self, endpoint: str, deployment: str) -> str:
        return f"{self._host}/deployments/{endpoint}/{deployment}"

    async def ensure_instances(self, request: EnsureInstancesInput) -> EnsureInstancesResult:
        runtime = request.runtime
        url = self._url(runtime.endpoint, runtime.deployment)
        body = EnsureInstancesRequest(runtime=runtime, instance_count=request.instance_count)
        async with aiohttp.ClientSession() as session:
            async with session.put(url, json=body.model_dump(mode="json")) as response:
                if response.status >= 400:
                    raise ApplicationError(
                        f"host refused the deployment: {await response.text()}",
                        type="HostRefused",
                        non_retryable=response.status < 500,
                    )
            while True:
                async with session.get(url) as response:
                    response.raise_for_status()
                    status = DeploymentInstances.model_validate(await response.json())
                done = _judge(status, runtime.spec_hash, request.instance_count)
                if done is not None:
                    log.info(
                        "instances.ready",
                        endpoint=runtime.endpoint,
                        deployment=runtime.deployment,
                        count=len(done.instances),
                    )
                    return done
                activity.heartbeat(status.environment_state)
                await asyncio.sleep(POLL_SECONDS)

    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        async with aiohttp.ClientSession() as session:
            url = self._url(request.endpoint, request.deployment)
            async with session.delete(url) as response:
                response.raise_for_status()


def _judge(status: DeploymentInstances, spec_hash: str, count: int) -> EnsureInstancesResult | None:
    """Ready result, None while still coming up; raises when nothing will make it ready."""
    if status.environment_state == "failed":
        raise ApplicationError(
            f"environment build failed: {status.environment_error}",
            type="EnvironmentFailed",
            non_retryable=True,
        )
    current = [i for i in status.instances if i.spec_hash == spec_hash]
    failed = [i for i in current if i.state == "failed"]
    if failed:
        raise ApplicationError(
            f"instance {failed[0].id} failed to start:\n{failed[0].error or ''}".rstrip(),
            type="InstanceFailed",
            non_retryable=True,
        )
    ready = [i for i in current if i.state == "ready"]
    if len(ready) == count and len(status.instances) == count:
        return EnsureInstancesResult(
            instances=[InstanceRoute(id=i.id, url=i.url) for i in ready],
            warnings=list(status.warnings),
        )
    return None
