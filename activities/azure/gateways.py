"""The gateway VMs on Azure: their scale set, made and kept as wanted, and route pushes to each.

A network provider (activities.network.NetworkProvider) that the azure network provider puts
in front of the gateways: before a push it makes sure the gateway scale set exists as wanted
(the whole body PUT only when the tag hash or capacity says it differs, so a repeat is no
write), then finds its VMs' private addresses from one list of the scale set's VMs (trusted for
`azure_gateway_list_seconds`; a new VM's NIC is read once), and pushes exactly as the local
provider does — `LocalNetworkProvider`, composed, to `https://<address>:<admin port>` with the
control credential, trusting the gateways' own CA (activities/azure/gateway_tls.py).

A stopped or failed gateway VM is deleted from the scale set and the scale set PUT again, which
makes a new one; the endpoints' periodic re-push (every 30 s) hands it every route table.

A host patch (`patch_gateways`) puts the newest image in the model and rolls the VMs onto it one
at a time, as decisions/gateway_patch.py says: one VM more, which gets every route table (copied
from the old gateways through their admin APIs), then one old VM deleted. The model's image and
the patch's progress are tags, so the pushes' own PUTs keep the image and the VM added.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

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
from azure.mgmt.network.models import NetworkSecurityGroup
from pydantic import SecretStr, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.azure.arm import client_options, long_running, resume_token
from activities.azure.gateway_scale_set import (
    TAG_GATEWAY_DRAINING,
    TAG_GATEWAY_IMAGE,
    TAG_GATEWAY_IMAGE_BEFORE,
    TAG_GATEWAY_PATCHING,
    TAG_GATEWAY_SPEC,
    gateway_scale_set_body,
)
from activities.azure.gateway_tls import admin_client_ssl, ensure_gateway_tls
from activities.azure.images import newest_image
from activities.azure.load_balancer import covers, gateway_probe, gateways_nsg_body, probe_detection_seconds
from activities.local.network import LocalNetworkProvider
from config.azure_vm import GatewayBoot
from config.contract.activities import (
    ApplyRouteInput,
    PatchGatewaysInput,
    PatchGatewaysResult,
    PushRouteResult,
    RemoveRouteInput,
)
from config.routes import EndpointRoute
from config.security import read_control_token
from config.settings import Settings
from decisions.gateway_patch import (
    AbandonGateway,
    AddGateway,
    DrainGateway,
    GatewayVm,
    HeldRoutes,
    PatchComplete,
    Power,
    RetireGateway,
    WaitForDrain,
    WaitForGateway,
    next_gateway_step,
    same_image,
)
from decisions.scale_set_update import format_draining, parse_draining

log = structlog.get_logger("activities.azure.gateways")

CREATE = "createOrUpdate"
RUNNING = "PowerState/running"
# Power states of a VM that will not serve again by itself: replaced.
DEAD = frozenset({"PowerState/stopped", "PowerState/deallocated"})
# A host patch reads the scale set and its VMs this often while it waits (two ARM reads a round).
PATCH_POLL_SECONDS = 2.0
# What a host patch keeps in the scale set's tags while it rolls (a route push's PUT keeps them).
_PATCH_PROGRESS = (TAG_GATEWAY_IMAGE_BEFORE, TAG_GATEWAY_PATCHING, TAG_GATEWAY_DRAINING)
# Past the probe's detection time: the answers in flight, and the balancer's own lag.
DRAIN_MARGIN_SECONDS = 5.0
# A draining gateway closes its idle connections this long before its VM may be deleted.
CLOSE_IDLE_BEFORE_DELETE_SECONDS = 1.0


def gateway_drain_seconds(settings: Settings) -> float:
    """How long a gateway VM told to drain keeps serving before it is deleted: the setting, or
    the balancer probe's detection time (interval x probes) plus a margin."""
    if settings.azure_gateway_drain_seconds is not None:
        return settings.azure_gateway_drain_seconds
    return probe_detection_seconds(gateway_probe(settings)) + DRAIN_MARGIN_SECONDS


