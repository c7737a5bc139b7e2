"""An endpoint's Azure network resources as ARM takes them, decided without calling ARM: its
public IP, its frontend and rule on the gateways' shared load balancer, and the instances' NSG.

What belongs to an endpoint is told by name and tag: its public IP is `tg-<endpoint>`, tagged
with the endpoint; its frontend and rule on the shared load balancer (sub-resources, which
take no tags) are both named `tg-<endpoint>`. The load balancer itself, its backend pool, the
gateways' health probe and the NSG are shared: no endpoint's removal touches them.
"""

from __future__ import annotations

import copy
from typing import Any

from config.azure_network import dns_label
from config.routes import HEALTH_PATH
from config.settings import Settings

TAG_ENDPOINT = "tidegate-endpoint"
TAG_ROLE = "tidegate-role"
GATEWAY_PROBE = "gateway-https"
# Whose entries a load balancer's collections hold, by name.
FRONTENDS = "frontendIPConfigurations"
RULES = "loadBalancingRules"
PROBES = "probes"
POOLS = "backendAddressPools"
# What ARM fills in and a PUT need not send back (a GET's body, PUT again, must compare equal).
_READ_ONLY = frozenset({"provisioningState", "etag", "resourceGuid", "type"})
_BACK_REFERENCES = frozenset({"loadBalancingRules", "inboundNatRules", "outboundRules", "inboundNatPools"})


def endpoint_resource_name(endpoint: str) -> str:
    """The endpoint's public IP, frontend and rule: one name (Azure's limit is 80)."""
    return f"tg-{endpoint}".lower()


def network_id(settings: Settings, kind: str, name: str) -> str:
    return (
        f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{settings.azure_resource_group}"
        f"/providers/Microsoft.Network/{kind}/{name}"
    )


def load_balancer_id(settings: Settings) -> str:
    return network_id(settings, "loadBalancers", settings.azure_load_balancer)


def public_ip_body(settings: Settings, endpoint: str) -> dict[str, Any]:
    """Standard SKU, static, with the endpoint's DNS label: the whole desired state."""
    return {
        "location": settings.azure_location,
        "tags": {TAG_ENDPOINT: endpoint},
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {
            "publicIPAllocationMethod": "Static",
            "publicIPAddressVersion": "IPv4",
            "idleTimeoutInMinutes": 4,
            "dnsSettings": {"domainNameLabel": dns_label(settings, endpoint)},
        },
    }


# The gateways' probe: every 5 s (Azure's least), out after 2 failures in a row.
PROBE_INTERVAL_SECONDS = 5
PROBE_FAILURES = 2


def gateway_probe(settings: Settings) -> dict[str, Any]:
    """The gateways' data plane answers its health path 200 on its HTTPS port while it takes
    new connections, 503 once told to drain: shared by every endpoint's rule. Azure counts an
    HTTPS probe up on a 200 only (and checks no certificate)."""
    return {
        "name": GATEWAY_PROBE,
        "properties": {
            "protocol": "Https",
            "port": settings.gateway_https_port,
            "requestPath": HEALTH_PATH,
            "intervalInSeconds": PROBE_INTERVAL_SECONDS,
            "numberOfProbes": PROBE_FAILURES,
            "probeThreshold": PROBE_FAILURES,
        },
    }


def probe_detection_seconds(probe: dict[str, Any]) -> float:
    """How long the balancer may keep sending new connections to a gateway whose probe
    started failing: the interval times the failures it takes."""
    properties = probe["properties"]
    return float(properties["intervalInSeconds"] * properties["numberOfProbes"])


def new_load_balancer(settings: Settings) -> dict[str, Any]:
    """The shared load balancer as it is first made: the backend pool and the gateways' probe."""
    return {
        "location": settings.azure_location,
        "tags": {TAG_ROLE: "gateways"},
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {
            FRONTENDS: [],
            POOLS: [{"name": settings.azure_gateway_backend_pool}],
            RULES: [],
            PROBES: [gateway_probe(settings)],
        },
    }


def endpoint_frontend(settings: Settings, endpoint: str) -> dict[str, Any]:
    name = endpoint_resource_name(endpoint)
    return {
        "name": name,
        "properties": {"publicIPAddress": {"id": network_id(settings, "publicIPAddresses", name)}},
    }


def endpoint_rule(settings: Settings, endpoint: str) -> dict[str, Any]:
    """443 on the endpoint's IP to the gateways' HTTPS port. Every endpoint's rule shares that
    backend port and pool, which Azure allows only with Floating IP: the packet reaches a
    gateway still addressed to the frontend's IP (the gateway VM must accept it; README)."""
    name = endpoint_resource_name(endpoint)
    lb = load_balancer_id(settings)
    return {
        "name": name,
        "properties": {
            "frontendIPConfiguration": {"id": f"{lb}/{FRONTENDS}/{name}"},
            "backendAddressPool": {"id": f"{lb}/{POOLS}/{settings.azure_gateway_backend_pool}"},
            "probe": {"id": f"{lb}/{PROBES}/{GATEWAY_PROBE}"},
            "protocol": "Tcp",
            "frontendPort": settings.azure_frontend_port,
            "backendPort": settings.gateway_https_port,
            "enableFloatingIP": True,
            "enableTcpReset": True,
            "idleTimeoutInMinutes": 4,
            "loadDistribution": "Default",
            "disableOutboundSnat": True,
        },
    }


