"""A rollout as RolloutWorkflow carries it: the plan made from rollout.yml, and its state.

decisions/rollout.py decides on them; decisions/gates.py gives the verdicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from config.rollout import AfterFailure, AfterSuccess, Gate, MirrorPhase, Strategy

Phase = Literal["Mirroring", "Progressing", "Paused", "Succeeded", "RolledBack"]
# The phases a rollout never leaves.
TERMINAL: frozenset[Phase] = frozenset({"Succeeded", "RolledBack"})

GateOutcome = Literal["pass", "fail", "no_data", "inconclusive"]
# What a rollout's history records; the last two end it.
RolloutEvent = Literal[
    "weights",
    "mirror",
    "check.failed",
    "check.passed",
    "paused",
    "resumed",
    "promote",
    "rollback",
    "succeeded",
    "rolledback",
]


class PlanStep(BaseModel):
    weight: int
    hold: float


class Plan(BaseModel):
    """A rollout spec made concrete: the steps in order, and who is baseline and canary."""

    endpoint: str
    baseline: str
    canary: str
    strategy: Strategy
    steps: list[PlanStep]
    mirror: MirrorPhase | None = None
    gates: list[Gate] = Field(default_factory=list)
    check_interval: float = 5.0
    failure_limit: int = 3
    success_count: int = 1
    after_success: AfterSuccess = Field(default_factory=AfterSuccess)
    after_failure: AfterFailure = Field(default_factory=AfterFailure)


class Verdict(BaseModel):
    """A gate's answer with its numbers, e.g. "error_rate 0.071 > 0.05"."""

    gate: str
    outcome: GateOutcome
    value: float | None = None
    bound: float | None = None
    requests: int = 0
    message: str


class HistoryEntry(BaseModel):
    at: datetime
    event: RolloutEvent
    detail: str = ""


class RolloutState(BaseModel):
    phase: Phase = "Progressing"
    step: int = Field(default=-1, description="index of the traffic step applied; -1 before")
    weight: int = Field(default=0, description="canary's traffic share now applied")
    mirror_share: int = 0
    mirror_done: bool = False
    phase_started_at: datetime | None = None
    last_check_at: datetime | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    no_data_since: datetime | None = None
    paused: bool = False
    pause_reason: str | None = None
    promote_requested: bool = False
    rollback_requested: bool = False
    reason: str | None = None
    verdicts: list[Verdict] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
