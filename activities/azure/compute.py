"""`azure` compute provider: a deployment is one VM scale set (Uniform orchestration).

Through the real SDKs (azure-mgmt-compute for scale sets and their VMs, azure-mgmt-network for
their private addresses). `request_instances` PUTs the whole desired state, so a repeat is no
change; long-running operations heartbeat their poller's continuation token, and a retried
activity resumes that operation instead of starting another. Health is the Application Health
extension's verdict (`vmHealth` in the instance view), probing the instance's readiness route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.core.polling import AsyncLROPoller
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSet, VirtualMachineScaleSetVMInstanceRequiredIDs
from azure.mgmt.network.aio import NetworkManagementClient
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.azure.arm import (
    HEARTBEAT_SECONDS,
    client_options,
    long_running,
    require_settings,
)
from activities.azure.credentials import azure_credential
from activities.azure.scale_sets import (
    TAG_DEPLOYMENT,
    TAG_ENDPOINT,
    TAG_SPEC,
    image_reference,
    instance_phase,
    scale_set_body,
    scale_set_name,
)
from activities.azure.snapshot_sas import Clock, SnapshotSigner, utc_now
from config.contract.activities import (
    DeleteInstancesInput,
    GetInstancesInput,
    RequestInstancesInput,
    WatchInstancesInput,
)
from config.host_api import (
    DeploymentInstances,
    InstanceChanges,
    InstancePhase,
    InstanceStatus,
)
from config.settings import Settings

log = structlog.get_logger("activities.azure.compute")

T = TypeVar("T")


def _vm_phase(vm: Any) -> tuple[str | None, InstancePhase]:
    """A scale set VM's power state, and its phase from that and the Application Health verdict."""
    props = vm.properties
    view = props.instance_view if props else None
    statuses = [s.code for s in (view.statuses or [])] if view else []
    power = next((c for c in statuses if c and c.startswith("PowerState/")), None)
    health = view.vm_health.status.code if view and view.vm_health and view.vm_health.status else None
    return power, instance_phase(power, health)


