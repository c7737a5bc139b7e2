"""Artifacts: content-addressed copies of a deployment's code and model, and the asset registry
(models, code and environments by name and version).

The façade snapshots before it asks for a deployment (the spec hash is made of the snapshots'
hashes), so this provider is called from control/, not from a workflow: there is no activity.
`local` keeps the copies in the state dir, where the host reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field

ArtifactKind = Literal["code", "models"]
AssetKind = Literal["models", "codes", "environments"]


@dataclass(frozen=True)
class Snapshot:
    content_hash: str
    path: Path  # the copy, as instances see it


class RegisteredModel(BaseModel):
    name: str
    version: str
    path: str
    content_hash: str
    description: str | None = None


class RegisteredAsset(BaseModel):
    """One registered version of a model, a code folder or an environment; never changed once
    written (a new version is a new record). Models are the same records `tidegate model create`
    writes, so an `azureml:name:version` means one thing from the CLI and from the REST API."""

    name: str
    version: str
    path: str | None = Field(default=None, description="the registered copy (models and code)")
    content_hash: str | None = None
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)
    uri: str | None = Field(default=None, description="what the registration named: modelUri / codeUri")
    image: str | None = Field(default=None, description="environments: the base image")
    conda_file: str | None = Field(default=None, description="environments: the conda YAML, as text")
    created_at: datetime | None = None
    created_by: str | None = None


class ArtifactStore(Protocol):
    def snapshot(self, source: Path, kind: ArtifactKind) -> Snapshot:
        """Copy `source` (a file or folder) once per content; the same content, the same copy."""
        ...

    def create_model(
        self, name: str, version: str, source: Path, description: str | None = None
    ) -> RegisteredModel: ...

    def list_models(self, name: str | None = None) -> list[RegisteredModel]: ...

    def show_model(self, name: str, version: str) -> RegisteredModel: ...

    def resolve_model(self, reference: str) -> Path:
        """`azureml:name:version` or `azureml:name@latest` → the registered copy."""
        ...

    def register_asset(self, kind: AssetKind, asset: RegisteredAsset, source: Path | None) -> RegisteredAsset:
        """Write a new version, copying `source` (models, code) into the registry first; Conflict
        when the version exists (of two concurrent writers exactly one wins)."""
        ...

    def show_asset(self, kind: AssetKind, name: str, version: str) -> RegisteredAsset: ...

    def list_assets(self, kind: AssetKind, name: str | None = None) -> list[RegisteredAsset]: ...

    def delete_asset(self, kind: AssetKind, name: str, version: str) -> bool:
        """Forget a version (copies stay: deployments made from it keep their snapshots)."""
        ...


class ModelsAsAssets:
    """The model verbs (`tidegate model create/list/show`) over a store's versioned assets of kind
    `models`: one registry for the CLI and the REST API, whichever the store."""

    def register_asset(self, kind: AssetKind, asset: RegisteredAsset, source: Path | None) -> RegisteredAsset:
        raise NotImplementedError

    def show_asset(self, kind: AssetKind, name: str, version: str) -> RegisteredAsset:
        raise NotImplementedError

    def list_assets(self, kind: AssetKind, name: str | None = None) -> list[RegisteredAsset]:
        raise NotImplementedError

    def create_model(
        self, name: str, version: str, source: Path, description: str | None = None
    ) -> RegisteredModel:
        asset = RegisteredAsset(name=name, version=version, description=description)
        registered = self.register_asset("models", asset, source)
        return RegisteredModel.model_validate(registered.model_dump())

    def list_models(self, name: str | None = None) -> list[RegisteredModel]:
        return [RegisteredModel.model_validate(a.model_dump()) for a in self.list_assets("models", name)]

    def show_model(self, name: str, version: str) -> RegisteredModel:
        return RegisteredModel.model_validate(self.show_asset("models", name, version).model_dump())
