"""ARM's resource JSON for versioned assets (models, code, environments) under a workspace, and
the registrations their PUTs describe: pure mapping both ways, no I/O.

Shapes follow Azure's REST spec (Microsoft.MachineLearningServices, stable/2024-04-01 and
2024-10-01: ModelContainer / ModelVersion, CodeContainer / CodeVersion, EnvironmentContainer /
EnvironmentVersion): a version's tags, description and properties are under ``properties``; a
model names its files in ``modelUri``, code in ``codeUri``; an environment carries its conda
file inline (``condaFile``, YAML text) and an ``image``. ``systemData`` says who registered a
version and when; versions never change, so it was last modified then too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from activities.artifacts import AssetKind, RegisteredAsset
from control.arm.resources import PROVIDER, ArmValidationError, FieldProblem, Workspace, _Arm, asset_id

ASSET_KINDS: tuple[AssetKind, ...] = ("models", "codes", "environments")
URI_FIELDS: dict[AssetKind, str] = {"models": "modelUri", "codes": "codeUri"}
# Who registered through the REST API: the holder of the control credential (one principal).
API_PRINCIPAL = "tidegate control credential"


class ArmAssetVersionProperties(_Arm):
    description: str | None = None
    tags: dict[str, str] | None = None
    properties: dict[str, str] | None = None
    is_anonymous: bool | None = None
    is_archived: bool | None = None
    # models
    model_uri: str | None = None
    model_type: str | None = None
    # code
    code_uri: str | None = None
    # environments
    image: str | None = None
    conda_file: str | None = Field(default=None, max_length=1024 * 1024)


class ArmAssetVersion(_Arm):
    properties: ArmAssetVersionProperties


def requested_asset(kind: AssetKind, name: str, version: str, body: ArmAssetVersion) -> RegisteredAsset:
    """The registration a PUT describes (the copy of its files is made later)."""
    props = body.properties
    problems: list[FieldProblem] = []
    uri: str | None = None
    if kind in URI_FIELDS:
        uri = props.model_uri if kind == "models" else props.code_uri
        if not uri:
            problems.append(FieldProblem(f"properties.{URI_FIELDS[kind]}", "required"))
    elif not props.conda_file and not props.image:
        problems.append(
            FieldProblem("properties.condaFile", "an environment needs condaFile (YAML text) or image")
        )
    if problems:
        raise ArmValidationError(problems)
    return RegisteredAsset(
        name=name,
        version=version,
        description=props.description,
        tags=dict(props.tags or {}),
        properties=dict(props.properties or {}),
        uri=uri,
        image=props.image if kind == "environments" else None,
        conda_file=props.conda_file if kind == "environments" else None,
    )


_COMPARED = ("description", "tags", "properties", "uri", "image", "conda_file")


def differences(existing: RegisteredAsset, requested: RegisteredAsset, content_hash: str | None) -> list[str]:
    """What a second PUT of a version would change (empty: the same registration again)."""
    changed = [f for f in _COMPARED if getattr(existing, f) != getattr(requested, f)]
    if content_hash is not None and existing.content_hash != content_hash:
        changed.append("content")
    return changed


def _system_data(asset: RegisteredAsset) -> dict[str, Any]:
    at = asset.created_at.isoformat() if isinstance(asset.created_at, datetime) else None
    by = asset.created_by or "unknown"
    kind = "Application" if by == API_PRINCIPAL else "User"
    return {
        "createdAt": at,
        "createdBy": by,
        "createdByType": kind,
        "lastModifiedAt": at,
        "lastModifiedBy": by,
        "lastModifiedByType": kind,
    }


def version_resource(kind: AssetKind, asset: RegisteredAsset, ws: Workspace) -> dict[str, Any]:
    """GET's answer for one version (Azure's ModelVersion, CodeVersion, EnvironmentVersion)."""
    properties: dict[str, Any] = {
        "description": asset.description,
        "tags": dict(asset.tags),
        "properties": dict(asset.properties),
        "isAnonymous": False,
        "isArchived": False,
        "provisioningState": "Succeeded",
    }
    if kind == "models":
        properties |= {
            "modelUri": asset.uri or _copy_uri(asset),
            "modelType": "custom_model",
            "flavors": {},
            "jobName": None,
            "stage": None,
        }
    elif kind == "codes":
        properties["codeUri"] = asset.uri or _copy_uri(asset)
    else:
        properties |= {
            "image": asset.image,
            "condaFile": asset.conda_file,
            "environmentType": "UserCreated",
            "osType": "Linux",
            "autoRebuild": "Disabled",
        }
    if asset.content_hash is not None:
        properties["properties"].setdefault("tidegate/contentHash", asset.content_hash)
    return {
        "id": asset_id(ws, kind, asset.name, asset.version),
        "name": asset.version,
        "type": f"{PROVIDER}/workspaces/{kind}/versions",
        "systemData": _system_data(asset),
        "properties": properties,
    }


def _copy_uri(asset: RegisteredAsset) -> str | None:
    """A version registered by the CLI names no URI: the registered copy on the API's machine."""
    return f"file://{asset.path}" if asset.path else None


def container_resource(
    kind: AssetKind, name: str, versions: list[RegisteredAsset], ws: Workspace
) -> dict[str, Any]:
    """GET's answer for a name (Azure's ModelContainer and kin): its latest version and the next."""
    latest = versions[-1]
    first = versions[0]
    numbers = [int(v.version) for v in versions if v.version.isdigit()]
    return {
        "id": asset_id(ws, kind, name),
        "name": name,
        "type": f"{PROVIDER}/workspaces/{kind}",
        "systemData": _system_data(first)
        | {
            "lastModifiedAt": _system_data(latest)["lastModifiedAt"],
            "lastModifiedBy": _system_data(latest)["lastModifiedBy"],
            "lastModifiedByType": _system_data(latest)["lastModifiedByType"],
        },
        "properties": {
            "description": None,
            "tags": {},
            "properties": {},
            "isArchived": False,
            "latestVersion": latest.version,
            "nextVersion": str(max(numbers) + 1) if numbers else None,
            "provisioningState": "Succeeded",
        },
    }
