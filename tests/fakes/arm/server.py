"""The fake ARM server: scale sets, their VMs and NICs, operation-status resources, faults.

Field names are those of Microsoft.Compute 2026-04-01 (scale sets, their VMs, operation status),
Microsoft.Compute 2026-03-03 (a gallery image's versions),
Microsoft.Network 2018-10-01 (a scale set's network interfaces) and Microsoft.Network 2026-03-01
(public IPs, load balancers, NSGs: tests/fakes/arm/network.py): the versions azure-mgmt-compute
39 and azure-mgmt-network 33.1 send, whose models are generated from azure-rest-api-specs. Any
other api-version is refused as ARM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.arm.network import KINDS as NETWORK_KINDS
from tests.fakes.arm.network import NETWORK_API_VERSION, FakeNetwork
from tests.fakes.arm.vms import HealthProbe, Image, Vm

COMPUTE_API_VERSION = "2026-04-01"
GALLERY_API_VERSION = "2026-03-03"
NETWORK_VMSS_NIC_API_VERSION = "2018-10-01"

_RG = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute"
SCALE_SETS = _RG + "/virtualMachineScaleSets"
SCALE_SET = SCALE_SETS + "/{name}"
VM = SCALE_SET + "/virtualMachines/{instance}"
CONSOLE = "/_fake/boot-diagnostics/{sub}/{rg}/{name}/{instance}/serialconsole.log"
GALLERY_IMAGE = _RG + "/galleries/{gallery}/images/{image}"
UPGRADE_MODES = ("Automatic", "Manual", "Rolling")
OPERATION = "/subscriptions/{sub}/providers/{provider}/locations/{location}/operations/{op}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Operation:
    """An operation-status resource: InProgress for `polls` reads, then Succeeded or Failed."""

    id: str
    name: str
    location: str
    polls: int
    on_success: Callable[[], None]
    on_failure: Callable[[], None] = lambda: None
    error: tuple[str, str] | None = None
    status: str = "InProgress"
    start_time: str = field(default_factory=now)
    end_time: str | None = None

    def advance(self) -> None:
        if self.status != "InProgress":
            return
        self.polls -= 1
        if self.polls > 0:
            return
        self.end_time = now()
        if self.error is None:
            self.status = "Succeeded"
            self.on_success()
        else:
            self.status = "Failed"
            self.on_failure()

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.id, "status": self.status, "startTime": self.start_time}
        if self.end_time:
            out["endTime"] = self.end_time
        if self.status == "Failed" and self.error:
            out["error"] = {"code": self.error[0], "message": self.error[1]}
        return out


@dataclass
class ScaleSet:
    subscription: str
    resource_group: str
    name: str
    location: str
    sku: dict[str, Any]
    tags: dict[str, str]
    properties: dict[str, Any]
    provisioning_state: str = "Creating"
    model_version: int = 1
    next_instance: int = 0
    vms: dict[str, Vm] = field(default_factory=dict)
    unique_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def id(self) -> str:
        return SCALE_SET.format(sub=self.subscription, rg=self.resource_group, name=self.name)

    def model(self) -> dict[str, Any]:
        """What a PUT sets; two PUTs with the same model change nothing."""
        return {"location": self.location, "sku": self.sku, "tags": self.tags, "properties": self.properties}

    def view(self) -> dict[str, Any]:
        properties = copy.deepcopy(self.properties)
        properties["provisioningState"] = self.provisioning_state
        properties["uniqueId"] = self.unique_id
        properties.setdefault("orchestrationMode", "Uniform")
        profile = properties.get("virtualMachineProfile", {})
        os_profile = profile.get("osProfile")
        if isinstance(os_profile, dict):
            os_profile.pop("customData", None)  # ARM never returns custom data
        return {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "location": self.location,
            "tags": self.tags,
            "sku": self.sku,
            "properties": properties,
        }

    def health_probe(self) -> HealthProbe | None:
        extensions = (
            self.properties.get("virtualMachineProfile", {}).get("extensionProfile", {}).get("extensions", [])
        )
        for extension in extensions:
            props = extension.get("properties", {})
            if props.get("type") in ("ApplicationHealthLinux", "ApplicationHealthWindows"):
                settings = props.get("settings", {})
                return HealthProbe(
                    protocol=settings.get("protocol", "http"),
                    port=int(settings.get("port", 80)),
                    request_path=settings.get("requestPath", "/"),
                    interval_seconds=float(settings.get("intervalInSeconds", 5)),
                    number_of_probes=int(settings.get("numberOfProbes", 1)),
                )
        return None

    def custom_data(self) -> str:
        return str(
            self.properties.get("virtualMachineProfile", {}).get("osProfile", {}).get("customData", "")
        )

    def user_data(self) -> str | None:
        data = self.properties.get("virtualMachineProfile", {}).get("userData")
        return str(data) if data is not None else None

    def image_reference(self) -> dict[str, str]:
        profile = self.properties.get("virtualMachineProfile", {})
        return dict(profile.get("storageProfile", {}).get("imageReference", {}))

    def nic_name(self) -> str:
        configs = (
            self.properties.get("virtualMachineProfile", {})
            .get("networkProfile", {})
            .get("networkInterfaceConfigurations", [])
        )
        return str(configs[0]["name"]) if configs else "nic"

    def backend_pools(self) -> list[str]:
        """The load balancer backend pools (ids) the VMs' NIC ip configuration joins."""
        configs = (
            self.properties.get("virtualMachineProfile", {})
            .get("networkProfile", {})
            .get("networkInterfaceConfigurations", [])
        )
        pools: list[str] = []
        for config in configs:
            for ip in (config.get("properties") or {}).get("ipConfigurations") or []:
                for pool in (ip.get("properties") or {}).get("loadBalancerBackendAddressPools") or []:
                    pools.append(str(pool.get("id", "")))
        return pools

    def vm_view(self, vm: Vm, expand: bool, user_data: bool = False) -> dict[str, Any]:
        vm_id = f"{self.id}/virtualMachines/{vm.instance_id}"
        prefix = (
            self.properties.get("virtualMachineProfile", {})
            .get("osProfile", {})
            .get("computerNamePrefix", "")
        )
        computer_name = f"{prefix}{int(vm.instance_id):06x}"
        properties: dict[str, Any] = {
            "latestModelApplied": vm.model_version == self.model_version,
            "vmId": vm.vm_id,
            "provisioningState": "Succeeded",
            "timeCreated": vm.created,
            "osProfile": {"computerName": computer_name},
            "storageProfile": {"imageReference": _with_exact_version(vm.image)},
            "networkProfile": {"networkInterfaces": [{"id": f"{vm_id}/networkInterfaces/{self.nic_name()}"}]},
        }
        if expand:
            power = (
                ("PowerState/running", "VM running") if vm.running else ("PowerState/stopped", "VM stopped")
            )
            view: dict[str, Any] = {
                "platformUpdateDomain": 0,
                "platformFaultDomain": 0,
                "computerName": computer_name,
                "statuses": [
                    {
                        "code": "ProvisioningState/succeeded",
                        "level": "Info",
                        "displayStatus": "Provisioning succeeded",
                        "time": vm.created,
                    },
                    {"code": power[0], "level": "Info", "displayStatus": power[1]},
                ],
            }
            if self.health_probe() is not None:
                healthy = vm.health.endswith("healthy") and not vm.health.endswith("unhealthy")
                view["vmHealth"] = {
                    "status": {
                        "code": vm.health,
                        "level": "Info" if healthy else "Warning",
                        "displayStatus": vm.health.split("/")[1].capitalize(),
                        "time": vm.health_time,
                    }
                }
            properties["instanceView"] = view
        if user_data and vm.user_data is not None:
            properties["userData"] = vm.user_data  # only with $expand=userData, as ARM
        return {
            "id": vm_id,
            "name": vm.name,
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": self.location,
            "instanceId": vm.instance_id,
            "sku": {"name": self.sku.get("name"), "tier": self.sku.get("tier", "Standard")},
            "tags": self.tags,
            "properties": properties,
        }

    def nic_view(self, vm: Vm) -> dict[str, Any]:
        vm_id = f"{self.id}/virtualMachines/{vm.instance_id}"
        nic_id = f"{vm_id}/networkInterfaces/{self.nic_name()}"
        return {
            "id": nic_id,
            "name": self.nic_name(),
            "properties": {
                "provisioningState": "Succeeded",
                "primary": True,
                "virtualMachine": {"id": vm_id},
                "ipConfigurations": [
                    {
                        "id": f"{nic_id}/ipConfigurations/ipconfig",
                        "name": "ipconfig",
                        "properties": {
                            "privateIPAddress": vm.address,
                            "privateIPAllocationMethod": "Dynamic",
                            "primary": True,
                            "provisioningState": "Succeeded",
                            "loadBalancerBackendAddressPools": [{"id": p} for p in self.backend_pools()],
                        },
                    }
                ],
            },
        }


