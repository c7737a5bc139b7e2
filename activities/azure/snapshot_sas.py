"""Read-only SAS URLs for the snapshots a deployment's VMs fetch, signed by the worker for the
`azure` compute provider's custom data.

One URL per snapshot blob (`snapshots/<kind>/<hash>.tar.gz`), read permission only: a VM, and the
user's code running on it, can read its own deployment's code and model and nothing else in the
container (a container-wide SAS would hand every deployment's models to every other one). Signed
with the storage account key when one is set (Azurite, accounts without Entra ID), else with a user
delegation key of the worker's identity; the key itself never leaves the worker, and what is
logged is the blob and the expiry, never a URL.

The validity window is `decisions.snapshot_urls.sas_window`: the same within a half-life, so a
repeat PUT of the scale set is no change, and always more than half a lifetime left when a PUT
carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, get_args

import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas
from azure.storage.blob import BlobServiceClient as SyncBlobServiceClient
from azure.storage.blob.aio import BlobServiceClient
from temporalio.exceptions import ApplicationError

from activities.artifacts import ArtifactKind
from activities.azure.artifacts import snapshot_blob_name
from config.host_api import DeploymentRuntime
from config.settings import Settings
from decisions.snapshot_urls import SasWindow, sas_window

log = structlog.get_logger("activities.azure.snapshot_sas")

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class SnapshotRef:
    """One snapshot blob: what its instance path names."""

    kind: ArtifactKind
    content_hash: str


def snapshot_ref(path: str, instance_root: str) -> SnapshotRef | None:
    """The blob an instance path names: `<root>/<kind>/<hash>[/<name>]`, as BlobArtifactStore hands
    paths out. None for anything else (a local store's snapshot: a local demo on the fake)."""
    try:
        parts = PurePosixPath(path).relative_to(PurePosixPath(instance_root)).parts
    except ValueError:
        return None
    if len(parts) not in (2, 3) or parts[0] not in get_args(ArtifactKind):
        return None
    kind, digest = parts[0], parts[1]
    if not digest.isalnum():
        return None
    return SnapshotRef(kind=kind, content_hash=digest)  # type: ignore[arg-type]  # checked above


class SnapshotSigner:
    """Signs snapshot URLs for the container the artifacts provider writes to."""

    def __init__(
        self,
        account_url: str,
        container: str,
        *,
        ttl: timedelta,
        instance_root: str,
        account_key: str | None = None,
        credential: AsyncTokenCredential | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        if account_key is None and credential is None:
            raise ValueError("a snapshot signer needs the account key or a credential")
        self._account_url = account_url.rstrip("/")
        self._container = container
        self._ttl = ttl
        self._instance_root = instance_root
        self._account_key = account_key  # never logged
        self._credential = credential
        self._client_options = client_options or {}
        self._service: BlobServiceClient | None = None
        # One delegation key per window: the same window signs the same URLs while this lives.
        self._delegation_keys: dict[SasWindow, UserDelegationKey] = {}
        self._owns_credential = False
        self._account = SyncBlobServiceClient(self._account_url).account_name or ""
        if not self._account:
            raise ValueError(f"{account_url}: names no storage account")

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: AsyncTokenCredential | None = None
    ) -> SnapshotSigner | None:
        """None without a storage account: then VMs get file URLs, which only the fake's can read."""
        if not settings.azure_storage_account_url:
            return None
        key = settings.azure_storage_account_key
        owned = key is None and credential is None
        if owned:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        options = {"connection_verify": str(settings.azure_ca_file)} if settings.azure_ca_file else {}
        signer = cls(
            settings.azure_storage_account_url,
            settings.azure_storage_container,
            ttl=timedelta(seconds=settings.azure_snapshot_url_ttl_seconds),
            instance_root=settings.azure_instance_artifacts_dir,
            account_key=key.get_secret_value() if key is not None else None,
            credential=credential,
            client_options=options,
        )
        signer._owns_credential = owned
        return signer

    @property
    def signs_with(self) -> str:
        return "account_key" if self._account_key is not None else "user_delegation_key"

    async def url(self, ref: SnapshotRef, now: datetime) -> str:
        """A read-only URL for one snapshot blob, for the window `now` falls in."""
        window = sas_window(now, self._ttl)
        blob = snapshot_blob_name(ref.kind, ref.content_hash)
        secret: dict[str, Any]
        if self._account_key is not None:
            secret = {"account_key": self._account_key}
        else:
            secret = {"user_delegation_key": await self._delegation_key(window)}
        sas = generate_blob_sas(
            account_name=self._account,
            container_name=self._container,
            blob_name=blob,
            permission=BlobSasPermissions(read=True),
            start=window.start,
            expiry=window.expiry,
            protocol=None if self._account_url.startswith("http://") else "https",
            **secret,
        )
        return f"{self._account_url}/{self._container}/{blob}?{sas}"

    async def signed_runtime(self, runtime: DeploymentRuntime, now: datetime) -> DeploymentRuntime:
        """The runtime with each blob snapshot's path replaced by its URL; other paths stay."""
        update: dict[str, str] = {}
        for field in ("code_dir", "model_dir"):
            path = getattr(runtime, field)
            ref = snapshot_ref(path, self._instance_root) if path else None
            if ref is None:
                continue
            update[field] = await self.url(ref, now)
            window = sas_window(now, self._ttl)
            log.info(
                "azure.snapshot_url.signed",
                endpoint=runtime.endpoint,
                deployment=runtime.deployment,
                kind=ref.kind,
                content_hash=ref.content_hash,
                expires=window.expiry.isoformat(),
                renew_at=window.renew_at.isoformat(),
                signed_with=self.signs_with,
            )
        return runtime.model_copy(update=update)

    async def _delegation_key(self, window: SasWindow) -> UserDelegationKey:
        known = self._delegation_keys.get(window)
        if known is not None:
            return known
        if self._service is None:
            self._service = BlobServiceClient(
                self._account_url, credential=self._credential, **self._client_options
            )
        try:
            key = await self._service.get_user_delegation_key(
                key_start_time=window.start, key_expiry_time=window.expiry
            )
        except HttpResponseError as error:
            # Azure's message names the account and the reason, never a key.
            raise ApplicationError(
                f"cannot sign snapshot URLs: the storage account refused a user delegation key "
                f"({error.status_code} {error.reason}); the worker's identity needs 'Storage Blob Data "
                "Reader' (or Contributor) on the account, which includes asking for one",
                type="SnapshotSigningFailed",
                non_retryable=error.status_code in (401, 403),
            ) from None
        self._delegation_keys = {w: k for w, k in self._delegation_keys.items() if w.expiry > window.start}
        self._delegation_keys[window] = key
        return key

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
            self._service = None
        if self._owns_credential and self._credential is not None:
            await self._credential.close()
            self._credential = None


def utc_now() -> datetime:
    return datetime.now(UTC)
