"""`azure` network provider: an endpoint's public IP, its frontend and rule on the gateways'
shared Standard Load Balancer, and the NSG that keeps instance ports to the gateways; the
route table itself still goes to every gateway's admin API, over the virtual network, as the
`local` provider sends it (composed, not copied).

Through azure-mgmt-network. Each resource is read first and written only if it does not
already say what is wanted, with its whole desired state, so a repeat changes nothing and
spends no write. The load balancer is one resource every endpoint edits: a read, a change to
this endpoint's entries only, and a PUT conditional on the ETag read, again if someone else
wrote in between. A push converged less than `azure_network_recheck_seconds` ago costs no ARM
call at all (the endpoint's workflow re-pushes every 30 s; ARM's read budget is shared).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.polling import AsyncLROPoller
from azure.mgmt.network.aio import NetworkManagementClient
from azure.mgmt.network.models import LoadBalancer, NetworkSecurityGroup, PublicIPAddress, Subnet
from temporalio.exceptions import ApplicationError

from activities.azure.arm import client_options, long_running, require_settings, resume_token
from activities.azure.credentials import azure_credential
from activities.azure.gateways import AzureGateways
from activities.azure.load_balancer import (
    TAG_ENDPOINT,
    covers,
    endpoint_resource_name,
    instances_nsg_body,
    network_id,
    new_load_balancer,
    public_ip_body,
    put_entry,
    with_endpoint,
    without_endpoint,
    writable,
)
from activities.local.network import LocalNetworkProvider
from activities.network import NetworkProvider
from config.azure_network import InvalidDnsLabel, checked_dns_label, dns_label
from config.contract.activities import (
    ApplyRouteInput,
    PatchGatewaysInput,
    PatchGatewaysResult,
    PushRouteResult,
    RemoveRouteInput,
)
from config.settings import Settings

log = structlog.get_logger("activities.azure.network")

CREATE = "createOrUpdate"
DELETE = "delete"
# Conditional PUTs of the load balancer lost to another writer, before the activity gives up
# (its retry policy tries again).
LOAD_BALANCER_ATTEMPTS = 5
PRECONDITION_FAILED = 412
# A permanent refusal is given again without asking ARM for this long: the endpoint's workflow
# pushes again at once after a failed push, and each ask would spend ARM writes (about 1,200 an
# hour per subscription), which scale sets need too.
REFUSAL_MEMORY_SECONDS = 60.0
_NSG_KEY = "\0nsg"


class AzureNetworkProvider:
    def __init__(
        self,
        settings: Settings,
        *,
        credential: AsyncTokenCredential | None = None,
        gateways: NetworkProvider | None = None,
    ) -> None:
        require_settings(
            settings,
            "network",
            (
                "azure_subscription_id",
                "azure_resource_group",
                "azure_location",
                "azure_vnet",
                "azure_subnet",
                "azure_gateway_subnet_prefix",
            ),
        )
        self._settings = settings
        self._group = str(settings.azure_resource_group)
        self._credential = credential
        self._owns_credential = credential is None
        self._network: NetworkManagementClient | None = None
        # The gateways' admin API, exactly as the local provider reaches it: the gateway scale
        # set's VMs (activities/azure/gateways.py), or without one the configured admin URLs.
        self._gateways = gateways if gateways is not None else self._default_gateways()
        # endpoint (or the NSG) -> (what was converged, when): re-pushes skip ARM for a while.
        self._converged: dict[str, tuple[str, float]] = {}
        # endpoint -> (what was refused, the refusal, when): see REFUSAL_MEMORY_SECONDS.
        self._refused: dict[str, tuple[str, ApplicationError, float]] = {}
        # One writer of the shared load balancer per process; the ETag guards against others.
        self._load_balancer_lock = asyncio.Lock()

    def _default_gateways(self) -> NetworkProvider:
        if self._settings.azure_gateway_instances > 0:
            return AzureGateways(self._settings, credential=self._credential_now)
        return LocalNetworkProvider(self._settings)

    # ---- clients -------------------------------------------------------------------------
    def _credential_now(self) -> AsyncTokenCredential:
        if self._credential is None:
            self._credential = azure_credential(self._settings)
        return self._credential

    @property
    def network(self) -> NetworkManagementClient:
        if self._network is None:
            self._network = NetworkManagementClient(
                self._credential_now(),
                str(self._settings.azure_subscription_id),
                **client_options(self._settings),
            )
        return self._network

    async def close(self) -> None:
        if isinstance(self._gateways, AzureGateways):
            await self._gateways.close()
        if self._network is not None:
            await self._network.close()
            self._network = None
        if self._owns_credential and self._credential is not None:
            await self._credential.close()
            self._credential = None

    # ---- the protocol --------------------------------------------------------------------
    async def apply_route(self, request: ApplyRouteInput) -> PushRouteResult:
        """The endpoint's Azure resources exist as wanted; then the gateways get the route."""
        await self.ensure_endpoint(request.route.name)
        return await self._gateways.apply_route(request)

    async def patch_gateways(self, request: PatchGatewaysInput) -> PatchGatewaysResult:
        """The gateway scale set's VMs onto the newest image (none: Skipped, as locally)."""
        return await self._gateways.patch_gateways(request)

    async def remove_route(self, request: RemoveRouteInput) -> PushRouteResult:
        """The gateways drop the route; then what the endpoint made in Azure goes."""
        result = await self._gateways.remove_route(request)
        await self.release_endpoint(request.endpoint)
        return result

    # ---- ensure ----------------------------------------------------------------------------
    async def ensure_endpoint(self, endpoint: str) -> None:
        """Public IP, then its frontend and rule (which name the IP), then the NSG."""
        wanted = self._desired_key(endpoint)
        if self._fresh(endpoint, wanted):
            return
        refused = self._refused.get(endpoint)
        if refused is not None and refused[0] == wanted:
            age = time.monotonic() - refused[2]
            if age < REFUSAL_MEMORY_SECONDS:
                err = refused[1]
                log.info(
                    "azure.network.still_refused", endpoint=endpoint, error=err.type, age_seconds=round(age)
                )
                raise ApplicationError(
                    f"{err.message} (Azure said so {age:.0f} s ago; asked again after "
                    f"{REFUSAL_MEMORY_SECONDS:.0f} s)",
                    type=err.type,
                    non_retryable=True,
                )
        try:
            checked_dns_label(self._settings, endpoint)
            await self._ensure_public_ip(endpoint)
            await self._ensure_load_balancer(endpoint)
            await self._ensure_nsg()
        except InvalidDnsLabel as err:
            failure = ApplicationError(str(err), type="InvalidDnsLabel", non_retryable=True)
            self._refused[endpoint] = (wanted, failure, time.monotonic())
            raise failure from None
        except ApplicationError as err:
            if err.non_retryable:
                self._refused[endpoint] = (wanted, err, time.monotonic())
            raise
        self._refused.pop(endpoint, None)
        self._converged[endpoint] = (wanted, time.monotonic())
        log.info("azure.network.converged", endpoint=endpoint, label=dns_label(self._settings, endpoint))

    def _desired_key(self, endpoint: str) -> str:
        s = self._settings
        return "|".join(
            str(v)
            for v in (
                dns_label(s, endpoint),
                s.azure_load_balancer,
                s.azure_gateway_backend_pool,
                s.azure_frontend_port,
                s.gateway_https_port,
            )
        )

    def _fresh(self, key: str, wanted: str) -> bool:
        seen = self._converged.get(key)
        return (
            seen is not None
            and seen[0] == wanted
            and time.monotonic() - seen[1] < self._settings.azure_network_recheck_seconds
        )

    async def _ensure_public_ip(self, endpoint: str) -> None:
        name = endpoint_resource_name(endpoint)
        body = public_ip_body(self._settings, endpoint)
        resource = f"publicIPAddresses/{name}"
        if resume_token(CREATE, resource) is None:
            try:
                existing = (await self.network.public_ip_addresses.get(self._group, name)).as_dict()
            except ResourceNotFoundError:
                existing = None
            if existing is not None:
                owner = (existing.get("tags") or {}).get(TAG_ENDPOINT)
                if owner != endpoint:
                    raise ApplicationError(
                        f"public IP {name} exists in {self._group} and is not endpoint {endpoint}'s "
                        f"(its {TAG_ENDPOINT} tag: {owner!r}); remove or rename it",
                        type="ResourceNotOurs",
                        non_retryable=True,
                    )
                state = (existing.get("properties") or {}).get("provisioningState")
                if state == "Succeeded" and covers(existing, body):
                    return
        log.info(
            "azure.public_ip.put",
            endpoint=endpoint,
            public_ip=name,
            label=dns_label(self._settings, endpoint),
        )

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.network.public_ip_addresses.begin_create_or_update(
                self._group, name, PublicIPAddress(body), continuation_token=token
            )

        made = await long_running(CREATE, resource, f"public IP {name}", start)
        properties = made.as_dict().get("properties") or {}
        log.info(
            "azure.public_ip.ready",
            endpoint=endpoint,
            public_ip=name,
            address=properties.get("ipAddress"),
            fqdn=(properties.get("dnsSettings") or {}).get("fqdn"),
        )

    async def _ensure_load_balancer(self, endpoint: str) -> None:
        await self._edit_load_balancer(
            endpoint,
            lambda current: with_endpoint(current or self._new_load_balancer(), self._settings, endpoint),
        )

    def _new_load_balancer(self) -> dict[str, Any]:
        log.info("azure.load_balancer.create", load_balancer=self._settings.azure_load_balancer)
        return new_load_balancer(self._settings)

    async def _edit_load_balancer(
        self, endpoint: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> None:
        """Read, change, PUT if anything changed, conditional on the ETag read."""
        name = self._settings.azure_load_balancer
        resource = f"loadBalancers/{name}"
        what = f"load balancer {name}"
        balancers = self.network.load_balancers
        async with self._load_balancer_lock:
            if resume_token(CREATE, resource) is not None:
                # A previous attempt's PUT: see it through, then read what it left.
                await long_running(
                    CREATE,
                    resource,
                    what,
                    lambda token: balancers.begin_create_or_update(
                        self._group, name, LoadBalancer({}), continuation_token=token
                    ),
                )
            for attempt in range(1, LOAD_BALANCER_ATTEMPTS + 1):
                try:
                    read = await balancers.get(self._group, name)
                    current: dict[str, Any] | None = read.as_dict()
                    etag = read.etag
                except ResourceNotFoundError:
                    current, etag = None, None
                body = change(current)
                if body is None:
                    return
                if current is not None and body == writable(current):
                    state = (current.get("properties") or {}).get("provisioningState")
                    if state in (None, "Succeeded"):
                        return
                    if state != "Failed":  # a Failed one is PUT again, which is how ARM retries it
                        raise ApplicationError(
                            f"load balancer {name} is {state}: another operation on it has not ended",
                            type="LoadBalancerBusy",
                        )
                condition = {"If-Match": etag} if etag else {"If-None-Match": "*"}
                log.info("azure.load_balancer.put", load_balancer=name, endpoint=endpoint, attempt=attempt)

                def start(
                    token: str | None, body: dict[str, Any] = body, condition: dict[str, str] = condition
                ) -> Awaitable[AsyncLROPoller[Any]]:
                    return balancers.begin_create_or_update(
                        self._group, name, LoadBalancer(body), continuation_token=token, headers=condition
                    )

                try:
                    await long_running(CREATE, resource, what, start, resume=False)
                    return
                except HttpResponseError as err:
                    if err.status_code != PRECONDITION_FAILED:
                        raise
                    log.info(
                        "azure.load_balancer.raced", load_balancer=name, endpoint=endpoint, attempt=attempt
                    )
        raise ApplicationError(
            f"load balancer {name} changed under every one of {LOAD_BALANCER_ATTEMPTS} edits for "
            f"endpoint {endpoint}",
            type="LoadBalancerBusy",
        )

    async def _ensure_nsg(self) -> None:
        """The shared NSG with our two rules, attached to the instances' subnet."""
        s = self._settings
        wanted_key = (
            f"{s.azure_gateway_subnet_prefix}|{s.azure_instance_port}|{s.azure_vnet}/{s.azure_subnet}"
        )
        if self._fresh(_NSG_KEY, wanted_key):
            return
        await self._put_nsg()
        await self._attach_nsg()
        self._converged[_NSG_KEY] = (wanted_key, time.monotonic())

    async def _put_nsg(self) -> None:
        """Our two rules in the NSG (its other rules and tags kept)."""
        s = self._settings
        name = s.azure_instances_nsg
        resource = f"networkSecurityGroups/{name}"
        wanted = instances_nsg_body(s)
        body = wanted
        if resume_token(CREATE, resource) is None:
            try:
                existing: dict[str, Any] | None = (
                    await self.network.network_security_groups.get(self._group, name)
                ).as_dict()
            except ResourceNotFoundError:
                existing = None
            if existing is not None:
                rules = (existing.get("properties") or {}).get("securityRules") or []
                merged = [
                    {"name": r["name"], "properties": _settable(r.get("properties") or {})} for r in rules
                ]
                for rule in wanted["properties"]["securityRules"]:
                    merged = put_entry(merged, rule)
                body = {
                    "location": existing.get("location") or s.azure_location,
                    "tags": {**(existing.get("tags") or {}), **wanted["tags"]},
                    "properties": {"securityRules": merged},
                }
                if covers(existing, body):
                    return
        log.info("azure.nsg.put", nsg=name, source=s.azure_gateway_subnet_prefix, port=s.azure_instance_port)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.network.network_security_groups.begin_create_or_update(
                self._group, name, NetworkSecurityGroup(body), continuation_token=token
            )

        await long_running(CREATE, resource, f"network security group {name}", start)

    async def _attach_nsg(self) -> None:
        """The instances' subnet names our NSG. A subnet with another NSG is not taken over:
        two NSGs cannot both guard it, and merging rules is the operator's call."""
        s = self._settings
        vnet, name = str(s.azure_vnet), str(s.azure_subnet)
        nsg_id = network_id(s, "networkSecurityGroups", s.azure_instances_nsg)
        resource = f"virtualNetworks/{vnet}/subnets/{name}"
        if resume_token(CREATE, resource) is None:
            try:
                read = await self.network.subnets.get(self._group, vnet, name)
            except ResourceNotFoundError:
                raise ApplicationError(
                    f"subnet {name} of virtual network {vnet} not found in {self._group} "
                    "(TIDEGATE_AZURE_VNET / TIDEGATE_AZURE_SUBNET)",
                    type="SubnetNotFound",
                    non_retryable=True,
                ) from None
            current = read.as_dict()
            properties = _settable(current.get("properties") or {})
            held = (properties.get("networkSecurityGroup") or {}).get("id")
            if held is not None and held.lower() == nsg_id.lower():
                return
            if held is not None:
                raise ApplicationError(
                    f"subnet {name} of {vnet} is guarded by {held}, not {nsg_id}: copy the rules "
                    f"tidegate-allow-gateways and tidegate-deny-others there, or attach "
                    f"{s.azure_instances_nsg} instead",
                    type="SubnetHasAnotherNsg",
                    non_retryable=True,
                )
            body = {"name": name, "properties": {**properties, "networkSecurityGroup": {"id": nsg_id}}}
            condition = {"If-Match": read.etag} if read.etag else {}
        else:
            body, condition = {}, {}
        log.info("azure.nsg.attach", nsg=s.azure_instances_nsg, subnet=name, virtual_network=vnet)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[Any]]:
            return self.network.subnets.begin_create_or_update(
                self._group, vnet, name, Subnet(body), continuation_token=token, headers=condition
            )

        await long_running(CREATE, resource, f"subnet {name}", start)

    # ---- release ---------------------------------------------------------------------------
    async def release_endpoint(self, endpoint: str) -> None:
        """The endpoint's frontend and rule leave the load balancer, then its public IP goes
        (Azure refuses to delete an IP a frontend still holds). What is gone is success; what
        is not the endpoint's is left alone."""
        self._converged.pop(endpoint, None)
        self._refused.pop(endpoint, None)
        await self._edit_load_balancer(
            endpoint, lambda current: None if current is None else without_endpoint(current, endpoint)
        )
        await self._delete_public_ip(endpoint)
        log.info("azure.network.released", endpoint=endpoint)

    async def _delete_public_ip(self, endpoint: str) -> None:
        name = endpoint_resource_name(endpoint)
        resource = f"publicIPAddresses/{name}"
        if resume_token(DELETE, resource) is None:
            try:
                existing = (await self.network.public_ip_addresses.get(self._group, name)).as_dict()
            except ResourceNotFoundError:
                return
            owner = (existing.get("tags") or {}).get(TAG_ENDPOINT)
            if owner != endpoint:
                log.warning("azure.public_ip.not_ours", endpoint=endpoint, public_ip=name, owner=owner)
                return
        log.info("azure.public_ip.delete", endpoint=endpoint, public_ip=name)

        def start(token: str | None) -> Awaitable[AsyncLROPoller[None]]:
            return self.network.public_ip_addresses.begin_delete(self._group, name, continuation_token=token)

        try:
            await long_running(DELETE, resource, f"public IP {name}", start)
        except ResourceNotFoundError:
            pass


def _settable(properties: dict[str, Any]) -> dict[str, Any]:
    """Properties as read, without what ARM fills in (a subnet's NIC back-references too)."""
    return {
        k: v
        for k, v in properties.items()
        if k not in ("provisioningState", "etag", "ipConfigurations", "ipConfigurationProfiles")
    }