def writable(load_balancer: dict[str, Any]) -> dict[str, Any]:
    """A load balancer as a GET returns it (the SDK model's as_dict()), without what ARM
    fills in: the body a PUT sends back, so the same balancer compares equal."""
    out = {k: copy.deepcopy(v) for k, v in load_balancer.items() if k in ("location", "tags", "sku")}
    properties = load_balancer.get("properties") or {}
    kept: dict[str, Any] = {}
    for key, value in properties.items():
        if key in _READ_ONLY:
            continue
        if key in (FRONTENDS, RULES, PROBES, POOLS, "inboundNatRules", "outboundRules", "inboundNatPools"):
            kept[key] = [_writable_entry(entry) for entry in value or []]
        else:
            kept[key] = copy.deepcopy(value)
    out["properties"] = kept
    return out


def _writable_entry(entry: dict[str, Any]) -> dict[str, Any]:
    properties = {
        k: copy.deepcopy(v)
        for k, v in (entry.get("properties") or {}).items()
        if k not in _READ_ONLY and k not in _BACK_REFERENCES and k != "backendIPConfigurations"
    }
    out: dict[str, Any] = {"name": entry["name"], "properties": properties}
    if "zones" in entry:
        out["zones"] = list(entry["zones"])
    return out


def put_entry(entries: list[dict[str, Any]], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """`wanted` in place of the entry of its name (case-insensitive, as ARM's names are), or
    added after the others. An entry that already says all `wanted` says stays as it is: ARM
    fills in defaults, and those are no reason for a PUT."""
    name = wanted["name"].lower()
    if any(e["name"].lower() == name for e in entries):
        return [(e if covers(e, wanted) else wanted) if e["name"].lower() == name else e for e in entries]
    return [*entries, wanted]


def covers(have: Any, wanted: Any) -> bool:
    """Does `have` say everything `wanted` says (ids compared as ARM does, case-insensitively)?"""
    if isinstance(wanted, dict):
        return isinstance(have, dict) and all(k in have and covers(have[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(have, list) and len(have) == len(wanted) and all(map(covers, have, wanted))
    if isinstance(wanted, str) and isinstance(have, str):
        return have.lower() == wanted.lower()
    return bool(have == wanted)


def with_endpoint(current: dict[str, Any], settings: Settings, endpoint: str) -> dict[str, Any]:
    """The load balancer with the endpoint's frontend and rule, and the shared pool and probe
    they need; every other entry left as it is."""
    body = writable(current)
    properties = body["properties"]
    pools = properties.get(POOLS) or []
    pool = settings.azure_gateway_backend_pool.lower()
    if not any(p["name"].lower() == pool for p in pools):
        pools = [*pools, {"name": settings.azure_gateway_backend_pool, "properties": {}}]
    properties[POOLS] = pools
    properties[PROBES] = put_entry(properties.get(PROBES) or [], gateway_probe(settings))
    properties[FRONTENDS] = put_entry(properties.get(FRONTENDS) or [], endpoint_frontend(settings, endpoint))
    properties[RULES] = put_entry(properties.get(RULES) or [], endpoint_rule(settings, endpoint))
    return body


def without_endpoint(current: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The load balancer without the endpoint's frontend and rule; nothing else changes."""
    body = writable(current)
    properties = body["properties"]
    name = endpoint_resource_name(endpoint)
    for key in (RULES, FRONTENDS):  # a rule goes with its frontend
        properties[key] = [e for e in properties.get(key) or [] if e["name"].lower() != name]
    return body


def instances_nsg_body(settings: Settings) -> dict[str, Any]:
    """Only the gateways' subnet reaches the instances' port; anyone else is refused there.
    (Azure's default rules would let the whole virtual network in.)"""
    port = str(settings.azure_instance_port)
    common = {
        "protocol": "Tcp",
        "direction": "Inbound",
        "sourcePortRange": "*",
        "destinationAddressPrefix": "*",
        "destinationPortRange": port,
    }
    return {
        "location": settings.azure_location,
        "tags": {TAG_ROLE: "instances"},
        "properties": {
            "securityRules": [
                {
                    "name": "tidegate-allow-gateways",
                    "properties": {
                        **common,
                        "priority": 100,
                        "access": "Allow",
                        "sourceAddressPrefix": settings.azure_gateway_subnet_prefix,
                        "description": "the gateways reach instance ports",
                    },
                },
                {
                    "name": "tidegate-deny-others",
                    "properties": {
                        **common,
                        "priority": 110,
                        "access": "Deny",
                        "sourceAddressPrefix": "*",
                        "description": "nobody else reaches instance ports",
                    },
                },
            ]
        },
    }


def gateways_nsg_body(settings: Settings) -> dict[str, Any]:
    """Clients reach the gateways' HTTPS port from the internet (through the load balancer's
    frontends, Floating IP keeping the frontend's address). A Standard Load Balancer passes only
    what an NSG allows; Azure's default rules already let in the virtual network (the workers'
    pushes to the admin port) and the balancer's own probes."""
    return {
        "location": settings.azure_location,
        "tags": {TAG_ROLE: "gateways"},
        "properties": {
            "securityRules": [
                {
                    "name": "tidegate-allow-clients",
                    "properties": {
                        "protocol": "Tcp",
                        "direction": "Inbound",
                        "access": "Allow",
                        "priority": 100,
                        "sourceAddressPrefix": "Internet",
                        "sourcePortRange": "*",
                        "destinationAddressPrefix": "*",
                        "destinationPortRange": str(settings.gateway_https_port),
                        "description": "clients reach the gateways' HTTPS port",
                    },
                }
            ]
        },
    }
