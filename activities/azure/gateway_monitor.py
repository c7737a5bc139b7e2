"""The `local` monitor's reading of the gateways' `/stats`, aimed at the gateway VMs on Azure.

With the azure network provider and its gateway scale set, the gateways a gate or the autoscaler
must read are the scale set's VMs, not `TIDEGATE_GATEWAY_ADMIN_URLS`: they are found as the route
pushes find them (one VM list, trusted for `azure_gateway_list_seconds`) and read exactly as the
local provider reads any gateway (`LocalMonitorProvider`, composed), trusting the gateways' CA.
This reader never replaces a VM; the route pushes do.
"""

from __future__ import annotations

import asyncio

from azure.core.credentials_async import AsyncTokenCredential
from temporalio.exceptions import ApplicationError

from activities.azure.credentials import azure_credential
from activities.azure.gateway_tls import admin_client_ssl, ensure_gateway_tls
from activities.azure.gateways import AzureGateways
from activities.local.monitor import LocalMonitorProvider
from config.contract.activities import QueryWindowInput
from config.settings import Settings
from config.stats import WindowStats


class AzureGatewaysMonitor:
    def __init__(self, settings: Settings, *, credential: AsyncTokenCredential | None = None) -> None:
        self._settings = settings
        self._credential = credential
        self._gateways = AzureGateways(settings, credential=self._credential_now, replace_dead=False)
        self._reader: tuple[tuple[str, ...], LocalMonitorProvider] | None = None

    def _credential_now(self) -> AsyncTokenCredential:
        if self._credential is None:
            self._credential = azure_credential(self._settings)
        return self._credential

    async def query_window(self, request: QueryWindowInput) -> WindowStats:
        urls = await self._gateways.admin_urls()
        if not urls:
            raise ApplicationError(
                f"no VM of gateway scale set {self._settings.azure_gateway_scale_set} is running yet",
                type="GatewaysNotReady",
            )
        key = tuple(urls)
        if self._reader is None or self._reader[0] != key:
            tls = await asyncio.to_thread(ensure_gateway_tls, self._settings)
            settings = self._settings.model_copy(update={"gateway_admin_urls": list(urls)})
            self._reader = (key, LocalMonitorProvider(settings, ssl_context=admin_client_ssl(tls.ca_file)))
        return await self._reader[1].query_window(request)

    async def close(self) -> None:
        await self._gateways.close()
