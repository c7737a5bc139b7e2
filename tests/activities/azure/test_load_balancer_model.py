"""An endpoint's network resources as ARM takes them, decided without calling ARM: what the
shared load balancer becomes with and without an endpoint, and which labels Azure refuses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from activities.azure.load_balancer import (
    endpoint_frontend,
    endpoint_rule,
    gateway_probe,
    new_load_balancer,
    probe_detection_seconds,
    with_endpoint,
    without_endpoint,
    writable,
)
from config.azure_network import InvalidDnsLabel, checked_dns_label
from config.routes import HEALTH_PATH
from config.settings import Settings
from tests.fakes.arm.network import probe_problem


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        azure_subscription_id="sub",
        azure_resource_group="rg",
        azure_location="westeurope",
        azure_dns_label_prefix="contoso",
        gateway_https_port=8443,
    )


def as_arm_returns(body: dict[str, Any]) -> dict[str, Any]:
    """A PUT body as a GET gives it back: ids, etags, states, defaults and back-references."""
    got = copy.deepcopy(body)
    got.update(id="/lb", etag='W/"7"', type="Microsoft.Network/loadBalancers")
    got["properties"]["provisioningState"] = "Succeeded"
    for part, entries in got["properties"].items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            entry.update(id=f"/lb/{part}/{entry['name']}", etag='W/"7"')
            props = entry.setdefault("properties", {})
            props["provisioningState"] = "Succeeded"
            if part == "frontendIPConfigurations":
                props["privateIPAllocationMethod"] = "Dynamic"
                props["loadBalancingRules"] = [{"id": f"/lb/loadBalancingRules/{entry['name']}"}]
            if part == "loadBalancingRules":
                props["backendAddressPools"] = [props["backendAddressPool"]]
            if part == "backendAddressPools":
                props["backendIPConfigurations"] = [{"id": "/vmss/nic/ipconfig"}]
    return got


def names(body: dict[str, Any], part: str) -> list[str]:
    return [e["name"] for e in body["properties"][part]]


def test_load_balancer_that_already_has_the_endpoint_is_no_change(settings: Settings) -> None:
    wanted = with_endpoint(new_load_balancer(settings), settings, "ep1")
    current = as_arm_returns(wanted)
    assert with_endpoint(current, settings, "ep1") == writable(current)  # no PUT for ARM's defaults


def test_load_balancer_gains_the_endpoint_and_keeps_everything_else(settings: Settings) -> None:
    current = as_arm_returns(with_endpoint(new_load_balancer(settings), settings, "ep1"))
    foreign = {"name": "ssh", "properties": {"frontendPort": 22, "backendPort": 22, "protocol": "Tcp"}}
    current["properties"]["inboundNatRules"] = [foreign]
    body = with_endpoint(current, settings, "ep2")
    assert names(body, "frontendIPConfigurations") == ["tg-ep1", "tg-ep2"]
    assert names(body, "loadBalancingRules") == ["tg-ep1", "tg-ep2"]
    assert body["properties"]["inboundNatRules"] == [foreign]
    assert names(body, "probes") == ["gateway-https"] and names(body, "backendAddressPools") == ["gateways"]
    before = writable(current)["properties"]
    assert body["properties"]["loadBalancingRules"][0] == before["loadBalancingRules"][0]


def test_load_balancer_rule_is_replaced_when_the_gateways_port_changes(settings: Settings) -> None:
    current = as_arm_returns(with_endpoint(new_load_balancer(settings), settings, "ep1"))
    moved = settings.model_copy(update={"gateway_https_port": 9443})
    body = with_endpoint(current, moved, "ep1")
    [rule] = body["properties"]["loadBalancingRules"]
    assert rule == endpoint_rule(moved, "ep1") and rule["properties"]["backendPort"] == 9443
    assert body != writable(current)


def test_load_balancer_without_the_endpoint_keeps_a_lookalike_name(settings: Settings) -> None:
    lb = new_load_balancer(settings)
    for endpoint in ("ep1", "ep1-b"):
        lb = with_endpoint(lb, settings, endpoint)
    current = as_arm_returns(lb)
    body = without_endpoint(current, "ep1")
    assert names(body, "frontendIPConfigurations") == ["tg-ep1-b"]
    assert names(body, "loadBalancingRules") == ["tg-ep1-b"]
    [kept] = body["properties"]["frontendIPConfigurations"]
    assert kept == writable(current)["properties"]["frontendIPConfigurations"][1]  # as it was
    assert (
        kept["properties"]["publicIPAddress"]
        == endpoint_frontend(settings, "ep1-b")["properties"]["publicIPAddress"]
    )


def test_load_balancer_without_an_endpoint_it_never_had_is_no_change(settings: Settings) -> None:
    current = as_arm_returns(with_endpoint(new_load_balancer(settings), settings, "ep1"))
    assert without_endpoint(current, "other") == writable(current)


@pytest.mark.parametrize(
    ("prefix", "endpoint", "label"),
    [
        ("contoso", "Fraud-1", "contoso-fraud-1"),
        (None, "fraud", "fraud"),
        ("a" * 40, "b" * 30, None),  # 71 characters: Azure's limit is 63
        ("9lives", "ep", None),  # a digit first
        ("contoso", "ep-", None),  # '-' last
    ],
    ids=["lower_cased", "endpoint_alone", "too_long", "digit_first", "dash_last"],
)
def test_dns_label(tmp_path: Path, prefix: str | None, endpoint: str, label: str | None) -> None:
    settings = Settings(home=tmp_path, azure_dns_label_prefix=prefix)
    if label is None:
        with pytest.raises(InvalidDnsLabel):
            checked_dns_label(settings, endpoint)
    else:
        assert checked_dns_label(settings, endpoint) == label


def test_the_gateway_probe_asks_the_health_path_over_https_and_sees_a_drain_in_ten_seconds(
    settings: Settings,
) -> None:
    probe = gateway_probe(settings)
    assert probe["properties"]["protocol"] == "Https"
    assert probe["properties"]["requestPath"] == HEALTH_PATH
    assert probe["properties"]["port"] == 8443
    assert probe_problem(probe["properties"]) is None  # as the fake ARM (and the spec) take it
    assert probe_detection_seconds(probe) == 10.0


@pytest.mark.parametrize(
    ("props", "refused"),
    [
        ({"protocol": "Tcp", "port": 443, "requestPath": "/x"}, "not allowed"),
        ({"protocol": "Https", "port": 443}, "requestPath is required"),
        ({"protocol": "Http", "port": 80, "requestPath": "health"}, "requestPath is required"),
        ({"protocol": "Udp", "port": 443}, "not one of"),
        ({"protocol": "Https", "port": 0, "requestPath": "/h"}, "port"),
        ({"protocol": "Https", "port": 443, "requestPath": "/h", "intervalInSeconds": 1}, "under 5"),
    ],
    ids=[
        "tcp_with_a_path",
        "https_without_a_path",
        "http_path_not_absolute",
        "unknown_protocol",
        "port_zero",
        "interval_under_five",
    ],
)
def test_the_fake_arm_refuses_probes_the_spec_refuses(props: dict[str, Any], refused: str) -> None:
    problem = probe_problem(props)
    assert problem is not None and refused in problem
