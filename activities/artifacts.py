"""Artifacts: content-addressed copies of a deployment's code and model, and the model registry.

The façade snapshots before it asks for a deployment (the spec hash is made of the snapshots'
hashes), so this provider is called from control/, not from a workflow: there is no activity.
`local` keeps the copies in the state dir, where the host reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

ArtifactKind = Literal["code", "models"]


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
