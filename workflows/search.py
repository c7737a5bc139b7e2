"""Custom search attributes, so the Temporal UI filters rollouts by endpoint, deployment, phase."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

ENDPOINT = SearchAttributeKey.for_keyword("TidegateEndpoint")
FROM = SearchAttributeKey.for_keyword("TidegateFrom")
TO = SearchAttributeKey.for_keyword("TidegateTo")
PHASE = SearchAttributeKey.for_keyword("TidegatePhase")
STEP_WEIGHT = SearchAttributeKey.for_int("TidegateStepWeight")

ALL = (ENDPOINT, FROM, TO, PHASE, STEP_WEIGHT)


def dev_server_flags() -> list[str]:
    """`temporal server start-dev --search-attribute Name=Type` for each key."""
    flags: list[str] = []
    for key in ALL:
        kind = "Int" if key is STEP_WEIGHT else "Keyword"
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags


def initial(endpoint: str, baseline: str, canary: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(ENDPOINT, endpoint),
            SearchAttributePair(FROM, baseline),
            SearchAttributePair(TO, canary),
            SearchAttributePair(PHASE, "Progressing"),
            SearchAttributePair(STEP_WEIGHT, 0),
        ]
    )
