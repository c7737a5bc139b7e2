"""Probe timing and counting as Kubernetes (and so Azure ML) does it. Pure; times are given.

Each of a deployment's `liveness_probe` and `readiness_probe` carries five numbers:

- `initial_delay`: no probe before this many seconds after the process started;
- `period`: then one probe every `period` seconds, counted from the start of the previous
  one (a probe that took longer is followed at once);
- `timeout`: a probe not answered within it has failed (the caller enforces it);
- `failure_threshold`: that many failures in a row turn the verdict to failing (liveness: the
  instance is replaced; readiness: it leaves the route table);
- `success_threshold`: that many successes in a row turn it to passing (readiness: ready, or
  ready again). Azure fixes it at 1 for liveness, whose failing verdict is final anyway.

A result that disagrees with the verdict changes nothing until its run reaches the threshold;
a result of the other kind starts the run again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from config.host_api import ProbeSpec


class ProbeCount(BaseModel):
    """One probe's verdict and the current run of results that led to it."""

    model_config = ConfigDict(frozen=True)

    passing: bool
    successes: int = 0  # in a row
    failures: int = 0  # in a row

    @classmethod
    def readiness(cls, *, ready: bool = False) -> ProbeCount:
        """Not ready until it has passed (an adopted instance that was ready stays so)."""
        return cls(passing=ready)

    @classmethod
    def liveness(cls) -> ProbeCount:
        """Live until it has failed `failure_threshold` times in a row."""
        return cls(passing=True)


def count_probe(probe: ProbeSpec, count: ProbeCount, *, ok: bool) -> ProbeCount:
    """The verdict after one more result."""
    if ok:
        successes = count.successes + 1
        return ProbeCount(passing=count.passing or successes >= probe.success_threshold, successes=successes)
    failures = count.failures + 1
    return ProbeCount(passing=count.passing and failures < probe.failure_threshold, failures=failures)


def next_probe_at(probe: ProbeSpec, *, started: float, previous: float | None) -> float:
    """When the next probe may start: `initial_delay` after the process started, then `period`
    after the previous probe started. Times in seconds on one clock (the caller's)."""
    if previous is None:
        return started + probe.initial_delay
    return max(previous + probe.period, started + probe.initial_delay)


def startup_budget_seconds(probe: ProbeSpec) -> float:
    """How long an instance may take to pass its readiness probe for the first time before it
    counts as failed to start: Azure's readiness budget, initial_delay + period x
    failure_threshold. (Kubernetes would leave it unready for ever; nothing would replace it.)"""
    return float(probe.initial_delay + probe.period * probe.failure_threshold)
