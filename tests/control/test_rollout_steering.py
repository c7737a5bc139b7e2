"""Which steering verbs the CLI refuses in which phase, before anything is sent."""

from __future__ import annotations

import pytest

from control.rollouts import signal_refusal

RID = "rollout/my-ep/3"


@pytest.mark.parametrize(
    ("signal", "phase", "refusal"),
    [
        ("pause", "Progressing", None),
        ("pause", "Mirroring", None),
        ("pause", "Paused", "rollout rollout/my-ep/3 is Paused already"),
        ("resume", "Paused", None),
        (
            "resume",
            "Progressing",
            "rollout rollout/my-ep/3 is Progressing; only a Paused rollout can be resumed",
        ),
        ("promote", "Paused", None),
        ("rollback", "Mirroring", None),
        ("rollback", "Succeeded", "rollout rollout/my-ep/3 is Succeeded; nothing to rollback"),
        ("promote", "RolledBack", "rollout rollout/my-ep/3 is RolledBack; nothing to promote"),
        ("undo", "Succeeded", None),
        (
            "undo",
            "Progressing",
            "rollout rollout/my-ep/3 is Progressing; only a Succeeded rollout can be undone",
        ),
    ],
)
def test_a_verb_the_phase_would_ignore_is_refused_naming_the_phase(
    signal: str, phase: str, refusal: str | None
) -> None:
    assert signal_refusal(RID, signal, phase) == refusal
