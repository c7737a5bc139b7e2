"""`azure` compute provider: a deployment is one VM scale set (Uniform orchestration).

Through the real SDKs (azure-mgmt-compute for scale sets and their VMs, azure-mgmt-network for
their private addresses). `request_instances` PUTs the whole desired state, so a repeat is no
change; long-running operations heartbeat their poller's continuation token, and a retried
activity resumes that operation instead of starting another. Health is the Application Health
extension's verdict (`vmHealth` in the instance view), probing the instance's readiness route.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.polling import AsyncLROPoller
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import (
    VirtualMachineScaleSet,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
)
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
from activities.azure.images import newest_image
from activities.azure.scale_sets import (
    TAG_DEPLOYMENT,
    TAG_DRAINING,
    TAG_ENDPOINT,
    TAG_SPEC,
    TAG_SURGE,
    TAG_WANTED,
    image_records,
    image_reference,
    image_tags,
    instance_phase,
    scale_set_body,
    scale_set_name,
    spec_of_user_data,
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
from decisions.scale_set_update import (
    ImageRecord,
    ScaleSetStep,
    ScaleSetVm,
    format_draining,
    image_for,
    next_scale_set_step,
    parse_draining,
    remember_image,
)

log = structlog.get_logger("activities.azure.compute")

T = TypeVar("T")
# A failed VM's reason: this many lines from the end of its serial console, read through a
# boot-diagnostics URL valid this long.
CONSOLE_LINES = 30
CONSOLE_URL_MINUTES = 5


def _vm_phase(vm: Any) -> tuple[str | None, InstancePhase]:
    """A scale set VM's power state, and its phase from that and the Application Health verdict."""
    props = vm.properties
    view = props.instance_view if props else None
    statuses = [s.code for s in (view.statuses or [])] if view else []
    power = next((c for c in statuses if c and c.startswith("PowerState/")), None)
    health = view.vm_health.status.code if view and view.vm_health and view.vm_health.status else None
    return power, instance_phase(power, health)


def _text(value: Any) -> str:
    """An enum member or a string as ARM's string ("Succeeded", not "…State.SUCCEEDED")."""
    return str(getattr(value, "value", value))


