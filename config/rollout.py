"""`rollout.yml`: how traffic moves from a baseline deployment to a canary, and what judges it."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from config.azure_metrics import AzureMonitorSource

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """`30s`, `5m`, `1h`, `250ms` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = float(m["n"]) * _UNIT_SECONDS[m["unit"]]
    else:
        raise ValueError(f"'{value}' must be a duration like 30s, 5m or 1h")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Percent = Annotated[int, Field(ge=0, le=100)]

Metric = Literal[
    "error_rate",
    "5xx_rate",
    "408_rate",
    "424_rate",
    "429_rate",
    "latency_p50",
    "latency_p90",
    "latency_p99",
    "request_count",
    "mirror_match_rate",
    "burn_rate",
]
Op = Literal["<", "<=", ">", ">="]
Strategy = Literal["canary", "linear", "blue_green"]
# What becomes of a deployment a rollout is done with (`keep` leaves it as it is).
RetireAction = Literal["keep", "scale_down", "delete"]

_EXPR = re.compile(
    r"^\s*(?P<metric>[a-z0-9_]+)\s*(?P<op><=|>=|<|>)\s*"
    r"(?:(?P<base>baseline)\s*(?:(?P<sign>[*+])\s*(?P<k>\d+(?:\.\d+)?))?|(?P<abs>\d+(?:\.\d+)?))\s*$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


GateSource = Literal["gateway", "azure_monitor"]
AZURE_MONITOR_MIN_WINDOW = 60.0  # Azure Monitor's one-minute buckets


class Gate(_Strict):
    """One analysis check: `metric op threshold`, absolute or relative to the baseline, on the
    gateways' windows; or (`source: azure_monitor`) an Azure Monitor metric of any resource
    against an absolute threshold."""

    name: str | None = None
    source: GateSource = Field(default="gateway", description="where the numbers come from")
    azure_monitor: AzureMonitorSource | None = Field(
        default=None, description="source azure_monitor: resource_id, metric, aggregation, filter"
    )
    when: str | None = Field(
        default=None,
        description="shorthand: 'error_rate <= 0.05', 'latency_p99 <= baseline * 1.2', "
        "'error_rate <= baseline + 0.01'",
    )
    metric: Metric | None = None
    op: Op = "<="
    threshold: float | None = Field(default=None, description="absolute bound")
    baseline_factor: float | None = Field(default=None, description="bound = baseline × factor")
    baseline_offset: float | None = Field(default=None, description="bound = baseline + offset")
    window: Duration = 30.0
    min_requests: int = Field(default=20, ge=0)
    on_no_data: Literal["wait", "pause", "fail"] = "wait"
    no_data_deadline: Duration = 300.0
    test: Literal["two_proportion"] | None = Field(
        default=None, description="error rates only: canary worse than baseline with confidence"
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    slo: float | None = Field(
        default=None,
        gt=0,
        lt=100,
        description="burn_rate only: the availability objective in percent, e.g. 99.9 (a burn rate "
        "of 1 spends the error budget exactly as fast as the objective allows)",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Gate:
        if self.source == "azure_monitor":
            return self._azure_monitor_form()
        if self.azure_monitor is not None:
            raise ValueError("azure_monitor: only with source: azure_monitor")
        if self.when is not None:
            match = _EXPR.match(self.when)
            if match is None:
                raise ValueError(
                    f"when: '{self.when}' is not 'metric op number' or 'metric op baseline [*|+] number'"
                )
            metric = match["metric"]
            if metric not in Metric.__args__:  # type: ignore[attr-defined]
                raise ValueError(f"when: unknown metric '{metric}'; one of {', '.join(Metric.__args__)}")  # type: ignore[attr-defined]
            self.metric = metric  # type: ignore[assignment]
            self.op = match["op"]  # type: ignore[assignment]
            if match["abs"] is not None:
                self.threshold = float(match["abs"])
            elif match["sign"] == "*":
                self.baseline_factor = float(match["k"])
            elif match["sign"] == "+":
                self.baseline_offset = float(match["k"])
            else:
                self.baseline_factor = 1.0
        if self.metric is None:
            raise ValueError("metric: required (or give `when`)")
        if (self.metric == "burn_rate") != (self.slo is not None):
            raise ValueError(
                "slo: required with burn_rate (the availability objective, e.g. 99.9)"
                if self.metric == "burn_rate"
                else "slo: only with the burn_rate metric"
            )
        if self.test is not None:
            if self.metric not in ("error_rate", "5xx_rate", "424_rate", "408_rate", "429_rate"):
                raise ValueError("test: two_proportion applies to rate metrics only")
            return self
        forms = [self.threshold, self.baseline_factor, self.baseline_offset]
        if sum(f is not None for f in forms) != 1:
            raise ValueError("give exactly one of threshold, baseline_factor, baseline_offset")
        return self

    def _azure_monitor_form(self) -> Gate:
        if self.azure_monitor is None:
            raise ValueError("azure_monitor: required with source: azure_monitor (resource_id, metric, ...)")
        for field in ("when", "metric", "baseline_factor", "baseline_offset", "test"):
            if getattr(self, field) is not None:
                raise ValueError(
                    f"{field}: not for source azure_monitor (its metric is azure_monitor.metric, "
                    "its bound an absolute threshold)"
                )
        if self.threshold is None:
            raise ValueError("threshold: required with source: azure_monitor")
        if self.window < AZURE_MONITOR_MIN_WINDOW:
            raise ValueError(
                f"window: {self.window:g}s is shorter than Azure Monitor's one-minute buckets "
                f"(at least {AZURE_MONITOR_MIN_WINDOW:g}s)"
            )
        return self

    @property
    def metric_name(self) -> str:
        """What the gate measures, as a user wrote it."""
        if self.azure_monitor is not None:
            return f"{self.azure_monitor.metric} ({self.azure_monitor.aggregation})"
        return str(self.metric)

    @property
    def label(self) -> str:
        text = self.name or self.when or f"{self.metric_name} {self.op} {self.bound_text}"
        return f"{text} (SLO {self.slo:g}%)" if self.slo is not None and not self.name else text

    @property
    def relative(self) -> bool:
        return self.test is not None or self.threshold is None

    @property
    def bound_text(self) -> str:
        if self.test is not None:
            return f"baseline ({self.test}, {self.confidence:.0%})"
        if self.threshold is not None:
            return f"{self.threshold:g}"
        if self.baseline_factor is not None:
            return f"baseline * {self.baseline_factor:g}"
        return f"baseline + {self.baseline_offset:g}"


class Step(_Strict):
    weight: Percent
    hold: Duration = 60.0


class LinearSpec(_Strict):
    step: Annotated[int, Field(ge=1, le=100)] = 10
    interval: Duration = 60.0


class MirrorPhase(_Strict):
    share: Annotated[int, Field(ge=1, le=100)] = 10
    duration: Duration = 60.0
    gates: list[Gate] = Field(default_factory=list)


class AfterSuccess(_Strict):
    keep_previous_for: Duration = Field(default=600.0, description="old deployment warm at 0 %")
    then: RetireAction = "keep"


class AfterFailure(_Strict):
    canary: Literal["keep", "delete"] = "keep"
    drain: Duration = Field(default=10.0, description="wait after traffic is back before removal")


class RolloutSpec(_Strict):
    """A rollout plan as written in rollout.yml (or built from --strategy/--steps flags)."""

    strategy: Strategy = "canary"
    baseline: str | None = Field(default=None, description="default: the deployment with traffic")
    steps: list[Step] = Field(default_factory=list)
    linear: LinearSpec | None = None
    blue_green_hold: Duration = Field(default=60.0, description="blue_green: test phase length")
    mirror: MirrorPhase | None = None
    gates: list[Gate] = Field(default_factory=list)
    check_interval: Duration = 5.0
    failure_limit: int = Field(default=3, ge=1, description="consecutive failed checks")
    success_count: int = Field(default=1, ge=1, description="consecutive passed checks")
    after_success: AfterSuccess = Field(default_factory=AfterSuccess)
    after_failure: AfterFailure = Field(default_factory=AfterFailure)

    @model_validator(mode="after")
    def _strategy_fields(self) -> RolloutSpec:
        if self.strategy == "canary":
            if not self.steps:
                self.steps = [Step(weight=w, hold=60.0) for w in (10, 25, 50, 100)]
            weights = [s.weight for s in self.steps]
            if weights != sorted(weights):
                raise ValueError("steps: weights must not decrease")
            if weights[-1] != 100:
                self.steps.append(Step(weight=100, hold=0.0))
        elif self.steps:
            raise ValueError(f"steps: only for strategy canary (this is {self.strategy})")
        if self.strategy == "linear" and self.linear is None:
            self.linear = LinearSpec()
        if self.strategy != "linear" and self.linear is not None:
            raise ValueError(f"linear: only for strategy linear (this is {self.strategy})")
        return self
