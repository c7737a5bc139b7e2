"""The worker process: hosts every workflow and the activities of the configured providers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.compute import ComputeActivities, ComputeProvider
from activities.endpoints import EndpointActivities
from activities.monitor import AzureMetricActivities, MonitorActivities
from activities.network import NetworkActivities
from activities.providers import provider
from activities.secrets import SecretActivities
from config.contract.temporal_client import connect
from config.settings import Settings
from config.telemetry import shutdown_tracing
from worker.watcher import InstanceWatcher
from workflows.deployment import DeploymentWorkflow
from workflows.endpoint import EndpointWorkflow
from workflows.patch import HostPatchWorkflow
from workflows.rollout import RolloutWorkflow
from workflows.search import SearchAttributeError, ensure_search_attributes

log = structlog.get_logger()

WORKFLOWS = [EndpointWorkflow, DeploymentWorkflow, RolloutWorkflow, HostPatchWorkflow]


def activities(
    client: Client, settings: Settings, compute_provider: ComputeProvider | None = None
) -> list[Callable[..., Any]]:
    """Every activity the workflows call (config.contract.names.Activity), on the providers
    the settings choose (activities/providers.py); `compute_provider`: the one the instance
    watcher follows too, so the versions of what both answer are one sequence."""
    compute = ComputeActivities(compute_provider or provider("compute", settings))
    network = NetworkActivities(provider("network", settings))
    secrets = SecretActivities(provider("secrets", settings))
    monitor = MonitorActivities(provider("monitor", settings))
    azure_metrics = AzureMetricActivities(settings)  # gates with source azure_monitor
    endpoints = EndpointActivities(client)
    return [
        compute.request_instances,
        compute.get_instances,
        compute.watch_instances,
        compute.delete_instances,
        network.apply_route,
        network.remove_route,
        network.patch_gateways,
        secrets.ensure_keys,
        secrets.delete_keys,
        monitor.query_window,
        azure_metrics.read_azure_metric,
        endpoints.set_rollout_traffic,
        endpoints.retire_deployment,
        endpoints.patch_deployment,
    ]


def build_worker(
    client: Client, settings: Settings, compute_provider: ComputeProvider | None = None
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities(client, settings, compute_provider),
    )


async def serve(settings: Settings) -> None:
    client = await connect(settings, service="tidegate-worker")
    # Before polling: a rollout started in a namespace without them fails to start.
    await ensure_search_attributes(client, settings.temporal_namespace)
    # One compute provider for the activities and the watcher: on azure, the answer to a
    # request and the watcher's news then carry versions of one sequence, so a workflow can
    # tell which is newer (and the watcher's rounds are the only ones).
    compute = provider("compute", settings)
    worker = build_worker(client, settings, compute)
    # Beside the worker, not an activity: one long poll for every deployment on the host.
    watcher = asyncio.create_task(InstanceWatcher(compute, client).run(), name="instance-watcher")
    log.info("worker.started", task_queue=settings.task_queue, temporal=settings.temporal_target)
    try:
        await worker.run()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def run(settings: Settings) -> None:
    async def main() -> int:
        task = asyncio.ensure_future(serve(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("worker.stopped")
        except SearchAttributeError as error:
            # Not a crash, and a restart will not mend it: the namespace needs an operator.
            # The plain text keeps the commands to copy, which a JSON log line would escape.
            log.error(
                "worker.start_refused", namespace=settings.temporal_namespace, reason=type(error).__name__
            )
            print(error, file=sys.stderr)
            return 1
        return 0

    code = asyncio.run(main())
    shutdown_tracing()  # the spans still queued; os._exit skips the SDK's own atexit hook
    # Leave without interpreter teardown: the Temporal client's Rust threads can abort a
    # finalizing interpreter (temporalio/sdk-python#300), seen once after a Temporal restart.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
