"""Turn `online-endpoint update` flags into one UpdateEndpointInput."""

from __future__ import annotations

from config.contract.errors import BadRequest
from config.contract.state import EndpointRecord
from config.contract.workflows import UpdateEndpointInput
from config.specs import EndpointSpec
from decisions.traffic import parse_traffic

_SETTABLE = ("description", "tags.<key>", "properties.<key>")


def endpoint_change(
    current: EndpointRecord,
    spec: EndpointSpec | None,
    traffic: str | None,
    mirror_traffic: str | None,
    assignments: list[str],
) -> UpdateEndpointInput:
    change = UpdateEndpointInput()
    if spec is not None:
        given = spec.model_fields_set  # only what the file says changes
        if "description" in given:
            change.description = spec.description
        if "tags" in given:
            change.tags = dict(spec.tags)
        if "properties" in given:
            change.properties = dict(spec.properties)
        if "traffic" in given:
            change.traffic = dict(spec.traffic)
        if "mirror_traffic" in given:
            change.mirror_traffic = dict(spec.mirror_traffic)
    if traffic is not None:
        change.traffic = parse_traffic(traffic)
    if mirror_traffic is not None:
        change.mirror_traffic = parse_traffic(mirror_traffic)
    for assignment in assignments:
        path, sep, value = assignment.partition("=")
        if not sep:
            raise BadRequest(f"--set: '{assignment}' is not of the form path=value")
        if path == "description":
            change.description = value
        elif path.startswith("tags."):
            tags = dict(change.tags if change.tags is not None else current.tags)
            tags[path.removeprefix("tags.")] = value
            change.tags = tags
        elif path.startswith("properties."):
            # e.g. properties.tidegate/max_requests_per_second=200; the workflow checks the value.
            properties = dict(change.properties if change.properties is not None else current.properties)
            properties[path.removeprefix("properties.")] = value
            change.properties = properties
        else:
            raise BadRequest(
                f"--set: '{path}' cannot be set on an endpoint; settable: "
                f"{', '.join(_SETTABLE)} (use --traffic / --mirror-traffic for the split)"
            )
    return change
