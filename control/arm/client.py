"""The client façade over the REST API: what `tidegate --api URL` talks to instead of Temporal.

It answers the same calls as `control.facade.Tidegate` and `control.rollouts.Rollouts` (the ones
the CLI makes), so a command is the same either way. Specs go out through the ARM mappers in
control/arm/resources.py; long-running operations are polled to their end; ARM errors come back
as the façade's exceptions, with the server's message (which is the façade's own message on
the API's side), so the CLI prints the same `ERROR:` lines and exit codes.

Code, model and conda paths are sent as absolute paths: the API reads them on its own machine
(there is no asset upload yet), so `--api` needs the API on this machine or shared paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activities.local.artifacts import version_key
from config.contract.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OperationFailed,
    PreconditionFailed,
    TidegateError,
)
from config.contract.names import RolloutSignal
from config.contract.rollout import Plan
from config.contract.state import EndpointRecord, KeyType
from config.contract.workflows import UpdateEndpointInput
from config.rollout import RolloutSpec
from config.security import ControlAccessError, control_client_ssl, read_control_token
from config.settings import Settings
from config.specs import DeploymentSpec, EndpointSpec, is_asset_ref
from control.arm.resources import (
    PROVIDER,
    ArmDeployment,
    deployment_request,
    deployment_spec,
    endpoint_request,
    read_model,
)
from control.models import archive, model_view
from control.rollouts import follow_until_ended

log = structlog.get_logger("control.arm.client")

API_VERSION = "2024-04-01"
# One workspace is served; these names are echoed in ids and otherwise ignored (as -g/-w are).
WORKSPACE = f"/subscriptions/tidegate/resourceGroups/local/providers/{PROVIDER}/workspaces/local"
POLL_SECONDS = 0.25
ROLLOUT_POLL_SECONDS = 0.5
_ERRORS: dict[int, type[TidegateError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
}
_AUTH_FROM_ARM = {"Key": "key", "AMLToken": "aml_token"}
_STATES = {"running": None, "succeeded": "Succeeded", "rolled_back": "RolledBack", "paused": "Paused"}


class ArmErrorBody(BaseModel):
    """ARM's ``{"error": {...}}``, read leniently (a proxy in between may answer otherwise)."""

    model_config = ConfigDict(extra="ignore")

    code: str = "Error"
    message: str = ""
    target: str | None = None


class Answer(BaseModel):
    status: int
    headers: dict[str, str] = Field(description="names lower-cased")
    body: Any = None


def _error(answer: Answer) -> TidegateError:
    """The façade's exception for an ARM error answer, with the server's message."""
    raw = answer.body.get("error") if isinstance(answer.body, dict) else None
    try:
        error = ArmErrorBody.model_validate(raw) if isinstance(raw, dict) else None
    except ValidationError:
        error = None
    message = error.message if error is not None and error.message else f"HTTP {answer.status}"
    # A field problem names its ARM path; other refusals carry the façade's own message as is.
    if error is not None and error.code == "ValidationError" and error.target and error.target not in message:
        message = f"{error.target}: {message}"
    kind = _ERRORS.get(answer.status, TidegateError)
    return kind(message)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path is not None else None


def _with_absolute_paths(spec: DeploymentSpec) -> DeploymentSpec:
    """The API reads paths on its own machine: never send one relative to this directory."""
    update: dict[str, Any] = {}
    if spec.code_configuration is not None and not is_asset_ref(spec.code_configuration.code):
        code = spec.code_configuration
        update["code_configuration"] = code.model_copy(update={"code": _absolute(code.code)})
    if spec.model is not None and not isinstance(spec.model, str) and spec.model.path is not None:
        update["model"] = spec.model.model_copy(update={"path": _absolute(spec.model.path)})
    environment = spec.environment
    if environment is not None and not isinstance(environment, str):
        if isinstance(environment.conda_file, str):
            update["environment"] = environment.model_copy(
                update={"conda_file": _absolute(environment.conda_file)}
            )
    return spec.model_copy(update=update)


def _record(resource: dict[str, Any]) -> EndpointRecord:
    """What the CLI reads of an endpoint (name, auth, split, tags...) from ARM's resource."""
    props = resource.get("properties", {})
    return EndpointRecord(
        name=resource["name"],
        description=props.get("description"),
        tags=dict(resource.get("tags") or {}),
        auth_mode=_AUTH_FROM_ARM.get(props.get("authMode", "Key"), "key"),
        traffic=dict(props.get("traffic") or {}),
        mirror_traffic=dict(props.get("mirrorTraffic") or {}),
        provisioning_state=props.get("provisioningState", "Succeeded"),
        properties=dict(props.get("properties") or {}),
    )


