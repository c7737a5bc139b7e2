"""An endpoint's address on Azure, decided from settings alone: the DNS label its public IP
carries and the scoring URI that label gives (`<label>.<region>.cloudapp.azure.com`)."""

from __future__ import annotations

import re

from config.settings import Settings

# Azure's rule for a public IP's domainNameLabel.
_LABEL = re.compile(r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$")
AZURE_DNS_ZONE = "cloudapp.azure.com"


class InvalidDnsLabel(ValueError):
    """The prefix and the endpoint name make no label Azure accepts."""


def dns_label(settings: Settings, endpoint: str) -> str:
    """`<prefix>-<endpoint>` in lower case (Azure's labels are), or the endpoint alone."""
    prefix = settings.azure_dns_label_prefix
    return (f"{prefix}-{endpoint}" if prefix else endpoint).lower()


def checked_dns_label(settings: Settings, endpoint: str) -> str:
    """The label, refused before any call if Azure would refuse it."""
    label = dns_label(settings, endpoint)
    if not _LABEL.match(label):
        raise InvalidDnsLabel(
            f"DNS label {label!r} (TIDEGATE_AZURE_DNS_LABEL_PREFIX and the endpoint name): Azure "
            "takes 3-63 lower-case letters, digits and '-', a letter first, no '-' last"
        )
    return label


def azure_fqdn(settings: Settings, endpoint: str) -> str:
    """The name Azure's DNS gives the endpoint's public IP."""
    if not settings.azure_location:
        raise ValueError("TIDEGATE_AZURE_LOCATION is required for an endpoint's Azure address")
    return f"{dns_label(settings, endpoint)}.{settings.azure_location.lower()}.{AZURE_DNS_ZONE}"


def azure_endpoint_url(settings: Settings, endpoint: str, path: str) -> str:
    """`https://<label>.<region>.cloudapp.azure.com/...`. The gateway tells the endpoint from
    the host only when the host is `<endpoint>.<domain>`: a label with no prefix and the
    region's zone as TIDEGATE_DOMAIN. Otherwise the path names it (`/endpoints/<endpoint>`),
    which the gateway routes on any host."""
    port = settings.azure_frontend_port
    fqdn = azure_fqdn(settings, endpoint)
    authority = fqdn + ("" if port == 443 else f":{port}")
    if fqdn == f"{endpoint.lower()}.{settings.domain.lower()}":
        return f"https://{authority}{path}"
    return f"https://{authority}/endpoints/{endpoint}{path}"


def azure_scoring_uri(settings: Settings, endpoint: str) -> str:
    """Where clients score an endpoint served through the Azure load balancer."""
    return azure_endpoint_url(settings, endpoint, "/score")
