"""`local` artifacts: content-hashed copies of code and models in the state dir (where the host
reads them), and the model registry in `$TIDEGATE_HOME/models`."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from activities.artifacts import ArtifactKind, ArtifactStore, RegisteredModel, Snapshot
from config.contract.errors import BadRequest, Conflict, NotFound
from config.settings import Settings
from config.snapshots import content_hash as content_hash  # re-exported: the stores' hash

# A name or version never starts with '.', so neither can be '..' and leave the registry.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_REGISTERED = re.compile(rf"^azureml:(?P<name>{_PART})(?::(?P<version>{_PART})|@latest)$")
_ASSET_PART = re.compile(_PART)


def check_asset_part(field: str, value: str) -> str:
    """A model name or version as given to `model create`: one folder name in the registry."""
    if len(value) > 255 or not _ASSET_PART.fullmatch(value):
        raise BadRequest(f"{field}: {value!r} must be letters, digits, '_', '.' or '-', not first '.'")
    return value


def links_stay_inside(source: Path) -> None:
    """A symbolic link inside a snapshotted folder must point inside it: otherwise a
    deployment's code could carry a copy of anything its owner can read (the state dir's
    keys, say) to the instance."""
    if not source.is_dir():
        return
    root = source.resolve()
    for item in source.rglob("*"):
        if item.is_symlink() and not item.resolve().is_relative_to(root):
            raise BadRequest(f"{item}: a symbolic link to {item.resolve()}, outside {source}")


def snapshot(source: Path, root: Path) -> tuple[str, Path]:
    """Copy `source` to `root/<hash>/<source.name>` once; return the hash and the copy's path.

    The hash is of the content alone, so two folders holding the same files under different
    names (`code/` here, `src/` there) share a hash folder and each gets its own copy in it."""
    if not source.exists():
        raise BadRequest(f"{source}: does not exist")
    links_stay_inside(source)
    digest = content_hash(source)
    final = root / digest
    copy = final / source.name
    if copy.exists():
        return digest, copy
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    if source.is_file():
        shutil.copy2(source, staging / source.name)
    else:
        shutil.copytree(source, staging / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        if final.exists():
            os.rename(staging / source.name, copy)
        else:
            os.rename(staging, final)
    except OSError:  # another caller made the same snapshot first: same content, keep theirs
        pass
    shutil.rmtree(staging, ignore_errors=True)
    return digest, copy


class LocalArtifactStore:
    """Snapshots under `$TIDEGATE_HOME/artifacts/<kind>/<hash>/`; `tidegate model create` copies
    into `$TIDEGATE_HOME/models`, addressed as `azureml:name:version`."""

    def __init__(self, settings: Settings) -> None:
        self._artifacts = settings.artifacts_dir
        self._root = settings.registry_dir

    def snapshot(self, source: Path, kind: ArtifactKind) -> Snapshot:
        digest, copy = snapshot(source, self._artifacts / kind)
        return Snapshot(content_hash=digest, path=copy)

    def create_model(
        self, name: str, version: str, source: Path, description: str | None = None
    ) -> RegisteredModel:
        meta = self._meta(name, version)
        if meta.exists():
            raise Conflict(f"model {name}:{version} already exists; give a new --version")
        digest, copy = snapshot(source.resolve(), self._root / ".blobs")
        model = RegisteredModel(
            name=name, version=version, path=str(copy), content_hash=digest, description=description
        )
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(model.model_dump_json(indent=2))
        return model

    def list_models(self, name: str | None = None) -> list[RegisteredModel]:
        found = []
        for meta in sorted(self._root.glob("*/*/model.json")):
            model = RegisteredModel.model_validate(json.loads(meta.read_text()))
            if name is None or model.name == name:
                found.append(model)
        return found

    def _meta(self, name: str, version: str) -> Path:
        folder = self._root / check_asset_part("name", name) / check_asset_part("version", version)
        return folder / "model.json"

    def show_model(self, name: str, version: str) -> RegisteredModel:
        meta = self._meta(name, version)
        if not meta.exists():
            raise NotFound(f"model {name}:{version} is not registered (see `tidegate model list`)")
        return RegisteredModel.model_validate(json.loads(meta.read_text()))

    def resolve_model(self, reference: str) -> Path:
        """`azureml:name:version` or `azureml:name@latest` → the registered copy."""
        return Path(resolve_reference(self, reference).path)


def parse_model_reference(reference: str) -> tuple[str, str | None]:
    """`azureml:name:version` → (name, version); `azureml:name@latest` → (name, None)."""
    match = _REGISTERED.match(reference)
    if match is None:
        raise BadRequest(f"model: '{reference}' is neither a path nor azureml:<name>:<version>")
    return match["name"], match["version"]


def resolve_reference(store: ArtifactStore, reference: str) -> RegisteredModel:
    """The registered model a reference names, `@latest` being the highest version; the same
    rule for every provider's registry."""
    name, version = parse_model_reference(reference)
    if version is None:
        versions = store.list_models(name)
        if not versions:
            raise NotFound(f"model {name} is not registered (see `tidegate model list`)")
        return max(versions, key=lambda m: _version_key(m.version))
    return store.show_model(name, version)


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))