class RestTidegate:
    """`Tidegate`'s calls, over the REST API at `base_url`."""

    def __init__(self, settings: Settings, base_url: str) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self._operations: dict[tuple[str, str], str] = {}  # (endpoint, deployment) -> status URL

    @classmethod
    async def connect(cls, settings: Settings, base_url: str) -> RestTidegate:
        client = cls(settings, base_url)
        await client.call("GET", WORKSPACE)  # reachable, and the credential is accepted
        return client

    def rollouts(self) -> RestRollouts:
        return RestRollouts(self)

    # ---- transport -----------------------------------------------------------------------
    def _open(self) -> aiohttp.ClientSession:
        """A session per request: nothing to close when a command ends (the CLI leaves with
        os._exit), and a loopback connection costs little next to the call itself."""
        ssl = control_client_ssl(self.settings) if self.base_url.startswith("https:") else None
        return aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {read_control_token(self.settings)}"},
            connector=aiohttp.TCPConnector(ssl=ssl if ssl is not None else True),
        )

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Answer:
        """One request; an ARM error answer raises the façade's exception for it."""
        answer = await self.request(method, path, body, headers=headers, query=query)
        if answer.status == 401:
            raise ControlAccessError(
                f"the API at {self.base_url} refused the control credential (401); use the one in "
                "$TIDEGATE_HOME/control.token of the API's machine, or TIDEGATE_CONTROL_TOKEN"
            )
        if answer.status >= 400:
            raise _error(answer)
        return answer

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Answer:
        url = self._url(path)
        params = None if "api-version=" in url else {"api-version": API_VERSION, **(query or {})}
        payload = {"data": body} if isinstance(body, bytes) else {"json": body}
        try:
            async with self._open() as session:
                async with session.request(
                    method, url, headers=headers, params=params, **payload
                ) as response:
                    raw = await response.read()
                    status = response.status
                    got = {name.lower(): value for name, value in response.headers.items()}
        except aiohttp.ClientError as err:
            raise TidegateError(
                f"cannot reach the API at {self.base_url}: is `tidegate up` running there? ({err})"
            ) from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        log.debug("rest.call", method=method, path=url.removeprefix(self.base_url), status=status)
        return Answer(status=status, headers=got, body=parsed)

    def _url(self, path: str) -> str:
        """A path on the API, or a URL the API gave (an operation, a nextLink) taken onto the
        API's own origin: the credential goes nowhere else, whatever a link names."""
        if not path.startswith(("http://", "https://")):
            return f"{self.base_url}{path}"
        given = urlsplit(path)
        return f"{self.base_url}{given.path}" + (f"?{given.query}" if given.query else "")

    async def wait_operation(self, answer: Answer) -> None:
        """Poll the operation an answer names (Azure-AsyncOperation) until it ends; a failed
        or overtaken one raises OperationFailed with its message."""
        url = answer.headers.get("azure-asyncoperation")
        if url is None:
            return
        await self._poll(url)

    async def _poll(self, url: str) -> None:
        while True:
            status = (await self.call("GET", url)).body
            if status["status"] != "InProgress":
                break
            await asyncio.sleep(POLL_SECONDS)
        if status["status"] != "Succeeded":
            error = status.get("error") or {}
            raise OperationFailed(error.get("message") or f"operation {status['status']}")

    # ---- models (`tidegate model`): versioned assets, files through `POST uploads` ----------
    async def create_model(
        self, name: str, version: str, path: Path, description: str | None = None
    ) -> dict[str, Any]:
        data = await asyncio.to_thread(archive, path)
        headers = {"Content-Type": "application/gzip"}
        uploaded = (await self.call("POST", f"{WORKSPACE}/uploads", data, headers=headers)).body
        body = {"properties": {"modelUri": uploaded["uri"], "description": description}}
        answer = await self.call("PUT", f"{WORKSPACE}/models/{name}/versions/{version}", body)
        return model_view(answer.body)

    async def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        names = [name] if name else [m["name"] for m in await self._list(f"{WORKSPACE}/models")]
        found = []
        for each in sorted(names):
            versions = await self._list(f"{WORKSPACE}/models/{each}/versions")
            found += sorted((model_view(v) for v in versions), key=lambda m: version_key(m["version"]))
        return found

    async def show_model(self, name: str, version: str) -> dict[str, Any]:
        return model_view((await self.call("GET", f"{WORKSPACE}/models/{name}/versions/{version}")).body)

    # ---- endpoints -----------------------------------------------------------------------
    def _endpoint(self, name: str) -> str:
        return f"{WORKSPACE}/onlineEndpoints/{name}"

    async def _resource(self, name: str) -> Answer:
        return await self.call("GET", self._endpoint(name))

    async def describe(self, name: str) -> EndpointRecord:
        return _record((await self._resource(name)).body)

    async def create_endpoint(self, spec: EndpointSpec, *, wait: bool = True) -> dict[str, Any]:
        try:  # If-None-Match: create only, never replace one that exists
            created = await self.call(
                "PUT", self._endpoint(spec.name), endpoint_request(spec), headers={"If-None-Match": "*"}
            )
        except PreconditionFailed:
            raise Conflict(f"endpoint {spec.name} already exists") from None
        if wait:
            await self.wait_operation(created)
        return await self.show_endpoint(spec.name)

    async def show_endpoint(self, name: str) -> dict[str, Any]:
        resource = (await self._resource(name)).body
        return self.endpoint_view(resource, await self._deployment_names(name))

    async def _deployment_names(self, endpoint: str) -> list[str]:
        return sorted(d["name"] for d in await self._list(f"{self._endpoint(endpoint)}/deployments"))

    async def _list(self, path: str) -> list[dict[str, Any]]:
        """Every page of an ARM list."""
        items: list[dict[str, Any]] = []
        page = (await self.call("GET", path)).body
        items += page["value"]
        while page.get("nextLink"):
            page = (await self.call("GET", page["nextLink"])).body
            items += page["value"]
        return items

    async def list_endpoints(self) -> list[dict[str, Any]]:
        resources = await self._list(f"{WORKSPACE}/onlineEndpoints")
        return [self.endpoint_view(r, await self._deployment_names(r["name"])) for r in resources]

    async def update_endpoint(self, name: str, change: UpdateEndpointInput) -> dict[str, Any]:
        """PATCH for tags, description and the split; PUT (If-Match: the etag read) when
        properties change too, since ARM's PATCH does not take them."""
        current = await self._resource(name)
        resource = current.body
        props = resource["properties"]
        if change.properties is None:
            patch: dict[str, Any] = {"properties": {}}
            if change.tags is not None:
                patch["tags"] = change.tags
            for field, arm in (("description", "description"), ("traffic", "traffic")):
                if getattr(change, field) is not None:
                    patch["properties"][arm] = getattr(change, field)
            if change.mirror_traffic is not None:
                patch["properties"]["mirrorTraffic"] = change.mirror_traffic
            await self.call("PATCH", self._endpoint(name), patch)
        else:
            body = {
                "location": resource.get("location", "local"),
                "tags": change.tags if change.tags is not None else resource.get("tags", {}),
                "properties": {
                    "authMode": props["authMode"],
                    "description": change.description
                    if change.description is not None
                    else props.get("description"),
                    "properties": change.properties,
                    **({"traffic": change.traffic} if change.traffic is not None else {}),
                    **({"mirrorTraffic": change.mirror_traffic} if change.mirror_traffic is not None else {}),
                },
            }
            etag = current.headers.get("etag")
            replaced = await self.call(
                "PUT", self._endpoint(name), body, headers={"If-Match": etag} if etag else None
            )
            await self.wait_operation(replaced)
        return await self.show_endpoint(name)

    async def delete_endpoint(self, name: str, *, wait: bool = True) -> None:
        await self._resource(name)  # NotFound names the endpoint, as the direct path does
        deleted = await self.call("DELETE", self._endpoint(name))
        if wait:
            await self.wait_operation(deleted)

    async def get_credentials(self, name: str) -> dict[str, Any]:
        record = await self.describe(name)
        verb = "token" if record.auth_mode == "aml_token" else "listKeys"
        return dict((await self.call("POST", f"{self._endpoint(name)}/{verb}")).body)

    async def regenerate_keys(self, name: str, key_type: KeyType) -> None:
        body = {"keyType": key_type.capitalize()}
        await self.call("POST", f"{self._endpoint(name)}/regenerateKeys", body)

    async def invoke(
        self, name: str, body: bytes, *, deployment: str | None = None
    ) -> tuple[int, bytes, str | None]:
        """POST to the scoring URI the API gives, with the key (or token) listKeys gives."""
        from control.facade import post_score

        resource = (await self._resource(name)).body
        credentials = await self.get_credentials(name)
        secret = credentials.get("primaryKey") or credentials["accessToken"]
        return await post_score(
            self.settings, resource["properties"]["scoringUri"], body, secret, deployment=deployment
        )

    # ---- deployments ---------------------------------------------------------------------
    def _deployment(self, endpoint: str, name: str) -> str:
        return f"{self._endpoint(endpoint)}/deployments/{name}"

    async def create_deployment(self, spec: DeploymentSpec) -> dict[str, Any]:
        await self._resource(spec.endpoint_name)
        body = deployment_request(_with_absolute_paths(spec))
        try:  # If-None-Match: create only, never replace one that exists
            created = await self.call(
                "PUT", self._deployment(spec.endpoint_name, spec.name), body, headers={"If-None-Match": "*"}
            )
        except PreconditionFailed:
            raise Conflict(
                f"deployment {spec.name} already exists in endpoint {spec.endpoint_name}; "
                "use `online-deployment update`"
            ) from None
        self._remember(spec, created)
        return self.deployment_view(spec.endpoint_name, created.body)

    async def update_deployment(self, spec: DeploymentSpec) -> dict[str, Any]:
        current = await self.call("GET", self._deployment(spec.endpoint_name, spec.name))
        body = deployment_request(_with_absolute_paths(spec))
        etag = current.headers.get("etag")
        updated = await self.call(
            "PUT",
            self._deployment(spec.endpoint_name, spec.name),
            body,
            headers={"If-Match": etag} if etag else None,
        )
        self._remember(spec, updated)
        return self.deployment_view(spec.endpoint_name, updated.body)

    def _remember(self, spec: DeploymentSpec, answer: Answer) -> None:
        url = answer.headers.get("azure-asyncoperation")
        if url is not None:
            self._operations[(spec.endpoint_name, spec.name)] = url

    async def wait_deployment(self, endpoint: str, name: str) -> dict[str, Any]:
        """Wait for this client's last change to the deployment (its operation); without one,
        until its provisioning state settles."""
        url = self._operations.pop((endpoint, name), None)
        if url is not None:
            await self._poll(url)
        while True:
            resource = (await self.call("GET", self._deployment(endpoint, name))).body
            state = resource["properties"]["provisioningState"]
            if state in ("Succeeded", "Failed"):
                break
            await asyncio.sleep(POLL_SECONDS)
        if state == "Failed":
            raise OperationFailed(f"deployment {name} failed")
        return self.deployment_view(endpoint, resource)

    async def show_deployment(self, endpoint: str, name: str) -> dict[str, Any]:
        await self._resource(endpoint)
        resource = (await self.call("GET", self._deployment(endpoint, name))).body
        return self.deployment_view(endpoint, resource)

    async def deployment_spec(self, endpoint: str, name: str) -> dict[str, Any]:
        resource = (await self.call("GET", self._deployment(endpoint, name))).body
        spec = deployment_spec(endpoint, name, read_model(ArmDeployment, resource))
        return spec.model_dump(mode="json", by_alias=True, exclude_none=True)

    async def list_deployments(self, endpoint: str) -> list[dict[str, Any]]:
        resources = await self._list(f"{self._endpoint(endpoint)}/deployments")
        return [self.deployment_view(endpoint, r) for r in sorted(resources, key=lambda r: r["name"])]

    async def delete_deployment(self, endpoint: str, name: str, *, wait: bool = True) -> None:
        await self.show_deployment(endpoint, name)
        deleted = await self.call("DELETE", self._deployment(endpoint, name))
        if wait:
            await self.wait_operation(deleted)

    async def get_logs(self, endpoint: str, name: str, lines: int) -> str:
        answer = await self.call("POST", f"{self._deployment(endpoint, name)}/getLogs", {"tail": lines})
        return str(answer.body.get("content", ""))

    # ---- views: the same shape `Tidegate` prints ----------------------------------------
    def endpoint_view(self, resource: dict[str, Any], deployments: list[str]) -> dict[str, Any]:
        """`show`'s fields from ARM's resource, Tidegate's own from ``properties.tidegate``."""
        record = _record(resource)
        props = resource["properties"]
        own = props.get("tidegate") or {}
        return {
            "name": record.name,
            "id": f"/tidegate/onlineEndpoints/{record.name}",
            "kind": resource.get("kind", "Managed"),
            "auth_mode": record.auth_mode,
            "description": record.description,
            "tags": record.tags,
            "traffic": record.traffic,
            "mirror_traffic": record.mirror_traffic,
            "provisioning_state": record.provisioning_state,
            "scoring_uri": props.get("scoringUri"),
            "scoring_uri_http": own.get("scoringUriHttp"),
            "openapi_uri": props.get("swaggerUri"),
            "public_network_access": str(props.get("publicNetworkAccess", "Enabled")).lower(),
            "lagging_gateways": dict(own.get("laggingGateways") or {}),
            "properties": {
                **record.properties,
                "created_at": own.get("createdAt"),
                "route_generation": own.get("routeGeneration"),
                "deployments": deployments,
            },
        }

    def deployment_view(self, endpoint: str, resource: dict[str, Any]) -> dict[str, Any]:
        """The deployment's spec as the YAML gives it (read back through the ARM mapper), with
        its state and, from ``properties.tidegate``, its health and instances."""
        spec = deployment_spec(endpoint, resource["name"], read_model(ArmDeployment, resource))
        view = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        view.pop("$schema", None)
        view.update(
            {
                "name": resource["name"],
                "endpoint_name": endpoint,
                "type": "managed",
                "provisioning_state": resource["properties"].get("provisioningState"),
                "instance_count": (resource.get("sku") or {}).get("capacity"),
                **(resource["properties"].get("tidegate") or {}),
            }
        )
        return view


