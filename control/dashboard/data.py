"""What the dashboard's pages show, gathered from the client façade (endpoints, deployments,
rollouts) and the gateways' windows (`/stats`), as plain models the templates render.

The gateway answers sums over a window, not series; the series on the pages are samples this
API process takes while someone watches (at most one per ``SAMPLE_EVERY_S`` per deployment),
kept for ``SERIES_KEEP_S``. Availability comes from the gateways' per-minute counts, which
they keep for a day.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel, Field

from activities.local.monitor import sum_windows
from config.contract.errors import NotFound
from config.security import control_client_ssl, control_session
from config.settings import Settings
from config.stats import LIMIT_REASONS, WindowStats
from control.facade import Tidegate
from control.rollouts import Rollouts
from decisions.availability import (
    DEFAULT_FAILURE_KEYS,
    SLO_TAG,
    Availability,
    CountBucket,
    SloReport,
    hour_and_day,
    parse_slo,
)
from gateway.routing import MAX_REQUEST_ID_CHARS  # the gateway's bound on x-request-id

log = structlog.get_logger("control.dashboard")

SAMPLE_EVERY_S = 2.0
SAMPLE_WINDOW = "5s"
SERIES_KEEP_S = 15 * 60.0
MINUTES = 1440
ERROR_CLASSES = ("4xx", "5xx", "408", "424", "429", "503")
_CANARY_WEIGHT = re.compile(r"canary (\d+)%")
_HEADING = re.compile(r"^=== (.+) ===$")
_INSTANCE_HEADING = "instance "
LOG_LINES = 200
MAX_LOG_LINES = 5000
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class Sample(BaseModel):
    """One look at a deployment: the last ``SAMPLE_WINDOW`` as the gateways saw it."""

    at: float
    rps: float
    p50: float | None
    p99: float | None
    errors: dict[str, float] = Field(default_factory=dict, description="per second, by class")
    limited: dict[str, float] = Field(
        default_factory=dict, description="429s per second, by reason (config.stats.LIMIT_REASONS)"
    )


class AvailabilityView(BaseModel):
    failure_keys: list[str]
    hour: Availability
    day: Availability
    slo: SloReport | None = None
    slo_day: SloReport | None = None
    slo_problem: str | None = None


class DeploymentPanel(BaseModel):
    name: str
    weight: int
    mirror: int
    provisioning_state: str
    health: str
    health_reason: str | None = None
    instances: list[dict[str, Any]]
    now: Sample | None
    series: list[Sample]
    availability: AvailabilityView | None = None


class EndpointRow(BaseModel):
    name: str
    scoring_uri: str
    auth_mode: str
    provisioning_state: str
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    health: str
    rps: float | None
    availability: AvailabilityView | None


class EndpointPage(BaseModel):
    row: EndpointRow
    series: list[Sample] = Field(
        default_factory=list, description="the endpoint as clients saw it, refusals before routing included"
    )
    description: str | None
    tags: dict[str, str]
    deployments: list[DeploymentPanel]
    rollout_id: str | None
    rollout_phase: str | None


class RolloutPage(BaseModel):
    endpoint: str
    view: dict[str, Any]
    weights: list[tuple[float, int]] = Field(description="(epoch seconds, canary weight) from the history")
    workflow_url: str
    running: bool
    gate_values: dict[str, list[tuple[float, float | None]]] = Field(
        default_factory=dict, description="each gate's value at each look this process took"
    )
    gate_bounds: dict[str, float | None] = Field(default_factory=dict)


class LogSection(BaseModel):
    """One heading of the host's (or the gateways') answer and the lines under it."""

    title: str
    instance: str | None = Field(default=None, description="None: the gateways' access log")
    lines: list[str] = Field(default_factory=list)


class LogsPage(BaseModel):
    endpoint: str
    deployment: str
    instances: list[str] = Field(description="the deployment's instances now, for the filter")
    instance: str | None
    request_id: str | None
    lines: int
    follow: bool
    sections: list[LogSection]
    problem: str | None = None


@dataclass
class _Series:
    samples: deque[Sample] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Source:
    """One per API process: the façade (connected on first use) and the sample series."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tidegate: Tidegate | None = None
        self._connecting = asyncio.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        # rollout id -> (when, gate -> value) each time its page was looked at
        self._gate_looks: dict[str, deque[tuple[float, dict[str, float | None]]]] = {}
        self._ssl = control_client_ssl(settings)

    async def tidegate(self) -> Tidegate:
        async with self._connecting:
            if self._tidegate is None:
                self._tidegate = await Tidegate.connect(self.settings)
            return self._tidegate

    # ---- gateway windows ---------------------------------------------------------------
    async def window(self, endpoint: str, deployment: str, *, window: str, minutes: int = 0) -> WindowStats:
        """Every gateway's window, summed (as the local monitor provider sums them)."""
        params = {"endpoint": endpoint, "deployment": deployment, "window": window, "minutes": str(minutes)}
        timeout = aiohttp.ClientTimeout(total=5)
        windows = []
        async with control_session(self.settings, ssl_context=self._ssl, timeout=timeout) as session:
            for target in self.settings.gateway_admin_targets:
                async with session.get(f"{target}/stats", params=params) as response:
                    response.raise_for_status()
                    windows.append(WindowStats.model_validate(await response.json()))
        return sum_windows(windows)

    async def sample(self, endpoint: str, deployment: str) -> tuple[Sample | None, list[Sample]]:
        """The newest sample (taken now unless one is fresh) and the kept series."""
        series = self._series.setdefault((endpoint, deployment), _Series())
        async with series.lock:
            now = time.time()
            if not series.samples or now - series.samples[-1].at >= SAMPLE_EVERY_S:
                try:
                    stats = await self.window(endpoint, deployment, window=SAMPLE_WINDOW)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("dashboard.stats_unavailable", endpoint=endpoint, error=repr(exc))
                    return None, list(series.samples)
                series.samples.append(to_sample(stats, now))
            while series.samples and now - series.samples[0].at > SERIES_KEEP_S:
                series.samples.popleft()
            return series.samples[-1], list(series.samples)

    async def availability(
        self, endpoint: str, deployment: str, tags: dict[str, str]
    ) -> AvailabilityView | None:
        try:
            stats = await self.window(endpoint, deployment, window="1s", minutes=MINUTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("dashboard.stats_unavailable", endpoint=endpoint, error=repr(exc))
            return None
        failing = tuple(self.settings.availability_failure_statuses)
        return availability_view(stats, tags, now=time.time(), failure_keys=failing)

    async def availability_by_deployment(
        self, endpoint: str, deployments: list[str], tags: dict[str, str]
    ) -> dict[str, AvailabilityView | None]:
        """Each deployment's availability, from its own window (what it served)."""
        return {name: await self.availability(endpoint, name, tags) for name in deployments}

    # ---- pages -------------------------------------------------------------------------
    async def endpoint_rows(self) -> list[EndpointRow]:
        tidegate = await self.tidegate()
        rows = []
        for view in await tidegate.list_endpoints():
            deployments = await tidegate.list_deployments(view["name"])
            rows.append(await self._row(view, deployments))
        return rows

    async def _row(self, view: dict[str, Any], deployments: list[dict[str, Any]]) -> EndpointRow:
        name = view["name"]
        now, _ = await self.sample(name, "")
        return EndpointRow(
            name=name,
            scoring_uri=view["scoring_uri"],
            auth_mode=view["auth_mode"],
            provisioning_state=view["provisioning_state"],
            traffic=dict(view["traffic"]),
            mirror_traffic=dict(view.get("mirror_traffic") or {}),
            health=endpoint_health(deployments),
            rps=now.rps if now is not None else None,
            availability=await self.availability(name, "", dict(view.get("tags") or {})),
        )

    async def endpoint_page(self, name: str) -> EndpointPage:
        tidegate = await self.tidegate()
        record = await tidegate.describe(name)
        view = tidegate.endpoint_view(record)
        deployments = [tidegate.deployment_view(name, r) for _, r in sorted(record.deployments.items())]
        tags = dict(view.get("tags") or {})
        panels = []
        for dep in deployments:
            now, series = await self.sample(name, dep["name"])
            panels.append(
                DeploymentPanel(
                    name=dep["name"],
                    weight=int(view["traffic"].get(dep["name"], 0)),
                    mirror=int((view.get("mirror_traffic") or {}).get(dep["name"], 0)),
                    provisioning_state=dep["provisioning_state"],
                    health=dep["health"],
                    health_reason=dep.get("health_reason"),
                    # Only what a person needs; the instance's URL and anything else stay out.
                    instances=[
                        {"id": i["id"], "state": i["state"], "restarts": i.get("restarts", 0)}
                        for i in dep["instances"]
                    ],
                    now=now,
                    series=series,
                    availability=await self.availability(name, dep["name"], tags),
                )
            )
        row = await self._row(view, deployments)
        _, endpoint_series = await self.sample(name, "")  # the row's sample, not a new one
        rollout_id = record.rollout_id or record.last_rollout_id
        phase = None
        if rollout_id is not None:
            try:
                phase = (await Rollouts(tidegate).status(name, rollout_id))["phase"]
            except NotFound:
                rollout_id = None
        return EndpointPage(
            row=row,
            series=endpoint_series,
            description=view.get("description"),
            tags=tags,
            deployments=panels,
            rollout_id=rollout_id,
            rollout_phase=phase,
        )

    async def rollout_page(self, endpoint: str) -> RolloutPage:
        tidegate = await self.tidegate()
        rollouts = Rollouts(tidegate)
        rid = await rollouts.current_id(endpoint)
        view = await rollouts.status(endpoint, rid)
        record = await tidegate.describe(endpoint)
        looks = self._gate_looks.setdefault(rid, deque(maxlen=int(SERIES_KEEP_S / SAMPLE_EVERY_S)))
        now = time.time()
        if not looks or now - looks[-1][0] >= SAMPLE_EVERY_S / 2:
            looks.append((now, {g["gate"]: g["value"] for g in view["gates"]}))
        names = sorted({gate for _, values in looks for gate in values})
        return RolloutPage(
            endpoint=endpoint,
            view=view,
            weights=weights_over_time(view["history"]),
            workflow_url=workflow_url(self.settings, rid),
            running=record.rollout_id == rid,
            gate_values={name: [(at, values.get(name)) for at, values in looks] for name in names},
            gate_bounds={g["gate"]: g["bound"] for g in view["gates"]},
        )

    async def logs_page(
        self,
        endpoint: str,
        deployment: str,
        *,
        instance: str | None,
        request_id: str | None,
        lines: int,
        follow: bool,
    ) -> LogsPage:
        """The tail of each instance's log (or of ``instance``'s), or what was logged for
        ``request_id``, through the façade's get-logs (the host and the gateways)."""
        tidegate = await self.tidegate()
        shown = await tidegate.show_deployment(endpoint, deployment)
        page = LogsPage(
            endpoint=endpoint,
            deployment=deployment,
            instances=sorted(i["id"] for i in shown["instances"]),
            instance=instance,
            request_id=request_id,
            lines=lines,
            follow=follow,
            sections=[],
        )
        problem = logs_query_problem(instance=instance, request_id=request_id, lines=lines)
        if problem is not None:
            return page.model_copy(update={"problem": problem})
        try:
            text = await tidegate.get_logs(
                endpoint, deployment, lines, request_id=request_id, instance=instance
            )
        except aiohttp.ClientResponseError as exc:  # a filter the host refused
            log.info("dashboard.logs_refused", endpoint=endpoint, deployment=deployment, status=exc.status)
            return page.model_copy(update={"problem": f"the host refused: {exc.status} {exc.message}"})
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "dashboard.logs_unavailable", endpoint=endpoint, deployment=deployment, error=repr(exc)
            )
            return page.model_copy(
                update={"problem": "the host did not answer with the logs; is it running?"}
            )
        sections = parse_logs(text)
        if instance is not None:  # the host's request-id search covers every instance
            sections = [s for s in sections if s.instance is None or s.instance == instance]
        return page.model_copy(update={"sections": sections})

    async def signal(self, endpoint: str, action: str, reason: str | None) -> str:
        return await Rollouts(await self.tidegate()).signal(endpoint, action, reason)


