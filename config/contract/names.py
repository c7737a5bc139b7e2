"""The names Temporal knows Tidegate's parts by: the task queue, workflow types, activities,
and each workflow's updates, signals and queries.

Every recorded history holds them: renaming one breaks every running workflow
(tests/workflows/test_replay.py). Workflows call activities by these constants, never by a
string of their own; tests/activities/test_registration.py checks that the worker registers
each one.
"""

from __future__ import annotations

from typing import Final

TASK_QUEUE: Final = "tidegate"

ENDPOINT_WORKFLOW: Final = "EndpointWorkflow"
DEPLOYMENT_WORKFLOW: Final = "DeploymentWorkflow"
ROLLOUT_WORKFLOW: Final = "RolloutWorkflow"
HOST_PATCH_WORKFLOW: Final = "HostPatchWorkflow"


class Activity:
    """Every activity a workflow calls; the worker registers one implementation of each."""

    # compute
    REQUEST_INSTANCES: Final = "request_instances"
    WATCH_INSTANCES: Final = "watch_instances"  # a long poll: only workflows on the old path
    GET_INSTANCES: Final = "get_instances"
    DELETE_INSTANCES: Final = "delete_instances"
    # network
    APPLY_ROUTE: Final = "apply_route"
    REMOVE_ROUTE: Final = "remove_route"
    # secrets
    ENSURE_KEYS: Final = "ensure_keys"
    DELETE_KEYS: Final = "delete_keys"
    # monitor
    QUERY_WINDOW: Final = "query_window"
    READ_AZURE_METRIC: Final = "read_azure_metric"
    # an endpoint changed through its workflow
    SET_ROLLOUT_TRAFFIC: Final = "set_rollout_traffic"
    RETIRE_DEPLOYMENT: Final = "retire_deployment"
    PATCH_DEPLOYMENT: Final = "patch_deployment"
    # network: the gateways' own host patch (their scale set onto the newest image)
    PATCH_GATEWAYS: Final = "patch_gateways"


class EndpointUpdate:
    UPDATE_ENDPOINT: Final = "update_endpoint"
    DELETE_ENDPOINT: Final = "delete_endpoint"
    CREATE_DEPLOYMENT: Final = "create_deployment"
    UPDATE_DEPLOYMENT: Final = "update_deployment"
    DELETE_DEPLOYMENT: Final = "delete_deployment"
    REGENERATE_KEYS: Final = "regenerate_keys"
    START_ROLLOUT: Final = "start_rollout"
    SET_ROLLOUT_TRAFFIC: Final = "set_rollout_traffic"


class EndpointSignal:
    DEPLOYMENT_REPORTED: Final = "deployment_reported"
    END_ROLLOUT: Final = "end_rollout"


class EndpointQuery:
    DESCRIBE: Final = "describe"


class DeploymentSignal:
    UPDATE: Final = "update"
    DELETE: Final = "delete"
    ROLLOUT: Final = "rollout"
    # The worker's instance watcher: the deployment's instances changed (a DeploymentInstances).
    INSTANCES_CHANGED: Final = "instances_changed"


class Patch:
    """`workflow.patched` ids. Each is a marker in the history of every workflow that took the
    new branch: never rename or reuse one; drop one only once no running workflow predates it."""

    # DeploymentWorkflow learns of instance changes from the watcher's signals, not a long poll.
    INSTANCES_BY_SIGNAL: Final = "deployment-instances-by-signal"
    # EndpointWorkflow tries a failed route push again on the lagging gateways' cadence, not at once.
    PUSH_FAILURE_BACKOFF: Final = "endpoint-push-failure-backoff"
    # DeploymentWorkflow reports Updating, not Succeeded, once a failed update is rolled back
    # (until its Failed report), so `update --wait` never reads the rollback as success.
    ROLLBACK_REPORTS_UPDATING: Final = "deployment-rollback-reports-updating"
    # HostPatchWorkflow patches the gateways (their scale set on azure) after the deployments.
    HOST_PATCH_GATEWAYS: Final = "host-patch-gateways"


class RolloutSignal:
    PAUSE: Final = "pause"
    RESUME: Final = "resume"
    PROMOTE: Final = "promote"
    ROLLBACK: Final = "rollback"
    UNDO: Final = "undo"


class RolloutQuery:
    STATUS: Final = "status"


class HostPatchQuery:
    PROGRESS: Final = "progress"


def declared(names: type) -> dict[str, str]:
    """The constants one of the classes above declares (attribute -> name)."""
    return {key: value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)}