class RestRollouts:
    """`Rollouts`' calls over the REST API: ``.../onlineEndpoints/{e}/rollouts``."""

    def __init__(self, client: RestTidegate) -> None:
        self._client = client

    def _rollouts(self, endpoint: str) -> str:
        return f"{self._client._endpoint(endpoint)}/rollouts"

    @staticmethod
    def _body(to: str, spec: RolloutSpec, baseline: str | None) -> dict[str, Any]:
        return {"to": to, "baseline": baseline, "spec": spec.model_dump(mode="json", exclude_unset=True)}

    async def plan(self, endpoint: str, to: str, spec: RolloutSpec, baseline: str | None = None) -> Plan:
        answer = await self._client.call(
            "POST", self._rollouts(endpoint), self._body(to, spec, baseline), query={"dryRun": "true"}
        )
        return Plan.model_validate(answer.body["plan"])

    async def start(self, plan: Plan, spec: RolloutSpec) -> str:
        """Start the plan `plan` describes (the API plans it again from the same spec)."""
        answer = await self._client.call(
            "POST", self._rollouts(plan.endpoint), self._body(plan.canary, spec, plan.baseline)
        )
        return str(answer.body["properties"]["id"])

    async def current_id(self, endpoint: str) -> str:
        rows = await self._client._list(self._rollouts(endpoint))
        if not rows:
            await self._client._resource(endpoint)  # NotFound for a missing endpoint first
            raise NotFound(f"endpoint {endpoint} has had no rollout")
        return str(rows[-1]["properties"]["id"])  # listed by number: the last is the newest

    @staticmethod
    def _number(rid: str) -> str:
        return rid.rsplit("/", 1)[-1]

    async def status(self, endpoint: str, rid: str | None = None) -> dict[str, Any]:
        rid = rid or await self.current_id(endpoint)
        answer = await self._client.call("GET", f"{self._rollouts(endpoint)}/{self._number(rid)}")
        return dict(answer.body["properties"])

    async def wait(
        self, endpoint: str, rid: str, on_progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        return await follow_until_ended(lambda: self.status(endpoint, rid), on_progress, ROLLOUT_POLL_SECONDS)

    async def signal(self, endpoint: str, name: str, reason: str | None = None) -> str:
        rid = await self.current_id(endpoint)
        with_reason = name in (RolloutSignal.PAUSE, RolloutSignal.PROMOTE, RolloutSignal.ROLLBACK)
        body = {"reason": reason} if with_reason and reason else {}
        await self._client.call("POST", f"{self._rollouts(endpoint)}/{self._number(rid)}/{name}", body)
        return rid

    async def retry(self, endpoint: str) -> tuple[str, Plan]:
        raise TidegateError("rollout retry is not served by the REST API yet; run it without --api")

    async def list(self, endpoint: str | None, state: str | None) -> list[dict[str, Any]]:
        """Newest first, as the direct path lists them; `state` filtered here (the API lists all)."""
        names = [endpoint] if endpoint else [e["name"] for e in await self._client.list_endpoints()]
        rows = []
        for name in names:
            rows += [item["properties"] for item in await self._client._list(self._rollouts(name))]
        if state == "running":
            rows = [r for r in rows if r.get("status") == "RUNNING"]
        elif state is not None:
            rows = [r for r in rows if r.get("phase") == _STATES[state]]
        return sorted(rows, key=lambda r: r.get("started") or "", reverse=True)
