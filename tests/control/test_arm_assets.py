"""ARM's asset JSON (ModelVersion, CodeVersion, EnvironmentVersion and their containers) and
what a PUT of a version asks for: pure mapping, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from activities.artifacts import RegisteredAsset
from control.arm.assets import (
    API_PRINCIPAL,
    ArmAssetVersion,
    container_resource,
    differences,
    requested_asset,
    version_resource,
)
from control.arm.resources import ArmValidationError, Workspace, read_model

WS = Workspace("sub-1", "rg-1", "ws-1")
AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def asset(version: str = "1", **fields: Any) -> RegisteredAsset:
    return RegisteredAsset(name="m", version=version, created_at=AT, created_by=API_PRINCIPAL, **fields)


@pytest.mark.parametrize(
    ("kind", "properties", "target"),
    [
        ("models", {}, "properties.modelUri"),
        ("codes", {"modelUri": "tidegate://uploads/x"}, "properties.codeUri"),
        ("environments", {"description": "nothing to build"}, "properties.condaFile"),
    ],
    ids=["model_without_uri", "code_with_a_models_field", "environment_without_conda_or_image"],
)
def test_a_version_without_what_its_kind_needs_is_refused_at_that_field(
    kind: Any, properties: dict[str, Any], target: str
) -> None:
    with pytest.raises(ArmValidationError) as caught:
        requested_asset(kind, "m", "1", read_model(ArmAssetVersion, {"properties": properties}))
    assert caught.value.problems[0].target == target


def test_a_put_keeps_only_its_kinds_fields() -> None:
    body = {"properties": {"codeUri": "file:///c", "image": "ignored", "tags": {"t": "1"}}}
    requested = requested_asset("codes", "c", "2", read_model(ArmAssetVersion, body))
    assert (requested.uri, requested.image, requested.tags) == ("file:///c", None, {"t": "1"})


@pytest.mark.parametrize(
    ("again", "content_hash", "changed"),
    [
        ({}, "h1", []),
        ({"description": "other"}, "h1", ["description"]),
        ({}, "h2", ["content"]),
        ({"uri": "tidegate://uploads/b", "tags": {"x": "y"}}, "h2", ["tags", "uri", "content"]),
    ],
    ids=["the_same_body", "another_description", "other_files_behind_the_same_uri", "several"],
)
def test_a_second_put_differs_in_what_it_would_change(
    again: dict[str, Any], content_hash: str, changed: list[str]
) -> None:
    existing = asset(uri="tidegate://uploads/a", content_hash="h1", path="/r/h1/model")
    requested = RegisteredAsset(name="m", version="1", uri="tidegate://uploads/a").model_copy(update=again)
    assert differences(existing, requested, content_hash) == changed


def test_a_model_version_is_azures_model_version() -> None:
    view = version_resource("models", asset(uri="tidegate://uploads/a/model", content_hash="h1"), WS)
    assert view["id"] == f"{WS.id}/models/m/versions/1"
    assert (view["name"], view["type"]) == (
        "1",
        "Microsoft.MachineLearningServices/workspaces/models/versions",
    )
    properties = view["properties"]
    assert properties["modelUri"] == "tidegate://uploads/a/model" and properties["flavors"] == {}
    assert properties["properties"]["tidegate/contentHash"] == "h1"
    assert view["systemData"] == {
        "createdAt": AT.isoformat(),
        "createdBy": API_PRINCIPAL,
        "createdByType": "Application",
        "lastModifiedAt": AT.isoformat(),
        "lastModifiedBy": API_PRINCIPAL,
        "lastModifiedByType": "Application",
    }


def test_a_model_the_cli_registered_names_its_registered_copy() -> None:
    cli = RegisteredAsset(
        name="m", version="3", path="/home/me/.tidegate/models/.blobs/h/model", created_by="me"
    )
    view = version_resource("models", cli, WS)
    assert view["properties"]["modelUri"] == "file:///home/me/.tidegate/models/.blobs/h/model"
    assert view["systemData"]["createdByType"] == "User"


def test_an_environment_version_carries_its_conda_file_inline() -> None:
    view = version_resource("environments", asset(conda_file="name: e\n", image="img"), WS)
    assert view["properties"]["condaFile"] == "name: e\n" and view["properties"]["image"] == "img"
    assert view["type"].endswith("/workspaces/environments/versions")


def test_a_container_names_its_latest_and_next_version() -> None:
    versions = [asset("1"), asset("2"), asset("10")]
    view = container_resource("codes", "m", versions, WS)
    assert view["id"] == f"{WS.id}/codes/m"
    assert (view["properties"]["latestVersion"], view["properties"]["nextVersion"]) == ("10", "11")
    assert container_resource("codes", "m", [asset("v1")], WS)["properties"]["nextVersion"] is None