# ---- pure helpers ------------------------------------------------------------------------
def parse_logs(text: str) -> list[LogSection]:
    """get-logs' text (``=== instance <id> ===`` headings, and ``=== gateway access log ===``
    with a request id) as sections; blank lines between sections dropped."""
    sections: list[LogSection] = []
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading is not None:
            title = heading[1]
            instance = title.removeprefix(_INSTANCE_HEADING) if title.startswith(_INSTANCE_HEADING) else None
            sections.append(LogSection(title=title, instance=instance))
        elif sections:
            sections[-1].lines.append(line)
        elif line:
            sections.append(LogSection(title="log", lines=[line]))
    for section in sections:
        while section.lines and not section.lines[-1]:
            section.lines.pop()
    return sections


def logs_query_problem(*, instance: str | None, request_id: str | None, lines: int) -> str | None:
    """What is wrong with a logs page's filter, said to the person who typed it."""
    if instance is not None and not _INSTANCE_ID.match(instance):
        return "instance must be an instance id such as blue-1a2b3c"
    if request_id is not None and (len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable()):
        return f"request id must be 1 to {MAX_REQUEST_ID_CHARS} printable characters"
    if not 1 <= lines <= MAX_LOG_LINES:
        return f"lines must be from 1 to {MAX_LOG_LINES}"
    return None


