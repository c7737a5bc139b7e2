"""The fake ARM's Microsoft.Network resources: public IP addresses, load balancers (frontends,
backend pools, rules and probes as parts of the balancer's body) and network security groups.

Field names are those of Microsoft.Network 2026-03-01, the version azure-mgmt-network 33.1
sends for these three (its models are generated from azure-rest-api-specs). What ARM refuses
and a provider could get wrong is refused here too: a PUT whose If-Match is not the current
ETag (412), a frontend naming a public IP that does not exist or a rule naming a frontend,
pool or probe the body lacks, a probe the spec refuses (`probe_problem`), two rules on one
backend port and pool without Floating IP,
a DNS label another public IP of the region holds, deleting a public IP a frontend holds, and
a subnet naming an NSG that does not exist. A subnet (`virtualNetworks/{vnet}/subnets`, GET and
PUT) is kept without its virtual network: a test makes it as the operator would.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.arm.server import FakeArm

NETWORK_API_VERSION = "2026-03-01"
NETWORK = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network"
PUBLIC_IP = "publicIPAddresses"
LOAD_BALANCER = "loadBalancers"
NSG = "networkSecurityGroups"
SUBNETS = "subnets"  # of a virtual network; the fake keeps them without their network
KINDS = (PUBLIC_IP, LOAD_BALANCER, NSG, SUBNETS)
SUBNET_PATH = NETWORK + "/virtualNetworks/{vnet}/subnets/{name}"
# The parts of a load balancer's body that are lists of named sub-resources.
LB_PARTS = (
    "frontendIPConfigurations",
    "backendAddressPools",
    "loadBalancingRules",
    "probes",
    "inboundNatRules",
    "outboundRules",
)
_READ_ONLY = {"provisioningState", "etag", "resourceGuid", "id", "type"}
_LABEL = re.compile(r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _settable(properties: dict[str, Any]) -> dict[str, Any]:
    """A PUT's properties without what ARM fills in itself (so a GET sent back is no change)."""
    out = {k: copy.deepcopy(v) for k, v in properties.items() if k not in _READ_ONLY}
    for part in LB_PARTS + ("securityRules",):
        if part in out:
            out[part] = [
                {
                    "name": entry["name"],
                    "properties": {
                        k: v
                        for k, v in (entry.get("properties") or {}).items()
                        if k not in _READ_ONLY
                        and k not in ("loadBalancingRules", "inboundNatRules", "outboundRules")
                    },
                }
                for entry in out[part] or []
            ]
    return out


@dataclass
class NetworkResource:
    kind: str
    subscription: str
    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    sku: dict[str, Any] | None
    properties: dict[str, Any]
    provisioning_state: str = "Creating"
    etag: str = field(default_factory=_etag)
    resource_guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    address: str | None = None  # a public IP's
    vnet: str | None = None  # a subnet's

    @property
    def id(self) -> str:
        group = NETWORK.format(sub=self.subscription, rg=self.resource_group)
        if self.kind == SUBNETS:
            return f"{group}/virtualNetworks/{self.vnet}/subnets/{self.name}"
        return f"{group}/{self.kind}/{self.name}"

    def model(self) -> dict[str, Any]:
        return {"location": self.location, "tags": self.tags, "sku": self.sku, "properties": self.properties}


