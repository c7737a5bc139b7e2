"""The gateway scale set as ARM takes it, decided without ARM: pool membership, its custom data
(what it runs, where its secrets go), the same settings giving the same body, and the VM agent's
hand-over to `tidegate gateway`."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.azure.gateway_scale_set import (
    BOOT_FILE,
    TAG_GATEWAY_SPEC,
    gateway_bootstrap_script,
    gateway_scale_set_body,
)
from activities.azure.gateway_tls import admin_client_ssl, ensure_gateway_tls
from config.azure_vm import GatewayBoot
from config.settings import Settings
from host.vm_gateway import prepare

TOKEN = "control-credential-for-the-model-test-0123"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"


def settings(tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path,
        "azure_subscription_id": "sub",
        "azure_resource_group": "rg",
        "azure_location": "westeurope",
        "azure_vnet": "vnet",
        "azure_subnet": "instances",
        "azure_ssh_public_key": "ssh-ed25519 AAAA test",
        "azure_gateway_instances": 3,
        "azure_gateway_vm_size": "Standard_D4s_v5",
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def boot(https_port: int = 8443) -> GatewayBoot:
    return GatewayBoot(
        https_port=https_port,
        admin_port=8081,
        domain="westeurope.cloudapp.azure.com",
        control_token=SecretStr(TOKEN),
        tls_cert_pem="-----BEGIN CERTIFICATE-----\ndata\n-----END CERTIFICATE-----\n",
        tls_key_pem=SecretStr(KEY_PEM),
        admin_cert_pem="-----BEGIN CERTIFICATE-----\nadmin\n-----END CERTIFICATE-----\n",
        admin_key_pem=SecretStr(KEY_PEM),
    )


def test_gateway_vms_join_the_load_balancer_backend_pool_in_the_gateway_subnet(tmp_path: Path) -> None:
    body = gateway_scale_set_body(settings(tmp_path), boot())
    [nic] = body["properties"]["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"]
    [ip] = nic["properties"]["ipConfigurations"]
    rg = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network"
    assert ip["properties"]["loadBalancerBackendAddressPools"] == [
        {"id": f"{rg}/loadBalancers/tidegate-gateways/backendAddressPools/gateways"}
    ]
    assert ip["properties"]["subnet"] == {"id": f"{rg}/virtualNetworks/vnet/subnets/gateways"}
    assert body["sku"] == {"name": "Standard_D4s_v5", "tier": "Standard", "capacity": 3}
    assert body["tags"]["tidegate-role"] == "gateways"
    # Never every gateway at once on a model change; and no deployment tags (compute ignores it).
    assert body["properties"]["upgradePolicy"] == {"mode": "Manual"}
    assert "tidegate-endpoint" not in body["tags"] and "tidegate-deployment" not in body["tags"]
    image = body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
    assert image == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }


@pytest.mark.parametrize(
    ("change", "same"),
    [
        pytest.param({}, True, id="same_settings_same_body"),
        pytest.param({"azure_gateway_instances": 4}, False, id="capacity_changes_the_hash"),
        pytest.param({"azure_gateway_vm_size": "Standard_D8s_v5"}, False, id="size_changes_the_hash"),
    ],
)
def test_gateway_body_is_the_same_for_the_same_settings_and_its_tag_says_so(
    tmp_path: Path, change: dict[str, object], same: bool
) -> None:
    first = gateway_scale_set_body(settings(tmp_path), boot())
    second = gateway_scale_set_body(settings(tmp_path, **change), boot())
    assert (first == second) is same
    assert (first["tags"][TAG_GATEWAY_SPEC] == second["tags"][TAG_GATEWAY_SPEC]) is same


def test_gateway_custom_data_runs_the_gateway_agent_with_secrets_only_in_a_root_only_file(
    tmp_path: Path,
) -> None:
    body = gateway_scale_set_body(settings(tmp_path), boot())
    script = base64.b64decode(body["properties"]["virtualMachineProfile"]["osProfile"]["customData"]).decode()
    assert script == gateway_bootstrap_script(boot())
    lines = script.splitlines()
    assert "umask 077" in lines[: lines.index(next(x for x in lines if x.startswith("cat >")))]
    assert lines[-1].startswith('exec "$python" -m host.vm_gateway --boot "$root/' + BOOT_FILE)
    # The secrets sit only inside the here-document (a file); no command line or variable has them.
    start = next(i for i, line in enumerate(lines) if line.startswith("cat >"))
    document = json.loads(lines[start + 1])
    assert document["control_token"] == TOKEN and document["tls_key_pem"] == KEY_PEM
    outside = "\n".join(lines[:start] + lines[start + 2 :])
    assert TOKEN not in outside and "PRIVATE KEY" not in outside
    # Floating IP: the frontend's packets are redirected to the gateway's HTTPS port, as root only.
    assert "iptables -t nat -A PREROUTING -p tcp --dport 8443 -j REDIRECT --to-ports 8443" in script
    # A repr or log of the boot description shows none of its secrets.
    assert TOKEN not in repr(boot()) and "not-a-real-key" not in repr(boot())


def test_gateway_bootstrap_script_hands_over_to_the_agent_as_written(tmp_path: Path) -> None:
    """Run the script itself with a stand-in interpreter that records what it was asked."""
    recorder = tmp_path / "python"
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$TIDEGATE_VM_ROOT/argv"\n')
    recorder.chmod(0o755)
    root = tmp_path / "disk"
    env = {
        "PATH": os.environ["PATH"],
        "TIDEGATE_PYTHON": str(recorder),
        "TIDEGATE_VM_ROOT": str(root),
        "TIDEGATE_VM_ADDRESS": "127.9.9.9",
    }
    subprocess.run(["/bin/sh", "-c", gateway_bootstrap_script(boot())], env=env, check=True)
    argv = (root / "argv").read_text().split()
    assert argv == [
        "-m",
        "host.vm_gateway",
        "--boot",
        str(root / BOOT_FILE),
        "--root",
        str(root),
        "--address",
        "127.9.9.9",
    ]
    written = root / BOOT_FILE
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert GatewayBoot.model_validate_json(written.read_text()).control_token.get_secret_value() == TOKEN


def test_gateway_agent_writes_secrets_to_0600_files_and_binds_everything_to_the_vm_address(
    tmp_path: Path,
) -> None:
    env = prepare(boot(), tmp_path, "10.0.1.7", {"PATH": "/usr/bin", "SECRET_OF_IMAGE": "x"})
    assert env["TIDEGATE_GATEWAY_HTTPS_BIND"] == env["TIDEGATE_GATEWAY_ADMIN_BIND"] == "10.0.1.7"
    assert env["TIDEGATE_GATEWAY_HTTP_ENABLED"] == "false"
    assert (env["TIDEGATE_GATEWAY_HTTPS_PORT"], env["TIDEGATE_GATEWAY_ADMIN_PORT"]) == ("8443", "8081")
    assert "SECRET_OF_IMAGE" not in env and all(TOKEN not in v for v in env.values())
    home = Path(env["TIDEGATE_HOME"])
    assert (home / "control.token").read_text() == TOKEN
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("TIDEGATE_CONTROL_TOKEN", "TIDEGATE_CODEC_KEY"):
        assert name not in env
    for variable in ("TIDEGATE_GATEWAY_TLS_KEY", "TIDEGATE_CONTROL_TLS_KEY"):
        key = Path(env[variable])
        assert key.read_text() == KEY_PEM and stat.S_IMODE(key.stat().st_mode) == 0o600


def test_worker_gateway_certificate_names_the_region_zone_and_is_kept(tmp_path: Path) -> None:
    from cryptography import x509

    s = settings(tmp_path)
    first = ensure_gateway_tls(s)
    cert = x509.load_pem_x509_certificate(first.data_cert_pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.westeurope.cloudapp.azure.com" in names.get_values_for_type(x509.DNSName)
    assert first.ca_file == tmp_path / "azure-gateways" / "tls" / "ca.pem"
    assert not (tmp_path / "tls").exists()  # the local CA is not touched
    assert ensure_gateway_tls(s) == first  # the same material: the same custom data
    assert "PRIVATE" not in repr(first)
    admin_client_ssl(first.ca_file)  # loads


def test_a_given_data_plane_certificate_is_served_instead_and_the_admin_keeps_the_workers(
    tmp_path: Path,
) -> None:
    (tmp_path / "given.pem").write_text("GIVEN CERT")
    (tmp_path / "given-key.pem").write_text("GIVEN KEY")
    s = settings(
        tmp_path,
        azure_gateway_tls_cert=tmp_path / "given.pem",
        azure_gateway_tls_key=tmp_path / "given-key.pem",
    )
    tls = ensure_gateway_tls(s)
    assert (tls.data_cert_pem, tls.data_key_pem) == ("GIVEN CERT", "GIVEN KEY")
    assert tls.admin_cert_pem.startswith("-----BEGIN CERTIFICATE-----")
