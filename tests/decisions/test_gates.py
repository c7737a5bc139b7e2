"""Gate verdicts on hand-made windows."""

from __future__ import annotations

import pytest

from config.rollout import Gate
from config.stats import LatencySummary, WindowStats
from decisions.gates import judge_gate


def window(
    requests: int, errors: int = 0, p99: float | None = 20.0, deployment: str = "green"
) -> WindowStats:
    return WindowStats(
        endpoint="ep",
        deployment=deployment,
        window_seconds=30,
        requests=requests,
        status={"2xx": requests - errors, "5xx": errors},
        latency_ms=LatencySummary(p50=p99 / 2 if p99 else None, p90=p99, p99=p99),
    )


@pytest.mark.parametrize(
    ("when", "canary", "baseline", "outcome"),
    [
        ("error_rate <= 0.05", window(100, 3), None, "pass"),
        ("error_rate <= 0.05", window(100, 7), None, "fail"),
        ("latency_p99 <= baseline * 1.2", window(100, p99=23.0), window(100, p99=20.0), "pass"),
        ("latency_p99 <= baseline * 1.2", window(100, p99=25.0), window(100, p99=20.0), "fail"),
        ("error_rate <= baseline + 0.01", window(200, 3), window(200, 2), "pass"),
        ("error_rate <= baseline + 0.01", window(200, 10), window(200, 2), "fail"),
        ("request_count >= 50", window(60), None, "pass"),
    ],
    ids=[
        "absolute-pass",
        "absolute-fail",
        "ratio-pass",
        "ratio-fail",
        "offset-pass",
        "offset-fail",
        "request-count",
    ],
)
def test_gate_judges_absolute_and_baseline_relative_bounds(
    when: str, canary: WindowStats, baseline: WindowStats | None, outcome: str
) -> None:
    assert judge_gate(Gate(when=when, min_requests=20), canary, baseline).outcome == outcome


def test_a_failed_verdict_carries_its_numbers() -> None:
    verdict = judge_gate(Gate(when="error_rate <= 0.05"), window(100, 7), None)
    assert verdict.message == "error_rate 0.07 > 0.05 (100 requests)"


def test_gate_waits_when_fewer_than_min_requests() -> None:
    verdict = judge_gate(Gate(when="error_rate <= 0.05", min_requests=50), window(49, 40), None)
    assert verdict.outcome == "no_data"
    assert "49 of 50" in verdict.message


def test_a_relative_gate_without_baseline_data_is_no_data_not_a_pass() -> None:
    verdict = judge_gate(Gate(when="latency_p99 <= baseline * 1.2"), window(100), window(3))
    assert verdict.outcome == "no_data"


@pytest.mark.parametrize(
    ("canary_errors", "baseline_errors", "outcome"),
    [(30, 10, "fail"), (10, 10, "pass"), (4, 10, "pass"), (13, 10, "inconclusive")],
    ids=["significantly-worse", "same", "better", "worse-but-not-significant"],
)
def test_the_statistical_gate_fails_only_with_confidence(
    canary_errors: int, baseline_errors: int, outcome: str
) -> None:
    gate = Gate(metric="error_rate", test="two_proportion", confidence=0.95)
    verdict = judge_gate(gate, window(200, canary_errors), window(200, baseline_errors, deployment="blue"))
    assert verdict.outcome == outcome


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"when": "error_rate <= lots"}, "is not 'metric op number'"),
        ({"when": "happiness >= 0.9"}, "unknown metric 'happiness'"),
        ({"metric": "error_rate"}, "exactly one of threshold"),
        ({"metric": "latency_p99", "test": "two_proportion"}, "rate metrics only"),
        ({"when": "burn_rate <= 2"}, "slo: required with burn_rate"),
        ({"when": "error_rate <= 0.05", "slo": 99.9}, "slo: only with the burn_rate metric"),
        ({"when": "burn_rate <= 2", "slo": 100}, "less than 100"),
    ],
    ids=[
        "bad-expression",
        "unknown-metric",
        "no-bound",
        "test-on-latency",
        "burn-rate-without-slo",
        "slo-on-another-metric",
        "slo-of-100-has-no-budget",
    ],
)
def test_a_bad_gate_is_refused_naming_the_problem(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Gate(**spec)


@pytest.mark.parametrize(
    ("errors", "slo", "burn", "outcome"),
    [(1, 99.0, 1.0, "pass"), (3, 99.0, 3.0, "fail"), (0, 99.9, 0.0, "pass"), (1, 99.9, 10.0, "fail")],
    ids=["at-the-budget", "three-times-the-budget", "no-failure", "tight-slo"],
)
def test_a_burn_rate_gate_compares_the_failure_share_with_what_the_slo_allows(
    errors: int, slo: float, burn: float, outcome: str
) -> None:
    verdict = judge_gate(Gate(when="burn_rate <= 2", slo=slo, min_requests=20), window(100, errors), None)
    assert verdict.value == pytest.approx(burn) and verdict.outcome == outcome


def test_a_burn_rate_counts_timeouts_but_not_what_the_client_caused() -> None:
    stats = window(100).model_copy(update={"status": {"2xx": 90, "408": 2, "429": 5, "424": 3}})
    verdict = judge_gate(Gate(when="burn_rate <= 10", slo=99.0), stats, None)
    assert verdict.value == pytest.approx(2.0)  # the 408s only: 2 % over the 1 % allowed
