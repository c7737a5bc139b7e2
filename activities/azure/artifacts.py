"""`azure` artifacts: content-hashed snapshots and the model registry in one Blob container.

Layout of the container:
- `snapshots/<kind>/<hash>.tar.gz`: a snapshot, its metadata naming the hash and the source's
  name; written once (`If-None-Match: *`), so the same content is never uploaded twice.
- `registry/<name>/<version>/model.json`: a registered model, written once the same way, so of
  two registrations of one version exactly one wins.

An instance (a VM) gets a read-only SAS URL for each snapshot it needs in its custom data
(activities/azure/snapshot_sas.py signs them) and calls `fetch_snapshot` from its bootstrap; it
holds no storage credential of its own.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

import structlog
from azure.core.credentials import AzureNamedKeyCredential, TokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
)

from activities.artifacts import (
    ArtifactKind,
    AssetKind,
    ModelsAsAssets,
    RegisteredAsset,
    Snapshot,
)
from activities.local.artifacts import (
    KIND_ROOTS,
    RECORD_FILES,
    SINGULAR,
    check_asset_part,
    content_hash,
    links_stay_inside,
    resolve_reference,
    stamped,
)
from config.contract.errors import BadRequest, Conflict, NotFound, OperationFailed
from config.settings import Settings
from config.snapshots import SnapshotFetchError as SnapshotFetchError  # re-exported
from config.snapshots import fetch_snapshot as fetch_snapshot  # re-exported: what a VM calls

log = structlog.get_logger("activities.azure.artifacts")

_SNAPSHOTS = "snapshots"
_REGISTRY = "registry"


def snapshot_blob_name(kind: ArtifactKind, digest: str) -> str:
    return f"{_SNAPSHOTS}/{kind}/{digest}.tar.gz"


def _kind_prefix(kind: AssetKind) -> str:
    return f"{_REGISTRY}/{KIND_ROOTS[kind]}/" if KIND_ROOTS[kind] else f"{_REGISTRY}/"


def _record_blob_name(name: str, version: str, kind: AssetKind = "models") -> str:
    name, version = check_asset_part("name", name), check_asset_part("version", version)
    return f"{_kind_prefix(kind)}{name}/{version}/{RECORD_FILES[kind]}"


def _pack(source: Path, out: IO[bytes]) -> None:
    """A gzipped tar of `source` under its own name. Links are followed (they stay inside, checked
    before), as the local store's copy follows them; `__pycache__` is left out, as in the hash."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in PurePosixPath(info.name).parts:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        tar.dereference = True
        tar.add(source, arcname=source.name, filter=keep)


