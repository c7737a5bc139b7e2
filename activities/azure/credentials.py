"""The credential every Azure SDK client of the azure provider uses.

`DefaultAzureCredential` (managed identity on a VM, environment, CLI login on a laptop) unless
`TIDEGATE_AZURE_ACCESS_TOKEN` gives an ARM bearer token outright (`az account get-access-token
--query accessToken -o tsv` in a CI job; the fake ARM's token in tests): it is used until it
expires and never refreshed, so it suits short jobs only.
"""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.credentials_async import AsyncTokenCredential

from config.settings import Settings

GIVEN_TOKEN_HINT_SECONDS = 3600  # its real expiry is unknown here; ARM says 401 once it is over


class GivenTokenCredential:
    """An async azure-core credential handing out one bearer token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _expires(self) -> int:
        return int(time.time()) + GIVEN_TOKEN_HINT_SECONDS

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, self._expires())

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, self._expires())

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> GivenTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:  # never the token
        return "GivenTokenCredential(<hidden>)"


def azure_credential(settings: Settings) -> AsyncTokenCredential:
    """The settings' credential, made now (the caller closes it)."""
    if settings.azure_access_token is not None:
        return GivenTokenCredential(settings.azure_access_token.get_secret_value())
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()
