"""Versioned assets under the workspace (``models``, ``codes``, ``environments``: names, and
versions under them) and the upload route that gives a model or code version its files.

A version is immutable: a second PUT of the same body answers as the first did (200), any other
body is a 409 naming what would change. Registrations land in the artifact store the CLI's
`tidegate model create` writes, so `azureml:name:version` means the same asset either way.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

import structlog
import yaml
from aiohttp import web

from activities.artifacts import ArtifactStore, AssetKind, RegisteredAsset
from activities.local.artifacts import check_asset_part, content_hash, version_key
from config.contract.errors import BadRequest, Conflict, NotFound
from config.requirements import conda_pip_problems
from control.arm.assets import (
    API_PRINCIPAL,
    URI_FIELDS,
    ArmAssetVersion,
    container_resource,
    differences,
    requested_asset,
    version_resource,
)
from control.arm.resources import ArmValidationError, FieldProblem, read_model
from control.arm.routes import STATE, ArmError, _body, _json, _page, _workspace, arm
from control.uploads import UploadRefused, is_upload_uri, resolve_upload, unpack

log = structlog.get_logger("control.arm.assets")

_CHUNK = 1024 * 1024


def _kind(request: web.Request) -> AssetKind:
    return cast(AssetKind, request.match_info["kind"])


def _part(request: web.Request, key: str) -> str:
    try:
        return check_asset_part(key, request.match_info[key])
    except BadRequest as err:
        raise ArmError(400, "ValidationError", str(err), key) from None


def _store(request: web.Request) -> ArtifactStore:
    return request.app[STATE].artifacts()


async def _versions(store: ArtifactStore, kind: AssetKind, name: str | None) -> list[RegisteredAsset]:
    found = await asyncio.to_thread(store.list_assets, kind, name)
    return sorted(found, key=lambda a: (a.name, version_key(a.version), a.version))


# ---- names -------------------------------------------------------------------------------------
@arm
async def list_containers(request: web.Request) -> web.Response:
    kind, ws = _kind(request), _workspace(request)
    by_name: dict[str, list[RegisteredAsset]] = {}
    for asset in await _versions(_store(request), kind, None):
        by_name.setdefault(asset.name, []).append(asset)
    views = [container_resource(kind, name, versions, ws) for name, versions in sorted(by_name.items())]
    return _json(_page(request, views))


@arm
async def get_container(request: web.Request) -> web.Response:
    kind, name = _kind(request), _part(request, "name")
    versions = await _versions(_store(request), kind, name)
    if not versions:
        raise NotFound(f"{kind} {name} has no versions")
    return _json(container_resource(kind, name, versions, _workspace(request)))


@arm
async def delete_container(request: web.Request) -> web.Response:
    """Every version of a name (ARM's container DELETE); deployments keep their own copies."""
    kind, name = _kind(request), _part(request, "name")
    store = _store(request)
    versions = await _versions(store, kind, name)
    for asset in versions:
        await asyncio.to_thread(store.delete_asset, kind, name, asset.version)
    log.info("arm.asset_container_deleted", kind=kind, name=name, versions=len(versions))
    return web.Response(status=200 if versions else 204)


# ---- versions ----------------------------------------------------------------------------------
@arm
async def list_versions(request: web.Request) -> web.Response:
    kind, name = _kind(request), _part(request, "name")
    ws = _workspace(request)
    versions = await _versions(_store(request), kind, name)
    newest_first = list(reversed(versions))  # as Azure lists them
    return _json(_page(request, [version_resource(kind, v, ws) for v in newest_first]))


@arm
async def get_version(request: web.Request) -> web.Response:
    kind, name, version = _kind(request), _part(request, "name"), _part(request, "version")
    store = _store(request)
    asset = await asyncio.to_thread(store.show_asset, kind, name, version)
    return _json(version_resource(kind, asset, _workspace(request)))


def _source(request: web.Request, kind: AssetKind, uri: str) -> Path:
    """The files a modelUri / codeUri names: an upload of this API, or a path on its machine."""
    target = f"properties.{URI_FIELDS[kind]}"
    if is_upload_uri(uri):
        try:
            return resolve_upload(uri, request.app[STATE].settings.uploads_dir, target=target)
        except UploadRefused as err:
            raise ArmValidationError([FieldProblem(err.target, str(err))]) from None
    if uri.startswith("file:") or uri.startswith("/"):
        path = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri)
        if not (path.is_absolute() and path.exists()):
            raise ArmValidationError([FieldProblem(target, f"{uri!r}: nothing there on the API's machine")])
        _outside_the_state_dir(request, path, target)
        return path
    raise ArmValidationError(
        [
            FieldProblem(
                target,
                f"{uri!r}: give the uri an upload answered (POST .../uploads) or an absolute path "
                "on the API's machine (file:///...); datastore and https URIs are not fetched",
            )
        ]
    )


