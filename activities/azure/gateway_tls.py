"""TLS for the gateway VMs, made by the worker: a Tidegate CA of their own and one certificate.

The CA lives in the worker's state dir (`$TIDEGATE_HOME/azure-gateways/tls/`), made once with the
local CA's own code (config/tls.py) for the region's zone `<region>.cloudapp.azure.com`: it is
name-constrained to that zone (plus localhost and 127/8), so trusting it vouches for nothing
else. Its certificate names `*.<region>.cloudapp.azure.com`, every endpoint's DNS label. The
gateway VMs get the certificate and its key in their custom data, never the CA's key.

The data plane serves TIDEGATE_AZURE_GATEWAY_TLS_CERT/_KEY instead when they are set (a
certificate clients already trust); the admin API always serves the worker's, and the worker
trusts only that CA for it, without a host-name check (VMs' private addresses are not known
when the certificate is made; a certificate of this CA is what makes a gateway).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from config.azure_network import AZURE_DNS_ZONE
from config.settings import Settings
from config.tls import ensure_tls

GATEWAYS_HOME = "azure-gateways"


@dataclass(frozen=True)
class GatewayTls:
    ca_file: Path
    data_cert_pem: str
    data_key_pem: str
    admin_cert_pem: str
    admin_key_pem: str

    def __repr__(self) -> str:  # keys never in a log or an error
        return f"GatewayTls(ca_file={self.ca_file!s})"


def gateway_zone(settings: Settings) -> str:
    if not settings.azure_location:
        raise ValueError("TIDEGATE_AZURE_LOCATION is required for the gateways' certificate")
    return f"{settings.azure_location.lower()}.{AZURE_DNS_ZONE}"


def ensure_gateway_tls(settings: Settings) -> GatewayTls:
    """The gateways' CA and certificate (made on first use, kept and renewed like the local
    CA's), and the data plane's certificate from settings if given. Blocking file I/O."""
    own = settings.model_copy(
        update={"home": settings.home / GATEWAYS_HOME, "domain": gateway_zone(settings)}
    )
    material = ensure_tls(own)
    admin_cert, admin_key = material.cert.read_text(), material.key.read_text()
    given_cert, given_key = settings.azure_gateway_tls_cert, settings.azure_gateway_tls_key
    if (given_cert is None) != (given_key is None):
        raise ValueError("TIDEGATE_AZURE_GATEWAY_TLS_CERT and TIDEGATE_AZURE_GATEWAY_TLS_KEY go together")
    if given_cert is not None and given_key is not None:
        data_cert, data_key = given_cert.read_text(), given_key.read_text()
    else:
        data_cert, data_key = admin_cert, admin_key
    return GatewayTls(
        ca_file=material.ca_cert,
        data_cert_pem=data_cert,
        data_key_pem=data_key,
        admin_cert_pem=admin_cert,
        admin_key_pem=admin_key,
    )


def admin_client_ssl(ca_file: Path) -> ssl.SSLContext:
    """What the worker trusts for a gateway VM's admin API: the gateways' CA only."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # addresses are the VMs'; the chain to this CA is checked
    return context