def power_state(vm: Any) -> str | None:
    """A scale set VM's power state from its instance view (None: not said yet, e.g. booting)."""
    view = vm.properties.instance_view if vm.properties else None
    codes = [s.code for s in (view.statuses or [])] if view else []
    return next((c for c in codes if c and c.startswith("PowerState/")), None)


class AzureGateways:
    def __init__(
        self,
        settings: Settings,
        *,
        credential: Callable[[], AsyncTokenCredential],
        replace_dead: bool = True,
    ) -> None:
        """`replace_dead=False`: only read (a second reader, such as the monitor, leaves
        replacing dead VMs to the route pushes)."""
        self._settings = settings
        self._replace_dead = replace_dead
        self._group = str(settings.azure_resource_group)
        self._name = settings.azure_gateway_scale_set
        self._credential = credential
        self._compute: ComputeManagementClient | None = None
        self._network: NetworkManagementClient | None = None
        self._lock = asyncio.Lock()
        self._converged: tuple[str, float] | None = None  # (body hash, when)
        self._listed: tuple[list[str], float] | None = None  # (admin URLs, when)
        self._addresses: dict[str, str] = {}  # VM resource id -> private IP (kept for life)
        self._pusher: tuple[tuple[str, ...], LocalNetworkProvider] | None = None
        self._image: str | None = None  # the image a host patch put in the model (its tag)
        self._patch_urls: dict[str, str] = {}  # a patch's last read: instance id -> admin URL

    # ---- clients -------------------------------------------------------------------------
    @property
    def compute(self) -> ComputeManagementClient:
        if self._compute is None:
            self._compute = ComputeManagementClient(
                self._credential(),
                str(self._settings.azure_subscription_id),
                **client_options(self._settings),
            )
        return self._compute

    @property
    def network(self) -> NetworkManagementClient:
        if self._network is None:
            self._network = NetworkManagementClient(
                self._credential(),
                str(self._settings.azure_subscription_id),
                **client_options(self._settings),
            )
        return self._network

    async def close(self) -> None:
        for client in (self._compute, self._network):
            if client is not None:
                await client.close()
        self._compute = self._network = None

    # ---- the protocol --------------------------------------------------------------------
    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult:
        await self.ensure_scale_set()
        urls = await self.admin_urls()
        if not urls:
            # "Not ready yet": the activity's retry policy asks again, then the workflow's.
            raise ApplicationError(
                f"no VM of gateway scale set {self._name} is running yet", type="GatewaysNotReady"
            )
        return await (await self._pusher_for(urls)).apply_route(request)

    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult:
        """Every gateway VM drops the route; none at all (no scale set) holds it."""
        urls = await self.admin_urls()
        if not urls:
            return PushRouteResult(gateways=0)
        return await (await self._pusher_for(urls)).remove_route(request)

    async def _pusher_for(self, urls: list[str]) -> LocalNetworkProvider:
        """The local provider's push, aimed at these gateways (one per set of addresses)."""
        key = tuple(urls)
        if self._pusher is None or self._pusher[0] != key:
            settings = self._settings.model_copy(update={"gateway_admin_urls": list(urls)})
            tls = await asyncio.to_thread(ensure_gateway_tls, self._settings)
            self._pusher = (key, LocalNetworkProvider(settings, ssl_context=admin_client_ssl(tls.ca_file)))
        return self._pusher[1]

    # ---- the scale set ---------------------------------------------------------------------
    def _boot(self) -> GatewayBoot:
        s = self._settings
        tls = ensure_gateway_tls(s)
        return GatewayBoot(
            https_port=s.gateway_https_port,
            admin_port=s.gateway_admin_port,
            domain=s.domain,
            control_token=SecretStr(read_control_token(s)),
            tls_cert_pem=tls.data_cert_pem,
            tls_key_pem=SecretStr(tls.data_key_pem),
            admin_cert_pem=tls.admin_cert_pem,
            admin_key_pem=SecretStr(tls.admin_key_pem),
        )

    async def ensure_scale_set(self, *, force: bool = False) -> None:
        """The gateway scale set says what the settings want: read, PUT only if it does not.
        A converged check is trusted for `azure_network_recheck_seconds`. The image a host
        patch chose stays (its tag), and so does the VM a patch under way added."""
        boot = await asyncio.to_thread(self._boot)
        body = gateway_scale_set_body(self._settings, boot, image=self._image)
        wanted = body["tags"][TAG_GATEWAY_SPEC]
        seen = self._converged
        if (
            not force
            and seen is not None
            and seen[0] == wanted
            and time.monotonic() - seen[1] < self._settings.azure_network_recheck_seconds
        ):
            return
        resource = f"virtualMachineScaleSets/{self._name}"
        if resume_token(CREATE, resource) is None:
            try:
                current = await self.compute.virtual_machine_scale_sets.get(self._group, self._name)
            except ResourceNotFoundError:
                current = None
            if current is not None:
                tags = dict(current.tags or {})
                if tags.get(TAG_GATEWAY_IMAGE) != self._image:
                    self._image = tags.get(TAG_GATEWAY_IMAGE)
                    body = gateway_scale_set_body(self._settings, boot, image=self._image)
                    wanted = body["tags"][TAG_GATEWAY_SPEC]
                capacities = {self._settings.azure_gateway_instances}
                if TAG_GATEWAY_PATCHING in tags:
                    capacities.add(self._settings.azure_gateway_instances + 1)
                if _says(current, wanted, capacities):
                    self._converged = (wanted, time.monotonic())
                    return
                # A patch's progress stays; a PUT of fewer VMs would scale in its new VM.
                body["tags"].update({k: v for k, v in tags.items() if k in _PATCH_PROGRESS})
                held = current.sku.capacity if current.sku else None
                if held is not None and held in capacities:
                    body["sku"]["capacity"] = held
        await self._ensure_nsg()
        log.info(
            "azure.gateways.put",
            scale_set=self._name,
            capacity=body["sku"]["capacity"],
            size=self._settings.azure_gateway_vm_size,
            spec=wanted,
        )
        await self._put(body)
        self._converged = (wanted, time.monotonic())
        self._listed = None  # new VMs may be there

    async def _ensure_nsg(self) -> None:
        """The NSG the gateway VMs' NICs name, before the scale set names it: read, PUT only if it
        does not say what `gateways_nsg_body` wants (its other rules would be replaced)."""
        name = self._settings.azure_gateways_nsg
        wanted = gateways_nsg_body(self._settings)
        resource = f"networkSecurityGroups/{name}"
        if resume_token(CREATE, resource) is None:
            try:
                existing = (await self.network.network_security_groups.get(self._group, name)).as_dict()
            except ResourceNotFoundError:
                existing = None
            if existing is not None and covers(existing.get("properties"), wanted["properties"]):
                return
        log.info("azure.gateways.nsg_put", nsg=name, port=self._settings.gateway_https_port)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.network.network_security_groups.begin_create_or_update(
                self._group, name, NetworkSecurityGroup(wanted), continuation_token=token
            )

        await long_running(CREATE, resource, f"network security group {name}", start)

    async def _put(self, body: dict[str, Any], *, resume: bool = True) -> None:
        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_create_or_update(
                self._group, self._name, VirtualMachineScaleSet(body), continuation_token=token
            )

        resource = f"virtualMachineScaleSets/{self._name}"
        await long_running(CREATE, resource, f"gateway scale set {self._name}", start, resume=resume)

    # ---- its VMs -------------------------------------------------------------------------
    async def admin_urls(self) -> list[str]:
        """Every running gateway VM's admin URL: one VM list per `azure_gateway_list_seconds`,
        shared by every push. Dead VMs are replaced on the way (and the list read again, so the
        new VM is pushed to at once)."""
        async with self._lock:
            listed, ttl = self._listed, self._settings.azure_gateway_list_seconds
            if listed is not None and time.monotonic() - listed[1] < ttl:
                return listed[0]
            urls, dead = await self._list()
            if dead and self._replace_dead:
                await self._replace(dead)
                urls, _ = await self._list()
            self._listed = (urls, time.monotonic())
            log.info("azure.gateways.listed", scale_set=self._name, gateways=len(urls), replaced=dead or None)
            return urls

    async def _list(self) -> tuple[list[str], list[str]]:
        """One list of the scale set's VMs (their NICs read once per new VM): the running ones'
        admin URLs, and the instance ids of the dead."""
        try:
            vms = [
                vm
                async for vm in self.compute.virtual_machine_scale_set_vms.list(
                    self._group, self._name, expand="instanceView"
                )
            ]
        except ResourceNotFoundError:
            return [], []
        if any(str(vm.id) not in self._addresses for vm in vms):
            await self._learn_addresses()
        listed = {str(vm.id) for vm in vms}
        self._addresses = {vm: ip for vm, ip in self._addresses.items() if vm in listed}
        dead = [str(vm.instance_id) for vm in vms if power_state(vm) in DEAD]
        port = self._settings.gateway_admin_port
        urls = sorted(
            f"https://{self._addresses[str(vm.id)]}:{port}"
            for vm in vms
            if power_state(vm) not in DEAD and str(vm.id) in self._addresses
        )
        return urls, dead

    async def _learn_addresses(self) -> None:
        async for nic in self.network.network_interfaces.list_virtual_machine_scale_set_network_interfaces(
            self._group, self._name
        ):
            props = nic.properties
            if props is None or props.virtual_machine is None:
                continue
            for config in props.ip_configurations or []:
                if config.properties and config.properties.private_ip_address:
                    self._addresses[str(props.virtual_machine.id)] = config.properties.private_ip_address
                    break

    async def _replace(self, instance_ids: list[str]) -> None:
        """Dead gateway VMs go; the PUT that follows brings the capacity back with new ones."""
        log.info("azure.gateways.replace", scale_set=self._name, instances=instance_ids)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_delete_instances(
                self._group,
                self._name,
                VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=instance_ids),
                continuation_token=token,
            )

        await long_running("deleteInstances", f"virtualMachineScaleSets/{self._name}", "gateway VMs", start)
        await self.ensure_scale_set(force=True)

    # ---- the host patch ------------------------------------------------------------------
    async def patch_gateways(self, request: PatchGatewaysInput) -> PatchGatewaysResult:
        """Every gateway VM onto the newest image (compute's choice), one at a time with a
        surge of one; safe to run again (what it reads is the scale set and its VMs). A new VM
        not ready within `azure_gateway_ready_seconds` is deleted, the model goes back to the
        image it had, the old VMs keep serving, and the patch fails (non-retryable)."""
        try:
            current = await self.compute.virtual_machine_scale_sets.get(self._group, self._name)
        except ResourceNotFoundError:
            return PatchGatewaysResult(outcome="Skipped", detail=f"no gateway scale set {self._name} yet")
        image = await newest_image(self.compute, self._settings)
        wanted = self._settings.azure_gateway_instances
        started, replaced = time.monotonic(), 0
        drain_seconds = gateway_drain_seconds(self._settings)
        log.info(
            "gateways.patch.start",
            scale_set=self._name,
            image=image,
            wanted=wanted,
            drain_seconds=drain_seconds,
        )
        vms, _ = await self._read_gateways()
        if all(same_image(vm.image, image) for vm in vms) and not _patching(current):
            log.info("gateways.patch.nothing", scale_set=self._name, image=image, gateways=len(vms))
            return PatchGatewaysResult(
                outcome="Succeeded", detail=f"{len(vms)} gateway VM(s) on {image} already", image=image
            )
        await self._put_patched_model(current, image)
        while True:
            if activity.in_activity():
                activity.heartbeat()
            scale_set = await self.compute.virtual_machine_scale_sets.get(self._group, self._name)
            state = scale_set.properties.provisioning_state if scale_set.properties else None
            if str(getattr(state, "value", state)) != "Succeeded":
                await asyncio.sleep(PATCH_POLL_SECONDS)  # another change runs: read again after it
                continue
            vms, tables = await self._read_gateways()
            draining = parse_draining((scale_set.tags or {}).get(TAG_GATEWAY_DRAINING))
            step = next_gateway_step(
                vms=vms,
                image=image,
                wanted=wanted,
                now=time.time(),
                ready_seconds=self._settings.azure_gateway_ready_seconds,
                draining=draining,
                drain_seconds=drain_seconds,
            )
            match step:
                case PatchComplete(gateways=count):
                    await self._end_patch(scale_set)
                    took = time.monotonic() - started
                    log.info(
                        "gateways.patch.done",
                        scale_set=self._name,
                        image=image,
                        gateways=count,
                        replaced=replaced,
                        seconds=round(took, 1),
                    )
                    return PatchGatewaysResult(
                        outcome="Succeeded",
                        detail=f"{count} gateway VM(s) on {image}; {replaced} replaced in {took:.0f} s",
                        image=image,
                        replaced=replaced,
                    )
                case AddGateway(capacity=capacity):
                    log.info("gateways.patch.add", scale_set=self._name, capacity=capacity)
                    await self._set_capacity(scale_set, capacity)
                case WaitForGateway(id=vm_id, missing=missing, waited=waited, why=why):
                    log.info(
                        "gateways.patch.wait",
                        scale_set=self._name,
                        instance=vm_id,
                        waited=round(waited, 1),
                        why=why,
                    )
                    await self._copy_routes(vm_id, missing, tables)
                    await asyncio.sleep(PATCH_POLL_SECONDS)
                case DrainGateway(id=vm_id, until=until):
                    await self._drain(scale_set, vm_id, until, draining)
                case WaitForDrain(id=vm_id, left=left):
                    log.info(
                        "gateways.patch.draining", scale_set=self._name, instance=vm_id, left=round(left, 1)
                    )
                    await asyncio.sleep(min(left, PATCH_POLL_SECONDS))
                case RetireGateway(id=vm_id):
                    log.info("gateways.patch.retire", scale_set=self._name, instance=vm_id)
                    if await self._delete_vms([vm_id]):
                        replaced += 1
                case AbandonGateway(id=vm_id, reason=reason):
                    log.warning("gateways.patch.abandon", scale_set=self._name, instance=vm_id, reason=reason)
                    await self._delete_vms([vm_id])
                    await self._put_back(image)
                    raise ApplicationError(
                        f"{reason}; it was deleted, the other gateway VMs serve on, and the gateway scale "
                        "set's model names its image from before the patch again",
                        type="GatewayNotReady",
                        non_retryable=True,
                    )

    async def _drain(self, scale_set: Any, vm_id: str, until: float, draining: dict[str, float]) -> None:
        """Tell the VM's gateway to drain, then write down until when it drains (in that order:
        a patch run again after the first write finds it draining and waits; telling it twice
        is harmless). Its idle connections are closed a second before it may go. A gateway that
        cannot be told still leaves after the drain time."""
        target = self._patch_urls.get(vm_id)
        close_idle_after = max(0.0, until - time.time() - CLOSE_IDLE_BEFORE_DELETE_SECONDS)
        if target is None:
            why: str | None = "no admin address"
        else:
            pusher = await self._patch_pusher()
            why = await pusher.drain_gateway(target, close_idle_after=close_idle_after)
        log.info(
            "gateways.patch.drain",
            scale_set=self._name,
            instance=vm_id,
            until=round(until, 1),
            refused=why,
        )
        tags = dict(scale_set.tags or {})
        tags[TAG_GATEWAY_DRAINING] = format_draining({**draining, vm_id: until})
        await self._update(VirtualMachineScaleSetUpdate({"tags": tags}), "draining")

    async def _patch_pusher(self) -> LocalNetworkProvider:
        return await self._pusher_for(sorted(self._patch_urls.values()))

    async def _put_patched_model(self, current: Any, image: str) -> None:
        """The model names `image` and says a patch is rolling (the route pushes' PUTs keep
        both, and the VM it adds); written only if it does not say so already."""
        tags = dict(current.tags or {})
        before = tags.get(TAG_GATEWAY_IMAGE, self._settings.azure_image)
        if same_image(before, image) and TAG_GATEWAY_PATCHING in tags:
            return  # a run before this one wrote it
        boot = await asyncio.to_thread(self._boot)
        body = gateway_scale_set_body(self._settings, boot, image=image)
        if not same_image(before, image):
            body["tags"][TAG_GATEWAY_IMAGE_BEFORE] = before
        elif TAG_GATEWAY_IMAGE_BEFORE in tags:
            body["tags"][TAG_GATEWAY_IMAGE_BEFORE] = tags[TAG_GATEWAY_IMAGE_BEFORE]
        body["tags"][TAG_GATEWAY_PATCHING] = datetime.now(UTC).isoformat(timespec="seconds")
        held = current.sku.capacity if current.sku else None
        body["sku"]["capacity"] = held if held is not None else self._settings.azure_gateway_instances
        log.info("gateways.patch.model", scale_set=self._name, image=image, before=before)
        await self._put(body, resume=False)
        self._image = body["tags"].get(TAG_GATEWAY_IMAGE)
        self._converged = (body["tags"][TAG_GATEWAY_SPEC], time.monotonic())

    async def _put_back(self, image: str) -> None:
        """After a failed patch: the model names the image it had before, no patch rolling."""
        current = await self.compute.virtual_machine_scale_sets.get(self._group, self._name)
        tags = dict(current.tags or {})
        before = tags.get(TAG_GATEWAY_IMAGE_BEFORE, self._settings.azure_image)
        boot = await asyncio.to_thread(self._boot)
        body = gateway_scale_set_body(self._settings, boot, image=before)
        held = current.sku.capacity if current.sku else None
        body["sku"]["capacity"] = held if held is not None else self._settings.azure_gateway_instances
        log.info("gateways.patch.put_back", scale_set=self._name, image=before, failed=image)
        await self._put(body, resume=False)
        self._image = body["tags"].get(TAG_GATEWAY_IMAGE)
        self._converged = (body["tags"][TAG_GATEWAY_SPEC], time.monotonic())

    async def _end_patch(self, scale_set: Any) -> None:
        """The patch's progress tags go (a tags-only update: no model change, no VM touched)."""
        tags = dict(scale_set.tags or {})
        if not any(k in tags for k in _PATCH_PROGRESS):
            return
        kept = {k: v for k, v in tags.items() if k not in _PATCH_PROGRESS}
        await self._update(VirtualMachineScaleSetUpdate({"tags": kept}), "tags")

    async def _set_capacity(self, scale_set: Any, capacity: int) -> None:
        sku = {"name": scale_set.sku.name, "tier": scale_set.sku.tier, "capacity": capacity}
        await self._update(VirtualMachineScaleSetUpdate({"sku": sku}), "capacity")
        self._listed = None  # the next push lists again and finds the new VM

    async def _update(self, change: VirtualMachineScaleSetUpdate, what: str) -> None:
        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_update(
                self._group, self._name, change, continuation_token=token
            )

        resource = f"virtualMachineScaleSets/{self._name}"
        await long_running(
            "update", resource, f"gateway scale set {self._name} ({what})", start, resume=False
        )

    async def _delete_vms(self, instance_ids: list[str]) -> bool:
        """Delete these VMs; False when ARM refused (gone already, say): the next read decides."""

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_delete_instances(
                self._group,
                self._name,
                VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=instance_ids),
                continuation_token=token,
            )

        resource = f"virtualMachineScaleSets/{self._name}"
        try:
            await long_running("deleteInstances", resource, "gateway VMs", start, resume=False)
        except HttpResponseError as err:
            log.warning(
                "gateways.patch.delete_refused", scale_set=self._name, instances=instance_ids, error=str(err)
            )
            return False
        finally:
            self._listed = None  # pushes stop going to a deleted VM at once
        return True

    async def _read_gateways(self) -> tuple[list[GatewayVm], dict[str, dict[str, Any] | None]]:
        """One list of the gateway VMs and each running one's route table (its admin API):
        the VMs as the decision reads them, and the tables by instance id (to copy from)."""
        vms = [
            vm
            async for vm in self.compute.virtual_machine_scale_set_vms.list(
                self._group, self._name, expand="instanceView"
            )
        ]
        if any(str(vm.id) not in self._addresses for vm in vms):
            await self._learn_addresses()
        port = self._settings.gateway_admin_port
        urls = {
            str(vm.instance_id): f"https://{self._addresses[str(vm.id)]}:{port}"
            for vm in vms
            if _power(vm) == "running" and str(vm.id) in self._addresses
        }
        read = await (await self._pusher_for(sorted(urls.values()))).read_tables() if urls else {}
        tables = {vm_id: read.get(url) for vm_id, url in urls.items()}
        found = [
            GatewayVm(
                id=str(vm.instance_id),
                image=vm_image(vm),
                power=_power(vm),
                created=_created(vm),
                held=held_routes(tables.get(str(vm.instance_id))),
            )
            for vm in vms
        ]
        self._patch_urls = urls
        return found, tables

    async def _copy_routes(
        self, vm_id: str, missing: dict[str, str], tables: dict[str, dict[str, Any] | None]
    ) -> None:
        """The new VM gets the tables it lacks from the gateways that hold them, generations
        kept (an endpoint's own newer push wins as ever): sooner than its 30 s re-push."""
        target = self._patch_urls.get(vm_id)
        if target is None or tables.get(vm_id) is None or not missing:
            return  # not answering yet: the next round tries
        pusher = await self._pusher_for(sorted(self._patch_urls.values()))
        routes: list[tuple[str, EndpointRoute]] = []
        for endpoint, source in missing.items():
            document = ((tables.get(source) or {}).get("routes") or {}).get(endpoint)
            if document is None:
                continue
            try:
                routes.append((source, EndpointRoute.model_validate(document)))
            except ValidationError as err:
                log.warning(
                    "gateways.patch.copy_unreadable", endpoint=endpoint, source=source, error=str(err)
                )
        # All at once: a gateway takes each endpoint's table on its own.
        refused = await asyncio.gather(*(pusher.put_route_to(target, route) for _, route in routes))
        for (source, route), why in zip(routes, refused, strict=True):
            log.info(
                "gateways.patch.copied",
                endpoint=route.name,
                generation=route.generation,
                to=vm_id,
                source=source,
                refused=why,
            )


