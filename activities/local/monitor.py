"""`local` monitor provider: every gateway's `/stats`, summed."""

from __future__ import annotations

import ssl

import aiohttp

from config.contract.activities import QueryWindowInput
from config.security import control_client_ssl, control_session
from config.settings import Settings
from config.stats import LatencySummary, MinuteCounts, MirrorSummary, WindowStats


class LocalMonitorProvider:
    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context`: what https admin URLs are trusted with (default: the control CA)."""
        self._targets = settings.gateway_admin_targets
        self._settings = settings
        self._ssl = ssl_context if ssl_context is not None else control_client_ssl(settings)

    async def query_window(self, request: QueryWindowInput) -> WindowStats:
        params = {
            "endpoint": request.endpoint,
            "deployment": request.deployment,
            "window": f"{request.window_seconds:g}s",
        }
        windows = []
        timeout = aiohttp.ClientTimeout(total=5)
        async with control_session(self._settings, ssl_context=self._ssl, timeout=timeout) as session:
            for target in self._targets:
                async with session.get(f"{target}/stats", params=params) as response:
                    response.raise_for_status()
                    windows.append(WindowStats.model_validate(await response.json()))
        return sum_windows(windows)


def sum_windows(windows: list[WindowStats]) -> WindowStats:
    """Counts add up exactly; percentiles of several gateways are request-weighted means
    (an approximation, exact with one gateway)."""
    if len(windows) == 1:
        return windows[0]
    first = windows[0]
    total = sum(w.requests for w in windows)
    status: dict[str, int] = {}
    limited: dict[str, int] = {}
    for w in windows:
        for key, count in w.status.items():
            status[key] = status.get(key, 0) + count
        for reason, count in w.limited.items():
            limited[reason] = limited.get(reason, 0) + count

    def weighted(pick: str, source: str) -> float | None:
        pairs = [(getattr(getattr(w, source), pick), w.requests) for w in windows]
        pairs = [(v, n) for v, n in pairs if v is not None and n]
        if not pairs:
            return None
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)

    return WindowStats(
        endpoint=first.endpoint,
        deployment=first.deployment,
        window_seconds=first.window_seconds,
        requests=total,
        status=status,
        latency_ms=LatencySummary(**{k: weighted(k, "latency_ms") for k in ("p50", "p90", "p99", "mean")}),
        in_flight=sum(w.in_flight for w in windows),
        queue_wait_ms=LatencySummary(
            **{k: weighted(k, "queue_wait_ms") for k in ("p50", "p90", "p99", "mean")}
        ),
        utilisation={k: v for w in windows for k, v in w.utilisation.items()},
        mirror=MirrorSummary(
            requests=sum(w.mirror.requests for w in windows),
            compared=sum(w.mirror.compared for w in windows),
            matches=sum(w.mirror.matches for w in windows),
            dropped=sum(w.mirror.dropped for w in windows),
            latency_diff_ms_p50=weighted("latency_diff_ms_p50", "mirror"),
        ),
        minutes=sum_minutes(windows),
        limited=limited,
    )


def sum_minutes(windows: list[WindowStats]) -> list[MinuteCounts]:
    """Several gateways' per-minute counts, added minute by minute."""
    by_start: dict[int, MinuteCounts] = {}
    for window in windows:
        for one in window.minutes:
            kept = by_start.setdefault(one.start, MinuteCounts(start=one.start))
            kept.requests += one.requests
            for key, count in one.status.items():
                kept.status[key] = kept.status.get(key, 0) + count
    return [by_start[start] for start in sorted(by_start)]
