"""What the azure provider sends, decided without ARM: names, the scale set body, custom data,
and how a VM's power state and health read as an instance phase."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from activities.azure.bootstrap import bootstrap_script
from activities.azure.scale_sets import (
    SCALE_SET_NAME_MAX,
    gallery_image,
    image_records,
    image_tags,
    instance_phase,
    scale_set_body,
    scale_set_name,
    spec_of_user_data,
    vm_boot,
)
from config.azure_vm import VmBoot
from config.contract.activities import RequestInstancesInput
from config.host_api import DeploymentRuntime, ProbeSpec
from config.settings import Settings
from decisions.scale_set_update import ImageRecord


def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        azure_subscription_id="sub",
        azure_resource_group="rg",
        azure_location="westeurope",
        azure_vnet="vnet",
        azure_subnet="instances",
        azure_ssh_public_key="ssh-ed25519 AAAA test",
        azure_instance_port=5001,
    )


def request(count: int = 3, period: int = 10, failures: int = 30) -> RequestInstancesInput:
    runtime = DeploymentRuntime(
        endpoint="ep",
        deployment="blue",
        code_dir="/snapshots/code/abc",
        model_dir="/snapshots/models/def",
        spec_hash="h1",
        readiness_probe=ProbeSpec(period=period, failure_threshold=failures),
    )
    return RequestInstancesInput(runtime=runtime, instance_count=count, instance_type="Standard_NC6s_v3")


def test_scale_set_name_is_the_same_every_time_and_fits_azures_limit() -> None:
    assert scale_set_name("ep", "blue") == scale_set_name("ep", "blue") == "tg-ep-blue"
    long_a, long_b = scale_set_name("e" * 32, "a" * 32), scale_set_name("e" * 32, "a" * 31 + "b")
    assert len(long_a) <= SCALE_SET_NAME_MAX and len(long_b) <= SCALE_SET_NAME_MAX
    assert long_a != long_b


def test_the_same_request_gives_the_same_body(tmp_path: Path) -> None:
    assert scale_set_body(request(), settings(tmp_path)) == scale_set_body(request(), settings(tmp_path))


def test_instance_type_is_the_sku_and_instance_count_the_capacity(tmp_path: Path) -> None:
    body = scale_set_body(request(count=3), settings(tmp_path))
    assert body["sku"] == {"name": "Standard_NC6s_v3", "tier": "Standard", "capacity": 3}
    assert body["properties"]["orchestrationMode"] == "Uniform"
    assert body["tags"]["tidegate-spec-hash"] == "h1"


def test_a_new_model_reaches_no_vm_by_itself_and_each_vm_carries_its_spec(tmp_path: Path) -> None:
    """Upgrade policy Manual; user data naming the spec; the rolling update's tags; the first
    step's capacity and the image chosen given, not taken from the count and settings."""
    req = request(count=2).model_copy(update={"max_surge": 1})
    body = scale_set_body(req, settings(tmp_path), capacity=3, image="/img/versions/1.0.1", tags={"x": "y"})
    assert body["properties"]["upgradePolicy"] == {"mode": "Manual"}
    profile = body["properties"]["virtualMachineProfile"]
    assert spec_of_user_data(profile["userData"]) == "h1"
    assert profile["storageProfile"]["imageReference"] == {"id": "/img/versions/1.0.1"}
    assert profile["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": True}}
    assert body["sku"]["capacity"] == 3
    assert {k: body["tags"][k] for k in ("tidegate-instance-count", "tidegate-max-surge", "x")} == {
        "tidegate-instance-count": "2",
        "tidegate-max-surge": "1",
        "x": "y",
    }
    assert spec_of_user_data(None) is None and spec_of_user_data("not base64 json") is None


def test_image_records_read_back_from_tags_and_a_gallery_definition_is_told_from_a_version() -> None:
    records = [ImageRecord("/g/versions/1.0.1", "p1", 1), ImageRecord("pub:offer:sku:1.0", "p0", 0)]
    assert image_records(image_tags(records)) == records
    assert image_records({"tidegate-image": "garbage"}) == []
    definition = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/host"
    assert gallery_image(definition)
    assert not gallery_image(definition + "/versions/1.0.0") and not gallery_image("pub:offer:sku:latest")


@pytest.mark.parametrize(
    ("period", "failures", "interval", "probes"),
    [(1, 3, 5, 3), (10, 30, 10, 24), (120, 1, 60, 1)],
    ids=["interval_raised_to_azures_5s", "probes_cut_to_azures_24", "interval_cut_to_azures_60s"],
)
def test_health_extension_probes_the_readiness_route_within_azures_bounds(
    tmp_path: Path, period: int, failures: int, interval: int, probes: int
) -> None:
    body = scale_set_body(request(period=period, failures=failures), settings(tmp_path))
    [extension] = body["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    assert extension["properties"]["type"] == "ApplicationHealthLinux"
    assert extension["properties"]["settings"] == {
        "protocol": "http",
        "port": 5001,
        "requestPath": "/",
        "intervalInSeconds": interval,
        "numberOfProbes": probes,
    }


def test_custom_data_is_a_shell_script_carrying_the_boot_description(tmp_path: Path) -> None:
    body = scale_set_body(request(), settings(tmp_path))
    script = base64.b64decode(body["properties"]["virtualMachineProfile"]["osProfile"]["customData"]).decode()
    assert script.startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)  # parses as POSIX sh
    document = script.split("<<'TIDEGATE_VM_BOOT_END'\n")[1].split("\nTIDEGATE_VM_BOOT_END\n")[0]
    boot = VmBoot.model_validate_json(document)
    assert boot.port == 5001
    assert boot.runtime.code_dir == "file:///snapshots/code/abc"
    assert boot.runtime.model_dir == "file:///snapshots/models/def"
    assert bootstrap_script(vm_boot(request(), settings(tmp_path))) == script


@pytest.mark.parametrize(
    ("power", "health", "phase"),
    [
        ("PowerState/running", "HealthState/healthy", "ready"),
        ("PowerState/running", "HealthState/initializing", "starting"),
        ("PowerState/running", None, "starting"),
        ("PowerState/running", "HealthState/unhealthy", "unready"),
        ("PowerState/stopped", "HealthState/unhealthy", "failed"),
        ("PowerState/deallocating", None, "stopped"),
        ("PowerState/starting", None, "starting"),
    ],
    ids=[
        "healthy_is_ready",
        "initializing_is_starting",
        "no_verdict_yet_is_starting",
        "unhealthy_is_unready",
        "stopped_vm_is_failed",
        "deallocating_is_stopped",
        "powering_on_is_starting",
    ],
)
def test_power_state_and_health_read_as_an_instance_phase(power: str, health: str | None, phase: str) -> None:
    assert instance_phase(power, health) == phase