def to_sample(stats: WindowStats, at: float) -> Sample:
    seconds = stats.window_seconds or 1.0
    return Sample(
        at=at,
        rps=stats.requests / seconds,
        p50=stats.latency_ms.p50,
        p99=stats.latency_ms.p99,
        errors={key: stats.status.get(key, 0) / seconds for key in ERROR_CLASSES},
        limited={reason: stats.limited.get(reason, 0) / seconds for reason in LIMIT_REASONS},
    )


def availability_view(
    stats: WindowStats,
    tags: dict[str, str],
    *,
    now: float,
    failure_keys: tuple[str, ...] = DEFAULT_FAILURE_KEYS,
) -> AvailabilityView:
    """Availability over the last hour and day from the gateways' minutes; against the SLO
    tag when the endpoint has one."""
    buckets = [
        CountBucket(start=m.start, seconds=60, requests=m.requests, status=m.status) for m in stats.minutes
    ]
    problem = target = None
    raw = tags.get(SLO_TAG)
    if raw is not None:
        try:
            target = parse_slo(raw)
        except ValueError as exc:
            problem = str(exc)
    # A minute counts when it starts inside the window: the current one started < 60 s ago.
    measured = hour_and_day(buckets, now=now, failure_keys=failure_keys, target_percent=target)
    return AvailabilityView(
        failure_keys=list(failure_keys),
        hour=measured.hour,
        day=measured.day,
        slo=measured.slo_hour,
        slo_day=measured.slo_day,
        slo_problem=problem,
    )


