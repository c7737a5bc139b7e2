"""Which of Tidegate's search attributes a namespace lacks or holds under another type, and
what an operator is told to run: pure, over what the server lists."""

from __future__ import annotations

import pytest
from temporalio.common import SearchAttributeIndexedValueType as Kind
from temporalio.service import RPCError, RPCStatusCode

from workflows import search
from workflows.search import TypeConflict, plan_search_attributes

ALL_LISTED = {key.name: int(key.indexed_value_type) for key in search.ALL}


def without(*names: str) -> dict[str, int]:
    return {name: kind for name, kind in ALL_LISTED.items() if name not in names}


@pytest.mark.parametrize(
    ("listed", "missing", "conflicts"),
    [
        pytest.param(
            {},
            ["TidegateEndpoint", "TidegateFrom", "TidegateTo", "TidegatePhase", "TidegateStepWeight"],
            [],
            id="test_plan_adds_all_to_an_empty_namespace",
        ),
        pytest.param(ALL_LISTED, [], [], id="test_plan_adds_nothing_when_all_are_listed_with_their_types"),
        pytest.param(
            without("TidegateTo", "TidegateStepWeight"),
            ["TidegateTo", "TidegateStepWeight"],
            [],
            id="test_plan_adds_only_the_missing_ones",
        ),
        pytest.param(
            {**ALL_LISTED, "CustomerId": int(Kind.TEXT), "TidegateExtra": int(Kind.BOOL)},
            [],
            [],
            id="test_plan_ignores_attributes_that_are_not_tidegates",
        ),
        pytest.param(
            {**ALL_LISTED, "TidegatePhase": int(Kind.INT)},
            [],
            [TypeConflict("TidegatePhase", Kind.KEYWORD, int(Kind.INT))],
            id="test_plan_reports_a_keyword_listed_as_int",
        ),
        pytest.param(
            {"TidegateStepWeight": int(Kind.KEYWORD)},
            ["TidegateEndpoint", "TidegateFrom", "TidegateTo", "TidegatePhase"],
            [TypeConflict("TidegateStepWeight", Kind.INT, int(Kind.KEYWORD))],
            id="test_plan_reports_an_int_listed_as_keyword_beside_the_missing",
        ),
        pytest.param(
            {**ALL_LISTED, "TidegateEndpoint": int(Kind.TEXT), "TidegateFrom": int(Kind.KEYWORD_LIST)},
            [],
            [
                TypeConflict("TidegateEndpoint", Kind.KEYWORD, int(Kind.TEXT)),
                TypeConflict("TidegateFrom", Kind.KEYWORD, int(Kind.KEYWORD_LIST)),
            ],
            id="test_plan_reports_text_and_keyword_list_as_other_types_than_keyword",
        ),
        pytest.param(
            {**ALL_LISTED, "TidegateTo": 0},
            [],
            [TypeConflict("TidegateTo", Kind.KEYWORD, 0)],
            id="test_plan_reports_an_unspecified_type_as_a_conflict",
        ),
    ],
)
def test_plan(listed: dict[str, int], missing: list[str], conflicts: list[TypeConflict]) -> None:
    plan = plan_search_attributes(listed)
    assert [key.name for key in plan.missing] == missing
    assert list(plan.conflicts) == conflicts


@pytest.mark.parametrize(
    ("conflict", "text"),
    [
        pytest.param(
            TypeConflict("TidegatePhase", Kind.KEYWORD, int(Kind.INT)),
            "TidegatePhase is Int, Tidegate needs Keyword",
            id="test_conflict_names_the_attribute_and_both_types",
        ),
        pytest.param(
            TypeConflict("TidegateTo", Kind.KEYWORD, 99),
            "TidegateTo is IndexedValueType 99, Tidegate needs Keyword",
            id="test_conflict_names_a_type_it_does_not_know_by_number",
        ),
    ],
)
def test_conflict_text(conflict: TypeConflict, text: str) -> None:
    assert str(conflict) == text
    assert text in search.conflict_message([conflict], "default")


@pytest.mark.parametrize(
    ("keys", "namespace", "commands"),
    [
        pytest.param(
            search.ALL,
            "default",
            [
                f"temporal operator search-attribute create --namespace default --name {name} --type {kind}"
                for name, kind in [
                    ("TidegateEndpoint", "Keyword"),
                    ("TidegateFrom", "Keyword"),
                    ("TidegateTo", "Keyword"),
                    ("TidegatePhase", "Keyword"),
                    ("TidegateStepWeight", "Int"),
                ]
            ],
            id="test_commands_add_every_attribute_one_command_each",
        ),
        pytest.param(
            (search.STEP_WEIGHT,),
            "prod",
            [
                "temporal operator search-attribute create --namespace prod"
                " --name TidegateStepWeight --type Int"
            ],
            id="test_commands_add_only_the_given_attributes_in_their_namespace",
        ),
    ],
)
def test_create_commands(keys: tuple, namespace: str, commands: list[str]) -> None:
    assert search.create_commands(keys, namespace) == commands


def test_permission_message_names_the_attributes_and_the_commands() -> None:
    error = RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")
    message = search.permission_message((search.TO, search.STEP_WEIGHT), "prod", "add", error)
    assert "refused to add search attributes in namespace 'prod'" in message
    assert "PERMISSION_DENIED: Request unauthorized." in message
    assert "An operator must add TidegateTo (Keyword), TidegateStepWeight (Int):" in message
    assert message.endswith(
        "  temporal operator search-attribute create --namespace prod --name TidegateTo --type Keyword\n"
        "  temporal operator search-attribute create --namespace prod --name TidegateStepWeight --type Int"
    )


def test_dev_server_flags_give_each_attribute_its_type() -> None:
    assert search.dev_server_flags() == [
        "--search-attribute", "TidegateEndpoint=Keyword",
        "--search-attribute", "TidegateFrom=Keyword",
        "--search-attribute", "TidegateTo=Keyword",
        "--search-attribute", "TidegatePhase=Keyword",
        "--search-attribute", "TidegateStepWeight=Int",
    ]  # fmt: skip
