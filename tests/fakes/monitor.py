"""A fake of Azure Monitor's metrics data plane (the batch API azure-monitor-querymetrics calls),
run as its own process over TLS for the tests of activities/azure/monitor.py.

    python -m tests.fakes.monitor --cert cert.pem --key key.pem --token TOKEN [--port 0]

It prints `listening https://127.0.0.1:<port>` once ready. What it serves, built from what the
installed SDK really sends (captured against a logging server) and the 2024-02-01 spec's shapes:

- `POST /subscriptions/{sub}/metrics:getBatch?api-version=2024-02-01&starttime=..&endtime=..
  &interval=PT1M&metricnamespace=..&metricnames=A,B&aggregation=Average,Minimum[&filter=..]`,
  body `{"resourceids": [...]}`, `Authorization: Bearer <token>`. Any other api-version, a
  missing parameter, another interval, a resource of another subscription or namespace, or an
  unknown metric is refused with Azure's error body.
- Answers one value per resource: every minute of [starttime, endtime) listed, with the asked
  aggregations where a value was set and with the time stamp alone where none was (as Azure
  lists empty minutes). A filter of `dim eq 'v'` clauses (`and` between dimensions, `or`
  within one, `'*'` to split) selects series; the rest are added minute by minute.

With `--arm-url` (the fake ARM, its CA and token, and the subscription), it also measures every
scale set of the fake ARM every 2 s, as Azure Monitor measures VMs: `Percentage CPU` (average:
the CPU time of each VM's process tree over the machine's cores), `Available Memory Bytes`
(minimum: what the machine the VMs run on has available) and `VmAvailabilityMetric` (average:
the share of its VMs running). The current minute is revised with each sample, as Azure revises
its newest minutes. A series a test sets takes the place of the measured one.

Control routes (no auth; loopback, for the test only):
- `PUT /control/series` `{"resource_id", "metric", "unit", "dimensions": {...},
  "points": {"<iso minute>": {"average": ..}, ...}}` sets (or replaces) one series; a later PUT
  of the same series revises minutes, as Azure Monitor revises late ones.
- `GET /control/requests`: the batch requests received (path, query, body), oldest first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psutil
from aiohttp import web

API_VERSIONS = {"2024-02-01"}  # what azure-monitor-querymetrics 1.0.0 sends
AGGREGATIONS = ("average", "minimum", "maximum", "total", "count")
_CLAUSE = re.compile(r"^\s*(?P<dim>[^\s]+)\s+eq\s+'(?P<value>[^']*)'\s*$", re.IGNORECASE)

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # resource (lower), metric (lower), dims


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_filter(text: str | None) -> dict[str, set[str]] | None:
    """`A eq 'x' and B eq 'y' or B eq 'z'` → {a: {x}, b: {y, z}}; `'*'` splits by the dimension."""
    if not text:
        return {}
    wanted: dict[str, set[str]] = {}
    for part in re.split(r"\s+and\s+", text, flags=re.IGNORECASE):
        for clause in re.split(r"\s+or\s+", part, flags=re.IGNORECASE):
            match = _CLAUSE.match(clause)
            if match is None:
                return None
            wanted.setdefault(match["dim"].lower(), set()).add(match["value"])
    return wanted


SAMPLE_SECONDS = 2.0
SCALE_SET_TYPE = "Microsoft.Compute/virtualMachineScaleSets"


class FakeMonitor:
    def __init__(self, token: str) -> None:
        self._token = token
        self.series: dict[SeriesKey, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._set_by_test: set[SeriesKey] = set()
        self._cpu_seconds: dict[int, tuple[float, float]] = {}  # VM pid -> (CPU seconds, when)
        self._samples: dict[tuple[SeriesKey, datetime], list[float]] = {}

    # ---- measuring the fake ARM's VMs ----------------------------------------------------
    async def measure(self, arm_url: str, ca_file: str, token: str, subscription: str) -> None:
        """Sample every scale set of the fake ARM, for ever."""
        context = ssl.create_default_context(cafile=ca_file)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=context)
        ) as http:
            while True:
                try:
                    async with http.get(f"{arm_url}/_fake/state") as response:
                        state = await response.json()
                    self.sample(state, subscription, datetime.now(UTC))
                except (aiohttp.ClientError, ValueError, KeyError):
                    pass  # the fake ARM is starting or gone: no sample this time
                await asyncio.sleep(SAMPLE_SECONDS)

    def sample(self, state: dict[str, Any], subscription: str, now: datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        available = float(psutil.virtual_memory().available)
        for scale_set in state["scale_sets"]:
            resource_id = (
                f"/subscriptions/{subscription}/resourceGroups/{scale_set['resource_group']}"
                f"/providers/{SCALE_SET_TYPE}/{scale_set['name']}"
            )
            vms = scale_set["vms"]
            if not vms:
                continue
            cpu = [
                c
                for c in (self._cpu_percent(vm.get("pid"), now) for vm in vms if vm["running"])
                if c is not None
            ]
            running = sum(1 for vm in vms if vm["running"])
            if cpu:
                self._record(resource_id, "Percentage CPU", "Percent", minute, "average", sum(cpu) / len(cpu))
            self._record(resource_id, "Available Memory Bytes", "Bytes", minute, "minimum", available)
            self._record(resource_id, "VmAvailabilityMetric", "Count", minute, "average", running / len(vms))

    def _cpu_percent(self, pid: int | None, now: datetime) -> float | None:
        """The VM's process tree's CPU since the last sample, as a share of the machine's cores."""
        if pid is None:
            return None
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
            seconds = 0.0
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    seconds += times.user + times.system
        except psutil.Error:
            return None
        when = now.timestamp()
        before = self._cpu_seconds.get(pid)
        self._cpu_seconds[pid] = (seconds, when)
        if before is None or when <= before[1]:
            return None
        used = max(seconds - before[0], 0.0)
        return min(100.0, 100.0 * used / ((when - before[1]) * (os.cpu_count() or 1)))

    def _record(
        self, resource_id: str, metric: str, unit: str, minute: datetime, aggregation: str, value: float
    ) -> None:
        key = (resource_id.lower(), metric.lower(), ())
        if key in self._set_by_test:
            return
        entry = self.series.setdefault(key, {"metric": metric, "unit": unit, "dims": {}, "points": {}})
        taken = self._samples.setdefault((key, minute), [])
        taken.append(value)
        shown = min(taken) if aggregation == "minimum" else sum(taken) / len(taken)
        entry["points"][minute] = {aggregation: shown}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/subscriptions/{subscription}/metrics:getBatch", self.get_batch)
        app.router.add_put("/control/series", self.put_series)
        app.router.add_get("/control/requests", self.get_requests)
        return app

    async def put_series(self, request: web.Request) -> web.Response:
        body = await request.json()
        dims = tuple(sorted((k.lower(), str(v)) for k, v in (body.get("dimensions") or {}).items()))
        key = (body["resource_id"].lower(), body["metric"].lower(), dims)
        if key not in self._set_by_test:  # the test's series replaces a measured one
            self._set_by_test.add(key)
            self.series.pop(key, None)
        entry = self.series.setdefault(
            key,
            {
                "metric": body["metric"],
                "unit": body.get("unit", "Count"),
                "dims": body.get("dimensions") or {},
            },
        )
        entry["points"] = {_time(at): values for at, values in body["points"].items()}
        return web.json_response({"series": len(self.series)})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def get_batch(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        body = await request.json() if request.can_read_body else None
        self.requests.append({"path": request.path, "query": dict(query), "body": body})
        if request.headers.get("Authorization") != f"Bearer {self._token}":
            return _error(401, "InvalidAuthenticationToken", "The access token is missing or invalid.")
        version = query.get("api-version")
        if version not in API_VERSIONS:
            return _error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid; supported: {', '.join(sorted(API_VERSIONS))}.",
            )
        for name in ("starttime", "endtime", "metricnamespace", "metricnames"):
            if not query.get(name):
                return _error(400, "BadRequest", f"Required parameter '{name}' is missing.")
        if query.get("interval", "PT1M") != "PT1M":
            return _error(400, "BadRequest", "This fake serves the PT1M interval only.")
        if not isinstance(body, dict) or not body.get("resourceids"):
            return _error(400, "BadRequest", "The request body must hold resourceids.")
        subscription = request.match_info["subscription"].lower()
        namespace = query["metricnamespace"]
        wanted = _parse_filter(query.get("filter"))
        if wanted is None:
            return _error(400, "BadRequest", f"The filter '{query.get('filter')}' is not valid.")
        aggregations = [a.strip().lower() for a in query.get("aggregation", "average").split(",")]
        if unknown := [a for a in aggregations if a not in AGGREGATIONS]:
            return _error(400, "BadRequest", f"Unknown aggregation(s): {','.join(unknown)}.")
        start, end = _time(query["starttime"]), _time(query["endtime"])
        values = []
        for resource_id in body["resourceids"]:
            parts = resource_id.strip("/").split("/")
            if len(parts) < 8 or parts[1].lower() != subscription:
                return _error(400, "BadRequest", f"{resource_id} is not in subscription {subscription}.")
            types = [parts[5], *parts[6::2]]
            if "/".join(types).lower() != namespace.lower():
                return _error(400, "BadRequest", f"{resource_id} is not of namespace {namespace}.")
            metrics = []
            for name in query["metricnames"].split(","):
                found = self._metric(resource_id, name, wanted, aggregations, start, end)
                if found is None:
                    return _error(
                        400,
                        "BadRequest",
                        f"Failed to find metric configuration for provider: {namespace}, "
                        f"resource Id: {resource_id}, metric: {name}.",
                    )
                metrics.append(found)
            values.append(
                {
                    "starttime": query["starttime"],
                    "endtime": query["endtime"],
                    "interval": "PT1M",
                    "value": metrics,
                    "namespace": namespace.lower(),
                    "resourceregion": "fakeregion",
                    "resourceid": resource_id,
                }
            )
        return web.json_response({"values": values})

    def _metric(
        self,
        resource_id: str,
        name: str,
        wanted: dict[str, set[str]],
        aggregations: list[str],
        start: datetime,
        end: datetime,
    ) -> dict[str, Any] | None:
        mine = [s for key, s in self.series.items() if key[:2] == (resource_id.lower(), name.lower())]
        if not mine:
            return None
        groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
        for series in mine:
            dims = {k.lower(): v for k, v in series["dims"].items()}
            if any(dims.get(d) not in allowed and "*" not in allowed for d, allowed in wanted.items()):
                continue
            group = tuple((d, dims.get(d, "")) for d in sorted(wanted))
            groups.setdefault(group, []).append(series)
        minutes = []
        at = start.replace(second=0, microsecond=0)
        while at < end:
            minutes.append(at)
            at += timedelta(minutes=1)
        timeseries = []
        for group, members in sorted(groups.items()):
            data = []
            for minute in minutes:
                given = [s["points"][minute] for s in members if s["points"].get(minute)]
                point: dict[str, Any] = {"timeStamp": _iso(minute)}
                for aggregation in aggregations:
                    numbers = [g[aggregation] for g in given if g.get(aggregation) is not None]
                    if not numbers:
                        continue
                    if aggregation in ("total", "count"):
                        point[aggregation] = sum(numbers)
                    elif aggregation == "maximum":
                        point[aggregation] = max(numbers)
                    elif aggregation == "minimum":
                        point[aggregation] = min(numbers)
                    else:
                        point[aggregation] = sum(numbers) / len(numbers)
                data.append(point)
            timeseries.append(
                {
                    "metadatavalues": [
                        {"name": {"value": d, "localizedValue": d}, "value": v} for d, v in group
                    ],
                    "data": data,
                }
            )
        return {
            "id": f"{resource_id}/providers/Microsoft.Insights/metrics/{mine[0]['metric']}",
            "type": "Microsoft.Insights/metrics",
            "name": {"value": mine[0]["metric"], "localizedValue": mine[0]["metric"]},
            "displayDescription": "",
            "unit": mine[0]["unit"],
            "timeseries": timeseries,
            "errorCode": "Success",
        }


async def serve(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    monitor = FakeMonitor(args.token)
    runner = web.AppRunner(monitor.app(), access_log=None)
    await runner.setup()
    # Held here, for as long as the server runs.
    measuring = (
        asyncio.create_task(monitor.measure(args.arm_url, args.arm_ca, args.arm_token, args.subscription))
        if args.arm_url
        else None
    )
    site = web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening https://127.0.0.1:{port}", flush=True)
    await (measuring if measuring is not None else asyncio.Event().wait())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--arm-url", default=None, help="the fake ARM whose VMs to measure")
    parser.add_argument("--arm-ca", default=None)
    parser.add_argument("--arm-token", default=None)
    parser.add_argument("--subscription", default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
