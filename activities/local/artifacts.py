"""`local` artifacts: content-hashed copies of code and models in the state dir (where the host
reads them), and the model registry in `$TIDEGATE_HOME/models`."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from activities.artifacts import (
    ArtifactKind,
    ArtifactStore,
    AssetKind,
    ModelsAsAssets,
    RegisteredAsset,
    Snapshot,
)
from config.contract.errors import BadRequest, Conflict, NotFound
from config.settings import Settings
from config.snapshots import content_hash as content_hash  # re-exported: the stores' hash

# A name or version never starts with '.', so neither can be '..' and leave the registry.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_REGISTERED = re.compile(rf"^azureml:(?P<name>{_PART})(?::(?P<version>{_PART})|@latest)$")
_ASSET_PART = re.compile(_PART)
# One record file per version; code and environments under folders no asset name can have.
RECORD_FILES: dict[AssetKind, str] = {
    "models": "model.json",
    "codes": "code.json",
    "environments": "environment.json",
}
KIND_ROOTS: dict[AssetKind, str] = {"models": "", "codes": ".codes", "environments": ".environments"}
SINGULAR: dict[AssetKind, str] = {"models": "model", "codes": "code", "environments": "environment"}
_HINTS: dict[AssetKind, str] = {
    "models": " (see `tidegate model list`)",
    "codes": " (GET .../codes/<name>/versions)",
    "environments": " (GET .../environments/<name>/versions)",
}


def who_registers() -> str:
    """The OS user who runs the registering process (systemData.createdBy for the CLI)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


def stamped(asset: RegisteredAsset) -> RegisteredAsset:
    """The record with its creation time and creator filled in where the caller left them out."""
    return asset.model_copy(
        update={
            "created_at": asset.created_at or datetime.now(UTC),
            "created_by": asset.created_by or who_registers(),
        }
    )


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


class LocalArtifactStore(ModelsAsAssets):
    """Snapshots under `$TIDEGATE_HOME/artifacts/<kind>/<hash>/`; `tidegate model create` copies
    into `$TIDEGATE_HOME/models`, addressed as `azureml:name:version`."""

    def __init__(self, settings: Settings) -> None:
        self._artifacts = settings.artifacts_dir
        self._root = settings.registry_dir

    def snapshot(self, source: Path, kind: ArtifactKind) -> Snapshot:
        digest, copy = snapshot(source, self._artifacts / kind)
        return Snapshot(content_hash=digest, path=copy)

    def _record(self, kind: AssetKind, name: str, version: str) -> Path:
        folder = self._root / KIND_ROOTS[kind] / check_asset_part("name", name)
        return folder / check_asset_part("version", version) / RECORD_FILES[kind]

    def register_asset(self, kind: AssetKind, asset: RegisteredAsset, source: Path | None) -> RegisteredAsset:
        record = self._record(kind, asset.name, asset.version)
        if record.exists():  # saves a copy; the exclusive link below is the real check
            raise _exists(kind, asset)
        asset = stamped(asset)
        if source is not None:
            digest, copy = snapshot(source.resolve(), self._root / ".blobs")
            asset = asset.model_copy(update={"path": str(copy), "content_hash": digest})
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=record.parent, prefix=".staging-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(asset.model_dump_json(indent=2, exclude_none=True))
            os.link(staging, record)  # fails if the version exists: of two writers, one wins
        except FileExistsError:
            raise _exists(kind, asset) from None
        finally:
            os.unlink(staging)
        return asset

    def show_asset(self, kind: AssetKind, name: str, version: str) -> RegisteredAsset:
        record = self._record(kind, name, version)
        if not record.exists():
            raise NotFound(f"{SINGULAR[kind]} {name}:{version} is not registered{_HINTS[kind]}")
        return RegisteredAsset.model_validate(json.loads(record.read_text()))

    def list_assets(self, kind: AssetKind, name: str | None = None) -> list[RegisteredAsset]:
        root = self._root / KIND_ROOTS[kind]
        pattern = (
            f"{check_asset_part('name', name)}/*/{RECORD_FILES[kind]}"
            if name
            else f"*/*/{RECORD_FILES[kind]}"
        )
        found = [RegisteredAsset.model_validate(json.loads(p.read_text())) for p in root.glob(pattern)]
        return sorted(found, key=lambda a: (a.name, version_key(a.version), a.version))

    def delete_asset(self, kind: AssetKind, name: str, version: str) -> bool:
        record = self._record(kind, name, version)
        try:
            record.unlink()
        except FileNotFoundError:
            return False
        return True

    def resolve_model(self, reference: str) -> Path:
        """`azureml:name:version` or `azureml:name@latest` → the registered copy."""
        return Path(str(resolve_reference(self, reference).path))


def _exists(kind: AssetKind, asset: RegisteredAsset) -> Conflict:
    return Conflict(f"{SINGULAR[kind]} {asset.name}:{asset.version} already exists; give a new --version")


def parse_model_reference(reference: str, kind: AssetKind = "models") -> tuple[str, str | None]:
    """`azureml:name:version` → (name, version); `azureml:name@latest` → (name, None)."""
    match = _REGISTERED.match(reference)
    if match is None:
        raise BadRequest(f"{SINGULAR[kind]}: '{reference}' is neither a path nor azureml:<name>:<version>")
    return match["name"], match["version"]


def resolve_reference(store: ArtifactStore, reference: str, kind: AssetKind = "models") -> RegisteredAsset:
    """The registered version a reference names, `@latest` being the highest version; the same
    rule for every provider's registry."""
    name, version = parse_model_reference(reference, kind)
    if version is None:
        versions = store.list_assets(kind, name)
        if not versions:
            raise NotFound(f"{SINGULAR[kind]} {name} is not registered{_HINTS[kind]}")
        return max(versions, key=lambda m: version_key(m.version))
    return store.show_asset(kind, name, version)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))
