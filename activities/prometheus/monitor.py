"""`prometheus` monitor provider: the same windows as the gateway's `/stats`, from PromQL.

Counts come from `increase()` over the gateway's counters (rounded: Prometheus extrapolates
at the window's edges); latency quantiles are the gateway's own last-60 s gauges
(`RequestLatency_P50` … `_P99`), the closest Azure-named figure to a shorter window.
"""

from __future__ import annotations

import aiohttp

from config.contract.activities import QueryWindowInput
from config.stats import LatencySummary, MirrorSummary, WindowStats


def consistent_status(classes: dict[str, float], codes: dict[str, float]) -> dict[str, int]:
    """Status counts that add up: each class's count ("4xx") rounded, and its codes ("424",
    "429") never more than it. The two come from different counters, whose `increase()`s
    Prometheus extrapolates apart (a series born mid-window more), so 23 424s could otherwise
    stand beside 22 requests, and an error rate above 1."""
    status = {key: round(value) for key, value in classes.items()}
    for key, value in sorted(codes.items()):
        room = status.get(f"{key[:1]}xx", 0) - sum(
            status.get(other, 0)
            for other in codes
            if other != key and other[:1] == key[:1] and other in status
        )
        status[key] = max(0, min(round(value), room))
    return status


class PrometheusMonitorProvider:
    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    async def _query(self, session: aiohttp.ClientSession, promql: str) -> list[dict]:
        async with session.get(f"{self._url}/api/v1/query", params={"query": promql}) as response:
            response.raise_for_status()
            body = await response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus refused {promql!r}: {body.get('error')}")
        return body["data"]["result"]

    async def query_window(self, request: QueryWindowInput) -> WindowStats:
        sel = f'endpoint="{request.endpoint}",deployment="{request.deployment}"'
        window = f"{max(1, round(request.window_seconds))}s"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def by(label: str, promql: str) -> dict[str, float]:
                rows = await self._query(session, promql)
                return {row["metric"].get(label, ""): float(row["value"][1]) for row in rows}

            async def scalar(promql: str) -> float | None:
                rows = await self._query(session, promql)
                return float(rows[0]["value"][1]) if rows else None

            classes = await by(
                "status_class",
                f"sum by (status_class) (increase(tidegate_requests_total{{{sel}}}[{window}]))",
            )
            codes = await by("code", f"sum by (code) (increase(tidegate_responses_total{{{sel}}}[{window}]))")
            latency = {
                q: await scalar(f"max(RequestLatency_P{q[1:]}{{{sel}}})") for q in ("p50", "p90", "p99")
            }
            utilisation = await by(
                "exported_instance", f"max by (exported_instance) (tidegate_instance_utilisation{{{sel}}})"
            )
            in_flight = await scalar(f"sum(tidegate_in_flight{{{sel}}})")
            mirror = {
                name: await scalar(f"sum(increase(tidegate_mirror_{name}_total{{{sel}}}[{window}]))")
                for name in ("requests", "compared", "matches", "dropped")
            }
        status = consistent_status(classes, codes)
        return WindowStats(
            endpoint=request.endpoint,
            deployment=request.deployment,
            window_seconds=request.window_seconds,
            requests=sum(round(v) for v in classes.values()),
            status=status,
            latency_ms=LatencySummary(**{k: v for k, v in latency.items() if v == v}),  # drop NaN
            in_flight=round(in_flight or 0),
            utilisation=utilisation,
            mirror=MirrorSummary(**{k: round(v or 0) for k, v in mirror.items()}),
        )
