"""Route table rules: which deployments and instances a gateway may send to."""

from __future__ import annotations

from config.contract.state import EndpointRecord
from config.routes import DeploymentRoute, EndpointRoute

# Provisioned deployments stay in the table even when no instance is ready right now (the
# gateway answers 503 and the control loop replaces them); a failed update that was rolled back
# (Failed, old instances serving) still serves; Creating and Deleting never do.
_PROVISIONED = frozenset({"Succeeded", "Updating"})


def build_endpoint_route(state: EndpointRecord, generation: int) -> EndpointRoute:
    """The endpoint's slice of the table: live deployments, their instances, the split."""
    deployments: dict[str, DeploymentRoute] = {}
    for name, record in sorted(state.deployments.items()):
        serving = record.provisioning_state == "Failed" and bool(record.instances)
        if record.provisioning_state not in _PROVISIONED and not serving:
            continue
        settings = record.target.request_settings
        deployments[name] = DeploymentRoute(
            name=name,
            instances=list(record.instances),
            request_timeout_ms=settings.request_timeout_ms,
            max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
            max_queue_wait_ms=settings.max_queue_wait_ms,
        )
    return EndpointRoute(
        name=state.name,
        generation=generation,
        auth_mode=state.auth_mode,
        key_sha256=list(state.key_sha256),
        token_public_keys=list(state.token_public_keys),
        traffic={k: v for k, v in sorted(state.traffic.items()) if k in deployments},
        mirror_traffic={k: v for k, v in sorted(state.mirror_traffic.items()) if k in deployments},
        deployments=deployments,
        max_request_bytes=state.max_request_bytes,
        max_requests_per_second=state.max_requests_per_second,
        retry_dropped_requests=state.retry_dropped_requests,
    )


def next_generation(previous: int, now_ms: int) -> int:
    """Strictly increasing, and above any earlier endpoint of the same name (it started sooner)."""
    return max(previous + 1, now_ms)
