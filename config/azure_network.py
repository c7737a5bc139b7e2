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
    label = (f"{prefix}-{endpoint}" if prefix else endpoint).lower()
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


def azure_scoring_uri(settings: Settings, endpoint: str) -> str:
    """Where clients score an endpoint served through the Azure load balancer."""
    port = settings.azure_frontend_port
    authority = azure_fqdn(settings, endpoint) + ("" if port == 443 else f":{port}")
    return f"https://{authority}/score"