def _outside_the_state_dir(request: web.Request, path: Path, target: str) -> None:
    """Tidegate's own files (keys, the control credential, TLS material) never become an asset
    that a deployment would copy to its instances; its registry and snapshots may."""
    settings = request.app[STATE].settings
    resolved, home = path.resolve(), settings.home.resolve()
    allowed = (settings.registry_dir, settings.artifacts_dir, settings.uploads_dir)
    if resolved.is_relative_to(home) and not any(resolved.is_relative_to(a.resolve()) for a in allowed):
        raise ArmValidationError(
            [
                FieldProblem(
                    target, "a path in Tidegate's state dir (only its registry and uploads may be named)"
                )
            ]
        )


def _check_conda(asset: RegisteredAsset, *, allow_pip_options: bool) -> None:
    """A conda file is YAML and installs from the package index only (as a deployment's own
    conda file must be), so a version that could never serve is refused when it is registered."""
    if asset.conda_file is None:
        return
    try:
        parsed = yaml.safe_load(asset.conda_file)
    except (yaml.YAMLError, RecursionError) as err:  # RecursionError: nesting deeper than the stack
        raise ArmValidationError([FieldProblem("properties.condaFile", f"not YAML: {err}")]) from None
    if not isinstance(parsed, dict):
        raise ArmValidationError(
            [FieldProblem("properties.condaFile", "must be a YAML mapping (a conda file)")]
        )
    problems = [] if allow_pip_options else conda_pip_problems(asset.conda_file, source="condaFile")
    if problems:
        raise ArmValidationError([FieldProblem("properties.condaFile", "; ".join(problems))])


@arm
async def put_version(request: web.Request) -> web.Response:
    kind, name, version = _kind(request), _part(request, "name"), _part(request, "version")
    requested = requested_asset(kind, name, version, read_model(ArmAssetVersion, await _body(request)))
    _check_conda(requested, allow_pip_options=request.app[STATE].settings.allow_pip_options)
    source = _source(request, kind, requested.uri) if requested.uri is not None else None
    store = _store(request)
    ws = _workspace(request)
    try:
        asset = await asyncio.to_thread(
            store.register_asset, kind, requested.model_copy(update={"created_by": API_PRINCIPAL}), source
        )
    except Conflict:
        existing = await asyncio.to_thread(store.show_asset, kind, name, version)
        digest = await asyncio.to_thread(content_hash, source) if source is not None else None
        changed = differences(existing, requested, digest)
        if changed:
            raise ArmError(
                409,
                "Conflict",
                f"{kind} {name} version {version} exists and versions do not change "
                f"(this body differs in {', '.join(changed)}); PUT a new version",
                "properties",
            ) from None
        return _json(version_resource(kind, existing, ws))
    log.info("arm.asset_registered", kind=kind, name=name, version=version, content_hash=asset.content_hash)
    return _json(version_resource(kind, asset, ws), status=201)


@arm
async def delete_version(request: web.Request) -> web.Response:
    kind, name, version = _kind(request), _part(request, "name"), _part(request, "version")
    store = _store(request)
    deleted = await asyncio.to_thread(store.delete_asset, kind, name, version)
    log.info("arm.asset_deleted", kind=kind, name=name, version=version, existed=deleted)
    return web.Response(status=200 if deleted else 204)


# ---- uploads -----------------------------------------------------------------------------------
@arm
async def upload(request: web.Request) -> web.Response:
    """An archive's bytes (tar, tar.gz or zip) in the body: unpacked, content-hashed, and named by
    a URI for a model version's modelUri or a code version's codeUri."""
    settings = request.app[STATE].settings
    limit = settings.api_upload_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    root = settings.uploads_dir
    root.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=root, prefix=".incoming-")
    archive = Path(name)
    try:
        received = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.content.iter_chunked(_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise _too_large(limit)
                await asyncio.to_thread(out.write, chunk)
        if received == 0:
            raise ArmError(400, "BadRequest", "the body is empty: send a tar, tar.gz or zip archive", "body")
        try:
            done = await asyncio.to_thread(unpack, archive, root, max_bytes=limit)
        except UploadRefused as err:
            status, code = (413, "PayloadTooLarge") if err.too_large else (400, "BadRequest")
            raise ArmError(status, code, str(err), err.target) from None
    finally:
        archive.unlink(missing_ok=True)
    log.info("arm.upload_received", content_hash=done.content_hash, files=done.files, bytes=received)
    body: dict[str, Any] = {
        "uri": done.uri,
        "contentHash": done.content_hash,
        "entries": done.entries,
        "files": done.files,
        "bytes": done.bytes,
    }
    return _json(body, status=201)


def _too_large(limit: int) -> ArmError:
    return ArmError(
        413,
        "PayloadTooLarge",
        f"the archive is larger than {limit} bytes (TIDEGATE_API_UPLOAD_MAX_BYTES)",
        "body",
    )
