"""Windowed statistics the gateway serves on `GET /stats` (the monitor contract)."""

from __future__ import annotations

from pydantic import BaseModel, Field

# Status buckets every window counts. "errors" for gates are the deployment's own failures.
STATUS_KEYS = ("2xx", "4xx", "5xx", "408", "424", "429", "503")
ERROR_KEYS = ("5xx", "408", "424", "429")
# Why a 429 was answered: the `limit` its body names (gateway.table), and "model" for a 429
# the instance answered itself (its own body, no `limit`). Windows count each in this order.
LIMIT_REASONS = ("endpoint_rate", "instance_concurrency", "queue_wait", "model")


class LatencySummary(BaseModel):
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None


class MirrorSummary(BaseModel):
    """Shadow answers compared with the live one for the same request."""

    requests: int = 0
    compared: int = 0
    matches: int = 0
    dropped: int = Field(default=0, description="mirror copies shed to protect the live path")
    latency_diff_ms_p50: float | None = None

    @property
    def match_rate(self) -> float | None:
        return self.matches / self.compared if self.compared else None


class MinuteCounts(BaseModel):
    """One minute's requests and status counts (what availability over an hour or a day is
    computed from; the gateway keeps a day of them)."""

    start: int = Field(description="epoch seconds at the minute's start")
    requests: int = 0
    status: dict[str, int] = Field(default_factory=dict)


class WindowStats(BaseModel):
    """One deployment's last `window_seconds` as one gateway saw it (sum gateways with `+`)."""

    endpoint: str
    deployment: str
    window_seconds: float
    requests: int = 0
    status: dict[str, int] = Field(default_factory=dict)
    latency_ms: LatencySummary = Field(default_factory=LatencySummary)
    in_flight: int = 0
    queue_wait_ms: LatencySummary = Field(default_factory=LatencySummary)
    utilisation: dict[str, float] = Field(
        default_factory=dict, description="instance id -> busy time / wall time in the window"
    )
    mirror: MirrorSummary = Field(default_factory=MirrorSummary)
    minutes: list[MinuteCounts] = Field(
        default_factory=list, description="per-minute counts, when asked for (`/stats?minutes=N`)"
    )
    limited: dict[str, int] = Field(
        default_factory=dict,
        description="429s by reason (config.stats.LIMIT_REASONS); they add up to status['429']",
    )

    @property
    def errors(self) -> int:
        return sum(self.status.get(k, 0) for k in ERROR_KEYS)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def rate_of(self, key: str) -> float | None:
        return self.status.get(key, 0) / self.requests if self.requests else None