@dataclass
class _Watch:
    """The shared watcher's memory: one list per resource group per round, diffed."""

    sequence: int = 0
    last_round: float | None = None
    snapshots: dict[tuple[str, str], DeploymentInstances] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # VM resource id -> private IP
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AzureComputeProvider:
    def __init__(
        self,
        settings: Settings,
        *,
        credential: AsyncTokenCredential | None = None,
        signer: SnapshotSigner | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """`signer`: signs the snapshot URLs VMs boot with (default: from the storage settings;
        none without a storage account). `clock`: what `now` is when it signs."""
        require_settings(
            settings,
            "compute",
            (
                "azure_subscription_id",
                "azure_resource_group",
                "azure_location",
                "azure_vnet",
                "azure_subnet",
                "azure_ssh_public_key",
            ),
        )
        image_reference(settings.azure_image)  # refuse a malformed image before any call
        self._settings = settings
        self._subscription = str(settings.azure_subscription_id)
        self._group = str(settings.azure_resource_group)
        self._credential = credential
        self._owns_credential = credential is None
        self._compute: ComputeManagementClient | None = None
        self._network: NetworkManagementClient | None = None
        self._watch = _Watch()
        self._signer = signer if signer is not None else SnapshotSigner.from_settings(settings)
        self._clock = clock

    # ---- clients -------------------------------------------------------------------------
    def _client_options(self) -> dict[str, Any]:
        return client_options(self._settings)

    def _credential_now(self) -> AsyncTokenCredential:
        if self._credential is None:
            self._credential = azure_credential(self._settings)
        return self._credential

    @property
    def compute(self) -> ComputeManagementClient:
        if self._compute is None:
            self._compute = ComputeManagementClient(
                self._credential_now(), self._subscription, **self._client_options()
            )
        return self._compute

    @property
    def network(self) -> NetworkManagementClient:
        if self._network is None:
            self._network = NetworkManagementClient(
                self._credential_now(), self._subscription, **self._client_options()
            )
        return self._network

    async def close(self) -> None:
        for client in (self._compute, self._network):
            if client is not None:
                await client.close()
        self._compute = self._network = None
        if self._signer is not None:
            await self._signer.close()
        if self._owns_credential and self._credential is not None:
            await self._credential.close()
            self._credential = None

    async def _with_snapshot_urls(self, request: RequestInstancesInput) -> RequestInstancesInput:
        """The request with its snapshots named by read-only SAS URLs (no storage account: as it
        is). Every PUT carries URLs with over half their life left, so a VM it makes, now or as
        a replacement later, never boots with an expired one; within a half-life, the same."""
        if self._signer is None:
            return request
        signed = await self._signer.signed_runtime(request.runtime, self._clock())
        return request.model_copy(update={"runtime": signed})

    # ---- the protocol --------------------------------------------------------------------
    async def request_instances(self, request: RequestInstancesInput) -> DeploymentInstances:
        runtime = request.runtime
        request = await self._with_snapshot_urls(request)
        name = scale_set_name(runtime.endpoint, runtime.deployment)
        body = scale_set_body(request, self._settings)
        log.info(
            "azure.scale_set.put",
            scale_set=name,
            sku=request.instance_type,
            capacity=request.instance_count,
            spec=runtime.spec_hash,
        )

        await self._delete_failed_vms(name)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_create_or_update(
                self._group, name, VirtualMachineScaleSet(body), continuation_token=token
            )

        await self._long_running("createOrUpdate", name, start)
        return await self.get_instances(
            GetInstancesInput(endpoint=runtime.endpoint, deployment=runtime.deployment)
        )

    async def _delete_failed_vms(self, name: str) -> None:
        """A failed VM is replaced as the local host replaces a failed instance on a PUT: it is
        deleted (the scale set's capacity drops by one), and the PUT that follows brings the
        capacity back with a new VM. Azure's own automatic repairs would wait 10 minutes."""
        try:
            vms = [
                vm
                async for vm in self.compute.virtual_machine_scale_set_vms.list(
                    self._group, name, expand="instanceView"
                )
            ]
        except ResourceNotFoundError:
            return
        failed = [str(vm.instance_id) for vm in vms if _vm_phase(vm)[1] == "failed"]
        if not failed:
            return
        log.info("azure.instances.replace", scale_set=name, instances=failed)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_delete_instances(
                self._group,
                name,
                VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=failed),
                continuation_token=token,
            )

        await self._long_running("deleteInstances", name, start)

    async def get_instances(self, request: GetInstancesInput) -> DeploymentInstances:
        name = scale_set_name(request.endpoint, request.deployment)
        try:
            scale_set = await self.compute.virtual_machine_scale_sets.get(self._group, name)
        except ResourceNotFoundError:
            raise ApplicationError(
                f"no scale set {name} for deployment {request.endpoint}/{request.deployment}",
                type="UnknownDeployment",
            ) from None
        status = await self._deployment_status(scale_set)
        known = self._watch.snapshots.get((request.endpoint, request.deployment))
        return status.model_copy(update={"version": known.version if known else 0})

    async def changes(self, since: int, timeout_seconds: float) -> InstanceChanges:
        """The deployments whose instances changed since `since`: one list of the resource
        group's scale sets a round (and each scale set's VMs), shared by every deployment."""
        deadline = time.monotonic() + timeout_seconds
        watch = self._watch
        while True:
            async with watch.lock:
                due = watch.last_round is None or (
                    time.monotonic() - watch.last_round >= self._settings.azure_watch_interval_seconds
                )
                if due:
                    await self._watch_round()
                changed = [s for s in watch.snapshots.values() if s.version > since]
                if changed or time.monotonic() >= deadline:
                    return InstanceChanges(sequence=watch.sequence, deployments=changed)
                assert watch.last_round is not None
                next_round = watch.last_round + self._settings.azure_watch_interval_seconds
            await asyncio.sleep(max(0.0, min(next_round, deadline) - time.monotonic()))

    async def watch_instances(self, request: WatchInstancesInput) -> DeploymentInstances:
        """A long poll on one deployment, served from the shared watcher's rounds."""
        key = (request.endpoint, request.deployment)
        deadline = time.monotonic() + request.timeout_seconds
        since = request.since_version
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            found = await self.changes(since, min(remaining, HEARTBEAT_SECONDS))
            mine = next((d for d in found.deployments if (d.endpoint, d.deployment) == key), None)
            if mine is not None or time.monotonic() >= deadline:
                return mine or await self.get_instances(
                    GetInstancesInput(endpoint=request.endpoint, deployment=request.deployment)
                )
            if activity.in_activity():
                activity.heartbeat(found.sequence)

    async def delete_instances(self, request: DeleteInstancesInput) -> None:
        """Deletes the scale set; one that is gone already is success."""
        name = scale_set_name(request.endpoint, request.deployment)
        log.info("azure.scale_set.delete", scale_set=name)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_delete(
                self._group, name, continuation_token=token
            )

        try:
            await self._long_running("delete", name, start)
        except ResourceNotFoundError:
            pass

    # ---- long-running operations ---------------------------------------------------------
    async def _long_running(
        self, operation: str, scale_set: str, start: Callable[[str | None], Awaitable[AsyncLROPoller[T]]]
    ) -> T:
        return await long_running(operation, scale_set, f"scale set {scale_set}", start)

    # ---- reading -------------------------------------------------------------------------
    async def _deployment_status(self, scale_set: Any) -> DeploymentInstances:
        """A scale set and its VMs as the same DeploymentInstances the local host returns."""
        name = scale_set.name
        tags = scale_set.tags or {}
        spec = tags.get(TAG_SPEC, "")
        state = (scale_set.properties.provisioning_state if scale_set.properties else None) or ""
        vms = [
            vm
            async for vm in self.compute.virtual_machine_scale_set_vms.list(
                self._group, name, expand="instanceView"
            )
        ]
        if any(str(vm.id) not in self._watch.addresses for vm in vms):
            await self._learn_addresses(name)
        instances = []
        for vm in vms:
            props = vm.properties
            address = self._watch.addresses.get(str(vm.id), "")
            port = self._settings.azure_instance_port
            power, phase = _vm_phase(vm)
            instances.append(
                InstanceStatus(
                    id=str(vm.name),
                    port=port,
                    url=f"http://{address}:{port}" if address else "",
                    state=phase,
                    spec_hash=spec if props and props.latest_model_applied else "",
                    error=f"VM {vm.name} is {power} (its boot diagnostics say why)"
                    if phase == "failed"
                    else None,
                )
            )
        ready = any(i.state == "ready" for i in instances)
        return DeploymentInstances(
            endpoint=tags.get(TAG_ENDPOINT, ""),
            deployment=tags.get(TAG_DEPLOYMENT, ""),
            environment_state="failed" if state == "Failed" else ("ready" if ready else "building"),
            environment_error=f"scale set {name} provisioning failed" if state == "Failed" else None,
            instances=instances,
        )

    async def _learn_addresses(self, scale_set: str) -> None:
        """Private addresses of a scale set's VMs (they keep them for life: read once each)."""
        async for nic in self.network.network_interfaces.list_virtual_machine_scale_set_network_interfaces(
            self._group, scale_set
        ):
            props = nic.properties
            if props is None or props.virtual_machine is None:
                continue
            for config in props.ip_configurations or []:
                if config.properties and config.properties.private_ip_address:
                    self._watch.addresses[str(props.virtual_machine.id)] = (
                        config.properties.private_ip_address
                    )
                    break

    async def _watch_round(self) -> None:
        """One round: list the resource group's scale sets, read each Tidegate one's VMs,
        bump the sequence for every deployment whose instances differ from last round."""
        watch = self._watch
        seen: set[tuple[str, str]] = set()
        async for scale_set in self.compute.virtual_machine_scale_sets.list(self._group):
            tags = scale_set.tags or {}
            if TAG_ENDPOINT not in tags or TAG_DEPLOYMENT not in tags:
                continue
            key = (tags[TAG_ENDPOINT], tags[TAG_DEPLOYMENT])
            seen.add(key)
            try:
                status = await self._deployment_status(scale_set)
            except ResourceNotFoundError:
                continue  # deleted between the list and the read: next round drops it
            self._record(key, status)
        for key in [k for k in watch.snapshots if k not in seen]:
            last = watch.snapshots[key]
            if last.instances:
                # One answer with no instance, so the watcher hears of the deletion; then forgotten.
                self._record(key, last.model_copy(update={"instances": [], "version": 0}))
            else:
                del watch.snapshots[key]
        watch.last_round = time.monotonic()

    def _record(self, key: tuple[str, str], status: DeploymentInstances) -> None:
        watch = self._watch
        before = watch.snapshots.get(key)
        if before is not None and before.model_copy(update={"version": 0}) == status:
            return
        watch.sequence += 1
        watch.snapshots[key] = status.model_copy(update={"version": watch.sequence})
        log.info(
            "azure.instances.changed",
            endpoint=key[0],
            deployment=key[1],
            states=[i.state for i in status.instances],
            sequence=watch.sequence,
        )
