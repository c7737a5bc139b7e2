"""ARM's long-running operations, with no table of their own: an operation id says what was
asked (kind, endpoint, deployment, the etag or creation it concerned), and its status is read
from the endpoint's workflow each time it is polled. Any API process answers any operation, and
one that restarts forgets nothing."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ValidationError

from config.contract.etags import deployment_etag
from config.contract.state import EndpointRecord

OperationKind = Literal[
    "endpoint.create",
    "endpoint.update",
    "endpoint.delete",
    "deployment.create",
    "deployment.update",
    "deployment.delete",
]
Status = Literal["InProgress", "Succeeded", "Failed", "Canceled"]
RETRY_AFTER_SECONDS = 1


class Operation(BaseModel):
    kind: OperationKind
    endpoint: str
    deployment: str | None = None
    etag: str | None = None
    created_at: str | None = None
    started: datetime


class OperationStatus(BaseModel):
    status: Status
    code: str | None = None
    message: str | None = None


def encode_operation(operation: Operation) -> str:
    """The operation as its id: URL-safe, no padding."""
    raw = operation.model_dump_json(exclude_none=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_operation(text: str) -> Operation | None:
    """The operation an id names, or None for an id this API never made."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return Operation.model_validate(json.loads(raw))
    except (binascii.Error, ValueError, ValidationError, UnicodeDecodeError):
        return None


def _failed(code: str, message: str) -> OperationStatus:
    return OperationStatus(status="Failed", code=code, message=message)


def operation_status(operation: Operation, record: EndpointRecord | None) -> OperationStatus:
    """Where `operation` is, given the endpoint as its workflow holds it now (None: no endpoint)."""
    kind, name = operation.kind, operation.endpoint
    if kind == "endpoint.delete":
        if record is None or record.created_at != operation.created_at:
            return OperationStatus(status="Succeeded")
        return OperationStatus(status="InProgress")
    if kind == "deployment.delete" and record is None:
        return OperationStatus(status="Succeeded")  # the endpoint went, and its deployments with it
    if record is None:
        return _failed("ResourceNotFound", f"endpoint {name} no longer exists")
    if kind in ("endpoint.create", "endpoint.update"):
        state = record.provisioning_state
        if state == "Succeeded":
            return OperationStatus(status="Succeeded")
        if state == "Failed":
            return _failed("EndpointFailed", f"endpoint {name} failed")
        if state in ("Deleting", "Deleted"):
            return _failed("ResourceNotFound", f"endpoint {name} is being deleted")
        return OperationStatus(status="InProgress")
    deployment = operation.deployment or ""
    entry = record.deployments.get(deployment)
    if kind == "deployment.delete":
        if entry is None:
            return OperationStatus(status="Succeeded")
        if entry.provisioning_state == "Deleting":
            return OperationStatus(status="InProgress")
        return _failed("DeploymentFailed", entry.error or f"deployment {deployment} was not deleted")
    if entry is None:
        return _failed("ResourceNotFound", f"deployment {deployment} of endpoint {name} no longer exists")
    if operation.etag is not None and deployment_etag(entry) != operation.etag:
        return OperationStatus(
            status="Canceled",
            code="Superseded",
            message=f"a later change to deployment {deployment} replaced this one",
        )
    if entry.provisioning_state == "Succeeded":
        return OperationStatus(status="Succeeded")
    if entry.provisioning_state == "Failed":
        return _failed("DeploymentFailed", f"deployment {deployment} failed: {entry.error}")
    if entry.provisioning_state == "Deleting":
        return _failed("ResourceNotFound", f"deployment {deployment} is being deleted")
    return OperationStatus(status="InProgress")


def operation_resource(operation_id: str, operation: Operation, status: OperationStatus) -> dict[str, object]:
    """ARM's operation status body."""
    body: dict[str, object] = {
        "id": operation_id,
        "name": operation_id,
        "status": status.status,
        "startTime": operation.started.isoformat(),
        "properties": {
            "kind": operation.kind,
            "endpoint": operation.endpoint,
            "deployment": operation.deployment,
        },
    }
    if status.status in ("Failed", "Canceled"):
        body["error"] = {"code": status.code, "message": status.message, "target": None, "details": []}
    return body
