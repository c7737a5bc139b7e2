"""`online-endpoint update` flags into one UpdateEndpointInput (properties as tags are), and
`show`'s view of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.contract.errors import BadRequest
from config.contract.state import EndpointRecord
from config.settings import Settings
from config.specs import EndpointSpec
from control.changes import endpoint_change
from control.facade import Tidegate

CURRENT = EndpointRecord(
    name="my-ep", tags={"team": "ml"}, properties={"owner": "ana", "tidegate/max_requests_per_second": "50"}
)


@pytest.mark.parametrize(
    ("assignments", "properties"),
    [
        pytest.param([], None, id="untouched_without_set"),
        pytest.param(
            ["properties.tidegate/max_requests_per_second=200"],
            {"owner": "ana", "tidegate/max_requests_per_second": "200"},
            id="set_changes_one_key_and_keeps_the_others",
        ),
        pytest.param(
            [
                "properties.tidegate/max_request_bytes=1048576",
                "properties.tidegate/max_requests_per_second=0",
            ],
            {
                "owner": "ana",
                "tidegate/max_request_bytes": "1048576",
                "tidegate/max_requests_per_second": "0",
            },
            id="several_sets_add_up",
        ),
    ],
)
def test_set_properties_merges_into_the_current_ones(
    assignments: list[str], properties: dict[str, str] | None
) -> None:
    change = endpoint_change(CURRENT, None, None, None, assignments)
    assert change.properties == properties
    assert change.tags is None


def test_a_file_replaces_the_properties_whole() -> None:
    spec = EndpointSpec.model_validate(
        {"name": "my-ep", "properties": {"tidegate/max_request_bytes": "1024"}}
    )
    change = endpoint_change(CURRENT, spec, None, None, [])
    assert change.properties == {"tidegate/max_request_bytes": "1024"}


def test_a_file_without_properties_leaves_them() -> None:
    change = endpoint_change(CURRENT, EndpointSpec(name="my-ep", description="d"), None, None, [])
    assert (change.properties, change.description) == (None, "d")


def test_an_unknown_set_path_names_what_can_be_set() -> None:
    with pytest.raises(BadRequest, match="settable: description, tags.<key>, properties.<key>"):
        endpoint_change(CURRENT, None, None, None, ["auth_mode=aml_token"])


def test_show_lists_the_properties_as_given(tmp_path: Path) -> None:
    view = Tidegate(Settings(home=tmp_path), client=None).endpoint_view(CURRENT)  # type: ignore[arg-type]
    assert {k: view["properties"][k] for k in CURRENT.properties} == CURRENT.properties
