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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.core.polling import AsyncLROPoller
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSet, VirtualMachineScaleSetVMInstanceRequiredIDs
from azure.mgmt.network.aio import NetworkManagementClient
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError

from activities.azure.arm import client_options, long_running, resume_token
from activities.azure.gateway_scale_set import TAG_GATEWAY_SPEC, gateway_scale_set_body
from activities.azure.gateway_tls import admin_client_ssl, ensure_gateway_tls
from activities.local.network import LocalNetworkProvider
from config.azure_vm import GatewayBoot
from config.contract.activities import ApplyRouteInput, PushRouteResult, RemoveRouteInput
from config.security import read_control_token
from config.settings import Settings

log = structlog.get_logger("activities.azure.gateways")

CREATE = "createOrUpdate"
RUNNING = "PowerState/running"
# Power states of a VM that will not serve again by itself: replaced.
DEAD = frozenset({"PowerState/stopped", "PowerState/deallocated"})


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
        A converged check is trusted for `azure_network_recheck_seconds`."""
        body = gateway_scale_set_body(self._settings, await asyncio.to_thread(self._boot))
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
            if current is not None and _says(current, wanted, self._settings.azure_gateway_instances):
                self._converged = (wanted, time.monotonic())
                return
        log.info(
            "azure.gateways.put",
            scale_set=self._name,
            capacity=self._settings.azure_gateway_instances,
            size=self._settings.azure_gateway_vm_size,
            spec=wanted,
        )

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.compute.virtual_machine_scale_sets.begin_create_or_update(
                self._group, self._name, VirtualMachineScaleSet(body), continuation_token=token
            )

        await long_running(CREATE, resource, f"gateway scale set {self._name}", start)
        self._converged = (wanted, time.monotonic())
        self._listed = None  # new VMs may be there

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


def _says(current: Any, wanted: str, capacity: int) -> bool:
    """Does the scale set as read carry the wanted body (its hash tag) and capacity, settled?"""
    tags = current.tags or {}
    held = current.sku.capacity if current.sku else None
    state = current.properties.provisioning_state if current.properties else None
    return tags.get(TAG_GATEWAY_SPEC) == wanted and held == capacity and state == "Succeeded"