def _says(current: Any, wanted: str, capacities: set[int]) -> bool:
    """Does the scale set as read carry the wanted body (its hash tag) and a capacity it may
    have, settled?"""
    tags = current.tags or {}
    held = current.sku.capacity if current.sku else None
    state = current.properties.provisioning_state if current.properties else None
    return tags.get(TAG_GATEWAY_SPEC) == wanted and held in capacities and state == "Succeeded"


def _patching(scale_set: Any) -> bool:
    return TAG_GATEWAY_PATCHING in (scale_set.tags or {})


def _power(vm: Any) -> Power:
    """A gateway VM as the patch sees it: running, on its way (no power state yet, starting),
    or not serving again by itself."""
    power = power_state(vm)
    if power == RUNNING:
        return "running"
    if power is None or power == "PowerState/starting":
        return "starting"
    return "dead"


def vm_image(vm: Any) -> str:
    """The image a VM was made from, as ARM shows it: a resource id (with the exact version a
    gallery image definition resolved to, when ARM says it) or `publisher:offer:sku:version`."""
    profile = vm.properties.storage_profile if vm.properties else None
    ref = profile.image_reference if profile else None
    if ref is None:
        return ""
    if ref.id:
        if "/versions/" not in ref.id.lower() and ref.exact_version:
            return f"{ref.id}/versions/{ref.exact_version}"
        return str(ref.id)
    return f"{ref.publisher}:{ref.offer}:{ref.sku}:{ref.version}"


def _created(vm: Any) -> float:
    made = vm.properties.time_created if vm.properties else None
    if isinstance(made, datetime):
        return made.replace(tzinfo=made.tzinfo or UTC).timestamp()
    return time.time()  # ARM did not say: a VM seen now for the first time is as good as new


def held_routes(table: dict[str, Any] | None) -> HeldRoutes | None:
    """A gateway's `GET /routes` answer as the decision reads it."""
    if table is None:
        return None
    routes = {str(k): int(r.get("generation", 0)) for k, r in (table.get("routes") or {}).items()}
    tombstones = {str(k): int(g) for k, g in (table.get("tombstones") or {}).items()}
    return HeldRoutes(routes=routes, tombstones=tombstones)