@dataclass
class Faults:
    throttle_count: int = 0
    throttle_retry_after: int = 1
    throttle_on: str | None = None  # only requests to this route (its name), else any
    error_count: int = 0
    error_status: int = 503
    operation_polls: int | None = None
    operation_error: tuple[str, str] | None = None
    operation_on: str | None = None  # only an operation of this name (a route's), else the next


class FakeArm:
    def __init__(
        self, *, token: str, state_dir: Path, image: Image, subnet_prefix: str, retry_after: int = 1
    ) -> None:
        self._token = token
        self._state_dir = state_dir
        self._image = image
        self._subnet_prefix = subnet_prefix
        self._retry_after = retry_after
        self._next_host = 4  # Azure keeps .0-.3 of a subnet for itself
        self.scale_sets: dict[tuple[str, str, str], ScaleSet] = {}
        self.operations: dict[str, Operation] = {}
        self.requests: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.changes: Counter[str] = Counter()
        self.faults = Faults()
        # Seconds between each 429 and the request that came next: did clients wait as asked?
        self.throttle_waits: list[float] = []
        self._throttled_at: float | None = None
        self._probes: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.network = FakeNetwork(self)
        # Compute Gallery image definitions (resource id, lower case) -> their versions.
        self.image_versions: dict[str, list[dict[str, Any]]] = {}

    # ---- the app -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth, self._api_version, self._inject])
        add = app.router.add_route
        add("PUT", SCALE_SET, self._put_scale_set, name="virtualMachineScaleSets.createOrUpdate")
        add("GET", SCALE_SET, self._get_scale_set, name="virtualMachineScaleSets.get")
        add("DELETE", SCALE_SET, self._delete_scale_set, name="virtualMachineScaleSets.delete")
        add("GET", SCALE_SETS, self._list_scale_sets, name="virtualMachineScaleSets.list")
        add(
            "POST",
            SCALE_SET + "/delete",
            self._delete_instances,
            name="virtualMachineScaleSets.deleteInstances",
        )
        add("PATCH", SCALE_SET, self._patch_scale_set, name="virtualMachineScaleSets.update")
        add("GET", SCALE_SET + "/virtualMachines", self._list_vms, name="virtualMachineScaleSetVMs.list")
        add("GET", VM, self._get_vm, name="virtualMachineScaleSetVMs.get")
        add(
            "POST",
            VM + "/retrieveBootDiagnosticsData",
            self._boot_diagnostics,
            name="virtualMachineScaleSetVMs.retrieveBootDiagnosticsData",
        )
        # Where the boot diagnostics URLs point: the serial console as a blob behind a signature.
        add("GET", CONSOLE, self._console_blob, name="_fake.console")
        add(
            "GET",
            GALLERY_IMAGE + "/versions",
            self._list_image_versions,
            name="galleryImageVersions.listByGalleryImage",
        )
        add(
            "GET",
            SCALE_SET + "/networkInterfaces",
            self._list_nics,
            name="networkInterfaces.listVirtualMachineScaleSetNetworkInterfaces",
        )
        self.network.routes(add)
        add(
            "GET",
            OPERATION.format(sub="{sub}", provider="Microsoft.Compute", location="{location}", op="{op}"),
            self._get_operation,
            name="operations.get",
        )
        add(
            "GET",
            OPERATION.format(sub="{sub}", provider="Microsoft.Network", location="{location}", op="{op}"),
            self._get_operation,
            name="networkOperations.get",
        )
        add("GET", "/_fake/state", self._fake_state, name="_fake.state")
        add("POST", "/_fake/faults", self._fake_faults, name="_fake.faults")
        add("POST", "/_fake/kill", self._fake_kill, name="_fake.kill")
        add("POST", "/_fake/image-versions", self._fake_image_version, name="_fake.imageVersions")
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        self._session = aiohttp.ClientSession()
        self._probes = asyncio.create_task(self._probe_loop())

    async def _stop(self, _: web.Application) -> None:
        if self._probes:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        for scale_set in self.scale_sets.values():
            for vm in scale_set.vms.values():
                vm.kill()
        if self._session:
            await self._session.close()

    # ---- middlewares ---------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if _route_name(request) == "_fake.console":
            return await handler(request)  # a SAS URL: its signature is checked, not a token
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing or invalid.",
            )
        return await handler(request)

    @web.middleware
    async def _api_version(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        name = _route_name(request)
        if name.startswith("_fake") or name == "":
            return await handler(request)
        wanted = _api_version_of(name)
        given = request.query.get("api-version")
        if given != wanted:
            return arm_error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{given}' is invalid. The supported versions are '{wanted}'.",
            )
        return await handler(request)

    @web.middleware
    async def _inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        name = _route_name(request)
        if name.startswith("_fake") or name == "":
            return await handler(request)
        faults = self.faults
        clock = asyncio.get_running_loop().time()
        if self._throttled_at is not None:
            self.throttle_waits.append(round(clock - self._throttled_at, 3))
            self._throttled_at = None
        if faults.throttle_count > 0 and faults.throttle_on in (None, name):
            faults.throttle_count -= 1
            self.throttled[name] += 1
            self._throttled_at = clock
            return arm_error(
                429,
                "TooManyRequests",
                "The request is being throttled.",
                headers={"Retry-After": str(faults.throttle_retry_after)},
            )
        if faults.error_count > 0:
            faults.error_count -= 1
            self.faulted[name] += 1
            return arm_error(
                faults.error_status, "InternalServerError", "An internal error occurred (injected)."
            )
        self.requests[name] += 1
        return await handler(request)

    # ---- scale sets ----------------------------------------------------------------------
    def _key(self, request: web.Request) -> tuple[str, str, str]:
        info = request.match_info
        return info["sub"], info["rg"].lower(), info["name"].lower()

    def _base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def start_operation(
        self,
        request: web.Request,
        name: str,
        location: str,
        on_success: Callable[[], None],
        on_failure: Callable[[], None] = lambda: None,
        fault: tuple[int, tuple[str, str] | None] | None = None,
        provider: str = "Microsoft.Compute",
    ) -> dict[str, str]:
        """Start an operation; the headers that point at its status."""
        polls, error = fault or self._take_operation_fault(name) or (1, None)
        op = Operation(
            id=str(uuid.uuid4()),
            name=name,
            location=location,
            polls=polls,
            on_success=on_success,
            on_failure=on_failure,
            error=error,
        )
        self.operations[op.id] = op
        sub = request.match_info["sub"]
        url = (
            f"{self._base_url(request)}"
            + OPERATION.format(sub=sub, provider=provider, location=location, op=op.id)
            + f"?api-version={_api_version_of(name)}"
        )
        return {
            "Azure-AsyncOperation": url,
            "Location": url + "&monitor=true",
            "Retry-After": str(self._retry_after),
        }

    def _take_operation_fault(self, name: str) -> tuple[int, tuple[str, str] | None] | None:
        """The injected fault for the next operation (of that name, if one was given), used once."""
        faults = self.faults
        if faults.operation_polls is None or faults.operation_on not in (None, name):
            return None
        taken = (faults.operation_polls, faults.operation_error)
        faults.operation_polls, faults.operation_error, faults.operation_on = None, None, None
        return taken

    async def _put_scale_set(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return arm_error(
                400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
            )
        location = body.get("location")
        sku = body.get("sku") or {}
        if not location:
            return arm_error(
                400, "LocationRequired", "The location property is required for this definition."
            )
        if "name" not in sku or "capacity" not in sku:
            return arm_error(400, "InvalidParameter", "sku.name and sku.capacity are required.")
        mode = (body.get("properties") or {}).get("upgradePolicy", {}).get("mode", "Manual")
        if mode not in UPGRADE_MODES:
            return arm_error(
                400,
                "InvalidParameter",
                f"upgradePolicy.mode {mode!r} is not one of {', '.join(UPGRADE_MODES)}.",
            )
        properties = body.get("properties") or {}
        missing = self.network.missing_pools(properties) + self.network.missing_nsgs(properties)
        if missing:
            return arm_error(
                400,
                "InvalidResourceReference",
                f"Resource {missing[0]} referenced by resource {request.path} was not found.",
            )
        fault = self._take_operation_fault("virtualMachineScaleSets.createOrUpdate") or (1, None)
        key = self._key(request)
        existing = self.scale_sets.get(key)
        created = existing is None
        if existing is None:
            scale_set = ScaleSet(
                subscription=key[0],
                resource_group=request.match_info["rg"],
                name=request.match_info["name"],
                location=location,
                sku=sku,
                tags=body.get("tags") or {},
                properties=body.get("properties") or {},
            )
            self.scale_sets[key] = scale_set
            self.changes[scale_set.name] += 1
        else:
            scale_set = existing
            new_model = {
                "location": location,
                "sku": sku,
                "tags": body.get("tags") or {},
                "properties": body.get("properties") or {},
            }
            if new_model != scale_set.model():
                self.changes[scale_set.name] += 1
                if new_model["properties"] != scale_set.properties:
                    scale_set.model_version += 1
                scale_set.sku, scale_set.tags, scale_set.properties = (
                    sku,
                    new_model["tags"],
                    new_model["properties"],
                )
            scale_set.provisioning_state = "Updating"
        if fault[1] is None:
            self._converge(scale_set)

        def succeeded() -> None:
            scale_set.provisioning_state = "Succeeded"

        def failed() -> None:
            # What Azure could not allocate never runs.
            scale_set.provisioning_state = "Failed"

        headers = self.start_operation(
            request, "virtualMachineScaleSets.createOrUpdate", location, succeeded, failed, fault=fault
        )
        return web.json_response(scale_set.view(), status=201 if created else 200, headers=headers)

    def _converge(self, scale_set: ScaleSet) -> None:
        """Make the VMs match capacity and, for an Automatic upgrade policy, the model."""
        capacity = int(scale_set.sku.get("capacity", 0))
        automatic = scale_set.properties.get("upgradePolicy", {}).get("mode", "Manual") == "Automatic"
        if automatic:
            for vm in list(scale_set.vms.values()):
                if vm.model_version != scale_set.model_version:
                    vm.kill()
                    self._boot(scale_set, vm)
        ids = sorted(scale_set.vms, key=int)
        for instance_id in ids[capacity:]:  # scale in: the newest go first
            scale_set.vms.pop(instance_id).kill()
        while len(scale_set.vms) < capacity:
            instance_id = str(scale_set.next_instance)
            scale_set.next_instance += 1
            vm = Vm(
                instance_id=instance_id,
                name=f"{scale_set.name}_{instance_id}",
                address=self._allocate_address(),
                root=self._state_dir / scale_set.name / instance_id,
                model_version=scale_set.model_version,
            )
            scale_set.vms[instance_id] = vm
            self._boot(scale_set, vm)

    def _boot(self, scale_set: ScaleSet, vm: Vm) -> None:
        vm.model_version = scale_set.model_version
        vm.user_data, vm.image = scale_set.user_data(), scale_set.image_reference()
        vm.ever_healthy, vm.failures = False, 0
        vm.set_health("HealthState/initializing")
        vm.boot(scale_set.custom_data(), self._image)

    def _allocate_address(self) -> str:
        host = self._next_host
        self._next_host += 1
        if host > 254:
            raise RuntimeError("the fake subnet is full")
        return f"{self._subnet_prefix}.{host}"

    async def _get_scale_set(self, request: web.Request) -> web.Response:
        scale_set = self.scale_sets.get(self._key(request))
        if scale_set is None:
            return _not_found(request)
        return web.json_response(scale_set.view())

    async def _list_scale_sets(self, request: web.Request) -> web.Response:
        sub, rg = request.match_info["sub"], request.match_info["rg"].lower()
        found = [s.view() for (s_sub, s_rg, _), s in self.scale_sets.items() if (s_sub, s_rg) == (sub, rg)]
        return web.json_response({"value": found})

    async def _delete_scale_set(self, request: web.Request) -> web.Response:
        key = self._key(request)
        scale_set = self.scale_sets.get(key)
        if scale_set is None:
            return web.Response(status=204)
        scale_set.provisioning_state = "Deleting"
        for vm in scale_set.vms.values():
            vm.kill()

        def done() -> None:
            self.scale_sets.pop(key, None)

        headers = self.start_operation(request, "virtualMachineScaleSets.delete", scale_set.location, done)
        return web.Response(status=202, headers=headers)

    async def _delete_instances(self, request: web.Request) -> web.Response:
        scale_set = self.scale_sets.get(self._key(request))
        if scale_set is None:
            return _not_found(request)
        body = await request.json()
        ids = [str(i) for i in body.get("instanceIds", [])]
        unknown = [i for i in ids if i not in scale_set.vms]
        if not ids or unknown:
            return arm_error(
                400, "InvalidParameter", f"instanceIds {unknown or ids} are not instances of {scale_set.name}"
            )
        for instance_id in ids:
            scale_set.vms.pop(instance_id).kill()
        scale_set.sku["capacity"] = len(scale_set.vms)
        headers = self.start_operation(
            request, "virtualMachineScaleSets.deleteInstances", scale_set.location, lambda: None
        )
        return web.Response(status=202, headers=headers)

    async def _patch_scale_set(self, request: web.Request) -> web.Response:
        """PATCH: what the body names changes (sku merged, tags replaced, properties merged),
        the rest stays; new VMs take the model as it is then."""
        scale_set = self.scale_sets.get(self._key(request))
        if scale_set is None:
            return _not_found(request)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return arm_error(
                400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
            )
        before = copy.deepcopy(scale_set.model())
        if "sku" in body:
            scale_set.sku = {**scale_set.sku, **body["sku"]}
        if "tags" in body:
            scale_set.tags = dict(body["tags"] or {})
        if "properties" in body:
            merged = _merge(scale_set.properties, body["properties"] or {})
            if merged != scale_set.properties:
                scale_set.model_version += 1
            scale_set.properties = merged
        if scale_set.model() != before:
            self.changes[scale_set.name] += 1
        scale_set.provisioning_state = "Updating"
        fault = self._take_operation_fault("virtualMachineScaleSets.update") or (1, None)
        if fault[1] is None:
            self._converge(scale_set)

        def succeeded() -> None:
            scale_set.provisioning_state = "Succeeded"

        def failed() -> None:
            scale_set.provisioning_state = "Failed"

        headers = self.start_operation(
            request, "virtualMachineScaleSets.update", scale_set.location, succeeded, failed, fault=fault
        )
        return web.json_response(scale_set.view(), status=200, headers=headers)

    async def _get_vm(self, request: web.Request) -> web.Response:
        scale_set = self.scale_sets.get(self._key(request))
        vm = scale_set.vms.get(request.match_info["instance"]) if scale_set is not None else None
        if scale_set is None or vm is None:
            return _not_found(request)
        expand = request.query.get("$expand", "").lower()
        return web.json_response(scale_set.vm_view(vm, expand == "instanceview", expand == "userdata"))

    def _signature(self, path: str) -> str:
        return hmac.new(self._token.encode(), path.encode(), "sha256").hexdigest()

    async def _boot_diagnostics(self, request: web.Request) -> web.Response:
        """URLs of the VM's screenshot and serial console log, signed (SAS) and short-lived."""
        scale_set = self.scale_sets.get(self._key(request))
        vm = scale_set.vms.get(request.match_info["instance"]) if scale_set is not None else None
        if scale_set is None or vm is None:
            return _not_found(request)
        if (
            not scale_set.properties.get("virtualMachineProfile", {})
            .get("diagnosticsProfile", {})
            .get("bootDiagnostics", {})
            .get("enabled")
        ):
            return arm_error(
                409, "BootDiagnosticsNotEnabled", f"Boot diagnostics are not enabled for VM {vm.name}."
            )
        info = request.match_info
        path = CONSOLE.format(sub=info["sub"], rg=info["rg"], name=scale_set.name, instance=vm.instance_id)
        base = self._base_url(request)
        return web.json_response(
            {
                "consoleScreenshotBlobUri": f"{base}{path.replace('serialconsole.log', 'screenshot.bmp')}",
                "serialConsoleLogBlobUri": f"{base}{path}?sig={self._signature(path)}",
            }
        )

    async def _console_blob(self, request: web.Request) -> web.StreamResponse:
        if not hmac.compare_digest(request.query.get("sig", ""), self._signature(request.path)):
            return web.Response(status=403, text="AuthenticationFailed: the signature does not match")
        info = request.match_info
        for scale_set in self.scale_sets.values():
            if scale_set.name == info["name"] and scale_set.resource_group == info["rg"]:
                vm = scale_set.vms.get(info["instance"])
                if vm is not None and (vm.root / "console.log").exists():
                    return web.Response(
                        body=(vm.root / "console.log").read_bytes(), content_type="text/plain"
                    )
        return web.Response(status=404, text="BlobNotFound")

    async def _list_image_versions(self, request: web.Request) -> web.Response:
        info = request.match_info
        image_id = GALLERY_IMAGE.format(
            sub=info["sub"], rg=info["rg"], gallery=info["gallery"], image=info["image"]
        )
        versions = self.image_versions.get(image_id.lower())
        if versions is None:
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/galleries/{info['gallery']}/images/{info['image']}' "
                f"under resource group '{info['rg']}' was not found.",
            )
        return web.json_response({"value": versions})

    async def _list_vms(self, request: web.Request) -> web.Response:
        scale_set = self.scale_sets.get(self._key(request))
        if scale_set is None:
            return _not_found(request)
        expand = request.query.get("$expand", "").lower() == "instanceview"
        vms = [scale_set.vm_view(vm, expand) for vm in scale_set.vms.values()]
        return web.json_response({"value": vms})

    async def _list_nics(self, request: web.Request) -> web.Response:
        scale_set = self.scale_sets.get(self._key(request))
        if scale_set is None:
            return _not_found(request)
        return web.json_response({"value": [scale_set.nic_view(vm) for vm in scale_set.vms.values()]})

    async def _get_operation(self, request: web.Request) -> web.Response:
        op = self.operations.get(request.match_info["op"])
        if op is None:
            return arm_error(404, "OperationNotFound", "The operation was not found.")
        op.advance()
        # A start's Retry-After may be 0 (poll at once); a status still running asks for at least
        # a second, since azure-core takes 0 as "not said" and falls back to its 30 s default.
        again = str(max(1, self._retry_after))
        if "monitor" not in request.query:
            headers = {"Retry-After": again} if op.status == "InProgress" else None
            return web.json_response(op.body(), headers=headers)
        # The Location form: 202 while running, 200 when done, the error when it failed.
        if op.status == "InProgress":
            return web.Response(status=202, headers={"Retry-After": again})
        if op.status == "Failed" and op.error:
            return arm_error(400, op.error[0], op.error[1])
        return web.Response(status=200)

    # ---- health ----------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        """The Application Health extension of every VM, each at its scale set's interval."""
        last: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.25)
            assert self._session is not None
            probes = []
            for scale_set in list(self.scale_sets.values()):
                settings = scale_set.health_probe()
                if settings is None:
                    continue
                for vm in list(scale_set.vms.values()):
                    if not vm.running:
                        vm.set_health("HealthState/unhealthy")
                        continue
                    if loop.time() - last.get(vm.vm_id, 0.0) >= settings.interval_seconds:
                        last[vm.vm_id] = loop.time()
                        probes.append(vm.probe(self._session, settings))
            if probes:
                await asyncio.gather(*probes)

    # ---- control -------------------------------------------------------------------------
    async def _fake_state(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "scale_sets": [
                    {
                        "resource_group": s.resource_group,
                        "name": s.name,
                        "capacity": s.sku.get("capacity"),
                        "sku": s.sku.get("name"),
                        "provisioning_state": s.provisioning_state,
                        "tags": s.tags,
                        "upgrade_policy": s.properties.get("upgradePolicy", {}).get("mode", "Manual"),
                        "vms": [
                            {
                                "instance_id": vm.instance_id,
                                "address": vm.address,
                                "running": vm.running,
                                "health": vm.health,
                                "pid": vm.process.pid if vm.process else None,
                                "latest_model_applied": vm.model_version == s.model_version,
                                "user_data": vm.user_data,
                                "image": vm.image,
                            }
                            for vm in s.vms.values()
                        ],
                    }
                    for s in self.scale_sets.values()
                ],
                "requests": dict(self.requests),
                "throttled": dict(self.throttled),
                "faulted": dict(self.faulted),
                "changes": dict(self.changes),
                "throttle_waits": list(self.throttle_waits),
                **self.network.state(),
                "operations": {
                    op.id: {"name": op.name, "status": op.status} for op in self.operations.values()
                },
            }
        )

    async def _fake_faults(self, request: web.Request) -> web.Response:
        """{"throttle": {"count": N, "retry_after": S, "on": route name}}
        | {"errors": {"count": N, "status": 503}}
        | {"operation": {"polls": K, "error": {"code": ..., "message": ...}, "on": route name}}
        (the next operation, or the next of that route's: "publicIPAddresses.createOrUpdate")."""
        body = await request.json()
        faults = self.faults
        if "throttle" in body:
            faults.throttle_count = int(body["throttle"]["count"])
            faults.throttle_retry_after = int(body["throttle"].get("retry_after", 1))
            faults.throttle_on = body["throttle"].get("on")
        if "errors" in body:
            faults.error_count = int(body["errors"]["count"])
            faults.error_status = int(body["errors"].get("status", 503))
        if "operation" in body:
            faults.operation_polls = int(body["operation"]["polls"])
            error = body["operation"].get("error")
            faults.operation_error = (error["code"], error["message"]) if error else None
            faults.operation_on = body["operation"].get("on")
        return web.json_response({"ok": True})

    async def _fake_image_version(self, request: web.Request) -> web.Response:
        """{"image": gallery image definition id, "version": "1.0.1", "exclude_from_latest": false}:
        the version is published (the definition made if need be)."""
        body = await request.json()
        image_id = str(body["image"]).rstrip("/")
        version = str(body["version"])
        versions = self.image_versions.setdefault(image_id.lower(), [])
        versions[:] = [v for v in versions if v["name"] != version]
        versions.append(
            {
                "id": f"{image_id}/versions/{version}",
                "name": version,
                "type": "Microsoft.Compute/galleries/images/versions",
                "location": "westeurope",
                "properties": {
                    "publishingProfile": {
                        "excludeFromLatest": bool(body.get("exclude_from_latest", False)),
                        "publishedDate": now(),
                        "replicaCount": 1,
                    },
                    "provisioningState": "Succeeded",
                },
            }
        )
        return web.json_response({"versions": [v["name"] for v in versions]})

    async def _fake_kill(self, request: web.Request) -> web.Response:
        """{"scale_set": name, "instance_id": "0"}: the VM's process group dies at once."""
        body = await request.json()
        for scale_set in self.scale_sets.values():
            if scale_set.name.lower() == str(body["scale_set"]).lower():
                vm = scale_set.vms.get(str(body["instance_id"]))
                if vm is None:
                    break
                vm.kill()
                vm.killed = True
                return web.json_response({"killed": vm.name})
        return web.json_response({"error": "no such VM"}, status=404)


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """A PATCH body over a resource: objects merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _with_exact_version(image: dict[str, str]) -> dict[str, str]:
    """A VM's image reference as ARM shows it: with the version it really got."""
    shown = dict(image)
    if "id" in shown and "/versions/" in shown["id"]:
        shown["exactVersion"] = shown["id"].rsplit("/", 1)[1]
    elif "version" in shown:
        shown["exactVersion"] = shown["version"]
    return shown


def _api_version_of(route: str) -> str:
    """The one api-version each route takes (what the pinned SDKs send)."""
    if route.startswith("galleryImageVersions"):
        return GALLERY_API_VERSION
    if route.startswith("networkInterfaces"):
        return NETWORK_VMSS_NIC_API_VERSION
    if route.split(".")[0] in (*NETWORK_KINDS, "networkOperations"):
        return NETWORK_API_VERSION
    return COMPUTE_API_VERSION


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    return route.name or "" if route is not None else ""


def _not_found(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "")
    return arm_error(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{name}' under resource group "
        f"'{request.match_info.get('rg', '')}' was not found.",
    )
