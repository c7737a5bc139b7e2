"""`tidegate model create/list/show`: the model registry, the same answers whichever way a
command goes. Directly, the local artifact store (no Temporal needed); with `--api`, the REST
API's versioned `models` assets, the files sent as an archive through `POST .../uploads`
(control.arm.client.RestTidegate)."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path
from typing import Any

from activities.artifacts import ArtifactStore
from config.contract.errors import BadRequest


class LocalModels:
    """The registry in this machine's artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    async def create_model(
        self, name: str, version: str, path: Path, description: str | None = None
    ) -> dict[str, Any]:
        made = await asyncio.to_thread(self._store.create_model, name, version, path, description)
        return made.model_dump()

    async def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        return [m.model_dump() for m in await asyncio.to_thread(self._store.list_models, name)]

    async def show_model(self, name: str, version: str) -> dict[str, Any]:
        return (await asyncio.to_thread(self._store.show_model, name, version)).model_dump()


def archive(path: Path) -> bytes:
    """A model file or folder as the tar.gz `POST uploads` takes: one top-level item, its name."""
    if not path.exists():
        raise BadRequest(f"--path {path}: no such file or folder")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=path.resolve().name)
    return buffer.getvalue()


def model_view(resource: dict[str, Any]) -> dict[str, Any]:
    """A model version resource as the direct path prints a registered model."""
    props = resource["properties"]
    uri = props.get("modelUri") or ""
    return {
        "name": resource["id"].split("/models/")[1].split("/")[0],
        "version": resource["name"],
        "path": uri.removeprefix("file://"),
        "content_hash": (props.get("properties") or {}).get("tidegate/contentHash"),
        "description": props.get("description"),
    }
