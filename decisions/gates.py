"""Gate verdicts: is the canary healthy, judged on the gateway's windows (or, for a gate whose
source is azure_monitor, on an Azure Monitor metric's settled minutes)? Pure, `now`-free."""

from __future__ import annotations

from config.contract.activities import ReadAzureMetricResult
from config.contract.rollout import GateOutcome, Verdict
from config.rollout import Gate
from config.stats import WindowStats
from decisions.availability import failures_in
from decisions.statistics import two_proportion_z_test

_RATE_KEYS = {"5xx_rate": "5xx", "408_rate": "408", "424_rate": "424", "429_rate": "429"}


def metric_value(metric: str, stats: WindowStats, slo: float | None = None) -> float | None:
    if metric == "error_rate":
        return stats.error_rate
    if metric == "burn_rate":  # the failure share over the share the objective allows
        assert slo is not None
        if not stats.requests:
            return None
        return failures_in(stats.status) / stats.requests / (1.0 - slo / 100.0)
    if metric in _RATE_KEYS:
        return stats.rate_of(_RATE_KEYS[metric])
    if metric == "request_count":
        return float(stats.requests)
    if metric.startswith("latency_"):
        return float(getattr(stats.latency_ms, metric.removeprefix("latency_")))
    if metric == "mirror_match_rate":
        return stats.mirror.match_rate
    raise ValueError(f"unknown metric {metric}")


def _sample_size(metric: str, stats: WindowStats) -> int:
    return stats.mirror.compared if metric == "mirror_match_rate" else stats.requests


def _holds(value: float, op: str, bound: float) -> bool:
    return {
        "<": value < bound,
        "<=": value <= bound,
        ">": value > bound,
        ">=": value >= bound,
    }[op]


def _error_count(metric: str, stats: WindowStats) -> int:
    if metric == "error_rate":
        return stats.errors
    return stats.status.get(_RATE_KEYS[metric], 0)


def judge_gate(gate: Gate, canary: WindowStats, baseline: WindowStats | None) -> Verdict:
    """One gate on one window. Too few requests is `no_data`, never a silent pass."""
    assert gate.metric is not None
    metric, label = gate.metric, gate.label
    seen = _sample_size(metric, canary)
    if seen < gate.min_requests or (value := metric_value(metric, canary, gate.slo)) is None:
        return Verdict(
            gate=label,
            outcome="no_data",
            requests=seen,
            message=f"{metric}: {seen} of {gate.min_requests} requests needed in {gate.window:g}s",
        )
    if gate.relative:
        base_seen = _sample_size(metric, baseline) if baseline is not None else 0
        base_value = metric_value(metric, baseline, gate.slo) if baseline is not None else None
        if baseline is None or base_seen < gate.min_requests or base_value is None:
            return Verdict(
                gate=label,
                outcome="no_data",
                value=value,
                requests=seen,
                message=f"{metric}: baseline has {base_seen} of {gate.min_requests} requests needed",
            )
        if gate.test == "two_proportion":
            return _judge_proportions(gate, canary, baseline)
        if gate.baseline_factor is not None:
            bound = base_value * gate.baseline_factor
        else:
            bound = base_value + (gate.baseline_offset or 0.0)
    else:
        assert gate.threshold is not None
        bound = gate.threshold
    ok = _holds(value, gate.op, bound)
    shown_op = gate.op if ok else _negate(gate.op)
    return Verdict(
        gate=label,
        outcome="pass" if ok else "fail",
        value=value,
        bound=bound,
        requests=seen,
        message=f"{metric} {value:.4g} {shown_op} {bound:.4g} ({seen} requests)",
    )


def _negate(op: str) -> str:
    return {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[op]


def _judge_proportions(gate: Gate, canary: WindowStats, baseline: WindowStats) -> Verdict:
    """Fail when the canary is worse with the stated confidence; inconclusive when it looks worse
    but the evidence is not there yet; pass when it is no worse."""
    assert gate.metric is not None
    test = two_proportion_z_test(
        _error_count(gate.metric, canary),
        canary.requests,
        _error_count(gate.metric, baseline),
        baseline.requests,
    )
    alpha = 1.0 - gate.confidence
    numbers = (
        f"{gate.metric} canary {test.canary_rate:.4g} vs baseline {test.baseline_rate:.4g}, "
        f"z={test.z:.2f}, p={test.p_value:.3g}"
    )
    if test.p_value < alpha:
        outcome: GateOutcome = "fail"
        message = f"{numbers}: worse at {gate.confidence:.0%} confidence"
    elif test.canary_rate <= test.baseline_rate:
        outcome = "pass"
        message = f"{numbers}: no worse"
    else:
        outcome = "inconclusive"
        message = f"{numbers}: looks worse, not significant at {gate.confidence:.0%}"
    return Verdict(
        gate=gate.label,
        outcome=outcome,
        value=test.canary_rate,
        bound=test.baseline_rate,
        requests=canary.requests,
        message=message,
    )


def judge_azure_monitor_gate(gate: Gate, reading: ReadAzureMetricResult) -> Verdict:
    """An Azure Monitor metric against its absolute threshold. No value over the window's settled
    minutes is `no_data` (the gate's `on_no_data` decides), never a pass."""
    assert gate.source == "azure_monitor" and gate.threshold is not None
    name, bound = gate.metric_name, gate.threshold
    minutes = f"{reading.counted} of {reading.expected} settled minutes"
    if reading.value is None:
        return Verdict(gate=gate.label, outcome="no_data", message=f"{name}: {reading.reason}")
    ok = _holds(reading.value, gate.op, bound)
    shown_op = gate.op if ok else _negate(gate.op)
    return Verdict(
        gate=gate.label,
        outcome="pass" if ok else "fail",
        value=reading.value,
        bound=bound,
        message=f"{name} {reading.value:.4g} {shown_op} {bound:.4g} ({minutes})",
    )
