"""`local` compute provider: the Tidegate host runs instances as azmlinfsrv processes."""

from __future__ import annotations

import time

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError

from config.contract.activities import (
    DeleteInstancesInput,
    GetInstancesInput,
    RequestInstancesInput,
    WatchInstancesInput,
)
from config.host_api import DeploymentInstances, EnsureInstancesRequest, InstanceChanges
from config.security import control_client_ssl, control_session
from config.settings import Settings

# One HTTP long poll at most this long, so the activity heartbeats (and sees cancellation).
POLL_CHUNK_SECONDS = 5.0


class LocalComputeProvider:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._host = settings.host_target
        self._ssl = control_client_ssl(settings)

    def _url(self, endpoint: str, deployment: str) -> str:
        return f"{self._host}/deployments/{endpoint}/{deployment}"

    def _session(self) -> aiohttp.ClientSession:
        return control_session(self._settings, ssl_context=self._ssl)

    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances:
        runtime = request.runtime
        body = EnsureInstancesRequest(
            runtime=runtime, instance_count=request.instance_count, max_surge=request.max_surge
        ).model_dump(mode="json")
        body["drain_seconds"] = request.drain_seconds
        async with self._session() as session:
            async with session.put(self._url(runtime.endpoint, runtime.deployment), json=body) as response:
                _refuse_unauthorized(response)
                if response.status >= 400:
                    raise ApplicationError(
                        f"host refused the deployment: {await response.text()}",
                        type="HostRefused",
                        non_retryable=response.status < 500,
                    )
                return DeploymentInstances.model_validate(await response.json())

    async def get_instances(self, request: GetInstancesInput) -> DeploymentInstances:
        async with self._session() as session:
            async with session.get(self._url(request.endpoint, request.deployment)) as response:
                _refuse_unauthorized(response)
                _refuse_unknown(response, request.endpoint, request.deployment)
                response.raise_for_status()
                return DeploymentInstances.model_validate(await response.json())

    async def changes(self, since: int, timeout_seconds: float) -> InstanceChanges:
        """The host's own long poll, `GET /changes`: one for every deployment on the host."""
        params = {"since": str(since), "timeout": f"{timeout_seconds:.3f}"}
        # The host answers by `timeout_seconds`; the client's limit only catches a hung host.
        limit = aiohttp.ClientTimeout(total=timeout_seconds + 30.0)
        async with self._session() as session:
            async with session.get(f"{self._host}/changes", params=params, timeout=limit) as response:
                _refuse_unauthorized(response)
                response.raise_for_status()
                return InstanceChanges.model_validate(await response.json())

    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances:
        url = self._url(request.endpoint, request.deployment)
        deadline = time.monotonic() + request.timeout_seconds
        async with self._session() as session:
            while True:
                chunk = max(0.0, min(POLL_CHUNK_SECONDS, deadline - time.monotonic()))
                params = {"wait_version": str(request.since_version), "timeout": f"{chunk:.3f}"}
                async with session.get(url, params=params) as response:
                    _refuse_unauthorized(response)
                    _refuse_unknown(response, request.endpoint, request.deployment)
                    response.raise_for_status()
                    status = DeploymentInstances.model_validate(await response.json())
                if status.version > request.since_version or time.monotonic() >= deadline:
                    return status
                activity.heartbeat(status.version)

    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        async with self._session() as session:
            async with session.delete(self._url(request.endpoint, request.deployment)) as response:
                _refuse_unauthorized(response)
                response.raise_for_status()


def _refuse_unknown(response: aiohttp.ClientResponse, endpoint: str, deployment: str) -> None:
    if response.status == 404:
        raise ApplicationError(f"host has no deployment {endpoint}/{deployment}", type="UnknownDeployment")


def _refuse_unauthorized(response: aiohttp.ClientResponse) -> None:
    """A 401 is a credential that differs from the host's: retried (the activity's policy), so
    once the credentials agree the workflow goes on by itself."""
    if response.status == 401:
        raise ApplicationError(
            "the host refused the control credential (401): this worker's TIDEGATE_CONTROL_TOKEN "
            "or $TIDEGATE_HOME/control.token differs from the host's",
            type="HostUnauthorized",
        )
