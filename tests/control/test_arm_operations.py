"""Long-running operations read from the endpoint's state (control/arm/operations.py), and the
etags EndpointWorkflow checks (config/contract/etags.py): pure, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.contract.etags import deployment_etag, endpoint_etag
from config.contract.state import DeploymentEntry, DeploymentTarget, EndpointRecord, ProvisioningState
from config.host_api import DeploymentRuntime
from control.arm.operations import (
    Operation,
    OperationKind,
    decode_operation,
    encode_operation,
    operation_status,
)

STARTED = datetime(2026, 1, 1, tzinfo=UTC)
CREATED = "2026-01-01T00:00:00+00:00"


def entry(state: ProvisioningState, *, spec: dict | None = None, error: str | None = None) -> DeploymentEntry:
    target = DeploymentTarget(
        name="blue",
        endpoint="ep",
        runtime=DeploymentRuntime(endpoint="ep", deployment="blue", code_dir="/c", spec_hash="h"),
        instance_count=1,
        spec=spec or {"instance_count": 1},
    )
    return DeploymentEntry(name="blue", provisioning_state=state, target=target, error=error)


def record(state: ProvisioningState = "Succeeded", *deployments: DeploymentEntry) -> EndpointRecord:
    return EndpointRecord(
        name="ep", provisioning_state=state, created_at=CREATED, deployments={d.name: d for d in deployments}
    )


def op(kind: OperationKind, **fields: object) -> Operation:
    return Operation(kind=kind, endpoint="ep", started=STARTED, **fields)  # type: ignore[arg-type]


BLUE_ETAG = deployment_etag(entry("Creating"))


@pytest.mark.parametrize(
    ("operation", "state", "status"),
    [
        (op("endpoint.create"), record("Creating"), "InProgress"),
        (op("endpoint.create"), record("Succeeded"), "Succeeded"),
        (op("endpoint.create"), None, "Failed"),
        (op("endpoint.create"), record("Deleting"), "Failed"),
        (op("endpoint.delete", created_at=CREATED), record("Deleting"), "InProgress"),
        (op("endpoint.delete", created_at=CREATED), None, "Succeeded"),
        (op("endpoint.delete", created_at="earlier"), record("Creating"), "Succeeded"),
        (
            op("deployment.create", deployment="blue", etag=BLUE_ETAG),
            record("Succeeded", entry("Creating")),
            "InProgress",
        ),
        (
            op("deployment.create", deployment="blue", etag=BLUE_ETAG),
            record("Succeeded", entry("Succeeded")),
            "Succeeded",
        ),
        (
            op("deployment.create", deployment="blue", etag=BLUE_ETAG),
            record("Succeeded", entry("Failed", error="init() raised")),
            "Failed",
        ),
        (
            op("deployment.update", deployment="blue", etag="other"),
            record("Succeeded", entry("Succeeded")),
            "Canceled",
        ),
        (op("deployment.create", deployment="blue", etag=BLUE_ETAG), record("Succeeded"), "Failed"),
        (op("deployment.delete", deployment="blue"), record("Succeeded", entry("Deleting")), "InProgress"),
        (op("deployment.delete", deployment="blue"), record("Succeeded"), "Succeeded"),
        (op("deployment.delete", deployment="blue"), None, "Succeeded"),
    ],
    ids=[
        "endpoint-creating-is-in-progress",
        "endpoint-succeeded",
        "endpoint-gone-before-it-succeeded-fails",
        "endpoint-deleted-while-creating-fails",
        "delete-in-progress-while-deleting",
        "delete-succeeds-once-gone",
        "delete-succeeds-when-a-new-endpoint-took-the-name",
        "deployment-creating-is-in-progress",
        "deployment-succeeded",
        "deployment-failed-carries-the-reason",
        "a-later-change-cancels-an-earlier-operation",
        "deployment-gone-fails",
        "deployment-delete-in-progress",
        "deployment-delete-succeeds-once-gone",
        "deployment-delete-succeeds-when-the-endpoint-is-gone",
    ],
)
def test_an_operation_status_follows_the_endpoint_state(
    operation: Operation, state: EndpointRecord | None, status: str
) -> None:
    assert operation_status(operation, state).status == status


def test_a_failed_deployment_operation_says_why() -> None:
    failed = operation_status(
        op("deployment.create", deployment="blue", etag=BLUE_ETAG),
        record("Succeeded", entry("Failed", error="init() raised")),
    )
    assert failed.code == "DeploymentFailed" and "init() raised" in (failed.message or "")


def test_an_operation_id_round_trips_and_a_made_up_one_is_none() -> None:
    operation = op("deployment.update", deployment="blue", etag="abc")
    assert decode_operation(encode_operation(operation)) == operation
    for made_up in ("", "not-base64!", "e30", "eyJraW5kIjogIm5vcGUifQ"):
        assert decode_operation(made_up) is None


def test_an_endpoint_etag_moves_with_what_a_put_sets_and_not_with_the_route_generation() -> None:
    base = record()
    assert endpoint_etag(base) == endpoint_etag(base.model_copy(update={"generation": 99}))
    for change in (
        {"tags": {"a": "1"}},
        {"traffic": {"blue": 100}},
        {"description": "x"},
        {"created_at": "z"},
    ):
        assert endpoint_etag(base.model_copy(update=change)) != endpoint_etag(base), change


def test_a_deployment_etag_moves_with_its_spec_only() -> None:
    assert deployment_etag(entry("Creating")) == deployment_etag(entry("Succeeded"))
    assert deployment_etag(entry("Succeeded", spec={"instance_count": 2})) != deployment_etag(
        entry("Succeeded")
    )
