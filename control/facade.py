"""The client façade over Temporal: the one way the CLI changes anything."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.providers import provider
from config.contract.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OperationFailed,
    PreconditionFailed,
    TidegateError,
)
from config.contract.ids import endpoint_id, endpoint_of, host_patch_id
from config.contract.names import ENDPOINT_WORKFLOW
from config.contract.state import DeploymentEntry, EndpointRecord, KeyType
from config.contract.temporal_client import connect
from config.contract.workflows import (
    CreateDeploymentInput,
    DeleteDeploymentInput,
    EndpointWorkflowInput,
    HostPatchInput,
    RegenerateKeysInput,
    UpdateDeploymentInput,
    UpdateEndpointInput,
)
from config.security import control_session
from config.settings import Settings
from config.specs import DeploymentSpec, EndpointSpec, endpoint_limits
from config.tokens import issue_token
from control.arm.resources import deployment_status
from control.platform_metrics import platform_metrics
from control.targets import build_target
from workflows.endpoint import EndpointWorkflow
from workflows.patch import HostPatchWorkflow

if TYPE_CHECKING:
    from control.rollouts import Rollouts

POLL_SECONDS = 0.25
_DONE = ("Succeeded", "Failed")
# An update's refusal (its ApplicationError type) as the error the caller sees; others: BadRequest.
_UPDATE_ERRORS: dict[str, type[TidegateError]] = {
    "Conflict": Conflict,
    "PreconditionFailed": PreconditionFailed,
}


async def post_score(
    settings: Settings, url: str, body: bytes, secret: str, *, deployment: str | None = None
) -> tuple[int, bytes, str | None]:
    """POST to a scoring URI as a client would (the local CA trusted); status, body, and the
    deployment that answered."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    context = ssl.create_default_context(cafile=str(settings.tls_dir / "ca.pem"))
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers, ssl=context) as response:
            return response.status, await response.read(), response.headers.get("azureml-model-deployment")