def endpoint_health(deployments: list[dict[str, Any]]) -> str:
    """The worst of the deployments' health ("NoDeployments" without any)."""
    if not deployments:
        return "NoDeployments"
    order = ["Healthy", "Degraded", "Unhealthy"]
    healths = [d.get("health", "Healthy") for d in deployments]
    known = [h for h in healths if h in order]
    unknown = [h for h in healths if h not in order]
    if unknown:
        return str(unknown[0])
    return max(known, key=order.index)


def weights_over_time(history: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """The canary's weight at each "weights" event, and 0 where the rollout rolled back."""
    points: list[tuple[float, int]] = []
    for entry in history:
        at = datetime.fromisoformat(entry["at"]).timestamp()
        if entry["event"] == "weights":
            match = _CANARY_WEIGHT.search(entry["detail"])
            if match:
                points.append((at, int(match[1])))
        elif entry["event"] == "rolledback":
            points.append((at, 0))
    return points


def workflow_url(settings: Settings, workflow_id: str) -> str:
    """The workflow in the Temporal UI (its ids hold '/', so quoted whole)."""
    namespace = urllib.parse.quote(settings.temporal_namespace, safe="")
    workflow = urllib.parse.quote(workflow_id, safe="")
    return f"{settings.temporal_ui_url}/namespaces/{namespace}/workflows/{workflow}"


def availability_block(
    view: AvailabilityView | None, deployments: dict[str, AvailabilityView | None] | None = None
) -> dict[str, Any]:
    """`online-endpoint show`'s ``availability``: the last hour and day, and against the SLO
    tag, the error budget left and its burn rate; with ``deployments``, the same figures for
    each deployment under ``deployments`` (each on what it served)."""
    if view is None:
        return {"error": "no gateway answered /stats; availability unknown"}

    def window(measured: Availability, slo: SloReport | None) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "availability_percent": measured.percent,
            "requests": measured.requests,
            "failures": measured.failures,
        }
        if slo is not None:
            shown["error_budget_remaining"] = slo.budget_remaining
            shown["burn_rate"] = slo.burn_rate
        return shown

    block: dict[str, Any] = {"failure_statuses": view.failure_keys}
    if view.slo is not None:
        block["slo_percent"] = view.slo.target_percent
    if view.slo_problem:
        block["slo_error"] = view.slo_problem
    block["last_hour"] = window(view.hour, view.slo)
    block["last_day"] = window(view.day, view.slo_day)
    if deployments is not None:
        block["deployments"] = {
            name: (
                {"last_hour": window(shown.hour, shown.slo), "last_day": window(shown.day, shown.slo_day)}
                if shown is not None
                else {"error": "no gateway answered /stats; availability unknown"}
            )
            for name, shown in sorted(deployments.items())
        }
    return block