@dataclass
class _Watch:
    """The shared watcher's memory: one list per resource group per round, diffed."""

    sequence: int = 0
    last_round: float | None = None
    snapshots: dict[tuple[str, str], DeploymentInstances] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # VM resource id -> private IP
    specs: dict[str, str] = field(default_factory=dict)  # VM resource id -> the spec it was made with
    steps: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # scale set -> its step under way
    consoles: dict[str, str] = field(default_factory=dict)  # a failed VM's id -> its console's end
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
        steps = [t for t in self._watch.steps.values() if not t.done()]
        for task in steps:
            task.cancel()  # the operation goes on in Azure; the next reader's round sees it
        await asyncio.gather(*steps, return_exceptions=True)
        self._watch.steps.clear()
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
        """PUT the scale set's model (spec, image, the rolling update's tags) and its first
        step's capacity. Old VMs keep their model (upgrade policy Manual): the shared watcher
        steps the update on from there, each round, as decisions/scale_set_update.py says."""
        runtime = request.runtime
        request = await self._with_snapshot_urls(request)
        name = scale_set_name(runtime.endpoint, runtime.deployment)
        await self._delete_failed_vms(name)
        existing = await self._scale_set_or_none(name)
        tags = dict(existing.tags or {}) if existing is not None else {}
        records = image_records(tags)
        level = runtime.environment.patch
        image = image_for(records, spec=runtime.spec_hash, patch=level) or await self._newest_image()
        chosen = ImageRecord(image=image, spec=runtime.spec_hash, patch=level)
        extra = image_tags(remember_image(records, chosen))
        capacity = None
        if existing is not None:
            _, vms = await self._read_vms(name, tags.get(TAG_SPEC, ""))
            draining = parse_draining(tags.get(TAG_DRAINING))
            step = next_scale_set_step(
                vms=vms,
                spec=runtime.spec_hash,
                wanted=request.instance_count,
                max_surge=request.max_surge,
                draining=draining,
                now=time.time(),
                drain_seconds=self._settings.azure_drain_seconds,
            )
            # Never fewer VMs than there are: which ones leave is the step's, not Azure's.
            capacity = step.capacity if step.capacity is not None else len(vms)
            kept = {i: until for i, until in draining.items() if i in {vm.id for vm in vms}}
            if kept:
                extra[TAG_DRAINING] = format_draining(kept)
        body = scale_set_body(request, self._settings, capacity=capacity, image=image, tags=extra)
        log.info(
            "azure.scale_set.put",
            scale_set=name,
            sku=request.instance_type,
            wanted=request.instance_count,
            capacity=body["sku"]["capacity"],
            max_surge=request.max_surge,
            spec=runtime.spec_hash,
            image=image,
        )

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_create_or_update(
                self._group, name, VirtualMachineScaleSet(body), continuation_token=token
            )

        await self._long_running("createOrUpdate", name, start)
        return await self.get_instances(
            GetInstancesInput(endpoint=runtime.endpoint, deployment=runtime.deployment)
        )

    async def _scale_set_or_none(self, name: str) -> Any:
        try:
            return await self.compute.virtual_machine_scale_sets.get(self._group, name)
        except ResourceNotFoundError:
            return None

    async def _newest_image(self) -> str:
        """The settings' image; for a gallery image definition, its newest version (what a
        host patch moves every VM onto; the gateways' patch asks the same)."""
        return await newest_image(self.compute, self._settings)

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
        # What was just read is the newest known: recorded as the watcher records a round, so
        # its version is newer than any news read before it (a workflow keeps the newest).
        key = (request.endpoint, request.deployment)
        self._record(key, status)
        return self._watch.snapshots[key]

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
        return (await self._read(scale_set))[0]

    async def _read(self, scale_set: Any) -> tuple[DeploymentInstances, list[ScaleSetVm]]:
        """A scale set and its VMs as the same DeploymentInstances the local host returns (each
        VM with the spec it was made with; a VM leaving in a rolling update `draining`), and the
        VMs as the rolling update reads them."""
        name = scale_set.name
        tags = scale_set.tags or {}
        spec = tags.get(TAG_SPEC, "")
        draining = parse_draining(tags.get(TAG_DRAINING))
        state = (scale_set.properties.provisioning_state if scale_set.properties else None) or ""
        vms, read = await self._read_vms(name, spec)
        if any(str(vm.id) not in self._watch.addresses for vm in vms):
            await self._learn_addresses(name)
        instances = []
        for vm, seen in zip(vms, read, strict=True):
            address = self._watch.addresses.get(str(vm.id), "")
            port = self._settings.azure_instance_port
            power, phase = _vm_phase(vm)
            shown: InstancePhase = (
                "draining" if seen.id in draining and phase not in ("failed", "stopped") else phase
            )
            instances.append(
                InstanceStatus(
                    id=str(vm.name),
                    port=port,
                    url=f"http://{address}:{port}" if address else "",
                    state=shown,
                    spec_hash=seen.spec,
                    error=await self._failure(name, vm, power) if phase == "failed" else None,
                )
            )
        ready = any(i.state == "ready" for i in instances)
        status = DeploymentInstances(
            endpoint=tags.get(TAG_ENDPOINT, ""),
            deployment=tags.get(TAG_DEPLOYMENT, ""),
            environment_state="failed" if state == "Failed" else ("ready" if ready else "building"),
            environment_error=f"scale set {name} provisioning failed" if state == "Failed" else None,
            instances=instances,
        )
        return status, read

    async def _failure(self, name: str, vm: Any, power: str | None) -> str:
        """Why a VM failed, as the local host says it: the end of its serial console (boot
        diagnostics: azmlinfsrv's own words, e.g. init()'s traceback), read once per VM."""
        key = str(vm.id)
        if key not in self._watch.consoles:
            self._watch.consoles[key] = await self._console_tail(name, str(vm.instance_id))
        tail = self._watch.consoles[key]
        said = f"VM {vm.name} is {power}"
        return f"{said}; the end of its serial console:\n{tail}" if tail else f"{said} (no boot diagnostics)"

    async def _console_tail(self, name: str, instance_id: str) -> str:
        try:
            found = await self.compute.virtual_machine_scale_set_vms.retrieve_boot_diagnostics_data(
                self._group, name, instance_id, sas_uri_expiration_time_in_minutes=CONSOLE_URL_MINUTES
            )
            url = found.serial_console_log_blob_uri
            if not url:
                return ""
            verify = (
                ssl.create_default_context(cafile=str(self._settings.azure_ca_file))
                if self._settings.azure_ca_file
                else True
            )
            async with aiohttp.ClientSession() as session:
                async with session.get(url, ssl=verify, timeout=aiohttp.ClientTimeout(total=30)) as response:
                    response.raise_for_status()
                    text = await response.text(errors="replace")
        except (HttpResponseError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("azure.console.unread", scale_set=name, instance=instance_id, error=str(err))
            return ""
        return "\n".join(text.rstrip().splitlines()[-CONSOLE_LINES:])

    async def _read_vms(self, name: str, spec: str) -> tuple[list[Any], list[ScaleSetVm]]:
        """One list of a scale set's VMs (instance view expanded), each with its phase and spec."""
        vms = [
            vm
            async for vm in self.compute.virtual_machine_scale_set_vms.list(
                self._group, name, expand="instanceView"
            )
        ]
        read = [
            ScaleSetVm(
                id=str(vm.instance_id), spec=await self._vm_spec(name, vm, spec), state=_vm_phase(vm)[1]
            )
            for vm in vms
        ]
        return vms, read

    async def _vm_spec(self, name: str, vm: Any, latest: str) -> str:
        """The spec a VM was made with, from its user data: read once per VM (it keeps its model
        for life under the Manual policy), so a round costs no call per VM. A VM made before
        user data was set runs the scale set's spec if it has the latest model."""
        key = str(vm.id)
        known = self._watch.specs.get(key)
        if known is not None:
            return known
        try:
            full = await self.compute.virtual_machine_scale_set_vms.get(
                self._group, name, str(vm.instance_id), expand="userData"
            )
        except ResourceNotFoundError:
            return ""
        found = spec_of_user_data(full.properties.user_data if full.properties else None)
        if found is None:
            return latest if vm.properties and vm.properties.latest_model_applied else ""
        self._watch.specs[key] = found
        return found

    # ---- the rolling update's steps ------------------------------------------------------
    def _step(self, scale_set: Any, vms: list[ScaleSetVm]) -> None:
        """Start the rolling update's next step, if any, in the background (the watcher's round
        does not wait for it; the next round sees what it did). One step per scale set at a
        time, none while the scale set is being changed (this or another worker's request)."""
        name = str(scale_set.name)
        tags = dict(scale_set.tags or {})
        state = _text(scale_set.properties.provisioning_state) if scale_set.properties else None
        running = self._watch.steps.get(name)
        if TAG_WANTED not in tags or state != "Succeeded" or (running is not None and not running.done()):
            return
        draining = parse_draining(tags.get(TAG_DRAINING))
        step = next_scale_set_step(
            vms=vms,
            spec=tags.get(TAG_SPEC, ""),
            wanted=int(tags[TAG_WANTED]),
            max_surge=int(tags.get(TAG_SURGE, "0")),
            draining=draining,
            now=time.time(),
            drain_seconds=self._settings.azure_drain_seconds,
        )
        if step.delete:
            work = self._delete_vms(name, step)
        elif step.capacity is not None or step.draining != draining:
            work = self._update_scale_set(scale_set, step)
        else:
            return
        self._watch.steps[name] = asyncio.create_task(work, name=f"step-{name}")

    async def _delete_vms(self, name: str, step: ScaleSetStep) -> None:
        log.info("rolling_update.delete", scale_set=name, instances=step.delete)
        try:
            poller = await self.compute.virtual_machine_scale_sets.begin_delete_instances(
                self._group, name, VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=step.delete)
            )
            await poller.result()
        except HttpResponseError as err:  # the next round reads again and decides again
            log.warning("rolling_update.step_failed", scale_set=name, step="delete", error=str(err))

    async def _update_scale_set(self, scale_set: Any, step: ScaleSetStep) -> None:
        name = str(scale_set.name)
        tags = {k: v for k, v in (scale_set.tags or {}).items() if k != TAG_DRAINING}
        if step.draining:
            tags[TAG_DRAINING] = format_draining(step.draining)
        sku = dict(scale_set.sku or {})
        if step.capacity is not None:
            sku["capacity"] = step.capacity
        log.info(
            "rolling_update.step",
            scale_set=name,
            capacity=sku.get("capacity"),
            draining=sorted(step.draining),
            halted=step.halted,
        )
        try:
            poller = await self.compute.virtual_machine_scale_sets.begin_update(
                self._group, name, VirtualMachineScaleSetUpdate({"sku": sku, "tags": tags})
            )
            await poller.result()
        except HttpResponseError as err:
            log.warning("rolling_update.step_failed", scale_set=name, step="update", error=str(err))

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
                status, vms = await self._read(scale_set)
            except ResourceNotFoundError:
                continue  # deleted between the list and the read: next round drops it
            self._record(key, status)
            self._step(scale_set, vms)
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
