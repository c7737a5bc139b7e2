"""Polling a condition in the end-to-end tests: bounded by a count, never by a clock."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(predicate: Callable[[], object], what: str, polls: int = 1800, every: float = 0.1) -> None:
    """Poll a condition; the bound only keeps a broken build from hanging CI."""
    for _ in range(polls):
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"never: {what}")