class BlobArtifactStore(ModelsAsAssets):
    """Snapshots and the registry in `settings.azure_storage_container`; instances see a snapshot at
    `<azure_instance_artifacts_dir>/<kind>/<hash>/<name>`, where their bootstrap unpacks it."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        *,
        instance_root: str = "/var/lib/tidegate/artifacts",
    ) -> None:
        self._service = service
        self._container: ContainerClient = service.get_container_client(container)
        self._instance_root = PurePosixPath(instance_root)
        self._container_ready = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: TokenCredential | None = None
    ) -> BlobArtifactStore:
        """An account key when one is set (Azurite), else the identity azure-identity finds."""
        url = settings.azure_storage_account_url
        if not url:
            raise BadRequest(
                "TIDEGATE_AZURE_STORAGE_ACCOUNT_URL is required for the azure artifacts provider"
            )
        key = (
            settings.azure_storage_account_key.get_secret_value()
            if settings.azure_storage_account_key
            else None
        )
        auth: Any
        if key is not None:
            account = BlobServiceClient(url).account_name
            if not account:
                raise BadRequest(f"TIDEGATE_AZURE_STORAGE_ACCOUNT_URL={url}: names no storage account")
            auth = AzureNamedKeyCredential(account, key)
        elif credential is not None:
            auth = credential
        else:
            from azure.identity import DefaultAzureCredential

            auth = DefaultAzureCredential()
        service = BlobServiceClient(url, credential=auth)
        return cls(
            service,
            settings.azure_storage_container,
            instance_root=settings.azure_instance_artifacts_dir,
        )

    def _ensure_container(self) -> None:
        if self._container_ready:
            return
        try:
            self._container.create_container()
            log.info("artifacts.container_created", container=self._container.container_name)
        except ResourceExistsError:
            pass
        self._container_ready = True

    def _instance_path(self, kind: ArtifactKind, digest: str, name: str) -> Path:
        return Path(self._instance_root / kind / digest / name)

    def snapshot(self, source: Path, kind: ArtifactKind) -> Snapshot:
        """Upload `source` once per content: an existing blob of that hash means no upload."""
        if not source.exists():
            raise BadRequest(f"{source}: does not exist")
        links_stay_inside(source)
        digest = content_hash(source)
        blob = self._container.get_blob_client(snapshot_blob_name(kind, digest))
        self._ensure_container()
        try:
            meta = blob.get_blob_properties().metadata
        except ResourceNotFoundError:
            meta = None
        if meta is not None:
            if meta.get("content_hash") != digest:
                raise OperationFailed(f"{blob.blob_name}: holds content hashed {meta.get('content_hash')!r}")
            log.info("artifacts.snapshot_present", kind=kind, content_hash=digest)
            return Snapshot(content_hash=digest, path=self._instance_path(kind, digest, meta["name"]))
        with tempfile.TemporaryFile() as packed:
            _pack(source, packed)
            size = packed.tell()
            packed.seek(0)
            try:
                # If-None-Match: * — of two callers uploading the same content, one writes.
                blob.upload_blob(
                    packed,
                    length=size,
                    overwrite=False,
                    metadata={"content_hash": digest, "kind": kind, "name": source.name},
                )
                log.info("artifacts.snapshot_uploaded", kind=kind, content_hash=digest, bytes=size)
            except ResourceExistsError:
                log.info("artifacts.snapshot_raced", kind=kind, content_hash=digest)
        return Snapshot(content_hash=digest, path=self._instance_path(kind, digest, source.name))

    def register_asset(self, kind: AssetKind, asset: RegisteredAsset, source: Path | None) -> RegisteredAsset:
        record = self._container.get_blob_client(_record_blob_name(asset.name, asset.version, kind))
        self._ensure_container()
        exists = Conflict(
            f"{SINGULAR[kind]} {asset.name}:{asset.version} already exists; give a new --version"
        )
        if record.exists():
            raise exists
        asset = stamped(asset)
        if source is not None:
            copy = self.snapshot(source.resolve(), "code" if kind == "codes" else "models")
            asset = asset.model_copy(update={"path": str(copy.path), "content_hash": copy.content_hash})
        try:
            # The conditional write is the real check: the `exists` above only saves an upload.
            body = asset.model_dump_json(indent=2, exclude_none=True).encode()
            record.upload_blob(body, overwrite=False)
        except ResourceExistsError:
            raise exists from None
        log.info(
            "artifacts.asset_registered",
            kind=kind,
            name=asset.name,
            version=asset.version,
            content_hash=asset.content_hash,
        )
        return asset

    def list_assets(self, kind: AssetKind, name: str | None = None) -> list[RegisteredAsset]:
        prefix = _kind_prefix(kind) + (f"{check_asset_part('name', name)}/" if name else "")
        found = []
        try:
            names = sorted(b.name for b in self._container.list_blobs(name_starts_with=prefix))
        except ResourceNotFoundError:  # no container yet: nothing registered
            return []
        depth = prefix.count("/") + (1 if name else 2)  # <name>/<version>/<record>
        for blob_name in names:
            if blob_name.endswith("/" + RECORD_FILES[kind]) and blob_name.count("/") == depth:
                data = self._container.get_blob_client(blob_name).download_blob().readall()
                found.append(RegisteredAsset.model_validate(json.loads(data)))
        return found

    def show_asset(self, kind: AssetKind, name: str, version: str) -> RegisteredAsset:
        record = self._container.get_blob_client(_record_blob_name(name, version, kind))
        try:
            data = record.download_blob().readall()
        except ResourceNotFoundError:
            hint = " (see `tidegate model list`)" if kind == "models" else ""
            raise NotFound(f"{SINGULAR[kind]} {name}:{version} is not registered{hint}") from None
        return RegisteredAsset.model_validate(json.loads(data))

    def delete_asset(self, kind: AssetKind, name: str, version: str) -> bool:
        record = self._container.get_blob_client(_record_blob_name(name, version, kind))
        try:
            record.delete_blob()
        except ResourceNotFoundError:
            return False
        return True

    def resolve_model(self, reference: str) -> Path:
        """`azureml:name:version` or `azureml:name@latest` → where an instance sees the model."""
        return Path(str(resolve_reference(self, reference).path))