class Tidegate:
    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings = settings
        self.client = client
        # Keys and artifacts through their providers' protocols, whichever the settings choose.
        self._secrets = provider("secrets", settings)
        self._artifacts = provider("artifacts", settings)

    @classmethod
    async def connect(cls, settings: Settings) -> Tidegate:
        try:
            client = await connect(settings)
        except RuntimeError as err:
            raise TidegateError(
                f"cannot reach Temporal at {settings.temporal_target}: is `tidegate up` running? ({err})"
            ) from None
        return cls(settings, client)

    # ---- endpoints -----------------------------------------------------------------------
    async def create_endpoint(self, spec: EndpointSpec, *, wait: bool = True) -> dict[str, Any]:
        if spec.traffic and any(v > 0 for v in spec.traffic.values()):
            raise BadRequest(
                "traffic: a new endpoint has no deployments yet; create them, then "
                "`online-endpoint update --traffic`"
            )
        clash = [n for n in await self._running_endpoints() if n.lower() == spec.name.lower()]
        if clash:  # one made before names were lower-cased would share the gateway's route
            raise Conflict(f"endpoint {clash[0]} already exists (endpoint names are case-insensitive)")
        limits = endpoint_limits(spec.properties, default_max_request_bytes=self.settings.max_request_bytes)
        state = EndpointRecord(
            name=spec.name,
            description=spec.description,
            tags=dict(spec.tags or {}),
            properties=dict(spec.properties),
            auth_mode=spec.auth_mode,
            max_request_bytes=limits.max_request_bytes,
            max_requests_per_second=limits.max_requests_per_second,
            retry_dropped_requests=limits.retry_dropped_requests,
        )
        try:
            await self.client.start_workflow(
                EndpointWorkflow.run,
                EndpointWorkflowInput(
                    state=state,
                    repush_seconds=self.settings.route_repush_seconds,
                    default_max_request_bytes=self.settings.max_request_bytes,
                ),
                id=endpoint_id(spec.name),
                task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
        except WorkflowAlreadyStartedError:
            raise Conflict(f"endpoint {spec.name} already exists") from None
        if wait:
            await self._wait_endpoint(spec.name, lambda s: s.provisioning_state != "Creating")
        return await self.show_endpoint(spec.name)

    async def describe(self, name: str) -> EndpointRecord:
        handle = self._handle(name)
        try:
            described = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(f"endpoint {name} does not exist") from None
            raise
        if described.status != WorkflowExecutionStatus.RUNNING:
            raise NotFound(f"endpoint {name} does not exist")
        return await handle.query(EndpointWorkflow.describe)

    async def show_endpoint(self, name: str) -> dict[str, Any]:
        return self.endpoint_view(await self.describe(name))

    async def _running_endpoints(self) -> set[str]:
        query = f'WorkflowType = "{ENDPOINT_WORKFLOW}" AND ExecutionStatus = "Running"'
        return {endpoint_of(execution.id) async for execution in self.client.list_workflows(query)}

    async def endpoint_records(self) -> list[EndpointRecord]:
        """Every endpoint's state, by name."""
        records = []
        for name in sorted(await self._running_endpoints()):
            try:
                records.append(await self.describe(name))
            except NotFound:
                continue  # deleted between the list and the query
        return records

    async def list_endpoints(self) -> list[dict[str, Any]]:
        return [self.endpoint_view(record) for record in await self.endpoint_records()]

    async def update_endpoint(self, name: str, change: UpdateEndpointInput) -> dict[str, Any]:
        await self.describe(name)
        state = await self.execute_update(name, EndpointWorkflow.update_endpoint, change)
        return self.endpoint_view(EndpointRecord.model_validate(state))

    async def delete_endpoint(self, name: str, *, wait: bool = True) -> None:
        await self.describe(name)
        handle = self._handle(name)
        await self.execute_update(name, EndpointWorkflow.delete_endpoint)
        if wait:
            await handle.result()

    async def get_credentials(self, name: str) -> dict[str, Any]:
        """Azure's answer: the two keys of a `key` endpoint; for `aml_token`, a fresh token with
        its expiry and when to ask again (seconds since the epoch, as Azure's EndpointAuthToken)."""
        state = await self.describe(name)
        if state.auth_mode == "aml_token":
            signing = await self._secrets.signing_key(name)
            if signing is None:
                raise NotFound(f"endpoint {name} has no token signing key yet (is it still being created?)")
            token = issue_token(
                signing, name, now=time.time(), lifetime_seconds=self.settings.token_lifetime_seconds
            )
            return {
                "accessToken": token.access_token,
                "expiryTimeUtc": token.expires_at,
                "refreshAfterTimeUtc": token.refresh_after,
                "tokenType": "Bearer",
            }
        keys = await self._secrets.keys(name)
        if not keys:
            raise NotFound(f"endpoint {name} has no keys (does it exist?)")
        return {"primaryKey": keys["primary"], "secondaryKey": keys["secondary"]}

    async def regenerate_keys(self, name: str, key_type: KeyType) -> None:
        await self.describe(name)
        request = RegenerateKeysInput(key_type=key_type)
        await self.execute_update(name, EndpointWorkflow.regenerate_keys, request)

    async def invoke(
        self, name: str, body: bytes, *, deployment: str | None = None
    ) -> tuple[int, bytes, str | None]:
        """POST to the scoring URI with the primary key, as a client would."""
        state = await self.describe(name)
        credentials = await self.get_credentials(name)
        secret = credentials["primaryKey"] if state.auth_mode == "key" else credentials["accessToken"]
        return await post_score(
            self.settings, self.settings.scoring_uri(name), body, secret, deployment=deployment
        )

    # ---- deployments ---------------------------------------------------------------------
    async def create_deployment(self, spec: DeploymentSpec) -> dict[str, Any]:
        await self.describe(spec.endpoint_name)
        target = build_target(spec, self.settings, self._artifacts)
        record = await self.execute_update(
            spec.endpoint_name,
            EndpointWorkflow.create_deployment,
            CreateDeploymentInput(target=target),
        )
        return self.deployment_view(spec.endpoint_name, DeploymentEntry.model_validate(record))

    async def update_deployment(self, spec: DeploymentSpec, *, if_match: str | None = None) -> dict[str, Any]:
        """`if_match`: refused (PreconditionFailed) unless the deployment's etag is still this."""
        await self.show_deployment(spec.endpoint_name, spec.name)
        target = build_target(spec, self.settings, self._artifacts)
        record = await self.execute_update(
            spec.endpoint_name,
            EndpointWorkflow.update_deployment,
            UpdateDeploymentInput(target=target, if_match=if_match),
        )
        return self.deployment_view(spec.endpoint_name, DeploymentEntry.model_validate(record))

    async def wait_deployment(self, endpoint: str, name: str) -> dict[str, Any]:
        """Wait until the deployment settles; OperationFailed carries its reason."""
        while True:
            state = await self.describe(endpoint)
            record = state.deployments.get(name)
            if record is None:
                raise NotFound(f"deployment {name} does not exist in endpoint {endpoint}")
            if record.provisioning_state in _DONE:
                break
            await asyncio.sleep(POLL_SECONDS)
        if record.provisioning_state == "Failed":
            raise OperationFailed(f"deployment {name} failed: {record.error}")
        return self.deployment_view(endpoint, record)

    async def wait_deployment_gone(self, endpoint: str, name: str) -> None:
        await self._wait_endpoint(endpoint, lambda s: name not in s.deployments)

    async def show_deployment(self, endpoint: str, name: str) -> dict[str, Any]:
        state = await self.describe(endpoint)
        record = state.deployments.get(name)
        if record is None:
            raise NotFound(f"deployment {name} does not exist in endpoint {endpoint}")
        view = self.deployment_view(endpoint, record)
        metrics = await platform_metrics(self.settings, endpoint, name)
        if metrics is not None:
            view["platform_metrics"] = metrics
        return view

    async def deployment_spec(self, endpoint: str, name: str) -> dict[str, Any]:
        state = await self.describe(endpoint)
        record = state.deployments.get(name)
        if record is None:
            raise NotFound(f"deployment {name} does not exist in endpoint {endpoint}")
        return dict(record.target.spec)

    async def list_deployments(self, endpoint: str) -> list[dict[str, Any]]:
        state = await self.describe(endpoint)
        return [self.deployment_view(endpoint, r) for _, r in sorted(state.deployments.items())]

    async def delete_deployment(self, endpoint: str, name: str, *, wait: bool = True) -> None:
        await self.show_deployment(endpoint, name)
        await self.execute_update(
            endpoint, EndpointWorkflow.delete_deployment, DeleteDeploymentInput(name=name)
        )
        if wait:
            await self.wait_deployment_gone(endpoint, name)

    async def get_logs(
        self,
        endpoint: str,
        name: str,
        lines: int,
        *,
        request_id: str | None = None,
        instance: str | None = None,
    ) -> str:
        """The last ``lines`` of each instance's log (of ``instance`` only, when given); with
        ``request_id``, that request's access-log line from every gateway and what each
        instance logged while serving it."""
        await self.show_deployment(endpoint, name)
        url = f"{self.settings.host_target}/deployments/{endpoint}/{name}/logs"
        params = {"request_id": request_id} if request_id is not None else {"lines": str(lines)}
        if request_id is None and instance is not None:
            params["instance"] = instance
        async with control_session(self.settings) as session:
            async with session.get(url, params=params) as response:
                if response.status == 404:
                    instances = ""
                else:
                    response.raise_for_status()
                    instances = await response.text()
            if request_id is None:
                return instances
            access = await self._access_lines(session, endpoint, request_id)
        part = "\n".join(["=== gateway access log ===", *(json.dumps(line) for line in access)])
        return part + "\n\n" + instances if instances else part + "\n"

    async def _access_lines(
        self, session: aiohttp.ClientSession, endpoint: str, request_id: str
    ) -> list[dict[str, Any]]:
        """The request's access-log lines for ``endpoint`` from every gateway, by time."""
        found: list[dict[str, Any]] = []
        for admin in self.settings.gateway_admin_targets:
            async with session.get(f"{admin}/access-log", params={"request_id": request_id}) as response:
                response.raise_for_status()
                lines = (await response.json())["lines"]
                found.extend(line for line in lines if line.get("endpoint") == endpoint)
        return sorted(found, key=lambda line: str(line.get("time")))

    # ---- the host ------------------------------------------------------------------------
    async def host_patch(
        self, endpoint: str | None = None, deployment: str | None = None, *, wait: bool = True
    ) -> dict[str, Any]:
        """Start a HostPatchWorkflow over every (or the named) deployment; its id and results.
        A patch of everything (no endpoint or deployment named) patches the gateways after the
        deployments (where they are VMs of their own)."""
        names = [endpoint] if endpoint else [e["name"] for e in await self.list_endpoints()]
        pairs: list[tuple[str, str]] = []
        for name in names:
            state = await self.describe(name)
            for dep in sorted(state.deployments):
                if deployment is None or dep == deployment:
                    pairs.append((name, dep))
        if not pairs:
            raise NotFound("no deployment to patch")
        handle = await self.client.start_workflow(
            HostPatchWorkflow.run,
            HostPatchInput(deployments=pairs, gateways=endpoint is None and deployment is None),
            id=host_patch_id(datetime.now(UTC)),
            task_queue=self.settings.task_queue,
        )
        if not wait:
            return {"id": handle.id, "deployments": [f"{e}/{d}" for e, d in pairs]}
        result = await handle.result()
        shown: dict[str, Any] = {"id": handle.id, "results": [r.model_dump() for r in result.results]}
        if result.gateways is not None:
            shown["gateways"] = result.gateways.model_dump()
        return shown

    def rollouts(self) -> Rollouts:
        """The rollout half of the façade (plan, start, steer, list)."""
        from control.rollouts import Rollouts

        return Rollouts(self)

    # ---- views: what `show` prints, in Azure's shape -------------------------------------
    def endpoint_view(self, state: EndpointRecord) -> dict[str, Any]:
        name = state.name
        return {
            "name": name,
            "id": f"/tidegate/onlineEndpoints/{name}",
            "kind": "Managed",
            "auth_mode": state.auth_mode,
            "description": state.description,
            "tags": state.tags,
            "traffic": state.traffic,
            "mirror_traffic": state.mirror_traffic,
            "provisioning_state": state.provisioning_state,
            "scoring_uri": self.settings.scoring_uri(name),
            "scoring_uri_http": self.settings.scoring_uri_http(name),
            "openapi_uri": self.settings.openapi_uri(name),
            "public_network_access": "enabled",
            "lagging_gateways": state.lagging_gateways,
            "properties": {
                **state.properties,
                "created_at": state.created_at,
                "route_generation": state.generation,
                "deployments": sorted(state.deployments),
            },
        }

    def deployment_view(self, endpoint: str, record: DeploymentEntry) -> dict[str, Any]:
        view = dict(record.target.spec)
        view.pop("$schema", None)
        view.update(
            {
                "name": record.name,
                "endpoint_name": endpoint,
                "type": "managed",
                "provisioning_state": record.provisioning_state,
                "instance_count": record.instance_count or record.target.instance_count,
                **deployment_status(record),  # the REST API's resource carries the same
            }
        )
        return view

    # ---- plumbing ------------------------------------------------------------------------
    def _handle(self, name: str) -> WorkflowHandle:
        return self.client.get_workflow_handle(endpoint_id(name))

    async def execute_update(self, name: str, update: Any, *args: Any) -> Any:
        try:
            return await self._handle(name).execute_update(update, *args)
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            kind = cause.type if isinstance(cause, ApplicationError) else None
            error = _UPDATE_ERRORS.get(kind or "", BadRequest)
            raise error(message) from None

    async def _wait_endpoint(self, name: str, predicate: Callable[[EndpointRecord], bool]) -> None:
        while not predicate(await self.describe(name)):
            await asyncio.sleep(POLL_SECONDS)
