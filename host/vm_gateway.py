"""The agent on a gateway VM: what its custom data hands over to
(activities/azure/gateway_scale_set.py).

It writes what the boot description carries into files only this user can read — the control
credential as the gateway's `control.token` in a 0700 state dir, the certificates and keys
beside it — and becomes `tidegate gateway` (exec, so the VM's process is the gateway) with
every listener on the VM's private address: HTTPS for the data plane (the load balancer's
backend port), the admin API over TLS for the worker's route pushes, no plain HTTP. Nothing
secret goes onto its command line, into its environment or into a log.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog

from config.azure_vm import GatewayBoot
from config.files import write_atomically
from config.security import CONTROL_TOKEN_FILE

log = structlog.get_logger("host.vm_gateway")

# Variables the gateway process inherits from the agent's own environment (the image's).
_PASSED = ("PATH", "LANG", "PYTHONPATH", "TIDEGATE_LOG_LEVEL")


def prepare(boot: GatewayBoot, root: Path, address: str, environ: dict[str, str]) -> dict[str, str]:
    """Write the secrets to 0600 files under `root/gateway`; the gateway's environment."""
    home = root / "gateway"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    tls = home / "given-tls"
    tls.mkdir(exist_ok=True)
    os.chmod(tls, 0o700)
    files = {
        home / CONTROL_TOKEN_FILE: boot.control_token.get_secret_value(),
        tls / "data.pem": boot.tls_cert_pem,
        tls / "data-key.pem": boot.tls_key_pem.get_secret_value(),
        tls / "admin.pem": boot.admin_cert_pem,
        tls / "admin-key.pem": boot.admin_key_pem.get_secret_value(),
    }
    for path, text in files.items():
        write_atomically(path, text.encode(), 0o600)
    env = {name: environ[name] for name in _PASSED if name in environ}
    env.update(
        {
            "HOME": str(home),
            "TIDEGATE_HOME": str(home),
            "TIDEGATE_DOMAIN": boot.domain,
            "TIDEGATE_GATEWAY_HTTPS_BIND": address,
            "TIDEGATE_GATEWAY_HTTPS_PORT": str(boot.https_port),
            "TIDEGATE_GATEWAY_ADMIN_BIND": address,
            "TIDEGATE_GATEWAY_ADMIN_PORT": str(boot.admin_port),
            "TIDEGATE_GATEWAY_HTTP_ENABLED": "false",  # the load balancer forwards HTTPS only
            "TIDEGATE_GATEWAY_TLS_CERT": str(tls / "data.pem"),
            "TIDEGATE_GATEWAY_TLS_KEY": str(tls / "data-key.pem"),
            "TIDEGATE_CONTROL_TLS_CERT": str(tls / "admin.pem"),
            "TIDEGATE_CONTROL_TLS_KEY": str(tls / "admin-key.pem"),
        }
    )
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m host.vm_gateway")
    parser.add_argument("--boot", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    boot = GatewayBoot.model_validate_json(args.boot.read_text())
    env = prepare(boot, args.root, args.address, dict(os.environ))
    log.info(
        "vm_gateway.starting",
        address=args.address,
        https_port=boot.https_port,
        admin_port=boot.admin_port,
        domain=boot.domain,
    )
    os.execve(sys.executable, [sys.executable, "-m", "gateway"], env)


if __name__ == "__main__":
    main()
