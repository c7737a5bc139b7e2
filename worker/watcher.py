"""The instance watcher: one long poll per compute host serves every deployment on it, and
each change reaches its deployment's workflow as a signal.

It runs in the worker process beside the Temporal worker, not as an activity, so an idle
deployment holds no activity slot (DESIGN.md, "Idle costs nothing"). Several workers each
running a watcher is harmless: a workflow ignores instances no newer than those it has. A
signal lost all the same (no worker running, Temporal unreachable) is made good by the
workflow's own occasional read of its instances.
"""

from __future__ import annotations

import asyncio

import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.compute import ComputeProvider
from config.contract.ids import deployment_id
from config.contract.names import DeploymentSignal
from config.host_api import DeploymentInstances

log = structlog.get_logger("worker.watcher")

POLL_SECONDS = 30.0
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 10.0
# Signals in flight at once when many deployments changed together (a host restart, say).
CONCURRENT_SIGNALS = 16


class InstanceWatcher:
    """Follows `provider.changes` from the start (every deployment is told once at start-up,
    which also covers changes made while no watcher ran) and signals what changed."""

    def __init__(
        self,
        provider: ComputeProvider,
        client: Client,
        *,
        poll_seconds: float = POLL_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._provider = provider
        self._client = client
        self._poll_seconds = poll_seconds
        self._retry_seconds = retry_seconds
        self._slots = asyncio.Semaphore(CONCURRENT_SIGNALS)

    async def run(self) -> None:
        """Until cancelled; a host or a Temporal that does not answer is asked again after a
        back-off, never given up on."""
        since = 0
        failures = 0
        while True:
            try:
                changes = await self._provider.changes(since, self._poll_seconds)
            except Exception as error:  # the host is down, restarting or refusing: ask again later
                failures += 1
                delay = min(MAX_RETRY_SECONDS, self._retry_seconds * 2.0 ** (failures - 1))
                log.warning("watcher.poll_failed", error=str(error) or type(error).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            told = await asyncio.gather(*(self._signal(status) for status in changes.deployments))
            if all(told):
                since = changes.sequence
                if changes.deployments:
                    log.debug("watcher.signalled", deployments=len(changes.deployments), sequence=since)
            else:
                # The same changes are asked for again (a workflow ignores what it already has).
                await asyncio.sleep(self._retry_seconds)

    async def _signal(self, status: DeploymentInstances) -> bool:
        """Tell the deployment's workflow; False when it should be told again later."""
        workflow_id = deployment_id(status.endpoint, status.deployment)
        async with self._slots:
            try:
                handle = self._client.get_workflow_handle(workflow_id)
                await handle.signal(DeploymentSignal.INSTANCES_CHANGED, status)
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    # Its workflow is gone (deleted meanwhile) or was never ours: nobody to tell.
                    return True
                log.warning("watcher.signal_failed", workflow_id=workflow_id, error=error.message)
                return False
        return True
