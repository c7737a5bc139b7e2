"""`--set path=value`, as az ml applies it: dotted paths, YAML-typed values."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from config.overrides import apply_set, format_path, parse_assignments, parse_path
from config.yaml_loader import SpecError, load_deployment_dict, read_yaml
from tests.config.conftest import AzureSample

BASE: dict[str, Any] = {
    "name": "blue",
    "instance_count": 1,
    "tags": {"owner": "ana"},
    "identity": {"type": "user_assigned", "user_assigned_identities": [{"resource_id": "/a"}]},
}


@pytest.mark.parametrize(
    ("assignments", "changed"),
    [
        pytest.param(["instance_count=2"], {"instance_count": 2}, id="int_value"),
        pytest.param(
            ["request_settings.request_timeout_ms=3000"],
            {"request_settings": {"request_timeout_ms": 3000}},
            id="nested_path_creates_the_mapping",
        ),
        pytest.param(["tags.team=ml"], {"tags": {"owner": "ana", "team": "ml"}}, id="adds_a_tag"),
        pytest.param(["app_insights_enabled=true"], {"app_insights_enabled": True}, id="bool"),
        pytest.param(
            ["tags.version='2'"],
            {"tags": {"owner": "ana", "version": "2"}},
            id="quoted_number_stays_a_string",
        ),
        pytest.param(["description=yes"], {"description": "yes"}, id="yes_is_a_string_in_yaml_1_2"),
        pytest.param(["description=two words"], {"description": "two words"}, id="spaces"),
        pytest.param(["description="], {"description": ""}, id="empty_value_is_empty_string"),
        pytest.param(["model_mount_path=null"], {"model_mount_path": None}, id="null"),
        pytest.param(
            ["environment_variables.URL=http://host/?a=b"],
            {"environment_variables": {"URL": "http://host/?a=b"}},
            id="value_may_contain_equals",
        ),
        pytest.param(
            ["traffic={blue: 90, green: 10}"],
            {"traffic": {"blue": 90, "green": 10}},
            id="flow_mapping",
        ),
        pytest.param(
            ["identity.user_assigned_identities[0].resource_id=/b"],
            {"identity": {"type": "user_assigned", "user_assigned_identities": [{"resource_id": "/b"}]}},
            id="list_index",
        ),
        pytest.param(["instance_count=2", "instance_count=3"], {"instance_count": 3}, id="last_one_wins"),
        pytest.param(
            ["properties.tidegate/max_requests_per_second=200"],
            {"properties": {"tidegate/max_requests_per_second": 200}},
            id="slash_in_a_key",
        ),
    ],
)
def test_apply_set(assignments: list[str], changed: dict[str, Any]) -> None:
    before = copy.deepcopy(BASE)

    result = apply_set(BASE, assignments)

    assert result == {**BASE, **changed}
    assert BASE == before  # a new dict; the input is untouched


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        pytest.param("instance_count", "--set 'instance_count': expected path=value", id="no_equals"),
        pytest.param("=3", "--set '=3': malformed path ''", id="empty_path"),
        pytest.param("tags..team=ml", "--set 'tags..team=ml': malformed path", id="empty_segment"),
        pytest.param("tags[x]=1", "--set 'tags[x]=1': malformed path", id="non_numeric_index"),
        pytest.param(
            "instance_count.max=3",
            "--set 'instance_count.max=3': instance_count.max: 'max' is inside something "
            "that is not a mapping",
            id="through_a_scalar",
        ),
        pytest.param(
            "tags[0]=x",
            "--set 'tags[0]=x': tags[0]: [0] indexes something that is not a list",
            id="index_into_a_mapping",
        ),
        pytest.param(
            "identity.user_assigned_identities[3].resource_id=/c",
            "--set 'identity.user_assigned_identities[3].resource_id=/c': "
            "identity.user_assigned_identities[3].resource_id: index 3 is past the end",
            id="index_past_the_end",
        ),
        pytest.param(
            "description=[unclosed",
            "--set 'description=[unclosed': value is not valid YAML",
            id="invalid_yaml_value",
        ),
    ],
)
def test_malformed_assignment_raises_naming_it(assignment: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        apply_set(BASE, [assignment])

    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        pytest.param("instance_count", ["instance_count"], id="plain_key"),
        pytest.param("a.b.c", ["a", "b", "c"], id="dotted"),
        pytest.param("a.b[0].c", ["a", "b", 0, "c"], id="indexed"),
        pytest.param("m[1][2]", ["m", 1, 2], id="nested_indexes"),
    ],
)
def test_paths_parse_and_format_back(path: str, parts: list[str | int]) -> None:
    assert parse_path(path) == parts
    assert format_path(parts) == path


def test_parse_assignments_gives_overrides_for_the_loader() -> None:
    assert parse_assignments(["instance_count=2", "tags.team=ml"]) == {
        "instance_count": 2,
        "tags.team": "ml",
    }


def test_set_on_a_parsed_file_keeps_line_numbers(azure_sample: AzureSample) -> None:
    text = azure_sample.blue.read_text().replace("instance_count: 1", "instance_count: 0")
    azure_sample.blue.write_text(text)
    doc = apply_set(read_yaml(azure_sample.blue), ["tags.team=ml"])

    with pytest.raises(SpecError) as info:
        load_deployment_dict(doc, base_dir=azure_sample.sample, source="blue-deployment.yml")

    assert str(info.value) == "blue-deployment.yml:13 instance_count: must be ≥ 1 (got 0)"