class FakeNetwork:
    def __init__(self, arm: FakeArm) -> None:
        self._arm = arm
        self.resources: dict[str, dict[tuple[str, ...], NetworkResource]] = {k: {} for k in KINDS}
        self._next_address = 1

    def routes(self, add: Callable[..., Any]) -> None:
        for kind in KINDS:
            path = SUBNET_PATH if kind == SUBNETS else NETWORK + f"/{kind}/{{name}}"
            add("PUT", path, self._put(kind), name=f"{kind}.createOrUpdate")
            add("GET", path, self._get(kind), name=f"{kind}.get")
        add("DELETE", NETWORK + f"/{PUBLIC_IP}/{{name}}", self._delete_public_ip, name=f"{PUBLIC_IP}.delete")

    # ---- handlers --------------------------------------------------------------------------
    def _key(self, request: web.Request) -> tuple[str, ...]:
        info = request.match_info
        if "vnet" in info:
            return info["sub"], info["rg"].lower(), info["vnet"].lower(), info["name"].lower()
        return info["sub"], info["rg"].lower(), info["name"].lower()

    def _not_found(self, kind: str, request: web.Request) -> web.Response:
        return _error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.Network/{kind}/{request.match_info['name']}' under resource group "
            f"'{request.match_info['rg']}' was not found.",
        )

    def _get(self, kind: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            resource = self.resources[kind].get(self._key(request))
            if resource is None:
                return self._not_found(kind, request)
            return web.json_response(self.view(resource))

        return handler

    def _put(self, kind: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return _error(400, "InvalidRequestContent", "The request content could not be deserialized.")
            if kind != SUBNETS and not body.get("location"):
                return _error(
                    400, "LocationRequired", "The location property is required for this definition."
                )
            key = self._key(request)
            existing = self.resources[kind].get(key)
            refused = self._precondition(request, existing)
            if refused is None:
                refused = self._validate(kind, key, request, body)
            if refused is not None:
                return refused
            model = {
                "location": body.get("location", ""),
                "tags": body.get("tags") or {},
                "sku": body.get("sku"),
                "properties": _settable(body.get("properties") or {}),
            }
            if existing is None:
                resource = NetworkResource(
                    kind=kind,
                    subscription=key[0],
                    resource_group=request.match_info["rg"],
                    name=request.match_info["name"],
                    vnet=request.match_info.get("vnet"),
                    location=model["location"],
                    tags=model["tags"],
                    sku=model["sku"],
                    properties=model["properties"],
                )
                if kind == PUBLIC_IP:
                    resource.address = f"20.50.{self._next_address // 250}.{self._next_address % 250 + 1}"
                    self._next_address += 1
                self.resources[kind][key] = resource
                self._arm.changes[f"{kind}/{resource.name}"] += 1
            else:
                resource = existing
                if model != resource.model():
                    self._arm.changes[f"{kind}/{resource.name}"] += 1
                    resource.tags, resource.sku, resource.properties = (
                        model["tags"],
                        model["sku"],
                        model["properties"],
                    )
                    resource.etag = _etag()
                resource.provisioning_state = "Updating"

            def succeeded() -> None:
                resource.provisioning_state = "Succeeded"

            def failed() -> None:
                resource.provisioning_state = "Failed"

            headers = self._arm.start_operation(
                request,
                f"{kind}.createOrUpdate",
                resource.location or "westeurope",  # a subnet has none; the status URL wants one
                succeeded,
                failed,
                provider="Microsoft.Network",
            )
            return web.json_response(
                self.view(resource), status=201 if existing is None else 200, headers=headers
            )

        return handler

    async def _delete_public_ip(self, request: web.Request) -> web.Response:
        key = self._key(request)
        resource = self.resources[PUBLIC_IP].get(key)
        if resource is None:
            return web.Response(status=204)
        holder = self._frontend_holding(resource.id)
        if holder is not None:
            return _error(
                400,
                "PublicIPAddressCannotBeDeleted",
                f"Public IP address {resource.id} can not be deleted since it is still allocated to resource "
                f"{holder}.",
            )
        resource.provisioning_state = "Deleting"

        def done() -> None:
            self.resources[PUBLIC_IP].pop(key, None)

        headers = self._arm.start_operation(
            request, f"{PUBLIC_IP}.delete", resource.location, done, provider="Microsoft.Network"
        )
        return web.Response(status=202, headers=headers)

    # ---- what ARM refuses --------------------------------------------------------------------
    def _precondition(self, request: web.Request, existing: NetworkResource | None) -> web.Response | None:
        if_match = request.headers.get("If-Match")
        if_none_match = request.headers.get("If-None-Match")
        if if_match is not None and (existing is None or (if_match != "*" and if_match != existing.etag)):
            return _error(
                412,
                "PreconditionFailed",
                "The condition specified using HTTP conditional header(s) is not met.",
            )
        if if_none_match == "*" and existing is not None:
            return _error(412, "PreconditionFailed", "The resource exists and If-None-Match is '*'.")
        return None

    def _validate(
        self, kind: str, key: tuple[str, ...], request: web.Request, body: dict[str, Any]
    ) -> web.Response | None:
        properties = body.get("properties") or {}
        if kind == SUBNETS:
            nsg = (properties.get("networkSecurityGroup") or {}).get("id")
            if nsg is not None and nsg.lower() not in {r.id.lower() for r in self.resources[NSG].values()}:
                return _error(
                    400,
                    "InvalidResourceReference",
                    f"Resource {nsg} referenced by resource {request.path} was not found.",
                )
        if kind == PUBLIC_IP:
            label = (properties.get("dnsSettings") or {}).get("domainNameLabel")
            if label is not None:
                if not _LABEL.match(label):
                    return _error(400, "InvalidDomainNameLabel", f"The domain name label {label} is invalid.")
                for other_key, other in self.resources[PUBLIC_IP].items():
                    other_label = (other.properties.get("dnsSettings") or {}).get("domainNameLabel")
                    if (
                        other_key != key
                        and other.location == body["location"]
                        and str(other_label).lower() == label.lower()
                    ):
                        return _error(
                            400,
                            "DnsRecordInUse",
                            f"DNS record {label}.{other.location}.cloudapp.azure.com is already used by "
                            f"another public IP.",
                        )
        if kind == LOAD_BALANCER:
            return self._validate_load_balancer(request, properties)
        return None

    def _validate_load_balancer(
        self, request: web.Request, properties: dict[str, Any]
    ) -> web.Response | None:
        lb_id = (
            NETWORK.format(sub=request.match_info["sub"], rg=request.match_info["rg"])
            + f"/{LOAD_BALANCER}/{request.match_info['name']}"
        ).lower()
        names = {part: {e["name"].lower() for e in properties.get(part) or []} for part in LB_PARTS}
        public_ips = {r.id.lower() for r in self.resources[PUBLIC_IP].values()}
        for frontend in properties.get("frontendIPConfigurations") or []:
            ip = ((frontend.get("properties") or {}).get("publicIPAddress") or {}).get("id")
            if ip is not None and ip.lower() not in public_ips:
                return _error(
                    400,
                    "InvalidResourceReference",
                    f"Resource {ip} referenced by resource "
                    f"{lb_id}/frontendIPConfigurations/{frontend['name']} was not found.",
                )
        for probe in properties.get("probes") or []:
            refused = probe_problem(probe.get("properties") or {})
            if refused is not None:
                return _error(400, "InvalidProbe", f"{lb_id}/probes/{probe.get('name')}: {refused}")
        seen: dict[tuple[Any, Any, str], tuple[str, bool]] = {}
        for rule in properties.get("loadBalancingRules") or []:
            props = rule.get("properties") or {}
            for field_name, part in (
                ("frontendIPConfiguration", "frontendIPConfigurations"),
                ("backendAddressPool", "backendAddressPools"),
                ("probe", "probes"),
            ):
                ref = (props.get(field_name) or {}).get("id")
                if ref is None:
                    continue
                prefix = f"{lb_id}/{part}/".lower()
                if not ref.lower().startswith(prefix) or ref.lower()[len(prefix) :] not in names[part]:
                    return _error(
                        400,
                        "InvalidResourceReference",
                        f"Resource {ref} referenced by resource {lb_id}/loadBalancingRules/{rule['name']} "
                        "was not found.",
                    )
            pool = str((props.get("backendAddressPool") or {}).get("id", "")).lower()
            slot = (props.get("backendPort"), str(props.get("protocol", "")).lower(), pool)
            floating = bool(props.get("enableFloatingIP"))
            if slot in seen and not (floating and seen[slot][1]):
                return _error(
                    400,
                    "RulesUseSameBackendPortProtocolAndPool",
                    f"Load balancing rules {seen[slot][0]} and {rule['name']} with floating IP disabled use "
                    f"the same backend port {slot[0]} and protocol {props.get('protocol')} and must not be "
                    "used with the same backend address pool.",
                )
            seen[slot] = (rule["name"], floating)
        return None

    def missing_pools(self, scale_set_properties: dict[str, Any]) -> list[str]:
        """Backend pools a scale set's NIC ip configurations name that no load balancer has."""
        have = {
            f"{lb.id}/backendAddressPools/{pool['name']}".lower()
            for lb in self.resources[LOAD_BALANCER].values()
            for pool in lb.properties.get("backendAddressPools") or []
        }
        configs = (
            (scale_set_properties.get("virtualMachineProfile") or {})
            .get("networkProfile", {})
            .get("networkInterfaceConfigurations", [])
        )
        named = [
            str(pool.get("id", ""))
            for config in configs
            for ip in (config.get("properties") or {}).get("ipConfigurations") or []
            for pool in (ip.get("properties") or {}).get("loadBalancerBackendAddressPools") or []
        ]
        return [pool for pool in named if pool.lower() not in have]

    def missing_nsgs(self, scale_set_properties: dict[str, Any]) -> list[str]:
        """Network security groups a scale set's NIC configurations name that do not exist."""
        have = {n.id.lower() for n in self.resources[NSG].values()}
        configs = (
            (scale_set_properties.get("virtualMachineProfile") or {})
            .get("networkProfile", {})
            .get("networkInterfaceConfigurations", [])
        )
        named = [
            str(((config.get("properties") or {}).get("networkSecurityGroup") or {}).get("id"))
            for config in configs
            if (config.get("properties") or {}).get("networkSecurityGroup")
        ]
        return [nsg for nsg in named if nsg.lower() not in have]

    def pool_members(self, lb: NetworkResource) -> dict[str, list[str]]:
        """Each backend pool's members: the private addresses of the scale set VMs joining it."""
        members: dict[str, list[str]] = {}
        for pool in lb.properties.get("backendAddressPools") or []:
            pool_id = f"{lb.id}/backendAddressPools/{pool['name']}".lower()
            members[pool["name"]] = sorted(
                vm.address
                for scale_set in self._arm.scale_sets.values()
                if pool_id in {p.lower() for p in scale_set.backend_pools()}
                for vm in scale_set.vms.values()
            )
        return members

    def _frontend_holding(self, public_ip_id: str) -> str | None:
        for lb in self.resources[LOAD_BALANCER].values():
            for frontend in lb.properties.get("frontendIPConfigurations") or []:
                ref = ((frontend.get("properties") or {}).get("publicIPAddress") or {}).get("id", "")
                if ref.lower() == public_ip_id.lower():
                    return f"{lb.id}/frontendIPConfigurations/{frontend['name']}"
        return None

    # ---- views -------------------------------------------------------------------------------
    def view(self, resource: NetworkResource) -> dict[str, Any]:
        properties = copy.deepcopy(resource.properties)
        if resource.kind == SUBNETS:  # a child resource: no location, tags or sku of its own
            properties["provisioningState"] = resource.provisioning_state
            return {
                "id": resource.id,
                "name": resource.name,
                "type": "Microsoft.Network/virtualNetworks/subnets",
                "etag": resource.etag,
                "properties": properties,
            }
        properties["provisioningState"] = resource.provisioning_state
        properties["resourceGuid"] = resource.resource_guid
        for part in LB_PARTS + ("securityRules",):
            for entry in properties.get(part) or []:
                entry["id"] = f"{resource.id}/{part}/{entry['name']}"
                entry["etag"] = resource.etag
                entry.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if resource.kind == PUBLIC_IP:
            properties["ipAddress"] = resource.address
            dns = properties.get("dnsSettings")
            if dns and dns.get("domainNameLabel"):
                dns["fqdn"] = f"{dns['domainNameLabel']}.{resource.location}.cloudapp.azure.com"
            holder = self._frontend_holding(resource.id)
            if holder is not None:
                properties["ipConfiguration"] = {"id": holder}
        out: dict[str, Any] = {
            "id": resource.id,
            "name": resource.name,
            "type": f"Microsoft.Network/{resource.kind}",
            "location": resource.location,
            "etag": resource.etag,
            "tags": resource.tags,
            "properties": properties,
        }
        if resource.sku is not None:
            out["sku"] = resource.sku
        return out

    def state(self) -> dict[str, Any]:
        def names(lb: NetworkResource, part: str) -> list[str]:
            return [e["name"] for e in lb.properties.get(part) or []]

        return {
            "public_ips": [
                {
                    "resource_group": r.resource_group,
                    "name": r.name,
                    "tags": r.tags,
                    "address": r.address,
                    "fqdn": self.view(r)["properties"].get("dnsSettings", {}).get("fqdn"),
                    "sku": (r.sku or {}).get("name"),
                    "allocation": r.properties.get("publicIPAllocationMethod"),
                    "provisioning_state": r.provisioning_state,
                    "held_by": self._frontend_holding(r.id),
                }
                for r in self.resources[PUBLIC_IP].values()
            ],
            "load_balancers": [
                {
                    "resource_group": lb.resource_group,
                    "name": lb.name,
                    "sku": (lb.sku or {}).get("name"),
                    "etag": lb.etag,
                    "frontends": {
                        e["name"]: (e.get("properties") or {}).get("publicIPAddress", {}).get("id")
                        for e in lb.properties.get("frontendIPConfigurations") or []
                    },
                    "pools": names(lb, "backendAddressPools"),
                    "pool_members": self.pool_members(lb),
                    "probes": names(lb, "probes"),
                    "rules": {
                        e["name"]: e.get("properties") or {}
                        for e in lb.properties.get("loadBalancingRules") or []
                    },
                    "provisioning_state": lb.provisioning_state,
                }
                for lb in self.resources[LOAD_BALANCER].values()
            ],
            "subnets": [
                {
                    "virtual_network": n.vnet,
                    "name": n.name,
                    "address_prefix": n.properties.get("addressPrefix"),
                    "nsg": (n.properties.get("networkSecurityGroup") or {}).get("id"),
                }
                for n in self.resources[SUBNETS].values()
            ],
            "network_security_groups": [
                {
                    "resource_group": n.resource_group,
                    "name": n.name,
                    "tags": n.tags,
                    "rules": {
                        e["name"]: e.get("properties") or {} for e in n.properties.get("securityRules") or []
                    },
                    "provisioning_state": n.provisioning_state,
                }
                for n in self.resources[NSG].values()
            ],
        }


def probe_problem(props: dict[str, Any]) -> str | None:
    """What Azure's spec (network 2026-03-01, ProbePropertiesFormat) refuses in a probe: a
    protocol other than Http, Https or Tcp; a requestPath missing for Http(s) or given for Tcp;
    a port outside 1-65535; an interval under 5 s."""
    protocol = str(props.get("protocol", "")).lower()
    if protocol not in ("http", "https", "tcp"):
        return f"protocol {props.get('protocol')!r} is not one of Http, Https, Tcp"
    path = props.get("requestPath")
    if protocol == "tcp" and path is not None:
        return "requestPath is not allowed for a Tcp probe"
    if protocol != "tcp" and not (isinstance(path, str) and path.startswith("/")):
        return f"requestPath is required for an {props.get('protocol')} probe (a path, e.g. /health)"
    port = props.get("port")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        return f"port {port!r} is not in 1-65535"
    interval = props.get("intervalInSeconds", 15)
    if not isinstance(interval, int) or interval < 5:
        return f"intervalInSeconds {interval!r} is under 5"
    return None
